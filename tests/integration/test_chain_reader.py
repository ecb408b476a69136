"""The JSON-RPC chain reader against a fake Ethereum node on a loopback port.

Also checks that the fake answers as JSON-RPC 2.0 and the execution API say (batches, error
codes, quantities), so the reader is tested against something that behaves like a node.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from domain.ports.payments import PaymentAuthError, PaymentUnavailableError, TokenTransfer
from infrastructure.payments.chain import (
    SUPPORTED_NETWORKS,
    TRANSFER_TOPIC,
    USDC_CONTRACTS,
    USDC_DECIMALS,
    ChainError,
    JsonRpcChainReader,
    address_topic,
    normalize_address,
    to_quantity,
)
from tests.fake_servers.eth_rpc import FakeChain, running_chain, uint256

pytestmark = pytest.mark.anyio

USDC = USDC_CONTRACTS["base"]
OTHER_TOKEN = "0x" + "5a" * 20
WALLET = "0x" + "1b" * 20  # our deposit address
SOMEONE = "0x" + "2c" * 20
PAYER = "0x" + "3d" * 20
APPROVAL_TOPIC = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def chain() -> Iterator[FakeChain]:
    with running_chain(chain_id=8453, start_block=1000) as fake:
        yield fake


@pytest.fixture
async def reader(chain: FakeChain) -> AsyncIterator[JsonRpcChainReader]:
    async with JsonRpcChainReader(chain.url, backoff_s=0.0) as r:
        yield r


def rpc(url: str, payload: Any) -> httpx.Response:
    with httpx.Client() as client:
        return client.post(url, json=payload)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ============================================================================ basics


async def test_chain_id_and_block_number(chain: FakeChain, reader: JsonRpcChainReader) -> None:
    assert await reader.chain_id() == 8453
    assert await reader.block_number() == 1000
    chain.mine(3)
    assert await reader.block_number() == 1003


def test_constants() -> None:
    assert set(USDC_CONTRACTS) == set(SUPPORTED_NETWORKS)
    assert SUPPORTED_NETWORKS == {
        "ethereum": 1,
        "optimism": 10,
        "polygon": 137,
        "base": 8453,
        "arbitrum": 42161,
    }
    for address in USDC_CONTRACTS.values():
        assert normalize_address(address) == address
    assert len(set(USDC_CONTRACTS.values())) == 5
    assert USDC_DECIMALS == 6
    assert (
        TRANSFER_TOPIC == "0x" + "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    )


def test_address_helpers() -> None:
    mixed = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    assert normalize_address(f"  {mixed} ") == mixed.lower()
    assert address_topic(mixed) == "0x" + "0" * 24 + mixed[2:].lower()
    assert to_quantity(0) == "0x0"
    assert to_quantity(255) == "0xff"
    for bad in (
        "",
        "0x",
        "a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
        "0x" + "g" * 40,
        "0x" + "a" * 39,
    ):
        with pytest.raises(ValueError, match="address"):
            normalize_address(bad)


# ============================================================================ transfers


async def test_transfers_are_filtered_by_token_and_recipient(
    chain: FakeChain, reader: JsonRpcChainReader
) -> None:
    first = chain.transfer(USDC, PAYER, WALLET, 25_000_000)
    chain.transfer(USDC, PAYER, SOMEONE, 1_000_000)  # someone else's deposit
    chain.transfer(OTHER_TOKEN, PAYER, WALLET, 7)  # another token to us
    chain.emit(USDC, [APPROVAL_TOPIC, address_topic(PAYER), address_topic(WALLET)], uint256(5))
    # ERC-721 style Transfer (tokenId indexed: four topics) from the same address: skipped
    chain.emit(
        USDC, [TRANSFER_TOPIC, address_topic(PAYER), address_topic(WALLET), "0x" + "00" * 31 + "07"]
    )
    chain.mine()
    chain.mine(5)
    second = chain.transfer(USDC, SOMEONE, WALLET, 1)
    chain.mine()

    found = await reader.transfers(USDC, WALLET, 1000, await reader.block_number())

    assert found == [
        TokenTransfer(
            tx_hash=first,
            log_index=0,
            block_number=1001,
            token=USDC,
            sender=PAYER,
            recipient=WALLET,
            amount=25_000_000,
        ),
        TokenTransfer(
            tx_hash=second,
            log_index=0,
            block_number=1007,
            token=USDC,
            sender=SOMEONE,
            recipient=WALLET,
            amount=1,
        ),
    ]
    [params] = chain.calls_to("eth_getLogs")
    assert params == [
        {
            "address": USDC,
            "topics": [TRANSFER_TOPIC, None, address_topic(WALLET)],
            "fromBlock": "0x3e8",
            "toBlock": "0x3ef",
        }
    ]


async def test_mixed_case_addresses_are_accepted(
    chain: FakeChain, reader: JsonRpcChainReader
) -> None:
    chain.transfer(USDC, PAYER, WALLET, 3)
    chain.mine()
    checksummed = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # Base USDC, EIP-55
    found = await reader.transfers(checksummed, "0x" + WALLET[2:].upper(), 1001, 1001)
    assert [t.amount for t in found] == [3]
    assert found[0].token == USDC


async def test_block_range_is_inclusive(chain: FakeChain, reader: JsonRpcChainReader) -> None:
    for amount in (1, 2, 3):
        chain.transfer(USDC, PAYER, WALLET, amount)
        chain.mine()  # blocks 1001, 1002, 1003
    assert [t.amount for t in await reader.transfers(USDC, WALLET, 1002, 1002)] == [2]
    assert [t.amount for t in await reader.transfers(USDC, WALLET, 1001, 1003)] == [1, 2, 3]
    assert await reader.transfers(USDC, WALLET, 1004, 1010) == []


@pytest.mark.parametrize("amount", [0, 1, 10**6, 2**64 + 1, 2**255, 2**256 - 1])
async def test_amount_decoding(chain: FakeChain, reader: JsonRpcChainReader, amount: int) -> None:
    chain.transfer(USDC, PAYER, WALLET, amount)
    chain.mine()
    [transfer] = await reader.transfers(USDC, WALLET, 1001, 1001)
    assert transfer.amount == amount


async def test_several_transfers_in_one_transaction(
    chain: FakeChain, reader: JsonRpcChainReader
) -> None:
    tx = chain.transfer(USDC, PAYER, SOMEONE, 9)
    chain.transfer(USDC, PAYER, WALLET, 10, tx_hash=tx)
    chain.transfer(USDC, PAYER, WALLET, 11, tx_hash=tx)
    chain.mine()
    found = await reader.transfers(USDC, WALLET, 1001, 1001)
    assert [(t.tx_hash, t.log_index, t.amount) for t in found] == [(tx, 1, 10), (tx, 2, 11)]


async def test_long_ranges_are_split_into_chunks() -> None:
    with running_chain(start_block=0, max_block_range=10) as chain:
        for _ in range(9):
            chain.transfer(USDC, PAYER, WALLET, 1)
            chain.mine(11)  # one transfer every 11 blocks
        async with JsonRpcChainReader(chain.url, max_block_range=10, backoff_s=0.0) as reader:
            found = await reader.transfers(USDC, WALLET, 0, chain.head)
        assert [t.block_number for t in found] == [1 + 11 * i for i in range(9)]
        ranges = [
            (int(p[0]["fromBlock"], 16), int(p[0]["toBlock"], 16))
            for p in chain.calls_to("eth_getLogs")
        ]
        assert ranges[0] == (0, 9)
        assert ranges[-1][1] == chain.head
        assert all(b - a + 1 <= 10 for a, b in ranges)
        assert all(nxt[0] == prev[1] + 1 for prev, nxt in itertools.pairwise(ranges))


@pytest.mark.parametrize("error_code", [-32005, -32602, -32603])
async def test_a_refused_range_is_halved(error_code: int) -> None:
    with running_chain(start_block=0, max_block_range=7, range_error_code=error_code) as chain:
        for _ in range(10):
            chain.transfer(USDC, PAYER, WALLET, 5)
            chain.mine(4)
        async with JsonRpcChainReader(chain.url, max_block_range=50, backoff_s=0.0) as reader:
            found = await reader.transfers(USDC, WALLET, 0, chain.head)
        assert [t.block_number for t in found] == [1 + 4 * i for i in range(10)]
        spans = [
            int(p[0]["toBlock"], 16) - int(p[0]["fromBlock"], 16) + 1
            for p in chain.calls_to("eth_getLogs")
        ]
        assert spans[:4] == [41, 20, 10, 5]  # 0..40 refused, then halved until it fits
        assert all(s <= 7 for s in spans[3:])
        assert len(spans) == 3 + 9  # 41 blocks in spans of 5 (the halved span is kept)


async def test_too_many_results_is_halved() -> None:
    with running_chain(start_block=0, max_results=2) as chain:
        for i in range(6):
            chain.transfer(USDC, PAYER, WALLET, i + 1)
            chain.mine(3)
        async with JsonRpcChainReader(chain.url, backoff_s=0.0) as reader:
            found = await reader.transfers(USDC, WALLET, 0, chain.head)
        assert [t.amount for t in found] == [1, 2, 3, 4, 5, 6]


async def test_a_single_block_over_the_limit_is_an_error() -> None:
    with running_chain(start_block=0, max_results=1) as chain:
        chain.transfer(USDC, PAYER, WALLET, 1)
        chain.transfer(USDC, PAYER, WALLET, 2)
        chain.mine()
        async with JsonRpcChainReader(chain.url, backoff_s=0.0) as reader:
            with pytest.raises(ChainError) as caught:
                await reader.transfers(USDC, WALLET, 0, 1)
        assert caught.value.rpc_code == -32005
        assert caught.value.processor == "chain"
        assert caught.value.range_limited


async def test_removed_logs_are_skipped(chain: FakeChain, reader: JsonRpcChainReader) -> None:
    kept = chain.transfer(USDC, PAYER, WALLET, 1)
    chain.mine()
    reorged = chain.transfer(USDC, PAYER, WALLET, 2)
    chain.mine(2)
    assert chain.reorg(2, requeue=True) == [reorged]
    raw = rpc(
        chain.url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_getLogs",
            "params": [{"fromBlock": "0x3e8", "address": USDC}],
        },
    ).json()["result"]
    assert [entry["removed"] for entry in raw] == [False, True]  # the fake shows the removal

    found = await reader.transfers(USDC, WALLET, 1000, chain.head)
    assert [t.tx_hash for t in found] == [kept]

    chain.mine()  # the re-queued transaction lands in a later block
    found = await reader.transfers(USDC, WALLET, 1000, chain.head)
    assert [(t.tx_hash, t.block_number) for t in found] == [(kept, 1001), (reorged, 1004)]


# ============================================================================ errors


async def test_rpc_error_is_a_chain_error(chain: FakeChain, reader: JsonRpcChainReader) -> None:
    chain.fail_next(1, "rpc_error")
    with pytest.raises(ChainError) as caught:
        await reader.block_number()
    assert caught.value.rpc_code == -32603
    assert caught.value.code == "-32603"
    assert caught.value.retryable  # internal error: the caller may try again later
    assert len(chain.requests) == 1  # not retried here
    assert await reader.block_number() == 1000


async def test_invalid_params_are_not_retried(chain: FakeChain, reader: JsonRpcChainReader) -> None:
    with pytest.raises(ChainError) as caught:
        await reader.call("eth_getBlockByNumber", ["0x01", False])  # leading zero
    assert caught.value.rpc_code == -32602
    assert not caught.value.retryable
    assert not caught.value.range_limited


@pytest.mark.parametrize("kind", ["http500", "http503", "http429", "drop", "rate_limited"])
async def test_transient_failures_are_retried(
    chain: FakeChain, reader: JsonRpcChainReader, kind: str
) -> None:
    chain.fail_next(2, kind)
    assert await reader.chain_id() == 8453
    assert len(chain.requests) == 3


async def test_persistent_failure_is_unavailable(chain: FakeChain) -> None:
    chain.fail_next(10, "http500")
    async with JsonRpcChainReader(chain.url, retries=2, backoff_s=0.0) as reader:
        with pytest.raises(PaymentUnavailableError) as caught:
            await reader.block_number()
    assert caught.value.retryable
    assert caught.value.status == 500
    assert len(chain.requests) == 3


async def test_persistent_rate_limit_is_unavailable(chain: FakeChain) -> None:
    chain.fail_next(10, "rate_limited", method="eth_getLogs")
    async with JsonRpcChainReader(chain.url, retries=1, backoff_s=0.0) as reader:
        with pytest.raises(PaymentUnavailableError) as caught:
            await reader.transfers(USDC, WALLET, 990, 1000)
    assert caught.value.code == "rate_limited"
    assert len(chain.calls_to("eth_getLogs")) == 2  # a rate limit is not a range error


async def test_dead_url_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v3/secret-project-key"
    async with JsonRpcChainReader(url, retries=1, backoff_s=0.0, timeout=2.0) as reader:
        with pytest.raises(PaymentUnavailableError) as caught:
            await reader.chain_id()
        assert "secret-project-key" not in repr(reader)
    assert "secret-project-key" not in str(caught.value)


async def test_http_401_is_an_auth_error() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(401, text="invalid key"))
    async with JsonRpcChainReader("https://rpc.example/key", transport=transport) as reader:
        with pytest.raises(PaymentAuthError):
            await reader.chain_id()


async def test_non_json_rpc_answers_are_chain_errors() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 999, "result": "0x1"})

    async with JsonRpcChainReader(
        "https://rpc.example", transport=httpx.MockTransport(answer)
    ) as reader:
        with pytest.raises(ChainError) as caught:
            await reader.chain_id()  # wrong id
    assert caught.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("token", "recipient", "first", "last"),
    [
        ("0x1234", WALLET, 0, 1),
        (USDC, "not an address", 0, 1),
        (USDC, WALLET[2:], 0, 1),
        (USDC, WALLET, -1, 1),
        (USDC, WALLET, 5, 4),
        (USDC, WALLET, True, 4),
    ],
)
async def test_bad_input_is_a_value_error(
    chain: FakeChain, reader: JsonRpcChainReader, token: str, recipient: str, first: int, last: int
) -> None:
    with pytest.raises(ValueError, match=r"address|block"):
        await reader.transfers(token, recipient, first, last)
    assert chain.requests == []


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="URL"):
        JsonRpcChainReader("ftp://node.example")
    with pytest.raises(ValueError, match="max_block_range"):
        JsonRpcChainReader("https://node.example", max_block_range=0)


# ============================================================================ the fake itself


def test_fake_answers_json_rpc_2(chain: FakeChain) -> None:
    single = rpc(chain.url, {"jsonrpc": "2.0", "id": "a", "method": "eth_chainId", "params": []})
    assert single.status_code == 200
    assert single.json() == {"jsonrpc": "2.0", "id": "a", "result": "0x2105"}

    batch = rpc(
        chain.url,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
            {"jsonrpc": "2.0", "method": "eth_chainId"},  # notification: no answer
            {"jsonrpc": "2.0", "id": 2, "method": "eth_nope", "params": []},
            {"jsonrpc": "1.0", "id": 3, "method": "eth_chainId"},
            7,
            {"jsonrpc": "2.0", "id": 4, "method": "eth_chainId", "params": ["extra"]},
        ],
    ).json()
    assert batch == [
        {"jsonrpc": "2.0", "id": 1, "result": "0x3e8"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {
                "code": -32601,
                "message": "the method eth_nope does not exist/is not available",
            },
        },
        {"jsonrpc": "2.0", "id": 3, "error": {"code": -32600, "message": "invalid request"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}},
        {
            "jsonrpc": "2.0",
            "id": 4,
            "error": {
                "code": -32602,
                "message": "invalid params: too many arguments, want at most 0",
            },
        },
    ]


def test_fake_protocol_errors(chain: FakeChain) -> None:
    with httpx.Client() as client:
        parse = client.post(chain.url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ')
        assert parse.json() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32700, "message": "Parse error"},
        }
        assert client.post(chain.url, json=[]).json()["error"]["code"] == -32600
        assert client.get(chain.url).status_code == 405
        only_notifications = client.post(chain.url, json=[{"jsonrpc": "2.0", "method": "x"}])
        assert only_notifications.content == b""


@pytest.mark.parametrize(
    "params",
    [
        [{"fromBlock": "0x01"}],  # leading zero
        [{"fromBlock": "10"}],  # not hex
        [{"fromBlock": "0x10", "toBlock": "0x5"}],  # reversed
        [{"address": "0x1234"}],
        [{"topics": ["0x1234"]}],
        [{"topics": [None, None, None, None, None]}],
        [{"blockHash": "0x" + "00" * 32, "fromBlock": "0x1"}],
        [],
        ["latest"],
    ],
)
def test_fake_rejects_bad_get_logs_params(chain: FakeChain, params: list[Any]) -> None:
    answer = rpc(chain.url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": params})
    assert answer.json()["error"]["code"] == -32602


def test_fake_filters_like_a_node(chain: FakeChain) -> None:
    a = chain.transfer(USDC, PAYER, WALLET, 1)
    b = chain.transfer(OTHER_TOKEN, SOMEONE, WALLET, 2)
    c = chain.transfer(USDC, SOMEONE, PAYER, 3)
    chain.mine()

    def logs(criteria: dict[str, Any]) -> list[str]:
        payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [criteria]}
        return [entry["transactionHash"] for entry in rpc(chain.url, payload).json()["result"]]

    assert logs({}) == [a, b, c]  # latest block by default
    assert logs({"fromBlock": "earliest", "toBlock": "latest", "address": [USDC]}) == [a, c]
    assert logs({"topics": [None, [address_topic(PAYER), address_topic(SOMEONE)]]}) == [a, b, c]
    assert logs({"topics": [None, address_topic(SOMEONE)]}) == [b, c]
    assert logs({"topics": [[], [], address_topic(WALLET)]}) == [a, b]
    assert logs({"topics": [None, None, None, address_topic(WALLET)]}) == []
    assert logs({"blockHash": chain.block_hash(1001)}) == [a, b, c]
    assert logs({"fromBlock": "0x3e9", "toBlock": "0x3e9", "address": OTHER_TOKEN}) == [b]


def test_fake_receipts_and_blocks(chain: FakeChain) -> None:
    tx = chain.transfer(USDC, PAYER, WALLET, 42)

    def call(method: str, *params: Any) -> Any:
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        return rpc(chain.url, payload).json()["result"]

    assert call("eth_getTransactionReceipt", tx) is None  # still pending
    chain.mine()
    receipt = call("eth_getTransactionReceipt", tx)
    assert receipt["status"] == "0x1"
    assert receipt["blockNumber"] == "0x3e9"
    assert receipt["blockHash"] == chain.block_hash(1001)
    [entry] = receipt["logs"]
    assert entry["data"] == uint256(42)
    assert entry["topics"] == [TRANSFER_TOPIC, address_topic(PAYER), address_topic(WALLET)]

    block = call("eth_getBlockByNumber", "0x3e9", False)
    assert block["transactions"] == [tx]
    assert block["parentHash"] == chain.block_hash(1000)
    assert call("eth_getBlockByNumber", "latest", True)["transactions"][0]["hash"] == tx
    assert call("eth_getBlockByNumber", "0x3ea", False) is None

    chain.reorg(1)
    assert call("eth_getTransactionReceipt", tx) is None
    assert call("eth_getBlockByNumber", "0x3e9", False)["hash"] != receipt["blockHash"]

"""A fake Ethereum node: JSON-RPC 2.0 over HTTP, with an in-memory chain that tests drive.

``FakeChain`` is a plain ASGI app; ``with running_chain() as chain:`` serves it on a loopback
port (uvicorn in a thread, as ``tests/fake_servers/vastai.py``) and ``chain.url`` is the RPC
URL. Every decoded request body is recorded in ``chain.requests`` and every call in
``chain.calls`` (``calls_to("eth_getLogs")`` gives the params of each).

JSON-RPC 2.0 (https://www.jsonrpc.org/specification), as geth answers it over HTTP: ``POST``
only (else 405); always HTTP 200 with ``{"jsonrpc": "2.0", "id": …, "result": …}`` or
``{"jsonrpc": "2.0", "id": …, "error": {"code": …, "message": …}}``; a JSON array is a batch,
answered with an array (an empty batch is one ``-32600``; notifications, requests without
``id``, get no answer, and a batch of only notifications gets an empty 200). Errors: ``-32700``
parse error (id null), ``-32600`` invalid request, ``-32601`` method not found, ``-32602``
invalid params (wrong arity, a quantity with leading zeros, a malformed address or topic,
``fromBlock`` after ``toBlock``), ``-32000`` unknown block (a ``blockHash`` filter).
Quantities are ``0x``-hex without leading zeros; data is ``0x``-hex.

Methods: ``eth_chainId``, ``net_version``, ``eth_blockNumber``, ``eth_getLogs`` (``address`` one
or a list; ``topics`` up to 4 positions, each null = any, a topic, or a list = any of them;
``fromBlock``/``toBlock`` quantities or ``latest``/``safe``/``finalized``/``pending``/
``earliest``, default ``latest``, clamped to the head; or ``blockHash``),
``eth_getTransactionReceipt`` (null while pending or after a reorg) and
``eth_getBlockByNumber`` (minimal block; null past the head).

Provider limits: ``max_block_range`` (a range of more blocks → ``range_error_code``, default
``-32005``, "query exceeds max block range N") and ``max_results`` (more matching logs →
``-32005`` "query returned more than N results. Try with this block range [0x…, 0x…].",
Infura's words, with ``data: {from, to, limit}``).

The chain: block ``start_block`` is the head at first (earlier blocks exist, empty).
``transfer(...)`` and ``emit(...)`` queue a transaction in the *pending* block and return its
hash; ``mine(n)`` seals the pending block as the next block (then adds ``n - 1`` empty ones),
so logs and receipts appear only after ``mine``. ``reorg(depth)`` replaces the last ``depth``
blocks by empty ones with new hashes: their logs stay in the store with ``removed: true`` and
``eth_getLogs`` still returns them (as a filter that saw the reorg would; geth's
``eth_getLogs`` would just omit them), so a reader's ``removed`` handling can be tested; their
receipts become null (``requeue=True`` puts the transactions back in the pending block).

Failure injection, per HTTP request: ``fail_next(n, kind, method=None)`` makes the next ``n``
requests (those calling ``method``, if given) fail: ``http500``/``http503``/``http429`` (plain
text), ``rpc_error`` (``-32603`` internal error for each call), ``rate_limited`` (``-32005``
"daily request count exceeded, request rate limited") or ``drop`` (the connection closes in
the middle of the answer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tests.fake_servers.serving import serve_asgi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TRANSFER_TOPIC: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SERVER_ERROR: Final = -32000
LIMIT_EXCEEDED: Final = -32005
FAILURE_KINDS: Final = frozenset(
    {"http500", "http503", "http429", "rpc_error", "rate_limited", "drop"}
)
BLOCK_TAGS: Final = frozenset({"latest", "safe", "finalized", "pending"})
MAX_UINT256: Final = 2**256 - 1

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_QUANTITY = re.compile(r"0x(0|[1-9a-fA-F][0-9a-fA-F]*)")
_DATA = re.compile(r"0x([0-9a-fA-F]{2})*")


def quantity(number: int) -> str:
    """An int as a JSON-RPC quantity (``0x0``, ``0x1f``)."""
    return hex(number)


def address_topic(address: str) -> str:
    """A 20-byte address as a 32-byte topic."""
    return "0x" + "0" * 24 + address.lower()[2:]


def uint256(amount: int) -> str:
    """An int as one ABI word (``data`` of a Transfer)."""
    return "0x" + format(amount, "064x")


def _digest(text: str) -> str:
    return "0x" + hashlib.sha256(text.encode()).hexdigest()


class RpcError(Exception):
    """A JSON-RPC error object to answer."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_object(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _invalid(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid params: {message}")


@dataclass
class FakeLog:
    address: str
    topics: list[str]
    data: str
    block_number: int
    tx_hash: str
    tx_index: int
    log_index: int
    block_hash: str
    removed: bool = False


@dataclass
class FakeTx:
    tx_hash: str
    sender: str
    to: str
    events: list[tuple[str, list[str], str]]  # (address, topics, data) of each log
    block_number: int | None = None  # None: pending
    tx_index: int = 0
    logs: list[FakeLog] = field(default_factory=list)


@dataclass
class Failure:
    kind: str
    count: int
    method: str | None = None


class _DropConnectionError(Exception):
    """Raised after the response started: uvicorn then closes the connection."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnectionError)


class FakeChain:
    """An in-memory EVM chain behind a JSON-RPC 2.0 endpoint. See the module docstring."""

    def __init__(
        self,
        chain_id: int = 1,
        *,
        start_block: int = 100,
        max_block_range: int | None = None,
        max_results: int | None = None,
        range_error_code: int = LIMIT_EXCEEDED,
        genesis_time: int = 1_700_000_000,
        block_time: int = 12,
    ) -> None:
        self.chain_id = chain_id
        self.head = start_block
        self.max_block_range = max_block_range
        self.max_results = max_results
        self.range_error_code = range_error_code
        self.genesis_time = genesis_time
        self.block_time = block_time
        self.pending: list[FakeTx] = []
        self.txs: dict[str, FakeTx] = {}
        self.logs: list[FakeLog] = []
        self.failures: list[Failure] = []
        self.requests: list[Any] = []  # decoded bodies (raw bytes when not JSON)
        self.calls: list[tuple[str, Any]] = []  # (method, params) of each well-formed call
        self._blocks: dict[int, list[FakeTx]] = {}
        self._generation: dict[int, int] = {}
        self._tx_counter = 0
        self._url: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------ test API

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake chain is not being served")
        return self._url

    def block_hash(self, number: int) -> str:
        generation = self._generation.get(number, 0)
        return _digest(f"block:{self.chain_id}:{number}:{generation}")

    def emit(
        self,
        address: str,
        topics: Sequence[str],
        data: str = "0x",
        *,
        sender: str = "0x" + "ee" * 20,
        tx_hash: str | None = None,
    ) -> str:
        """Queue a log from ``address`` in a pending transaction (a new one unless ``tx_hash``
        names a pending one); returns the transaction hash."""
        if not _ADDRESS.fullmatch(address) or not _ADDRESS.fullmatch(sender):
            raise ValueError("not an address")
        if len(topics) > 4 or not all(_HASH.fullmatch(t) for t in topics):
            raise ValueError("topics: up to 4 32-byte hex strings")
        if not _DATA.fullmatch(data):
            raise ValueError("data must be 0x-hex bytes")
        event = (address.lower(), [t.lower() for t in topics], data.lower())
        with self._lock:
            if tx_hash is not None:
                for tx in self.pending:
                    if tx.tx_hash == tx_hash:
                        tx.events.append(event)
                        return tx_hash
                raise ValueError(f"no pending transaction {tx_hash}")
            self._tx_counter += 1
            new_hash = _digest(f"tx:{self.chain_id}:{self._tx_counter}")
            self.pending.append(FakeTx(new_hash, sender.lower(), address.lower(), [event]))
            return new_hash

    def transfer(
        self, token: str, sender: str, recipient: str, amount: int, *, tx_hash: str | None = None
    ) -> str:
        """Queue an ERC-20 ``Transfer(sender, recipient, amount)`` log of ``token`` in the
        pending block (``tx_hash``: add it to that pending transaction); mined by ``mine``."""
        if not 0 <= amount <= MAX_UINT256:
            raise ValueError("amount must fit a uint256")
        if not _ADDRESS.fullmatch(recipient):
            raise ValueError("not an address")
        topics = [TRANSFER_TOPIC, address_topic(sender), address_topic(recipient)]
        return self.emit(token, topics, uint256(amount), sender=sender, tx_hash=tx_hash)

    def mine(self, n: int = 1) -> int:
        """Seal the pending transactions into the next block, then ``n - 1`` empty blocks;
        returns the new head."""
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            number = self.head + 1
            self._seal(number, self.pending)
            self.pending = []
            self.head += n
            return self.head

    def reorg(self, depth: int, *, requeue: bool = False) -> list[str]:
        """Replace the last ``depth`` blocks by empty ones; returns the hashes of the
        transactions that were in them (see the module docstring)."""
        with self._lock:
            if not 0 < depth <= self.head:
                raise ValueError("depth must be between 1 and the head")
            dropped: list[FakeTx] = []
            for number in range(self.head - depth + 1, self.head + 1):
                self._generation[number] = self._generation.get(number, 0) + 1
                for tx in self._blocks.pop(number, []):
                    for entry in tx.logs:
                        entry.removed = True
                    self.txs.pop(tx.tx_hash, None)
                    dropped.append(tx)
            if requeue:
                for tx in dropped:
                    self.pending.append(FakeTx(tx.tx_hash, tx.sender, tx.to, list(tx.events)))
            return [tx.tx_hash for tx in dropped]

    def fail_next(self, n: int = 1, kind: str = "http500", *, method: str | None = None) -> None:
        """Fail the next ``n`` HTTP requests (calling ``method``, if given) with ``kind``."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        with self._lock:
            self.failures.append(Failure(kind, n, method))

    def calls_to(self, method: str) -> list[Any]:
        with self._lock:
            return [params for name, params in self.calls if name == method]

    # ------------------------------------------------------------------------ chain state

    def _seal(self, number: int, txs: list[FakeTx]) -> None:
        if not txs:
            return
        log_index = 0
        for tx_index, tx in enumerate(txs):
            tx.block_number, tx.tx_index, tx.logs = number, tx_index, []
            for address, topics, data in tx.events:
                entry = FakeLog(
                    address,
                    topics,
                    data,
                    number,
                    tx.tx_hash,
                    tx_index,
                    log_index,
                    self.block_hash(number),
                )
                tx.logs.append(entry)
                self.logs.append(entry)
                log_index += 1
            self.txs[tx.tx_hash] = tx
        self._blocks[number] = list(txs)

    def _log_json(self, entry: FakeLog) -> dict[str, Any]:
        return {
            "address": entry.address,
            "topics": list(entry.topics),
            "data": entry.data,
            "blockNumber": quantity(entry.block_number),
            "blockHash": entry.block_hash,
            "transactionHash": entry.tx_hash,
            "transactionIndex": quantity(entry.tx_index),
            "logIndex": quantity(entry.log_index),
            "removed": entry.removed,
        }

    # ------------------------------------------------------------------------ serving

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve on a free loopback port (uvicorn in a thread); yields the base URL."""
        with serve_asgi(self, name="fake-eth-rpc", host=host, quiet=_QuietDrops()) as url:
            self._url = url
            try:
                yield url
            finally:
                self._url = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if str(scope["method"]).upper() != "POST":
            await _send(send, 405, b"method not allowed", "text/plain")
            return
        status, payload, content_type = self.handle(body)
        if status == 0:  # drop
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            raise _DropConnectionError
        await _send(send, status, payload, content_type)

    def handle(self, body: bytes) -> tuple[int, bytes, str]:
        """One HTTP body → (status, body, content type); status 0: drop the connection."""
        with self._lock:
            try:
                request: Any = json.loads(body)
            except ValueError:
                self.requests.append(body)
                return _json(_error_response(None, RpcError(PARSE_ERROR, "Parse error")))
            self.requests.append(request)
            failure = self._take_failure(request)
            if failure is not None and failure.kind.startswith("http"):
                status = int(failure.kind[4:])
                return status, f"{status} error".encode(), "text/plain"
            if failure is not None and failure.kind == "drop":
                return 0, b"", ""
            forced = None
            if failure is not None and failure.kind == "rpc_error":
                forced = RpcError(INTERNAL_ERROR, "internal error")
            elif failure is not None:
                forced = RpcError(
                    LIMIT_EXCEEDED, "daily request count exceeded, request rate limited"
                )
            if isinstance(request, list):
                if not request:
                    return _json(_error_response(None, RpcError(INVALID_REQUEST, "empty batch")))
                answers = [self._answer(item, forced) for item in request]
                replies = [a for a in answers if a is not None]
                return (200, b"", "application/json") if not replies else _json(replies)
            answer = self._answer(request, forced)
            return (200, b"", "application/json") if answer is None else _json(answer)

    def _take_failure(self, request: Any) -> Failure | None:
        items = request if isinstance(request, list) else [request]
        methods = {i.get("method") for i in items if isinstance(i, dict)}
        for failure in self.failures:
            if failure.method is None or failure.method in methods:
                failure.count -= 1
                if failure.count <= 0:
                    self.failures.remove(failure)
                return failure
        return None

    def _answer(self, request: Any, forced: RpcError | None) -> dict[str, Any] | None:
        """One request object → its response object (``None`` for a notification)."""
        if not isinstance(request, dict):
            return _error_response(None, RpcError(INVALID_REQUEST, "invalid request"))
        has_id = "id" in request
        request_id = request.get("id")
        id_ok = request_id is None or (
            isinstance(request_id, str | int | float) and not isinstance(request_id, bool)
        )
        method, params = request.get("method"), request.get("params", [])
        if (
            request.get("jsonrpc") != "2.0"
            or not id_ok
            or not isinstance(method, str)
            or not isinstance(params, list | dict)
        ):
            error = RpcError(INVALID_REQUEST, "invalid request")
            return _error_response(request_id if id_ok else None, error)
        self.calls.append((method, params))
        try:
            if forced is not None:
                raise forced
            result = self._dispatch(method, params)
        except RpcError as exc:
            return _error_response(request_id, exc) if has_id else None
        return {"jsonrpc": "2.0", "id": request_id, "result": result} if has_id else None

    def _dispatch(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        handlers: dict[str, tuple[int, int, Callable[[list[Any]], Any]]] = {
            "eth_chainId": (0, 0, lambda _p: quantity(self.chain_id)),
            "net_version": (0, 0, lambda _p: str(self.chain_id)),
            "eth_blockNumber": (0, 0, lambda _p: quantity(self.head)),
            "eth_getLogs": (1, 1, lambda p: self._get_logs(p[0])),
            "eth_getTransactionReceipt": (1, 1, lambda p: self._receipt(p[0])),
            "eth_getBlockByNumber": (2, 2, lambda p: self._block(p[0], p[1])),
        }
        if method not in handlers:
            raise RpcError(METHOD_NOT_FOUND, f"the method {method} does not exist/is not available")
        least, most, handler = handlers[method]
        if not isinstance(params, list):
            raise _invalid("non-array args")
        if len(params) < least:
            raise _invalid(f"missing value for required argument {len(params)}")
        if len(params) > most:
            raise _invalid(f"too many arguments, want at most {most}")
        return handler(params)

    # ------------------------------------------------------------------------ methods

    def _block_param(self, value: Any, default: int | None = None) -> int:
        if value is None and default is not None:
            return default
        if value == "earliest":
            return 0
        if value in BLOCK_TAGS:
            return self.head
        if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
            raise _invalid(f"invalid block number {value!r}")
        return int(value, 16)

    def _get_logs(self, criteria: Any) -> list[dict[str, Any]]:
        if not isinstance(criteria, dict):
            raise _invalid("filter must be an object")
        addresses = self._addresses(criteria.get("address"))
        topics = self._topics(criteria.get("topics"))
        block_hash = criteria.get("blockHash")
        if block_hash is not None:
            if "fromBlock" in criteria or "toBlock" in criteria:
                raise _invalid(
                    "cannot specify both BlockHash and FromBlock/ToBlock, choose one or the other"
                )
            if not isinstance(block_hash, str) or not _HASH.fullmatch(block_hash):
                raise _invalid("invalid blockHash")
            matching = [n for n in range(self.head + 1) if self.block_hash(n) == block_hash.lower()]
            if not matching:
                raise RpcError(SERVER_ERROR, "unknown block")
            first = last = matching[0]
        else:
            first = self._block_param(criteria.get("fromBlock"), self.head)
            last = self._block_param(criteria.get("toBlock"), self.head)
            if first > last:
                raise _invalid("invalid block range params")
            if self.max_block_range is not None and last - first + 1 > self.max_block_range:
                raise RpcError(
                    self.range_error_code, f"query exceeds max block range {self.max_block_range}"
                )
        last = min(last, self.head)
        found = [
            entry
            for entry in self.logs
            if first <= entry.block_number <= last
            and (addresses is None or entry.address in addresses)
            and _topics_match(entry.topics, topics)
        ]
        found.sort(key=lambda e: (e.block_number, e.log_index))
        if self.max_results is not None and len(found) > self.max_results:
            cut = found[self.max_results].block_number - 1
            suggested = max(first, cut)
            raise RpcError(
                LIMIT_EXCEEDED,
                f"query returned more than {self.max_results} results. "
                f"Try with this block range [{quantity(first)}, {quantity(suggested)}].",
                {"from": quantity(first), "to": quantity(suggested), "limit": self.max_results},
            )
        return [self._log_json(e) for e in found]

    @staticmethod
    def _addresses(value: Any) -> set[str] | None:
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(a, str) and _ADDRESS.fullmatch(a) for a in items):
            raise _invalid("invalid address")
        return {a.lower() for a in items} if items else None

    @staticmethod
    def _topics(value: Any) -> list[set[str] | None]:
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > 4:
            raise _invalid("topics must be an array of at most 4 positions")
        positions: list[set[str] | None] = []
        for position in value:
            options = position if isinstance(position, list) else [position]
            if position is None or options == []:
                positions.append(None)
                continue
            if not all(isinstance(t, str) and _HASH.fullmatch(t) for t in options):
                raise _invalid("invalid topic")
            positions.append({t.lower() for t in options})
        return positions

    def _receipt(self, tx_hash: Any) -> dict[str, Any] | None:
        if not isinstance(tx_hash, str) or not _HASH.fullmatch(tx_hash):
            raise _invalid("invalid transaction hash")
        tx = self.txs.get(tx_hash.lower())
        if tx is None or tx.block_number is None:
            return None
        return {
            "transactionHash": tx.tx_hash,
            "transactionIndex": quantity(tx.tx_index),
            "blockHash": self.block_hash(tx.block_number),
            "blockNumber": quantity(tx.block_number),
            "from": tx.sender,
            "to": tx.to,
            "cumulativeGasUsed": quantity(65_000 * (tx.tx_index + 1)),
            "gasUsed": quantity(65_000),
            "effectiveGasPrice": quantity(1_000_000_000),
            "contractAddress": None,
            "logs": [self._log_json(e) for e in tx.logs],
            "logsBloom": "0x" + "0" * 512,
            "status": "0x1",
            "type": "0x2",
        }

    def _block(self, tag: Any, full: Any) -> dict[str, Any] | None:
        if not isinstance(full, bool):
            raise _invalid("second argument must be a boolean")
        number = self._block_param(tag)
        if number > self.head:
            return None
        txs = self._blocks.get(number, [])
        transactions: list[Any] = [
            {
                "hash": tx.tx_hash,
                "from": tx.sender,
                "to": tx.to,
                "blockNumber": quantity(number),
                "transactionIndex": quantity(tx.tx_index),
                "input": "0x",
                "value": "0x0",
            }
            if full
            else tx.tx_hash
            for tx in txs
        ]
        return {
            "number": quantity(number),
            "hash": self.block_hash(number),
            "parentHash": self.block_hash(number - 1) if number else "0x" + "0" * 64,
            "timestamp": quantity(self.genesis_time + number * self.block_time),
            "gasLimit": quantity(30_000_000),
            "gasUsed": quantity(65_000 * len(txs)),
            "baseFeePerGas": quantity(1_000_000_000),
            "miner": "0x" + "00" * 20,
            "transactions": transactions,
            "uncles": [],
        }


def _topics_match(topics: list[str], wanted: list[set[str] | None]) -> bool:
    if len(wanted) > len(topics) and any(w is not None for w in wanted[len(topics) :]):
        return False
    return all(w is None or topics[i] in w for i, w in enumerate(wanted) if i < len(topics))


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.as_object()}


def _json(payload: Any) -> tuple[int, bytes, str]:
    return 200, json.dumps(payload).encode(), "application/json"


async def _send(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def running_chain(chain_id: int = 1, **options: Any) -> Iterator[FakeChain]:
    """A ``FakeChain(chain_id, **options)`` served on a loopback port (``chain.url``)."""
    chain = FakeChain(chain_id, **options)
    with chain.serve():
        yield chain


__all__ = [
    "TRANSFER_TOPIC",
    "FakeChain",
    "FakeLog",
    "FakeTx",
    "RpcError",
    "address_topic",
    "quantity",
    "running_chain",
    "uint256",
]

"""Read ERC-20 ``Transfer`` logs (USDC deposits) over standard Ethereum JSON-RPC 2.0.

``JsonRpcChainReader`` implements ``domain.ports.payments.ChainReader`` with three methods of
the execution API (https://ethereum.github.io/execution-apis/): ``eth_chainId``,
``eth_blockNumber`` and ``eth_getLogs``. Block numbers travel as hex quantities (``"0x1f"``,
no leading zeros); addresses are compared lower-case.

``transfers`` asks for ``address = token`` and ``topics = [TRANSFER_TOPIC, null,
address_topic(recipient)]`` (any sender, this recipient), in chunks of at most
``max_block_range`` blocks. Providers cap ``eth_getLogs`` by block range or by result count and
say so with an error object (Infura ``-32005 "query returned more than 10000 results"``, others
``-32602``/``-32603`` "query exceeds max block range 1000", "range is too large", "Log response
size exceeded"): on such an error the chunk is halved and the same blocks are asked again,
down to a single block (later chunks keep the smaller size). Logs with ``removed: true``
(reorged away), pending logs, logs that are not a three-topic ERC-20 ``Transfer`` (an ERC-721
``Transfer`` has four) and logs that do not match the filter (a node that ignored it) are
skipped; a matching log whose ``data`` is not one uint256 is a ``ChainError``.

Errors: a JSON-RPC error object is ``ChainError`` (``code`` = the JSON-RPC code as text; ``-32603``
internal errors are marked retryable for the caller, nothing is retried here). Network errors,
timeouts, HTTP 429/5xx and JSON-RPC rate-limit errors are retried ``retries`` times with
exponential backoff and jitter, then ``PaymentUnavailableError``. HTTP 401/403 is
``PaymentAuthError`` (a provider key in the URL is wrong). Bad caller input (an address that is
not ``0x`` + 40 hex digits, a negative or reversed block range) is ``ValueError``.

The RPC URL often embeds a provider key: it never appears in a ``repr``, an error or a log line.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import TYPE_CHECKING, Any, Final

import httpx

from domain.ports.payments import (
    PaymentAuthError,
    PaymentError,
    PaymentUnavailableError,
    TokenTransfer,
)
from infrastructure.http_retry import Backoff, Retry, RetryPolicy, retry_after_seconds

if TYPE_CHECKING:
    from domain.ports.payments import ChainReader

log = logging.getLogger(__name__)

PROCESSOR: Final = "chain"
USER_AGENT: Final = "aiserve-gpuproxy/0.1 (json-rpc chain reader)"

# keccak256("Transfer(address,address,uint256)"): topic 0 of every ERC-20 (and ERC-721)
# Transfer log. Hard-coded because the standard library has no keccak (hashlib's sha3_256 is
# the final FIPS-202 SHA-3, whose padding differs from Ethereum's keccak256).
TRANSFER_TOPIC: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

USDC_DECIMALS: Final = 6  # 1 USDC = 10**6 base units = 1 micro-USD per unit

# Network name → EIP-155 chain id.
SUPPORTED_NETWORKS: Final[dict[str, int]] = {
    "ethereum": 1,
    "optimism": 10,
    "polygon": 137,
    "base": 8453,
    "arbitrum": 42161,
}

# Circle's native USDC per network (not bridged USDC.e), lower-case. Money is credited on the
# strength of these: verify them against Circle's list
# (https://developers.circle.com/stablecoins/usdc-contract-addresses) before enabling a network.
USDC_CONTRACTS: Final[dict[str, str]] = {
    "ethereum": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
    "optimism": "0x0b2c639c533813f4aa9d7837caf62653d097ff85",
    "polygon": "0x3c499c542cef5e3811e1192ce70d8cc03d5c3359",
    "base": "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
    "arbitrum": "0xaf88d065e77c8cc2239327c5edb3a432268e5831",
}

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
BACKOFF_MAX_S: Final = 8.0

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_RANGE_WORDS = (
    "range",
    "limit",
    "more than",
    "too many",
    "too large",
    "exceed",
    "response size",
)
_RATE_WORDS = ("rate limit", "rate-limit", "too many requests", "request rate", "capacity")


class ChainError(PaymentError):
    """The node answered a JSON-RPC error object (or something that is not JSON-RPC).

    ``rpc_code``: the JSON-RPC error code (``None`` for a malformed answer); ``code`` is the
    same as text (``"invalid_response"`` when there is none); ``data``: the error's ``data``.
    """

    def __init__(
        self, message: str, *, rpc_code: int | None = None, status: int = 0, data: Any = None
    ) -> None:
        code = str(rpc_code) if rpc_code is not None else "invalid_response"
        super().__init__(PROCESSOR, message, code=code, status=status)
        self.rpc_code = rpc_code
        self.data = data
        self.retryable = rpc_code == -32603  # internal error: the same call may work later

    @property
    def range_limited(self) -> bool:
        """The provider refused the block range or the result size (ask for fewer blocks)."""
        if self.rpc_code is None or _is_rate_limited(self.rpc_code, self.message):
            return False
        text = self.message.lower()
        return self.rpc_code == -32005 or any(word in text for word in _RANGE_WORDS)


def _is_rate_limited(code: int, message: str) -> bool:
    text = message.lower()
    return code == 429 or any(word in text for word in _RATE_WORDS)


def normalize_address(text: str) -> str:
    """``0x`` + 40 hex digits → lower-case; anything else is ``ValueError``.

    Any letter case is accepted: an EIP-55 mixed-case checksum is not verified, because that
    needs keccak256, which the standard library lacks.
    """
    if not isinstance(text, str):
        raise ValueError(f"not an address: {text!r}")
    candidate = text.strip()
    if not _ADDRESS.fullmatch(candidate):
        raise ValueError(f"not an address (0x + 40 hex digits): {text!r}")
    return candidate.lower()


def address_topic(address: str) -> str:
    """An address as a 32-byte log topic (left-padded with zeros), lower-case."""
    return "0x" + "0" * 24 + normalize_address(address)[2:]


def to_quantity(number: int) -> str:
    """A non-negative int as a JSON-RPC hex quantity (``0`` → ``"0x0"``, no leading zeros)."""
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"not a quantity: {number!r}")
    return hex(number)


def _quantity(value: Any, what: str) -> int:
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise ChainError(f"{what}: not a hex quantity: {str(value)[:80]!r}")
    return int(value, 16)


def _block(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a block number (int >= 0), not {value!r}")
    return value


def _decode_transfer(
    raw: Any, token: str, recipient: str, first: int, last: int
) -> TokenTransfer | None:
    """One ``eth_getLogs`` entry → a transfer, or ``None`` for a log to skip (see module doc)."""
    if not isinstance(raw, dict):
        raise ChainError("eth_getLogs: a log is not an object")
    if raw.get("removed") is True or raw.get("blockNumber") is None:
        return None
    topics = raw.get("topics")
    if not isinstance(topics, list) or len(topics) != 3:
        return None  # not an ERC-20 Transfer (ERC-721 has 4 topics)
    if not all(isinstance(t, str) and _HASH.fullmatch(t) for t in topics):
        raise ChainError("eth_getLogs: malformed topics")
    address = str(raw.get("address") or "").lower()
    block_number = _quantity(raw.get("blockNumber"), "blockNumber")
    if (
        topics[0].lower() != TRANSFER_TOPIC
        or address != token
        or topics[2].lower() != address_topic(recipient)
        or not first <= block_number <= last
    ):
        log.warning("eth_getLogs returned a log outside the filter; skipped")
        return None
    data = raw.get("data")
    if not isinstance(data, str) or not _HASH.fullmatch(data):
        raise ChainError("eth_getLogs: Transfer data is not one uint256")
    tx_hash = raw.get("transactionHash")
    if not isinstance(tx_hash, str) or not _HASH.fullmatch(tx_hash):
        raise ChainError("eth_getLogs: malformed transactionHash")
    return TokenTransfer(
        tx_hash=tx_hash.lower(),
        log_index=_quantity(raw.get("logIndex"), "logIndex"),
        block_number=block_number,
        token=token,
        sender="0x" + topics[1][-40:].lower(),
        recipient="0x" + topics[2][-40:].lower(),
        amount=int(data, 16),
    )


class JsonRpcChainReader:
    """``ChainReader`` over one JSON-RPC endpoint. See the module docstring."""

    def __init__(
        self,
        rpc_url: str,
        *,
        timeout: float = 10.0,
        max_block_range: int = 2000,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``retries``: extra tries after the first (so ``retries + 1`` in all); the wait before
        try ``n + 1`` is ``backoff_s * 2 ** (n - 1)`` (at most 8 s) scaled by 0.5-1.0 at random.
        ``transport``: for tests (e.g. ``httpx.MockTransport``).
        """
        url = httpx.URL(rpc_url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("rpc_url must be an http(s) URL")
        if max_block_range < 1:
            raise ValueError("max_block_range must be at least 1")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._url = url
        self._max_block_range = max_block_range
        self._retries = retries
        self._retry = RetryPolicy(
            retries + 1,
            Backoff(backoff_s, BACKOFF_MAX_S, retry_after_cap_s=BACKOFF_MAX_S),
            retry_statuses=RETRY_STATUSES,
        )
        self._ids = itertools.count(1)
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    def __repr__(self) -> str:
        return f"JsonRpcChainReader(host={self._url.host!r})"

    async def __aenter__(self) -> JsonRpcChainReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def chain_id(self) -> int:
        """``eth_chainId`` (EIP-155 id: 1 for Ethereum mainnet, 8453 for Base …)."""
        return _quantity(await self.call("eth_chainId", []), "eth_chainId")

    async def block_number(self) -> int:
        """``eth_blockNumber``: the latest block the node has."""
        return _quantity(await self.call("eth_blockNumber", []), "eth_blockNumber")

    async def transfers(
        self, token: str, recipient: str, from_block: int, to_block: int
    ) -> list[TokenTransfer]:
        """``Transfer`` logs of ``token`` to ``recipient`` in ``[from_block, to_block]``.

        Sorted by (block, log index), each (tx hash, log index) once.
        """
        token_address = normalize_address(token)
        recipient_address = normalize_address(recipient)
        first, last = _block(from_block, "from_block"), _block(to_block, "to_block")
        if first > last:
            raise ValueError(f"from_block {first} is after to_block {last}")
        topics = [TRANSFER_TOPIC, None, address_topic(recipient_address)]
        found: dict[tuple[str, int], TokenTransfer] = {}
        span = self._max_block_range
        start = first
        while start <= last:
            end = min(last, start + span - 1)
            log_filter = {
                "address": token_address,
                "topics": topics,
                "fromBlock": to_quantity(start),
                "toBlock": to_quantity(end),
            }
            try:
                logs = await self.call("eth_getLogs", [log_filter])
            except ChainError as exc:
                if not exc.range_limited or end == start:
                    raise
                span = max(1, (end - start + 1) // 2)
                log.info("eth_getLogs range refused (%s); asking %d blocks at a time", exc, span)
                continue
            if not isinstance(logs, list):
                raise ChainError("eth_getLogs: result is not a list")
            for raw in logs:
                transfer = _decode_transfer(raw, token_address, recipient_address, start, end)
                if transfer is not None:
                    found[(transfer.tx_hash, transfer.log_index)] = transfer
            start = end + 1
        return sorted(found.values(), key=lambda t: (t.block_number, t.log_index))

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call with bounded retries; returns its ``result``."""
        request_id = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}

        async def one_try(_: int) -> Any:
            return await self._attempt(method, payload, request_id)

        def waiting(attempt: int, retry: Retry, _: float) -> None:
            log.warning(
                "%s: %s; try %d of %d", method, retry.reason, attempt + 1, self._retries + 1
            )

        return await self._retry.run(one_try, on_retry=waiting)

    async def _attempt(self, method: str, payload: dict[str, Any], request_id: int) -> Any:
        """One try: the ``result``, or a ``Retry`` saying why it may be tried again."""
        try:
            response = await self._client.post(self._url, json=payload)
        except self._retry.retry_exceptions as exc:
            return _transient(method, type(exc).__name__, "unavailable")
        status = response.status_code
        if self._retry.retries_status(status):
            code = "rate_limited" if status == 429 else "unavailable"
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            return _transient(method, f"HTTP {status}", code, status, retry_after)
        if status in {401, 403}:
            raise PaymentAuthError(PROCESSOR, f"{method}: HTTP {status}", status=status)
        try:
            body = response.json()
        except ValueError:
            raise ChainError(f"{method}: HTTP {status}, not JSON", status=status) from None
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            raise ChainError(f"{method}: not a JSON-RPC 2.0 response", status=status)
        error = body.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise ChainError(f"{method}: malformed error object", status=status)
            rpc_code, message = int(error["code"]), str(error.get("message") or "")[:300]
            if _is_rate_limited(rpc_code, message):
                return _transient(method, f"rate limited ({rpc_code})", "rate_limited", status)
            raise ChainError(
                f"{method}: {message} ({rpc_code})",
                rpc_code=rpc_code,
                status=status,
                data=error.get("data"),
            )
        if status != 200 or body.get("id") != request_id or "result" not in body:
            raise ChainError(f"{method}: unexpected answer (HTTP {status})", status=status)
        return body["result"]


def _transient(
    method: str, reason: str, code: str, status: int = 0, retry_after: float | None = None
) -> Retry:
    """A try that may be repeated; ``PaymentUnavailableError`` once none is left."""
    return Retry(
        reason,
        lambda attempts: PaymentUnavailableError(
            PROCESSOR, f"{method}: {reason} after {attempts} attempts", code=code, status=status
        ),
        retry_after=retry_after,
    )


if TYPE_CHECKING:

    def _conforms(reader: JsonRpcChainReader) -> ChainReader:
        return reader

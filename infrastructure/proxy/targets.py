"""Where the proxy may send a request: one of the caller's own running instances, nowhere else.

The proxy turns a user's request into an outgoing connection from inside our network, so every
destination is checked here first (no server-side request forgery):

- **Scheme**: ``http`` or ``https`` only; no userinfo (``http://a@b/``); ASCII only, no spaces,
  control characters or backslashes anywhere in the URL (parsers disagree about those).
- **Host forms**: IP literals must be canonical. A dotted quad, or an IPv6 literal in brackets
  (IPv4-mapped IPv6 such as ``[::ffff:127.0.0.1]`` counts as the IPv4 address it maps). A host
  whose last label is a number (``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``, ``127.1``,
  ``127.0.0.1.``) is what browsers and some libraries read as an IPv4 address in a legacy form:
  such hosts are refused outright, never "normalised into" a match. DNS names are compared
  in lower case without a trailing dot; ``%``, zone ids and non-ASCII names are refused.
- **Match**: the URL's host:port must be one of the caller's endpoints (``Endpoint``, built from
  that user's running instances only; another user's instance is simply not in the list). A
  DNS name is resolved and *every* address it resolves to must be an address of the matched
  endpoint (an endpoint reported as a DNS name is resolved too); one bad address refuses all.
- **DNS pinning**: ``check`` returns a ``Target`` whose ``url`` has the host replaced by the
  address that was checked, plus the ``host_header`` to send (the original ``host[:port]``).
  The forwarder connects to that address, so a name whose answer changes between the check and
  the connect (DNS rebinding) cannot steer the connection elsewhere. For ``https`` the
  forwarder uses the name from ``host_header`` for SNI and certificate checks.
- **Address classes**: even a matching address is refused when it is loopback, private
  (RFC 1918), carrier-grade NAT (100.64/10), IPv6 unique-local (fc00::/7) or site-local
  (fec0::/10), reserved, documentation/benchmark ranges or otherwise not globally routable,
  unless the guard has ``allow_private=True`` (instances on a private network we trust) or the
  endpoint's provider is ``"sandbox"`` and the address is loopback (sandbox instances are
  local servers) or, with ``sandbox_private=True`` (the sandbox is advertised off loopback:
  replicas reach each other's instances on the stack's private network, docs/adr/0028), a
  private (RFC 1918) or unique-local address; never for another provider. Some addresses
  are **never** allowed, whatever the settings: unspecified (``0.0.0.0``, ``::``), multicast,
  broadcast, link-local (169.254/16 and fe80::/10, where cloud metadata lives:
  169.254.169.254 and friends) and the other well-known metadata addresses
  (``fd00:ec2::254``, ``100.100.100.200``, ``192.0.0.192``). IPv6 addresses that embed an IPv4
  address (6to4, NAT64, Teredo) are judged by the embedded address too.

``endpoint_url`` builds the URL for the raw route (``/api/v1/gpu/proxy/{instance_id}/{path}``):
the path is always appended under the endpoint's own host; dot segments (also percent-encoded,
at any depth), backslashes and control characters are refused, empty segments collapse, and
each segment is percent-encoded so nothing in it (``@``, ``//``, ``?``, ``#``) can change the
host. ``TargetGuard.check_endpoint`` does that and then ``check`` (address classes, DNS
pinning) in one call.

Refusals raise ``TargetRefusedError`` (403, "Target refused") whose ``reason`` says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from domain.errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

SANDBOX_PROVIDER = "sandbox"
DEFAULT_PORTS = {"http": 80, "https": 443}
NOT_YOURS = "target is not one of your running instances"

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_NUMERIC_LABEL = re.compile(r"\d+|0x[0-9a-f]*")  # WHATWG: such a last label makes it an IPv4
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_URL_FORBIDDEN = re.compile(r"[^\x21-\x7e]|\\")  # non-ASCII, space, control chars, backslash
_PORT = re.compile(r"\d{1,5}")
_PATH_SAFE = "-._~!$&'()*+,;=:"  # RFC 3986 pchar without "@" (and "%": always encoded)
_QUERY_SAFE = "-._~!$&'()*+,;=:@/?%[]"

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_ULA = ipaddress.IPv6Network("fc00::/7")
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (classic)
    }
)


class TargetRefusedError(DomainError):
    """The proxy will not send this request there; ``reason`` says why."""

    status = 403
    title = "Target refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, reason=reason)
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    """One running instance of the caller, as the marketplace reports it."""

    instance_id: str
    provider: str
    host: str  # usually an IP literal; may be a DNS name; sandbox instances are 127.0.0.1
    port: int


@dataclass(frozen=True)
class Target:
    """Where to send: ``url`` has its host pinned to ``address``; send ``Host: host_header``."""

    endpoint: Endpoint
    url: str
    host_header: str
    address: str


# ------------------------------------------------------------------------------ addresses


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _first(checks: Iterable[tuple[bool, str]]) -> str | None:
    return next((kind for hit, kind in checks if hit), None)


def _never_kind(address: IPAddress) -> str | None:
    """The kind of address that no setting allows, or None."""
    kind = _first(
        (
            (address in _METADATA, "cloud metadata"),
            (address.is_unspecified, "unspecified"),
            (address.is_multicast, "multicast"),
            (address == _BROADCAST, "broadcast"),
            (address.is_link_local, "link-local"),
        )
    )
    if kind is None and isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _never_kind(embedded)
    return kind


def _private_kind(address: IPAddress) -> str | None:
    """The kind of non-public address (allowed only by ``allow_private``/sandbox), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        special = _first(((address in _CGNAT, "carrier-grade NAT"),))
    else:
        embedded = _embedded_ipv4(address)
        special = _first(
            (
                (address in _ULA, "unique-local"),
                (address.is_site_local, "site-local"),
            )
        ) or (_private_kind(embedded) if embedded is not None else None)
    return _first(
        (
            (address.is_loopback, "loopback"),
            (special is not None, special or ""),
            (address.is_private, "private"),
            (address.is_reserved, "reserved"),
            (not address.is_global, "non-global"),
        )
    )


_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


def _site_network(address: IPAddress) -> bool:
    """RFC 1918 or IPv6 unique-local: where a stack's replicas reach each other."""
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in _RFC1918)
    return address in _ULA


def advertised_off_loopback(host: str) -> bool:
    """Whether sandbox instances advertised as ``host`` are reached off loopback, so the guard
    must let sandbox endpoints be on a private network (``sandbox_private``)."""
    if host.lower().rstrip(".") == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name: another replica on the stack's network


def address_refusal(
    address: IPAddress, endpoint: Endpoint, *, allow_private: bool, sandbox_private: bool = False
) -> str | None:
    """Why the proxy may not connect to ``address`` for ``endpoint``, or None when it may."""
    kind = _never_kind(address)
    if kind is not None:
        return f"{kind} address {address} is not allowed"
    kind = _private_kind(address)
    if kind is None or allow_private:
        return None
    if endpoint.provider == SANDBOX_PROVIDER and (
        kind == "loopback" or (sandbox_private and _site_network(address))
    ):
        return None
    return f"{kind} address {address} is not allowed"


def _normal_address(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_host(host: str) -> IPAddress | str:
    """An IP address, or a lower-case DNS name without its trailing dot.

    Accepts a canonical dotted quad, an IPv6 literal with or without brackets (IPv4-mapped
    becomes IPv4), or a DNS name; raises ``TargetRefusedError`` for anything else, including
    every legacy IPv4 form (decimal, hex, octal, short).
    """
    if not host or _URL_FORBIDDEN.search(host) or "%" in host:
        raise TargetRefusedError(f"invalid host {host!r}")
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in inner:
        try:
            return _normal_address(ipaddress.IPv6Address(inner))
        except ValueError:
            raise TargetRefusedError(f"invalid IPv6 address {host!r}") from None
    if inner != host:
        raise TargetRefusedError(f"invalid IPv6 address {host!r}")
    name = host.lower()
    labels = name.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()  # one trailing dot: the same name
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        if labels == name.split(".") and _CANONICAL_IPV4.fullmatch(name):
            return ipaddress.IPv4Address(name)
        raise TargetRefusedError(f"non-canonical IPv4 address {host!r} is not allowed")
    if len(".".join(labels)) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise TargetRefusedError(f"invalid host name {host!r}")
    return ".".join(labels)


def _netloc(host: IPAddress | str, port: int, scheme: str) -> str:
    text = f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)
    return text if DEFAULT_PORTS[scheme] == port else f"{text}:{port}"


# ---------------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _ParsedUrl:
    scheme: str
    host: IPAddress | str
    port: int
    path_and_query: str


def _check_scheme(scheme: str) -> None:
    if scheme not in DEFAULT_PORTS:
        raise TargetRefusedError(f"scheme {scheme!r} is not allowed (only http and https)")


def _parse_url(url: str) -> _ParsedUrl:
    if _URL_FORBIDDEN.search(url):
        raise TargetRefusedError(
            "URL contains spaces, control characters, backslashes or non-ASCII characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise TargetRefusedError(f"invalid URL: {exc}") from None
    if not parts.scheme or not url.lower().startswith(f"{parts.scheme}://"):
        raise TargetRefusedError("URL must start with http:// or https://")
    _check_scheme(parts.scheme)
    netloc = parts.netloc
    if "@" in netloc:
        raise TargetRefusedError("credentials in the URL (user@host) are not allowed")
    if not netloc:
        raise TargetRefusedError("URL has no host")
    if netloc.startswith("["):
        end = netloc.find("]")
        raw_host, rest = (netloc[: end + 1], netloc[end + 1 :]) if end > 0 else (netloc, "")
    else:
        raw_host, colon, raw_port = netloc.partition(":")
        rest = colon + raw_port
    port = DEFAULT_PORTS[parts.scheme]
    if rest:
        if not rest.startswith(":"):
            raise TargetRefusedError(f"invalid host {netloc!r}")
        if rest != ":":
            if not _PORT.fullmatch(rest[1:]) or not 0 < int(rest[1:]) < 65536:
                raise TargetRefusedError(f"invalid port {rest[1:]!r}")
            port = int(rest[1:])
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return _ParsedUrl(parts.scheme, parse_host(raw_host), port, path + query)


def _decodings(segment: str) -> list[str]:
    """The segment and what it decodes to, once, twice, ... (until it stops changing)."""
    out = [segment]
    for _ in range(4):
        decoded = unquote(out[-1])
        if decoded == out[-1]:
            break
        out.append(decoded)
    return out


def _safe_path(path: str, *, encoded: bool) -> str:
    if re.search(r"[\x00-\x1f\x7f\\]", path):
        raise TargetRefusedError("path contains control characters or backslashes")
    segments = [s for s in path.split("/") if s]
    out = []
    for segment in segments:
        for form in _decodings(segment):
            if form in {".", ".."}:
                raise TargetRefusedError("path may not contain '.' or '..' segments")
            if re.search(r"[\x00-\x1f\x7f\\]", form):
                raise TargetRefusedError("path contains control characters or backslashes")
        if encoded:
            if re.search(r"%(?![0-9A-Fa-f]{2})", segment):
                raise TargetRefusedError("path has a malformed percent escape")
            out.append(quote(segment, safe=_PATH_SAFE + "%"))
        else:
            out.append(quote(segment, safe=_PATH_SAFE))
    trailing = "/" if out and path.endswith("/") else ""
    return "/" + "/".join(out) + trailing


def endpoint_url(
    endpoint: Endpoint,
    path: str,
    query: str = "",
    scheme: str = "http",
    *,
    encoded: bool = False,
    allow_private: bool = False,
    sandbox_private: bool = False,
) -> str:
    """The URL of ``path`` (and the raw ``query`` string) on ``endpoint``, for the raw route.

    ``path`` is the decoded path (as Litestar's ``{path:path}`` gives it; ``%`` is sent as
    ``%25``) or, with ``encoded=True``, the raw percent-encoded path (escapes kept as sent).
    The endpoint's host is checked like any target (an IP literal's address class here; a DNS
    name is only validated: use ``TargetGuard.check_endpoint`` to resolve, check and pin it).
    """
    _check_scheme(scheme)
    host = parse_host(endpoint.host)
    if not 0 < endpoint.port < 65536:
        raise TargetRefusedError(f"invalid port {endpoint.port}")
    if not isinstance(host, str):
        reason = address_refusal(
            host, endpoint, allow_private=allow_private, sandbox_private=sandbox_private
        )
        if reason is not None:
            raise TargetRefusedError(reason)
    netloc = _netloc(host, endpoint.port, scheme)
    safe_query = quote(query.lstrip("?"), safe=_QUERY_SAFE)
    url = f"{scheme}://{netloc}{_safe_path(path, encoded=encoded)}"
    if safe_query:
        url += f"?{safe_query}"
    if urlsplit(url).netloc != netloc:  # belt and braces: the path never moves the host
        raise TargetRefusedError("path would change the host")
    return url


# ---------------------------------------------------------------------------------- guard


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the event loop's ``getaddrinfo``), in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetGuard:
    """Checks a URL against the caller's endpoints; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        sandbox_private: bool = False,
        resolver: Resolver | None = None,
        resolve_timeout: float = 5.0,
    ) -> None:
        self.allow_private = allow_private
        self.sandbox_private = sandbox_private
        self._resolver: Resolver = resolver or system_resolver
        self._resolve_timeout = resolve_timeout

    async def _addresses(
        self, host: IPAddress | str, port: int, cache: dict[str, list[IPAddress]]
    ) -> list[IPAddress]:
        if not isinstance(host, str):
            return [host]
        if host not in cache:
            try:
                async with asyncio.timeout(self._resolve_timeout):
                    answers = await self._resolver(host, port)
            except (OSError, TimeoutError):
                raise TargetRefusedError(f"cannot resolve host {host!r}") from None
            addresses: list[IPAddress] = []
            for answer in answers:
                try:
                    if "%" in answer:  # a zone id: link-local, or at least not comparable
                        raise ValueError(answer)
                    address = _normal_address(ipaddress.ip_address(answer))
                except ValueError:
                    raise TargetRefusedError(
                        f"host {host!r} resolves to an unusable address {answer!r}"
                    ) from None
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise TargetRefusedError(f"cannot resolve host {host!r}")
            cache[host] = addresses
        return cache[host]

    async def check(self, url: str, endpoints: Sequence[Endpoint]) -> Target:
        """The endpoint ``url`` may go to and the pinned URL to use; else ``TargetRefusedError``."""
        parsed = _parse_url(url)
        cache: dict[str, list[IPAddress]] = {}
        addresses = await self._addresses(parsed.host, parsed.port, cache)
        for address in addresses:
            kind = _never_kind(address)
            if kind is not None:
                raise TargetRefusedError(f"{kind} address {address} is not allowed")
        wanted = set(addresses)
        matched: Endpoint | None = None
        for endpoint in endpoints:
            if endpoint.port != parsed.port:
                continue
            try:
                endpoint_host = parse_host(endpoint.host)
                known = await self._addresses(endpoint_host, endpoint.port, cache)
            except TargetRefusedError:
                continue  # a malformed or unresolvable endpoint matches nothing
            if wanted <= set(known):
                matched = endpoint
                break
        if matched is None:
            raise TargetRefusedError(NOT_YOURS)
        for address in addresses:
            reason = address_refusal(
                address,
                matched,
                allow_private=self.allow_private,
                sandbox_private=self.sandbox_private,
            )
            if reason is not None:
                raise TargetRefusedError(reason)
        pinned = addresses[0]
        return Target(
            endpoint=matched,
            url=f"{parsed.scheme}://{_netloc(pinned, parsed.port, parsed.scheme)}"
            f"{parsed.path_and_query}",
            host_header=_netloc(parsed.host, parsed.port, parsed.scheme),
            address=str(pinned),
        )

    async def check_endpoint(
        self,
        endpoint: Endpoint,
        path: str,
        query: str = "",
        scheme: str = "http",
        *,
        encoded: bool = False,
    ) -> Target:
        """``endpoint_url`` + ``check``: the raw route's target, resolved, checked and pinned."""
        url = endpoint_url(
            endpoint,
            path,
            query,
            scheme,
            encoded=encoded,
            allow_private=self.allow_private,
            sandbox_private=self.sandbox_private,
        )
        return await self.check(url, [endpoint])

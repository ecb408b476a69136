"""The proxy's target guard: only the caller's own running instances, never anything else (SSRF)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import pytest

from infrastructure.proxy.targets import (
    NOT_YOURS,
    Endpoint,
    Target,
    TargetGuard,
    TargetRefusedError,
    endpoint_url,
    parse_host,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SANDBOX = Endpoint("inst-sbx", "sandbox", "127.0.0.1", 18080)
PUBLIC = Endpoint("inst-pub", "vastai", "8.8.8.8", 40123)
PUBLIC_V6 = Endpoint("inst-v6", "ionet", "2606:4700::1111", 8443)
MINE = [SANDBOX, PUBLIC, PUBLIC_V6]
OTHER_USERS = Endpoint("inst-theirs", "vastai", "1.1.1.1", 40123)


class FakeDNS:
    """A resolver from a fixed table; counts look-ups; unknown names fail like getaddrinfo."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, _port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[host]


DNS = FakeDNS(
    {
        "gpu.example.com": ["8.8.8.8"],
        "metadata.evil.test": ["169.254.169.254"],
        "internal.evil.test": ["10.0.0.5"],
        "loop.evil.test": ["127.0.0.1"],
        "mixed.evil.test": ["8.8.8.8", "10.0.0.1"],
        "mixed-metadata.evil.test": ["8.8.8.8", "169.254.169.254"],
        "mapped.evil.test": ["::ffff:169.254.169.254"],
        "zoned.evil.test": ["fe80::1%eth0"],
        "empty.evil.test": [],
        "gpu-node.provider.net": ["9.9.9.9", "149.112.112.112"],
    }
)


async def refused(url: str, endpoints: Iterable[Endpoint], **guard: object) -> str:
    resolver = guard.pop("resolver", DNS)
    with pytest.raises(TargetRefusedError) as info:
        await TargetGuard(resolver=resolver, **guard).check(url, list(endpoints))  # type: ignore[arg-type]
    return info.value.reason


async def allowed(url: str, endpoints: Iterable[Endpoint], **guard: object) -> Target:
    resolver = guard.pop("resolver", DNS)
    return await TargetGuard(resolver=resolver, **guard).check(url, list(endpoints))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ matching


async def test_sandbox_loopback_is_allowed_and_keeps_path_and_query() -> None:
    target = await allowed("http://127.0.0.1:18080/v2/models/demo/infer?x=1#frag", MINE)
    assert target.endpoint == SANDBOX
    assert target.url == "http://127.0.0.1:18080/v2/models/demo/infer?x=1"
    assert target.host_header == "127.0.0.1:18080"
    assert target.address == "127.0.0.1"


async def test_public_instance_is_allowed_and_default_ports_apply() -> None:
    on_80 = Endpoint("i-80", "vastai", "8.8.8.8", 80)
    on_443 = Endpoint("i-443", "vastai", "8.8.4.4", 443)
    assert (await allowed("http://8.8.8.8/", [on_80])).url == "http://8.8.8.8/"
    assert (await allowed("http://8.8.8.8:80", [on_80])).url == "http://8.8.8.8/"
    assert (await allowed("HTTPS://8.8.4.4/x", [on_443])).url == "https://8.8.4.4/x"
    assert await refused("https://8.8.8.8/", [on_80]) == NOT_YOURS


async def test_another_users_instance_is_not_in_the_endpoints() -> None:
    assert await refused("http://1.1.1.1:40123/", MINE) == NOT_YOURS
    assert (await allowed("http://1.1.1.1:40123/", [OTHER_USERS])).endpoint == OTHER_USERS


async def test_another_users_sandbox_instance_on_another_port() -> None:
    assert await refused("http://127.0.0.1:18081/", MINE) == NOT_YOURS


async def test_wrong_port_of_a_valid_host() -> None:
    assert await refused("http://8.8.8.8:40124/", MINE) == NOT_YOURS
    assert await refused("http://8.8.8.8/", MINE) == NOT_YOURS


async def test_no_endpoints_refuses_everything() -> None:
    assert await refused("http://8.8.8.8:40123/", []) == NOT_YOURS


@pytest.mark.parametrize(
    "url",
    [
        "http://[2606:4700::1111]:8443/v1",
        "http://[2606:4700:0:0:0:0:0:1111]:8443/v1",
        "http://[2606:4700:0000::1111]:8443/v1",
        "http://[2606:4700::1111]:8443/v1".upper().replace("HTTP", "http").replace("/V1", "/v1"),
    ],
)
async def test_ipv6_literal_forms_match(url: str) -> None:
    target = await allowed(url, MINE)
    assert target.endpoint == PUBLIC_V6
    assert target.url == "http://[2606:4700::1111]:8443/v1"
    assert target.host_header == "[2606:4700::1111]:8443"


async def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    target = await allowed("http://[::ffff:127.0.0.1]:18080/health", MINE)
    assert target.endpoint == SANDBOX
    assert target.url == "http://127.0.0.1:18080/health"
    assert (await allowed("http://[::ffff:808:808]:40123/", MINE)).endpoint == PUBLIC
    reason = await refused("http://[::ffff:169.254.169.254]/", [])
    assert reason == "cloud metadata address 169.254.169.254 is not allowed"
    loopback = Endpoint("i", "vastai", "127.0.0.1", 18080)
    reason = await refused("http://[::ffff:127.0.0.1]:18080/", [loopback])
    assert reason == "loopback address 127.0.0.1 is not allowed"


# ---------------------------------------------------------------------- address classes


async def test_metadata_address_is_refused_even_if_it_were_an_endpoint() -> None:
    meta = Endpoint("i-meta", "vastai", "169.254.169.254", 80)
    for guard in ({}, {"allow_private": True}):
        reason = await refused("http://169.254.169.254/latest/meta-data/", [meta], **guard)
        assert reason == "cloud metadata address 169.254.169.254 is not allowed"
    assert "cloud metadata" in await refused("http://169.254.169.254/", MINE)


@pytest.mark.parametrize(
    "host", ["fd00:ec2::254", "100.100.100.200", "192.0.0.192", "169.254.170.2"]
)
async def test_other_metadata_and_link_local_addresses_never_pass(host: str) -> None:
    endpoint = Endpoint("i", "vastai", host, 80)
    netloc = f"[{host}]" if ":" in host else host
    reason = await refused(f"http://{netloc}/", [endpoint], allow_private=True)
    assert reason.endswith(f"address {host} is not allowed")
    assert "metadata" in reason or "link-local" in reason


@pytest.mark.parametrize("provider", ["vastai", "ionet"])
async def test_loopback_is_refused_for_non_sandbox_endpoints(provider: str) -> None:
    endpoint = Endpoint("i", provider, "127.0.0.1", 18080)
    reason = await refused("http://127.0.0.1:18080/", [endpoint])
    assert reason == "loopback address 127.0.0.1 is not allowed"
    assert await refused("http://localhost:18080/", [endpoint]) == "cannot resolve host 'localhost'"


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("10.0.0.5", "private"),
        ("10.255.255.254", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.1", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("fc00::1", "unique-local"),
        ("fd12:3456:789a::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("fe80::1", "link-local"),
        ("::1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "private"),
        ("192.0.2.10", "private"),
        ("198.18.0.1", "private"),
        ("::7f00:1", "reserved"),
        ("2002:a00:1::1", "private"),  # 6to4 for 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 for 169.254.169.254
    ],
)
async def test_non_public_addresses_are_refused_even_when_they_match(host: str, kind: str) -> None:
    endpoint = Endpoint("i", "vastai", host, 8080)
    netloc = f"[{host}]:8080" if ":" in host else f"{host}:8080"
    reason = await refused(f"http://{netloc}/", [endpoint])
    assert reason == f"{kind} address {host} is not allowed"


@pytest.mark.parametrize("host", ["10.0.0.5", "172.20.1.1", "192.168.0.9", "100.64.3.3", "fd00::5"])
async def test_allow_private_permits_private_endpoints(host: str) -> None:
    endpoint = Endpoint("i", "vastai", host, 8080)
    netloc = f"[{host}]:8080" if ":" in host else f"{host}:8080"
    target = await allowed(f"http://{netloc}/x", [endpoint], allow_private=True)
    assert target.endpoint == endpoint
    assert await refused(f"http://{netloc}/x", [endpoint]) != NOT_YOURS


async def test_allow_private_still_refuses_never_allowed_addresses() -> None:
    for host in ("169.254.169.254", "0.0.0.0", "224.0.0.1"):  # noqa: S104
        endpoint = Endpoint("i", "vastai", host, 80)
        reason = await refused(f"http://{host}/", [endpoint], allow_private=True)
        assert reason.endswith(f"address {host} is not allowed")


async def test_allow_private_does_not_widen_the_match() -> None:
    private = Endpoint("i", "vastai", "10.0.0.5", 8080)
    assert await refused("http://10.0.0.6:8080/", [private], allow_private=True) == NOT_YOURS


async def test_sandbox_gets_only_loopback_not_other_private_addresses() -> None:
    sandbox_private = Endpoint("i", "sandbox", "10.0.0.5", 8080)
    reason = await refused("http://10.0.0.5:8080/", [sandbox_private])
    assert reason == "private address 10.0.0.5 is not allowed"
    sandbox_v6 = Endpoint("i", "sandbox", "::1", 8080)
    assert (await allowed("http://[::1]:8080/", [sandbox_v6])).url == "http://[::1]:8080/"


# ------------------------------------------------------------------ tricky IPv4 literals


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal 127.0.0.1
        "0x7f000001",  # hex
        "0x7f.0.0.1",  # hex dotted
        "0X7F.0.0.1",
        "0177.0.0.1",  # octal dotted
        "0177.0000.0000.0001",
        "127.1",  # short
        "127.0.1",
        "127.000.000.001",
        "127.0.0.1.",  # trailing dot
        "0",
        "0x",
        "3232235777",  # 192.168.1.1
        "017700000001",
        "1.2.3.4.5",
        "example.123",
    ],
)
async def test_non_canonical_ipv4_forms_are_refused_outright(host: str) -> None:
    reason = await refused(f"http://{host}:18080/", MINE)
    assert reason == f"non-canonical IPv4 address {host!r} is not allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://%31%32%37.0.0.1:18080/",  # percent-encoded host
        "http://[fe80::1%25eth0]:18080/",  # zone id
        "http://[127.0.0.1]:18080/",  # IPv4 in brackets
        "http://[::1:18080/",
        "http://127.0.0.1:18080:80/",
        "http://127.0.0.1:+18080/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:99999/",
        "http://exa mple.com/",
        "http://ex_ample-.com/",
        "http://xn--bcher-kva.example\u00e9/",
    ],
)
async def test_malformed_hosts_and_ports_are_refused(url: str) -> None:
    reason = await refused(url, MINE)
    assert reason.startswith(("invalid", "non-canonical", "URL contains"))


# ------------------------------------------------------------------------- DNS names


async def test_dns_name_is_resolved_pinned_and_keeps_its_host_header() -> None:
    dns = FakeDNS({"gpu.example.com": ["8.8.8.8"]})
    target = await allowed("http://GPU.Example.COM.:40123/v1/chat?x=1", MINE, resolver=dns)
    assert target.endpoint == PUBLIC
    assert target.url == "http://8.8.8.8:40123/v1/chat?x=1"
    assert target.host_header == "gpu.example.com:40123"
    assert target.address == "8.8.8.8"
    assert dns.calls == ["gpu.example.com"]


async def test_rebinding_after_the_check_cannot_move_the_connection() -> None:
    answers = iter([["8.8.8.8"], ["127.0.0.1"], ["169.254.169.254"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    target = await allowed("http://gpu.example.com:40123/", MINE, resolver=rebinding)
    # Resolved once; the URL to connect to carries the checked address, not the name.
    assert urlsplit(target.url).hostname == "8.8.8.8"


async def test_dns_name_of_an_endpoint_reported_by_name() -> None:
    by_name = Endpoint("i-dns", "ionet", "gpu-node.provider.net.", 7000)
    target = await allowed("http://gpu-node.provider.net:7000/x", [by_name])
    assert target.url == "http://9.9.9.9:7000/x"
    assert target.host_header == "gpu-node.provider.net:7000"
    assert (await allowed("http://149.112.112.112:7000/", [by_name])).endpoint == by_name
    assert await refused("http://9.9.9.10:7000/", [by_name]) == NOT_YOURS


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("metadata.evil.test", "cloud metadata address 169.254.169.254 is not allowed"),
        ("mapped.evil.test", "cloud metadata address 169.254.169.254 is not allowed"),
        ("mixed-metadata.evil.test", "cloud metadata address 169.254.169.254 is not allowed"),
        ("internal.evil.test", NOT_YOURS),
        ("loop.evil.test", NOT_YOURS),
        ("mixed.evil.test", NOT_YOURS),  # one good address, one bad: refused
        ("zoned.evil.test", "host 'zoned.evil.test' resolves to an unusable address"),
        ("empty.evil.test", "cannot resolve host 'empty.evil.test'"),
        ("nx.evil.test", "cannot resolve host 'nx.evil.test'"),
    ],
)
async def test_dns_names_resolving_elsewhere_are_refused(name: str, reason: str) -> None:
    got = await refused(f"http://{name}:40123/", MINE)
    assert got.startswith(reason)


async def test_dns_name_resolving_to_a_private_endpoint_needs_allow_private() -> None:
    private = Endpoint("i", "vastai", "10.0.0.5", 80)
    reason = await refused("http://internal.evil.test/", [private])
    assert reason == "private address 10.0.0.5 is not allowed"
    target = await allowed("http://internal.evil.test/", [private], allow_private=True)
    assert target.url == "http://10.0.0.5/"
    assert target.host_header == "internal.evil.test"


async def test_dns_name_resolving_to_loopback_is_refused_for_non_sandbox() -> None:
    loopback = Endpoint("i", "vastai", "127.0.0.1", 18080)
    reason = await refused("http://loop.evil.test:18080/", [loopback])
    assert reason == "loopback address 127.0.0.1 is not allowed"


async def test_a_name_with_one_bad_address_fails_even_if_the_endpoint_has_both() -> None:
    both = Endpoint("i", "vastai", "mixed.evil.test", 80)
    reason = await refused("http://mixed.evil.test/", [both])
    assert reason == "private address 10.0.0.1 is not allowed"


async def test_slow_resolver_is_bounded() -> None:
    import asyncio

    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return ["8.8.8.8"]

    guard = TargetGuard(resolver=hangs, resolve_timeout=0.05)
    with pytest.raises(TargetRefusedError, match="cannot resolve"):
        await guard.check("http://gpu.example.com:40123/", MINE)


async def test_real_localhost_with_the_default_resolver() -> None:
    sandbox_by_name = Endpoint("i", "sandbox", "localhost", 18080)
    target = await TargetGuard().check("http://localhost:18080/health", [sandbox_by_name])
    assert target.address in {"127.0.0.1", "::1"}
    assert target.host_header == "localhost:18080"
    assert urlsplit(target.url).hostname == target.address
    sandbox = await TargetGuard().check("http://localhost:18080/", [SANDBOX])
    assert sandbox.endpoint == SANDBOX  # localhost -> 127.0.0.1 here (/etc/hosts)
    not_sandbox = Endpoint("i", "vastai", "127.0.0.1", 18080)
    with pytest.raises(TargetRefusedError, match=r"loopback address 127\.0\.0\.1"):
        await TargetGuard().check("http://localhost:18080/", [not_sandbox])


# ---------------------------------------------------------------- schemes and userinfo


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:18080/_GET%20/", "scheme 'gopher' is not allowed"),
        ("ftp://127.0.0.1:18080/", "scheme 'ftp' is not allowed"),
        ("ws://127.0.0.1:18080/", "scheme 'ws' is not allowed"),
        ("dict://127.0.0.1:18080/", "scheme 'dict' is not allowed"),
        ("127.0.0.1:18080/x", "URL must start with http:// or https://"),
        ("//127.0.0.1:18080/x", "URL must start with http:// or https://"),
        ("/v2/models", "URL must start with http:// or https://"),
        ("javascript:alert(1)", "URL must start with http:// or https://"),
        ("http:/127.0.0.1:18080/", "URL must start with http:// or https://"),
        ("http:///x", "URL has no host"),
        ("", "URL must start with http:// or https://"),
    ],
)
async def test_only_http_and_https(url: str, reason: str) -> None:
    assert (await refused(url, MINE)).startswith(reason)


@pytest.mark.parametrize(
    "url",
    [
        "http://user@127.0.0.1:18080/",
        "http://user:pass@127.0.0.1:18080/",
        "http://127.0.0.1:18080@evil.test/",
        "http://@127.0.0.1:18080/",
        "http://evil.test@127.0.0.1:18080/",
    ],
)
async def test_userinfo_is_refused(url: str) -> None:
    assert await refused(url, MINE) == "credentials in the URL (user@host) are not allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:18080\\@evil.test/",
        "http://127.0.0.1:18080/\r\nHost: evil.test",
        "http://127.0.0.1:18080/a b",
        "\thttp://127.0.0.1:18080/",
        " http://127.0.0.1:18080/",
        "http://127.0.0.1:18080/\x00",
        "http://127.0.0.1:18080/caf\u00e9",
    ],
)
async def test_control_characters_backslashes_and_non_ascii_are_refused(url: str) -> None:
    assert "control characters" in await refused(url, MINE)


def test_refusal_is_a_403_domain_error_with_a_reason() -> None:
    error = TargetRefusedError("scheme 'file' is not allowed")
    assert error.status == 403
    assert error.title == "Target refused"
    assert error.details == {"reason": "scheme 'file' is not allowed"}
    assert error.message == "scheme 'file' is not allowed"


def test_parse_host_forms() -> None:
    assert str(parse_host("[::FFFF:7F00:1]")) == "127.0.0.1"
    assert str(parse_host("2606:4700::1111")) == "2606:4700::1111"
    assert parse_host("GPU.example.COM.") == "gpu.example.com"
    with pytest.raises(TargetRefusedError):
        parse_host("gpu..example.com")
    with pytest.raises(TargetRefusedError):
        parse_host("-gpu.example.com")
    with pytest.raises(TargetRefusedError):
        parse_host("a" * 64 + ".example.com")


# --------------------------------------------------------------------- endpoint_url


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/demo/infer", "/v2/models/demo/infer"),
        ("v2/models/demo/", "/v2/models/demo/"),
        ("", "/"),
        ("/", "/"),
        ("//evil.com/x", "/evil.com/x"),
        ("///evil.com", "/evil.com"),
        ("@evil.com", "/%40evil.com"),
        ("user@evil.com:80/x", "/user%40evil.com:80/x"),
        ("http://evil.com/x", "/http:/evil.com/x"),
        ("a?b#c", "/a%3Fb%23c"),
        ("a b/caf\u00e9", "/a%20b/caf%C3%A9"),
        ("%2e%2e-not-dots", "/%252e%252e-not-dots"),
        ("...", "/..."),
        ("models/v1:predict", "/models/v1:predict"),
    ],
)
def test_endpoint_url_keeps_the_path_under_the_endpoint(path: str, expected: str) -> None:
    url = endpoint_url(SANDBOX, path)
    assert url == f"http://127.0.0.1:18080{expected}"
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", 18080)


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../x",
        "/a/../../b",
        "./x",
        "%2e%2e",
        "%2E%2e/x",
        ".%2e/x",
        "%2e",
        "%252e%252e/x",
        "%25252e%25252e",
        "a\\..\\b",
        "\\\\evil.com\\x",
        "%5c%5cevil.com",
        "a\r\nHost: evil",
        "a\x00b",
        "%00",
    ],
)
def test_endpoint_url_refuses_path_tricks(path: str) -> None:
    with pytest.raises(TargetRefusedError):
        endpoint_url(SANDBOX, path)
    with pytest.raises(TargetRefusedError):
        endpoint_url(SANDBOX, path, encoded=True)


def test_endpoint_url_encoded_paths_keep_their_escapes() -> None:
    url = endpoint_url(SANDBOX, "/models/org%2Fname/a%20b", encoded=True)
    assert url == "http://127.0.0.1:18080/models/org%2Fname/a%20b"
    with pytest.raises(TargetRefusedError, match="malformed percent"):
        endpoint_url(SANDBOX, "/a%zz", encoded=True)
    assert endpoint_url(SANDBOX, "/a b", encoded=True) == "http://127.0.0.1:18080/a%20b"


def test_endpoint_url_query_cannot_escape() -> None:
    url = endpoint_url(SANDBOX, "/x", "a=1&b=c d#frag\\@evil.com/")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 18080, "/x")
    assert parts.query == "a=1&b=c%20d%23frag%5C@evil.com/"
    assert parts.fragment == ""
    assert endpoint_url(SANDBOX, "/x", "?a=%20") == "http://127.0.0.1:18080/x?a=%20"


def test_endpoint_url_schemes_and_ports() -> None:
    assert endpoint_url(PUBLIC_V6, "/x", scheme="https") == "https://[2606:4700::1111]:8443/x"
    assert endpoint_url(Endpoint("i", "vastai", "8.8.8.8", 443), "x", scheme="https") == (
        "https://8.8.8.8/x"
    )
    with pytest.raises(TargetRefusedError, match="scheme 'file'"):
        endpoint_url(SANDBOX, "/x", scheme="file")
    with pytest.raises(TargetRefusedError, match="invalid port"):
        endpoint_url(Endpoint("i", "sandbox", "127.0.0.1", 0), "/x")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("10.0.0.5", "private address 10.0.0.5 is not allowed"),
        ("169.254.169.254", "cloud metadata address 169.254.169.254 is not allowed"),
        ("127.0.0.1", "loopback address 127.0.0.1 is not allowed"),
        ("0x7f.1", "non-canonical IPv4 address '0x7f.1' is not allowed"),
        ("2130706433", "non-canonical IPv4 address '2130706433' is not allowed"),
        ("evil.test/x", "invalid host"),
        ("evil.test@x", "invalid host"),
        ("", "invalid host"),
    ],
)
def test_endpoint_url_checks_the_endpoints_own_host(host: str, reason: str) -> None:
    with pytest.raises(TargetRefusedError) as info:
        endpoint_url(Endpoint("i", "vastai", host, 8080), "/x")
    assert info.value.reason.startswith(reason)


def test_endpoint_url_allow_private() -> None:
    private = Endpoint("i", "vastai", "10.0.0.5", 8080)
    assert endpoint_url(private, "/x", allow_private=True) == "http://10.0.0.5:8080/x"
    metadata = Endpoint("i", "vastai", "169.254.169.254", 80)
    with pytest.raises(TargetRefusedError, match="cloud metadata"):
        endpoint_url(metadata, "/latest", allow_private=True)


async def test_check_endpoint_resolves_and_pins_a_named_endpoint() -> None:
    by_name = Endpoint("i-dns", "ionet", "gpu-node.provider.net", 7000)
    target = await TargetGuard(resolver=DNS).check_endpoint(by_name, "/v1/../x".replace("..", "y"))
    assert target.url == "http://9.9.9.9:7000/v1/y/x"
    assert target.host_header == "gpu-node.provider.net:7000"
    rebinds = Endpoint("i-evil", "ionet", "internal.evil.test", 80)
    with pytest.raises(TargetRefusedError, match=r"private address 10\.0\.0\.5"):
        await TargetGuard(resolver=DNS).check_endpoint(rebinds, "/x")
    sandbox = await TargetGuard().check_endpoint(SANDBOX, "//evil.com/health", "a=1")
    assert sandbox.url == "http://127.0.0.1:18080/evil.com/health?a=1"
    assert sandbox.endpoint == SANDBOX

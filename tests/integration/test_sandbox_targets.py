"""The proxy's guard when sandbox instances are advertised off loopback (docs/adr/0028): a
sandbox endpoint may be on the stack's private network, nothing else changes."""

from __future__ import annotations

import pytest

from infrastructure.proxy.targets import (
    NOT_YOURS,
    Endpoint,
    TargetGuard,
    TargetRefusedError,
    advertised_off_loopback,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def resolver(host: str, _port: int) -> list[str]:
    table = {
        "gpuproxy-1": ["10.89.77.3"],
        "gpuproxy-2": ["10.89.77.4"],
        "evil.test": ["10.89.77.3", "169.254.169.254"],
    }
    if host not in table:
        raise OSError(-2, "Name or service not known")
    return table[host]


ON_REPLICA_1 = Endpoint("sbx-mine", "sandbox", "gpuproxy-1", 40001)
STACK = TargetGuard(sandbox_private=True, resolver=resolver)
DEFAULT = TargetGuard(resolver=resolver)


async def reason(guard: TargetGuard, url: str, endpoints: list[Endpoint]) -> str:
    with pytest.raises(TargetRefusedError) as refused:
        await guard.check(url, endpoints)
    return refused.value.reason


async def test_a_sandbox_instance_on_another_replica_is_reachable_and_pinned() -> None:
    target = await STACK.check_endpoint(ON_REPLICA_1, "/v2/health/ready")
    assert target.url == "http://10.89.77.3:40001/v2/health/ready"
    assert target.host_header == "gpuproxy-1:40001"
    by_url = await STACK.check("http://gpuproxy-1:40001/health", [ON_REPLICA_1])
    assert by_url.endpoint == ON_REPLICA_1


async def test_without_the_setting_the_private_sandbox_address_stays_refused() -> None:
    assert "private address 10.89.77.3" in await reason(
        DEFAULT, "http://gpuproxy-1:40001/", [ON_REPLICA_1]
    )


async def test_only_the_callers_own_instance_not_its_neighbours() -> None:
    # another instance (another user's, or the replica itself) on the same host: other port
    assert await reason(STACK, "http://gpuproxy-1:8080/", [ON_REPLICA_1]) == NOT_YOURS
    assert await reason(STACK, "http://gpuproxy-2:40001/", [ON_REPLICA_1]) == NOT_YOURS
    assert await reason(STACK, "http://10.89.77.9:40001/", [ON_REPLICA_1]) == NOT_YOURS


async def test_other_providers_get_nothing_private_from_the_sandbox_setting() -> None:
    vast = Endpoint("v", "vast.ai", "10.89.77.3", 40001)
    assert "private address" in await reason(STACK, "http://10.89.77.3:40001/", [vast])


@pytest.mark.parametrize(
    ("host", "what"),
    [
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "carrier-grade NAT"),
        ("192.0.2.7", "documentation"),  # private to Python, but not RFC 1918
        ("0.0.0.0", "unspecified"),  # noqa: S104
    ],
)
async def test_a_sandbox_endpoint_never_reaches_metadata_or_odd_ranges(
    host: str, what: str
) -> None:
    endpoint = Endpoint("s", "sandbox", host, 40001)
    refused = await reason(STACK, f"http://{host}:40001/", [endpoint])
    assert "not allowed" in refused, (what, refused)


async def test_a_name_with_one_bad_address_is_refused() -> None:
    endpoint = Endpoint("s", "sandbox", "evil.test", 40001)
    assert "metadata" in await reason(STACK, "http://evil.test:40001/", [endpoint])


@pytest.mark.parametrize(
    ("host", "off"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("127.0.0.2", False),
        ("gpuproxy-1", True),
        ("10.89.77.3", True),
        ("fd00::3", True),
    ],
)
def test_only_a_loopback_advertised_sandbox_keeps_private_refused(host: str, off: bool) -> None:
    assert advertised_off_loopback(host) is off

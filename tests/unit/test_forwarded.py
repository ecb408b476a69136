"""FORWARDED_ALLOW_IPS: whose X-Forwarded-For / Forwarded is believed, and how far."""

from __future__ import annotations

import pytest

from infrastructure.settings import ConfigError, load_settings
from interfaces.http.forwarded import TrustedProxies, parse_networks

PROXY = "10.0.0.2"
TRUSTED = TrustedProxies(parse_networks(["10.0.0.0/24", "fd00::/8"]))


def _client(peer: str, *headers: tuple[str, str]) -> str:
    return TRUSTED.client(peer, [(k.lower().encode(), v.encode()) for k, v in headers])


def test_nothing_is_believed_by_default() -> None:
    none = TrustedProxies(parse_networks([]))
    assert none.client(PROXY, [(b"x-forwarded-for", b"203.0.113.9")]) == PROXY
    assert load_settings({}, env_file=None).http.forwarded_allow_ips == ()


def test_an_untrusted_peer_cannot_name_its_address() -> None:
    peer = "198.51.100.7"
    assert _client(peer, ("X-Forwarded-For", "203.0.113.9")) == peer
    assert _client(peer, ("Forwarded", "for=203.0.113.9")) == peer


def test_a_trusted_proxy_names_the_client() -> None:
    assert _client(PROXY, ("X-Forwarded-For", "203.0.113.9")) == "203.0.113.9"
    assert _client(PROXY) == PROXY  # no header: the proxy itself


def test_rightmost_untrusted_wins_so_a_client_prefix_is_ignored() -> None:
    # the client wrote "1.2.3.4"; our proxy appended the address it saw
    assert _client(PROXY, ("X-Forwarded-For", "1.2.3.4, 203.0.113.9")) == "203.0.113.9"
    # two trusted hops: the walk goes past both to the first untrusted one
    xff = "1.2.3.4, 203.0.113.9, 10.0.0.7"
    assert _client(PROXY, ("X-Forwarded-For", xff)) == "203.0.113.9"
    # several header lines are one list, in order
    lines = (("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "203.0.113.9"))
    assert _client(PROXY, *lines) == "203.0.113.9"
    # every hop trusted: the leftmost is the client (an internal caller)
    assert _client(PROXY, ("X-Forwarded-For", "10.0.0.9, 10.0.0.7")) == "10.0.0.9"


def test_a_hop_without_an_address_ends_the_walk_at_the_last_trusted_hop() -> None:
    assert _client(PROXY, ("X-Forwarded-For", "203.0.113.9, unknown")) == PROXY
    assert _client(PROXY, ("X-Forwarded-For", "203.0.113.9, garbage, 10.0.0.7")) == "10.0.0.7"
    assert _client(PROXY, ("Forwarded", "for=_hidden")) == PROXY


def test_ports_brackets_and_ipv6() -> None:
    assert _client(PROXY, ("X-Forwarded-For", "203.0.113.9:4711")) == "203.0.113.9"
    assert _client(PROXY, ("X-Forwarded-For", "2001:db8::1")) == "2001:db8::1"
    assert _client(PROXY, ("X-Forwarded-For", "[2001:db8::1]:80")) == "2001:db8::1"
    assert _client("fd00::5", ("X-Forwarded-For", "203.0.113.9")) == "203.0.113.9"
    assert _client("::ffff:10.0.0.2", ("X-Forwarded-For", "203.0.113.9")) == "203.0.113.9"


def test_rfc_7239_forwarded() -> None:
    value = 'for=1.2.3.4;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.2'
    assert _client(PROXY, ("Forwarded", value)) == "2001:db8:cafe::17"
    assert _client(PROXY, ("Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")) == (
        "192.0.2.60"
    )
    # X-Forwarded-For, when present, is the chain (Forwarded is then ignored)
    both = (("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "203.0.113.9"))
    assert _client(PROXY, *both) == "203.0.113.9"


def test_settings_accept_addresses_and_networks_and_name_a_bad_entry() -> None:
    settings = load_settings({"FORWARDED_ALLOW_IPS": " 10.0.0.1, 172.16.0.0/12,::1 "}, None)
    assert settings.http.forwarded_allow_ips == ("10.0.0.1/32", "172.16.0.0/12", "::1/128")
    with pytest.raises(ConfigError, match=r"FORWARDED_ALLOW_IPS: 'nginx' is not an IP"):
        load_settings({"FORWARDED_ALLOW_IPS": "10.0.0.1,nginx"}, None)


def test_workers_default_to_one_and_need_postgres_above_it() -> None:
    assert load_settings({}, env_file=None).http.workers == 1
    postgres = load_settings({"DB_TYPE": "postgres", "WORKERS": "4"}, env_file=None)
    assert postgres.http.workers == 4
    with pytest.raises(ConfigError, match=r"^WORKERS=2 needs DB_TYPE=postgres"):
        load_settings({"WORKERS": "2"}, env_file=None)
    with pytest.raises(ConfigError, match="WORKERS=0 is out of range"):
        load_settings({"DB_TYPE": "postgres", "WORKERS": "0"}, env_file=None)

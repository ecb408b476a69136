"""The three flows of docs/architecture.md run only the code they need (issue 23).

Traced as ``python -m tests.support.flow_modules`` does. Before issue 23 (commit 96f0e3c) a
proxied request with a fee ran code in 21 project modules, an admin grant in 27 and the
projection update after it in 10.
"""

from __future__ import annotations

from tests.support.flow_modules import flows

IDENTITY_ROWS = {  # a remembered credential needs no JWT decode, session, user or key row
    "infrastructure.identity.api_keys",
    "infrastructure.identity.sessions",
    "infrastructure.identity.store",
    "infrastructure.identity.tokens",
}


def test_the_flows_run_only_what_they_need() -> None:
    seen = flows()
    proxied, grant = seen["proxied request with a fee"], seen["admin grant"]
    update = seen["projection update"]
    assert not proxied & IDENTITY_ROWS, proxied
    assert not grant & (IDENTITY_ROWS - {"infrastructure.identity.store"}), grant
    for flow in (proxied, grant):
        assert "domain.ports.clock" not in flow  # a port is a Protocol: no code of its own
        assert "interfaces.usage_sessions_view" not in flow  # the principal names the caller
    assert "interfaces.http.fast_lane" not in grant  # front routes by the lane's prefixes
    assert "interfaces.http.head" not in grant  # asked only for HEAD requests
    assert len(proxied) < 21, sorted(proxied)
    assert len(grant) < 27, sorted(grant)
    # a projection is handed only the events it folds: a grant reaches the ledger's folds only
    assert {m for m in update if m.startswith("projections.")} == {
        "projections.base",
        "projections.ledger",
    }, sorted(update)
    assert len(update) < 10, sorted(update)

"""The admin dashboard in a real headless Chromium (Debian's package, driven by Playwright):
log in, find a user, grant credits and watch the balance change live, set a limit and see a
request blocked; a non-admin sees "admins only" and every admin call is 403.

Screenshots go to ``test-artifacts/dashboard/``. Without Chromium the browser test is skipped
on a laptop and fails under CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.usage import ProxyUsage
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import IN_CI
from tests.integration.test_ws import BASE_ENV, PASSWORD, Account, make_user
from tests.support.http import JWT_SECRET, ROOT, env_of, server_process

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
LOG = ARTIFACTS / "server.log"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ADMIN_ENDPOINTS = [
    ("GET", "/api/v1/admin/stats"),
    ("GET", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/search/users?q=a"),
    ("GET", "/api/v1/admin/users/{uid}/account"),
    ("GET", "/api/v1/admin/users/{uid}/transactions"),
    ("GET", "/api/v1/admin/users/{uid}/balance-history"),
    ("GET", "/api/v1/admin/users/{uid}/apikeys"),
    ("DELETE", "/api/v1/admin/users/{uid}/apikeys/0123456789abcdef"),
    ("DELETE", "/api/v1/admin/users/{uid}/apikeys"),
    ("GET", "/api/v1/admin/users/{uid}/audit"),
    ("GET", "/api/v1/admin/instances"),
    ("GET", "/api/v1/admin/reservations"),
    ("GET", "/api/v1/admin/load"),
    ("GET", "/api/v1/admin/providers"),
    ("GET", "/api/v1/admin/payments"),
    ("GET", "/api/v1/admin/projections"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Container]]:
    data = tmp_path_factory.mktemp("dash") / "data"
    settings = load_settings(
        {"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET, "GUARDRAILS_ENABLED": "true"},
        env_file=None,
    )
    c = bootstrap(settings)
    env = {
        **env_of(settings),
        **BASE_ENV,
        "SANDBOX_PROVIDER_ENABLED": "true",
        "SANDBOX_PROVISIONING_DELAY": "0",
        "LOG_LEVEL": "DEBUG",  # the WebSocket handshake's headers are logged at debug level
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    LOG.unlink(missing_ok=True)
    try:
        with server_process(env, log_file=LOG) as url:
            yield url, c
    finally:
        c.close()


def test_every_admin_call_is_403_for_users_and_401_for_nobody(
    site: tuple[str, Container],
) -> None:
    url, c = site
    user, boss = make_user(c, "plain"), make_user(c, "chief", admin=True)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/admin").status_code == 200  # the page itself holds no data
        assert "default-src 'none'" in http.get("/admin").headers["content-security-policy"]
        for method, path in ADMIN_ENDPOINTS:
            target = path.format(uid=user.user_id)
            assert http.request(method, target).status_code == 401, target
            as_user = http.request(method, target, headers={"X-API-Key": user.key})
            assert as_user.status_code == 403, (target, as_user.text)
        for method, path in ADMIN_ENDPOINTS:
            if method == "GET":
                target = path.format(uid=user.user_id)
                answer = http.get(target, headers={"X-API-Key": boss.key})
                assert answer.status_code == 200, (target, answer.text)


def _browser() -> Any:
    """Playwright and Chromium, or a skip (a failure under CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"playwright is required under CI: {exc}")
        pytest.skip(f"playwright not installed: {exc}")
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"Chromium is required under CI (apt-get install chromium): {CHROMIUM}")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return sync_playwright()


def usage_flush(user_id: str, address: str) -> ProxyUsage:
    """A proxy's usage flush holding one caller's tally (what ``SessionTally.drain`` gives)."""
    at = datetime.now(UTC)
    micros = int(at.timestamp() * 1_000_000)
    row = {
        "user_id": user_id,
        "credential": "apikey:key-1",
        "address": address,
        "user_agent": "dashboard-test",
        "first_at": micros - 60_000_000,
        "last_at": micros,
        "requests": 4,
        "proxy_fees": 4_000,
        "model_fees": 0,
    }
    return ProxyUsage(process_id="t", rows=[], at=at, sessions=[row], idle_minutes=30)


def _login(page: Any, url: str, email: str) -> None:
    page.goto(f"{url}/admin")
    page.fill("#login-email", email)
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button[type=submit]")


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_dashboard_grants_limits_and_live_updates_in_a_real_browser(
    site: tuple[str, Container],
) -> None:
    url, c = site
    boss = make_user(c, "ops", admin=True)
    target = make_user(c, f"target{uuid.uuid4().hex[:4]}")
    c.ledger.grant(target.user_id, 5_000_000, key="seed", source="admin", reason="seed", actor="t")
    c.app.save(usage_flush(target.user_id, "203.0.113.9"))  # one usage session, 4 requests
    plain = make_user(c, "viewer")
    with _browser() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            _admin_session(browser, url, boss, target)
            _non_admin_session(browser, url, plain)
        finally:
            browser.close()
    # the live feed authenticated with the admin's JWT, which never reached the server log
    logged = LOG.read_text()
    assert '"WebSocket /ws" [accepted]' in logged
    assert "eyJ" not in logged  # every JWT starts so


def _admin_session(browser: Any, url: str, boss: Account, target: Account) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _login(page, url, boss.email)
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    expect(page.locator(".card .value").first).not_to_have_text("", timeout=10_000)
    _shot(page, "01-overview.png")

    # find the user
    page.click("nav a[href='#users']")
    page.fill("#user-search", target.email[:12])
    page.click(f"#user-results a:has-text('{target.email}')")
    balance = page.locator("#credit-balance")
    expect(balance).to_have_text("$5.000000", timeout=10_000)
    expect(page.locator("#usage-sessions")).to_contain_text("203.0.113.9", timeout=10_000)
    expect(page.locator("#usage-sessions")).to_contain_text("apikey:key-1")
    _shot(page, "02-user.png")

    # grant through the form: the balance changes when the event arrives over /ws
    page.fill("#grant-amount", "25.00")
    page.fill("#grant-reason", "dashboard test")
    page.click("#grant-submit")
    expect(balance).to_have_text("$30.000000", timeout=5_000)

    # a grant made elsewhere shows up without touching the page
    answer = httpx.post(
        f"{url}/api/v1/admin/users/{target.user_id}/credits",
        json={"amount": "7.00", "reason": "from elsewhere"},
        headers={"X-API-Key": boss.key},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    expect(balance).to_have_text("$37.000000", timeout=3_000)
    expect(page.locator("#chart-last")).to_have_text("$37.000000")
    expect(page.locator("#ledger tbody tr").first).to_contain_text("7.000000")
    _shot(page, "03-live-balance.png")

    # a per-user limit, then a request that would break it is refused
    page.select_option("#limit-window", "5MIN")
    page.fill("#limit-amount", "0.01")
    page.fill("#limit-reason", "dashboard test")
    page.click("#limit-submit")
    expect(page.locator("#spending")).to_contain_text("5MIN", timeout=5_000)
    expect(page.locator("#spending")).to_contain_text("$0.010000")
    offers = httpx.get(
        f"{url}/api/v1/gpu/instances?provider=sandbox",
        headers={"X-API-Key": target.key},
        timeout=30,
    ).json()["offers"]
    blocked = httpx.post(
        f"{url}/api/v1/gpu/instances/sandbox/{offers[0]['id']}",
        json={},
        headers={"X-API-Key": target.key},
        timeout=30,
    )
    assert blocked.status_code == 402, blocked.text
    assert blocked.json()["violations"][0]["window"] == "5MIN"
    expect(page.locator("#audit")).to_contain_text(f"admin:{boss.email}", timeout=5_000)
    expect(page.locator("#audit")).to_contain_text("LimitsSet")
    _shot(page, "04-limit-set-request-blocked.png")

    # the other consoles render
    for view in ("instances", "reservations", "load", "payments", "providers"):
        page.click(f"nav a[href='#{view}']")
        expect(page.locator("main h2").first).to_be_visible()
    expect(page.locator("main")).to_contain_text("sandbox", timeout=10_000)
    _shot(page, "05-providers.png")
    assert errors == [], errors
    page.close()


def _non_admin_session(browser: Any, url: str, plain: Account) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    _login(page, url, plain.email)
    expect(page.locator("#denied-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#denied-view h2")).to_have_text("Admins only")
    expect(page.locator("#app-view")).to_be_hidden()
    _shot(page, "06-non-admin.png")
    page.close()

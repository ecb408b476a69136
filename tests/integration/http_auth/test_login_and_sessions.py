"""Login, the JWT it returns (the forgery matrix), and logout ending that session at once."""

from __future__ import annotations

import json
import time
import warnings
from datetime import datetime
from typing import Any

import jwt

from tests.support.http import JWT_SECRET
from tests.support.http_auth import (
    CREDITS,
    PASSWORD,
    Client,
    assert_problem,
    b64json,
    bearer,
    claims_of,
    container_of,
    login,
    new_key,
    register,
    user_with_token,
)


def test_login_returns_a_jwt_for_a_new_session(client: Client) -> None:
    user = register(client, "jwt@example.com")
    response = client.post(
        "/api/v1/auth/login", json={"email": "JWT@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["id"] == user["id"]
    tokens = body["tokens"]
    assert tokens["token_type"] == "Bearer"
    assert jwt.get_unverified_header(tokens["access_token"])["alg"] == "HS256"
    claims = claims_of(tokens["access_token"])
    assert claims["sub"] == user["id"]
    assert claims["sid"]
    lifetime = container_of(client).settings.auth.jwt_expiration_seconds
    assert claims["exp"] - claims["iat"] == lifetime
    expires = datetime.fromisoformat(tokens["expires_at"])
    assert int(expires.timestamp()) == claims["exp"]
    me = client.get(CREDITS, headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text


def test_wrong_password_is_401_and_recorded(client: Client) -> None:
    user = register(client, "victim@example.com")
    events = container_of(client).users.security_events
    assert not [e for e in events(user["id"]) if e[2] == "login.failed"]
    response = client.post(
        "/api/v1/auth/login", json={"email": "victim@example.com", "password": "wrong-password"}
    )
    body = assert_problem(response, 401)
    assert body["error"] == "invalid credentials"
    assert response.headers.get("www-authenticate", "").startswith("Bearer")
    failed = [e for e in events(user["id"]) if e[2] == "login.failed"]
    assert len(failed) == 1
    assert "wrong-password" not in json.dumps(events(user["id"]))


def test_unknown_user_gets_the_same_401(client: Client) -> None:
    response = client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    body = assert_problem(response, 401)
    assert body["error"] == "invalid credentials"
    for bad in ({"email": "x", "password": "p"}, {"email": "nobody@example.com"}):
        assert_problem(client.post("/api/v1/auth/login", json=bad), {400, 401})


def _forge(claims: dict[str, Any], *, key: str = JWT_SECRET, **changes: Any) -> str:
    return jwt.encode({**claims, **changes}, key, algorithm="HS256")


def _hs512(claims: dict[str, Any]) -> str:
    """The right secret under another algorithm than the one the server pins."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, JWT_SECRET, algorithm="HS512")


def test_jwt_matrix(client: Client) -> None:
    alice, _ = user_with_token(client, "alice@example.com")
    register(client, "bob@example.com")
    token = login(client, "alice@example.com")
    claims = claims_of(token)
    header, payload, signature = token.split(".")

    # A token this test crafts with the right key and the live session is accepted, so the
    # refusals below come from the one thing each of them changes.
    assert client.get(CREDITS, headers=bearer(_forge(claims))).status_code == 200

    now = int(time.time())
    bob_id = container_of(client).users.by_email("bob@example.com").id
    none_header = b64json({"alg": "none", "typ": "JWT"})
    tampered_payload = b64json({**claims, "sub": bob_id})
    refused = {
        "alg none": f"{none_header}.{payload}.",
        "alg none with signature": f"{none_header}.{payload}.{signature}",
        "wrong key": _forge(claims, key="another-secret-0123456789-abcdefghijkl"),
        "expired": _forge(claims, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": _forge(claims, nbf=now + 3600),
        "wrong issuer": _forge(claims, iss="someone-else"),
        "no session claim": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, JWT_SECRET, algorithm="HS256"
        ),
        "someone else's sub on my session": _forge(claims, sub=bob_id),
        "unknown session": _forge(claims, sid="no-such-session"),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "HS512 with the right secret": _hs512(claims),
        "garbage": "not-a-jwt",
        "three garbage parts": "a.b.c",
    }
    for case, forged in refused.items():
        response = client.get(CREDITS, headers=bearer(forged))
        assert response.status_code == 401, (case, response.text)
        assert_problem(response, 401)
        assert alice["id"] not in response.text, case

    missing = assert_problem(client.get(CREDITS), 401)
    assert missing["error"] == "Missing authorization"
    for value in ("Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer", "Bearer ", token, f"Token {token}"):
        response = client.get(CREDITS, headers={"Authorization": value})
        assert_problem(response, 401)
    # The genuine token still works after all that.
    assert client.get(CREDITS, headers=bearer(token)).status_code == 200


def test_logout_ends_that_session_at_once(client: Client) -> None:
    register(client, "out@example.com")
    first, second = login(client, "out@example.com"), login(client, "out@example.com")
    assert client.get(CREDITS, headers=bearer(first)).status_code == 200
    response = client.post("/api/v1/auth/logout", headers=bearer(first))
    assert response.status_code == 200, response.text
    assert_problem(client.get(CREDITS, headers=bearer(first)), 401)
    assert_problem(client.post("/api/v1/auth/logout", headers=bearer(first)), 401)
    assert client.get(CREDITS, headers=bearer(second)).status_code == 200


def test_logout_with_an_api_key_is_a_client_error(client: Client) -> None:
    _, auth = user_with_token(client, "keyout@example.com")
    key = new_key(client, auth)["api_key"]
    response = client.post("/api/v1/auth/logout", headers={"X-API-Key": key})
    assert_problem(response, {400})
    assert client.get(CREDITS, headers={"X-API-Key": key}).status_code == 200

"""JWT access tokens (HS256, pyjwt). Every token names a server-side session."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

log = logging.getLogger(__name__)
ISSUER = "aiserve-gpuproxy"
ALGORITHM = "HS256"


class InvalidTokenError(Exception):
    """Signature, algorithm, expiry or claims are wrong."""


@dataclass(frozen=True)
class Claims:
    user_id: str
    session_id: str
    expires_at: int


class TokenCodec:
    def __init__(self, secret: str, lifetime_seconds: int) -> None:
        self._secret = secret
        self.lifetime = lifetime_seconds

    def issue(self, user_id: str, session_id: str, now: int | None = None) -> tuple[str, int]:
        issued = int(time.time()) if now is None else now
        expires = issued + self.lifetime
        token = jwt.encode(
            {
                "sub": user_id,
                "sid": session_id,
                "iat": issued,
                "nbf": issued,
                "exp": expires,
                "iss": ISSUER,
            },
            self._secret,
            algorithm=ALGORITHM,
        )
        return token, expires

    def decode(self, token: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # never "none", never what the header says
                issuer=ISSUER,
                options={"require": ["exp", "iat", "nbf", "sub", "sid", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(str(exc)) from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid"), str):
            raise InvalidTokenError("malformed claims")
        return Claims(claims["sub"], claims["sid"], int(claims["exp"]))


def load_or_create_secret(configured: str, data_dir: Path) -> str:
    """``JWT_SECRET`` if set; otherwise one generated once and kept in ``DATA_DIR``."""
    if configured:
        return configured
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        time.sleep(0.05)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    log.warning("JWT_SECRET not set: generated one in %s (set JWT_SECRET for replicas)", path)
    return secret

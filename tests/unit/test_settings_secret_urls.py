"""URLs that carry credentials (Redis password, an RPC provider's key) stay out of the
settings' repr, like every other secret (a repr reaches tracebacks and test output)."""

from __future__ import annotations

from infrastructure.settings import load_settings


def test_credentials_in_urls_are_not_in_the_settings_repr() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis://:redis-pw-1@cache.internal:6379/0",
            "CRYPTO_RPC_URL": "https://mainnet.example/v3/rpc-key-1",
        },
        env_file=None,
    )
    assert settings.redis.url == "redis://:redis-pw-1@cache.internal:6379/0"
    assert settings.payments.crypto_rpc_url == "https://mainnet.example/v3/rpc-key-1"
    for secret in ("redis-pw-1", "rpc-key-1"):
        assert secret not in repr(settings)


def test_redis_password_from_its_own_variable_is_not_in_the_repr() -> None:
    settings = load_settings(
        {"REDIS_HOST": "cache.internal", "REDIS_PASSWORD": "redis-pw-2"}, env_file=None
    )
    assert "redis-pw-2" in settings.redis.url
    assert "redis-pw-2" not in repr(settings)

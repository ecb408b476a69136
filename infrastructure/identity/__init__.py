"""Users and credentials: the user store, API keys, tokens, sessions, revocation, throttling
and the per-user rate limit."""

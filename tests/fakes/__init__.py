"""In-process fakes that stand in for our own ports in fast tests (e.g. an in-memory ledger
recorder with the idempotency key table). Fake servers of outside services: tests/fake_servers/."""

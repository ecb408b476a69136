"""The ledger's event store: recorders with the idempotency key table, the store's factories,
the fast log reader, partitions and statement hash chains."""

"""Background singletons, each elected once across workers and replicas: metering and
reconciliation, payment jobs, the hold sweep."""

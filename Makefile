.PHONY: bench bench-quick test lint

PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

# Ledger benchmarks vs the physical baseline on a throwaway durable PostgreSQL
# (about 4 minutes; results in bench-results/ledger.json). See docs/performance.md.
# make bench BENCH_ARGS="--proposals" also measures the proposed changes.
bench:
	$(PYTHON) -m tests.bench.bench_ledger $(BENCH_ARGS)

bench-quick:
	$(PYTHON) -m tests.bench.bench_ledger --quick $(BENCH_ARGS)

test:
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

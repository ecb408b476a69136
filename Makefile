.PHONY: help bench bench-ledger bench-http bench-quick bench-catalog test lint protos bench-grpc bench-models bench-scale
.DEFAULT_GOAL := help

PYTHON ?= .venv/bin/python
BENCH_ARGS ?=
HTTP_ARGS ?= --duration 10 --repeat 3
# Before each measurement the benchmarks wait for a 1-minute load average below 1.0; all
# waits of one `make bench` share this many seconds (then they measure anyway).
BENCH_MAX_WAIT ?= 900

# `make help` lists every target with the `## text` after its name.
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

# Ledger (throwaway durable PostgreSQL) and HTTP (wrk) benchmarks vs their physical
# baselines (about 6 minutes plus waiting; docs/performance.md), then the marketplace
# benchmark (bench-catalog); JSON in bench-results/.
# make bench BENCH_ARGS="--proposals" also measures the changes proposed but not applied.
bench: ## ledger, HTTP, catalog, proxy, gRPC and model benchmarks (long; JSON in bench-results/)
	@deadline=$$(( $$(date +%s) + $(BENCH_MAX_WAIT) )); \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_ledger $(BENCH_ARGS) && \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_http $(HTTP_ARGS) && \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_catalog && \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_proxy && \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_grpc && \
	BENCH_WAIT_UNTIL=$$deadline $(PYTHON) -m tests.bench.bench_models

bench-ledger: ## ledger benchmark on a throwaway durable PostgreSQL
	$(PYTHON) -m tests.bench.bench_ledger --max-wait $(BENCH_MAX_WAIT) $(BENCH_ARGS)

bench-http: ## HTTP benchmark (wrk)
	$(PYTHON) -m tests.bench.bench_http --max-wait $(BENCH_MAX_WAIT) $(HTTP_ARGS)

# Marketplace: catalog over three 100 ms providers (cold/warm), 16 GPUs rented at once.
bench-catalog: ## marketplace benchmark: catalog over slow providers, 16 GPUs rented
	$(PYTHON) -m tests.bench.bench_catalog --max-wait $(BENCH_MAX_WAIT)

bench-quick: ## a short ledger benchmark
	$(PYTHON) -m tests.bench.bench_ledger --quick $(BENCH_ARGS)

# The ledger at scale (issue 24): a generated log of SCALE_SIZES events per size (default
# 200,000 and 10,000,000) in a throwaway durable PostgreSQL; rebuild, verify, time travel,
# charges and storage side by side (long: about an hour at 10 M; docs/performance.md "Scale").
SCALE_SIZES ?= 200000,10000000
bench-scale: ## the ledger at 10 million events (JSON in bench-results/scale.json)
	$(PYTHON) -m tests.bench.bench_scale --sizes $(SCALE_SIZES) $(SCALE_ARGS)

# gRPC: regenerate interfaces/grpc/generated/ from protos/gpuproxy.proto (commit the result;
# a test fails while it is stale). Needs the dev extra (grpcio-tools, betterproto[compiler]).
protos: ## regenerate interfaces/grpc/generated/ from protos/
	$(PYTHON) protos/generate.py

# gRPC: HealthCheck and GetSpendingInfo vs a bare grpclib servicer, 16 calls in flight.
bench-grpc: ## gRPC benchmark vs a bare grpclib servicer
	$(PYTHON) -m tests.bench.bench_grpc --max-wait $(BENCH_MAX_WAIT)

test: ## the whole test suite (pytest)
	.venv/bin/pytest -q

lint: ## ruff check, ruff format --check, mypy (strict)
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# Model serving: predict / OIP latency vs a direct session.run, 16 clients with and without
# batching (about 4 minutes plus waiting; docs/performance.md "Model serving").
bench-models: ## model-serving benchmark (predict / OIP)
	$(PYTHON) -m tests.bench.bench_models --max-wait $(BENCH_MAX_WAIT)

# Container image and compose stack (docs/operations.md, docs/adr/0022-container-and-compose.md).
# They use docker (when its daemon answers) or podman, and `docker compose` or podman-compose.
CONTAINER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null 2>&1; then echo podman; else echo docker; fi)
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; elif command -v podman-compose >/dev/null 2>&1; then echo podman-compose; elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; else echo "docker compose"; fi)
GPUPROXY_IMAGE ?= localhost/gpuproxy:latest
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
# redis needs async-timeout on Python < 3.11.3 (Debian bookworm's python3 is 3.11.2)
WHEELHOUSE_EXTRA ?= async-timeout>=4.0.3

wheelhouse: ## wheels of the package and its dependencies (no extras) into wheelhouse/
	rm -rf wheelhouse
	$(PYTHON) -m pip wheel -w wheelhouse . '$(WHEELHOUSE_EXTRA)'

docker-build: ## build the server image from wheelhouse/ (BASE_IMAGE=..., GPUPROXY_IMAGE=...)
	test -d wheelhouse || $(MAKE) wheelhouse
	$(CONTAINER) build $(if $(filter podman,$(CONTAINER)),--format docker) \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(GPUPROXY_IMAGE) -f Containerfile .

docker-up: ## start the compose stack (needs .env: cp .env.example .env, set the secrets)
	$(CONTAINER) image inspect $(GPUPROXY_IMAGE) >/dev/null 2>&1 || $(MAKE) docker-build
	$(COMPOSE) up -d

docker-logs: ## follow the compose stack's logs
	$(COMPOSE) logs -f

docker-down: ## stop the compose stack (volumes kept; `COMPOSE_DOWN_ARGS=-v` drops them)
	$(COMPOSE) down $(COMPOSE_DOWN_ARGS)

# Builds local base images with debootstrap, the image, brings the stack up, registers,
# rents a sandbox instance and proxies to it through nginx, brings it down (minutes; root).
container-test: ## container image + compose stack end to end (not in `make test`)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m container tests/container
.PHONY: wheelhouse docker-build docker-up docker-logs docker-down container-test

# Three replicas via PgBouncer on one PostgreSQL and one Redis behind nginx, a mixed load
# while a replica is SIGKILLed and Redis, PostgreSQL and PgBouncer restart, then the checks
# (about 4 minutes; SCALE_SECONDS=90 of load by default; docs/scale-results.md).
scale-test: ## load + faults on 3 replicas (PgBouncer, Redis, nginx); not in `make test`
	$(PYTHON) -m tests.scale.run
.PHONY: scale-test

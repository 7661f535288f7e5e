# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint bench up down deps system-deps clean web-vendor

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,embedded,rocksdb]'
	touch $(STAMP)

deps: $(STAMP)

# Redis, Prometheus (promtool) and kcat from Debian's packages, installed when missing.
system-deps:
	@deploy/system-deps.sh

demo: deps
	$(VENV)/bin/attribution demo

# The integration tests mostly wait (brokers, workers, graces): two processes keep two cores busy without
# starving the timing-sensitive ones (three, measured on the 2-core VM, pushed its load average past 15).
TEST_WORKERS ?= 2

test: deps system-deps
	deploy/kafka/kafka.sh fetch
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

unit: deps
	$(VENV)/bin/pytest -q tests/unit

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true

# The live page's chart library (uPlot, pinned in streams/serving/page/vendor/PIN.json) from the npm registry.
web-vendor:
	deploy/web/fetch-uplot.sh

bench: deps system-deps
	deploy/kafka/kafka.sh fetch
	$(PY) -m bench.run

# A local Kafka broker, Redis and Prometheus for a developer (state under .run/).
up: deps system-deps
	deploy/kafka/kafka.sh start
	deploy/redis/redis.sh start
	deploy/prometheus/prometheus.sh start

down:
	-deploy/prometheus/prometheus.sh stop
	-deploy/redis/redis.sh stop
	-deploy/kafka/kafka.sh stop

clean: down
	rm -rf .run

# building-twin-connector: developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv kafka-jars connect-jars image lint test test-fast demo demo-cdc bench soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml devtools/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed; set PYTHON=python3.11")'
	@test -x $(BIN)/python || { echo "make: creating $(VENV) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing the connector, its dev tools and their Python dependencies into $(VENV) (first run: a minute or two) ..."
	@started=$$(date +%s) && \
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip && \
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[dev]' -e ./devtools && \
	echo "make: $(VENV) ready in $$(( $$(date +%s) - started )) s"
	@touch $@

venv: $(STAMP)  ## create .venv and install the package with its dev tools

kafka-jars: $(STAMP)  ## resolve the Kafka broker jars from Maven Central (skipped with KAFKA_BOOTSTRAP)
	@if [ -n "$$KAFKA_BOOTSTRAP" ]; then echo "using the broker at $$KAFKA_BOOTSTRAP"; \
	else $(BIN)/python -m twin_devtools.devbroker resolve >/dev/null; fi

connect-jars: $(STAMP)  ## resolve Kafka Connect + Debezium jars from Maven Central (for the CDC tests)
	@$(BIN)/python -m twin_devtools.cdc resolve

image:  ## build the container image: docker, else podman (docs/operations.md#the-image)
	tools/image/build

lint: $(STAMP)  ## ruff (lint + format check), mypy --strict and the import contracts
	$(BIN)/ruff check connector devtools tests bench tools
	$(BIN)/ruff format --check connector devtools tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint kafka-jars connect-jars image  ## lint, type-check, the image, then the whole suite against a real Kafka broker
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## only the tests that need no Kafka broker
	$(BIN)/python -m pytest -m 'not kafka'

demo: $(STAMP)  ## broker + emulator + sample events + connector, live progress; Ctrl-C stops (DEMO_KEEP=1: continue the last run)
	$(BIN)/python -m twin_devtools.demo

demo-cdc: $(STAMP)  ## PostgreSQL + Debezium + broker + connector (the README's mapping) + emulator, live progress; Ctrl-C stops
	$(BIN)/python -m twin_devtools.demo_cdc

bench: kafka-jars  ## throughput, budget, latency and memory against docs/design.md §5; writes bench-report.json
	$(BIN)/python -m bench.run --out bench-report.json

soak: kafka-jars  ## 30 minutes of mixed faults against the connector; writes soak-report.json
	$(BIN)/python -m tests.reliability.soak --minutes $${SOAK_MINUTES:-30} --out soak-report.json

clean:  ## remove the virtualenv and caches (keeps the Kafka jar cache in .cache/)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

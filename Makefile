# tor-sets: the two commands are `make rules` (the main job) and `make test` (everything the tests need, then
# the tests). Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
# where `tor-sets engines install falco` finds the pinned Falco, libs and driver sources when the official image
# cannot be pulled (the project's shared folder beside the clone; point it at your own copy)
TOR_SETS_FALCO_SOURCE ?= $(abspath ../shared/upstream)
export TOR_SETS_FALCO_SOURCE
# names this make run: a dockerd it starts is stopped at its end, one another clone's run started is left alone
TOR_SETS_SESSION ?= make-$(shell date +%s%N)-$(shell echo $$PPID)
export TOR_SETS_SESSION
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: rules examples docs test lint verify bench engines system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## the main job: rules/tor_rules.yaml from the live directory (else the cached download, else the bundled snapshot)
rules: $(STAMP)
	$(BIN)/tor-sets build -o rules/tor_rules.yaml

## the docs' examples of what tor-sets writes (docs/examples, marked blocks in README.md and docs/*.md), from the code
examples: $(STAMP)
	$(BIN)/python scripts/examples.py

## every example and command transcript the docs show, from the code and real runs (after `make bench` for figures;
## the transcripts of verify and the live self-test need root and the engines)
docs: examples engines
	$(BIN)/python scripts/transcripts.py \
	  && TOR_SETS_FAULT_TABLE=docs/operations.md $(BIN)/pytest -q -p no:cacheprovider tests/integration/deploy/test_refresh_faults.py; \
	  status=$$?; $(BIN)/tor-sets engines stop-docker || true; exit $$status

system-deps:
	scripts/system-deps.sh

## the real engines: Falco (official image, else built from source; run directly and as a local image), legacy sysdig,
## sid's sysdig in a cached root and as a local Docker image; valgrind in the root
engines: $(STAMP) system-deps
	$(BIN)/tor-sets engines install all
	$(BIN)/tor-sets engines install bench

## everything the tests need, then every test; a skipped integration test counts as a failure here
test: $(STAMP) engines
	TOR_SETS_NO_SKIP=1 $(BIN)/pytest -q; status=$$?; $(BIN)/tor-sets engines stop-docker || true; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check tor_sets tests scripts
	$(BIN)/ruff format --check tor_sets tests scripts
	$(BIN)/mypy

verify: $(STAMP) engines
	$(BIN)/tor-sets verify --engine all; status=$$?; $(BIN)/tor-sets engines stop-docker || true; exit $$status

bench: $(STAMP) engines
	$(BIN)/tor-sets bench --repetitions 5 --output docs

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The two fresh-machine commands: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test unit lint docs bench clean

# what running needs, and on top of it what the tests need (each stamped: reinstalled when pyproject.toml changes)
$(BIN)/signaling: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-extras: $(BIN)/signaling
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/signaling

install-test: $(VENV)/.test-extras

## run: one node on the embedded in-memory bus, with the demo page, on http://127.0.0.1:8080/
run: install
	$(BIN)/signaling serve --host 127.0.0.1 --port 8080

## test: the full suite (needs redis-server, nginx, chromium on PATH; .ci/run installs them)
test: install-test
	$(BIN)/pytest

## unit: the fast tests only (no servers, no sockets)
unit: install-test
	$(BIN)/pytest tests/unit tests/contract -q

## lint: ruff and mypy --strict as configured in pyproject.toml; CI runs it before the tests
lint: install-test
	$(BIN)/ruff check signaling tests examples
	$(BIN)/mypy

## docs: regenerate the README's configuration reference from signaling/config.py
docs: install
	$(BIN)/signaling config-reference --readme README.md

## bench: the benchmark suite (bench/README.md) into bench/results/; BENCH_ARGS=--quick for a smoke run
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	cd bench && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

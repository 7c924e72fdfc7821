# One command runs the product, one runs the tests. Both work on a fresh machine with only Python 3.11.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
FLEET ?= 10
WORKERS ?= 1

.PHONY: run test install lint typecheck bench clean

$(BIN)/.installed: requirements.txt edge_agent/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q -e ./edge_agent
	touch $@

install: $(BIN)/.installed

## make run: migrate, seed the demo, start Daphne + Celery + a simulated fleet of chargers with edge agents.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_seed --stations $(FLEET)
	$(BIN)/python manage.py runvpp --host $(HOST) --port $(PORT) --fleet $(FLEET) --workers $(WORKERS)

## make test: the whole test suite (SQLite + in-memory layer by default; DATABASE_URL/REDIS_URL for the real ones).
test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy .

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# One command runs the product, one runs the tests. Both work on a fresh machine with only Python 3.11.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The edge agent with its ISO 15118 extra (Josev) in an environment of its own: Josev's pins (cryptography 44,
# pydantic 1) would break the CSMS's.
ISO_VENV ?= .venv-iso15118
ISO_BIN := $(ISO_VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
FLEET ?= 10
WORKERS ?= 1
NODES ?= 2

.PHONY: run run-cluster test test-iso15118 install install-iso15118 exi-codec lint typecheck bench clean

$(BIN)/.installed: requirements.txt edge_agent/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q -e ./edge_agent
	touch $@

install: $(BIN)/.installed

$(ISO_BIN)/.installed: edge_agent/pyproject.toml
	test -x $(ISO_BIN)/python || $(PY) -m venv $(ISO_VENV)
	$(ISO_BIN)/pip install -q --upgrade pip
	$(ISO_BIN)/pip install -q -e './edge_agent[iso15118]' pytest==9.2.0 pytest-asyncio==1.5.0 pytest-timeout==2.4.0 aiofile==3.12.3
	touch $@

install-iso15118: $(ISO_BIN)/.installed

## make exi-codec: rebuild edge_agent/secc/java/cached-jaxb-exi-codec.jar (Josev's EXI codec with its JAXB contexts
## kept, see the .java) after changing the .java or Josev's version; needs a JDK. The jar is committed.
EXI_JAVA := edge_agent/src/edge_agent/secc/java
exi-codec: install-iso15118
	rm -rf build/exi-codec && mkdir -p build/exi-codec
	javac --release 11 -Xlint:-options -cp "$$($(ISO_BIN)/python -c 'from iso15118.shared.settings import JAR_FILE_PATH; print(JAR_FILE_PATH)')" \
		-d build/exi-codec $(EXI_JAVA)/CachedJaxbEXICodec.java
	cd build/exi-codec && jar --create --no-manifest --file ../../$(EXI_JAVA)/cached-jaxb-exi-codec.jar edge_agent

## make run: migrate, seed the demo, start Daphne + Celery + a simulated fleet of chargers with edge agents.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_seed --stations $(FLEET)
	$(BIN)/python manage.py runvpp --host $(HOST) --port $(PORT) --fleet $(FLEET) --workers $(WORKERS)

## make run-cluster: the same product as several nodes (README "Operations: several nodes"): NODES Daphne processes
## on PORT+1.. behind HAProxy (deploy/haproxy-cluster.cfg) on PORT, a Celery worker, one beat, the simulated fleet.
## Needs PostgreSQL and Redis shared by all: DATABASE_URL and REDIS_URL.
run-cluster:
	@test -n "$$DATABASE_URL" -a -n "$$REDIS_URL" || { echo "make run-cluster: set DATABASE_URL=postgres://user@host:5432/db and REDIS_URL=redis://host:6379/0 (several nodes share one PostgreSQL and one Redis; the embedded SQLite and in-memory channel layer belong to one process)" >&2; exit 2; }
	@$(MAKE) --no-print-directory install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_seed --stations $(FLEET)
	$(BIN)/python manage.py runcluster --host $(HOST) --port $(PORT) --nodes $(NODES) --fleet $(FLEET)

## make test: the whole test suite (SQLite + in-memory layer by default; DATABASE_URL/REDIS_URL for the real ones),
## then the ISO 15118 tests in the agent's own environment (they skip, saying why, without Java or root).
test: install
	$(BIN)/python -m pytest -q
	$(MAKE) test-iso15118

test-iso15118: install-iso15118
	$(ISO_BIN)/python -m pytest -q -c tests/edge_agent/iso15118/pytest.ini --rootdir . tests/edge_agent/iso15118

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy .

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# Veilface: `make demo` and `make test` set everything up on a fresh machine; `make test-fast`
# runs the quick in-process tests alone (no stack, faults, browser, train, install or slow tests).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
VEILFACE := $(VENV)/bin/veilface
DATA ?=
N ?= 65536
DIM ?= 1024
CONFIG ?= services/trainer/configs/cfp_finetune.toml

# The MySQL driver (extra `mysql`) builds against the MariaDB client library; only the targets
# that talk to MySQL install it: test, and run when VEILFACE_DATABASE_URL is a MySQL URL.
MYSQL_HINT := make: the MySQL driver (mysqlclient) could not be built; install the MariaDB client library first: apt-get install libmariadb-dev pkg-config (Debian/Ubuntu)
USES_MYSQL := $(findstring mysql,$(VEILFACE_DATABASE_URL))

.PHONY: venv install install-mysql install-train demo run test test-fast screenshots lint bench-he bench-embedder bench-identify bench-client eval train compose-config clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev]'
	@touch $@

venv install: $(VENV)/.installed

install-mysql: $(VENV)/.installed-mysql

$(VENV)/.installed-mysql: $(VENV)/.installed
	@$(PY) -m pip install --quiet -e '.[server,mysql]' >$(VENV)/mysql-install.log 2>&1 \
		|| { echo '$(MYSQL_HINT) (pip log: $(VENV)/mysql-install.log)' >&2; exit 1; }
	@touch $@

install-train: $(VENV)/.installed-train

$(VENV)/.installed-train: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[server,dev,train]'
	@touch $@

keys: install
	$(VEILFACE) keys init

## demo: embedded defaults (SQLite, filesystem queue); enroll LFW identities, identify, print latency
demo: install
	$(PY) -m veilface.local.demo $(if $(DATA),--data $(DATA),)

## run: the stack as separate processes (gateway on :8080, one embedder, two he-matchers)
run: install $(if $(USES_MYSQL),install-mysql)
	$(PY) -m veilface.local.stack

## test: ruff, then the whole suite, every marker, against real MariaDB and Redis (CI's command; the trainer tests need torch)
test: install-train install-mysql
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

## test-fast: the quick in-process tests (real MariaDB, no processes started, no torch, not slow)
FAST_TESTS := not stack and not faults and not browser and not train and not install and not slow
test-fast: install install-mysql
	$(PY) -m pytest -q -m "$(FAST_TESTS)"

## screenshots: rerun the console tests, saving their screenshots into docs/screenshots/
screenshots: install-train
	VEILFACE_TEST_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_console.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-he: install
	$(PY) -m veilface.bench.he --gallery $(N) --dim $(DIM) --out results/bench-he-$(DIM).json

bench-embedder: install
	$(PY) -m veilface.bench.embedder --out results/embedder.json

bench-identify: install
	$(PY) -m veilface.bench.identify --gallery 1000 --out results/identify-latency.json

bench-client: install
	$(PY) -m veilface.bench.client --gallery 1000 --queries 50 --out results/bench-client.json

eval: install
	$(PY) -m veilface.eval.run --out results/eval.json

train: install-train
	$(PY) -m veilface.train --data $(DATA) --config $(CONFIG)

compose-config:
	MYSQL_ROOT_PASSWORD=example MYSQL_GATEWAY_PASSWORD=example MYSQL_EMBEDDER_PASSWORD=example \
		MYSQL_MATCHER_PASSWORD=example REDIS_PASSWORD=example docker-compose -f deploy/docker-compose.yml config --quiet

clean:
	rm -rf var results .pytest_cache

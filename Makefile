# Steplens: `make demo` serves a demo on 127.0.0.1:8000; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where `make demo` and `make run` listen: `make demo PORT=8001`, `make demo HOST=0.0.0.0`.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv install demo test test-sqlite lint format migrate run worker clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

venv install: $(STAMP)

migrate: $(STAMP)
	$(PY) manage.py migrate --noinput

demo: $(STAMP)
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py migrate --noinput
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py seed_demo
	test -f .demo-credentials || DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py seed_steps --organization demo-second --count 300 --days 7
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py demo_setup --base-url http://$(HOST):$(PORT)
	DJANGO_SETTINGS_MODULE=config.settings.local $(PY) manage.py runserver $(HOST):$(PORT)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite on the embedded SQLite default whatever DATABASE_URL says, PostgreSQL-only tests (marker `postgres`)
# deselected: the second pass of .ci/run, so SQLite's branches run in CI too.
test-sqlite: $(STAMP)
	env -u DATABASE_URL STEPLENS_TEST_DATABASE=sqlite $(PY) -m pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

run: $(STAMP)
	$(PY) manage.py runserver $(HOST):$(PORT)

worker: $(STAMP)
	$(VENV)/bin/celery -A config worker -Q default,runs,ingest --loglevel INFO

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache .ruff_cache test-artifacts

# Debian's chromium for the browser tests (tests/browser), installed only when /usr/bin/chromium is missing.
.PHONY: browser-deps
browser-deps:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else echo "chromium is missing: run 'make browser-deps' as root (apt-get install -y chromium)" >&2; fi

# Debian's prometheus for the scrape test (tests/ops/test_prometheus_scrape.py), installed only when it is missing.
.PHONY: ops-deps
ops-deps:
	@if command -v prometheus >/dev/null 2>&1; then echo "prometheus: $$(prometheus --version 2>&1 | head -n 1)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; \
	else echo "prometheus is missing: run 'make ops-deps' as root (apt-get install -y prometheus)" >&2; fi

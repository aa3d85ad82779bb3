# The commands the README names. Everything installs itself into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DATABASE_URL_TEST ?= postgres://postgres@127.0.0.1:5432/backoffice
export REDIS_URL_TEST ?= redis://127.0.0.1:6379/15
# pytest-xdist workers for make test: each has its own database and Redis database (tests/settings.py).
TEST_WORKERS ?= 2
DEMO_DB := var/demo.sqlite3
# The settings refuse to start with DEBUG off and no SECRET_KEY: when none is set, every target run gets a random one
# (sessions end when it changes). Production sets its own (README: Staff security and production settings).
ifeq ($(strip $(SECRET_KEY)),)
export SECRET_KEY := $(shell $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')
endif
SQLITE_TESTS := tests/core tests/ledger/test_services.py tests/ledger/test_batch_posting.py tests/ledger/test_api.py \
	tests/ledger/test_admin.py tests/escrow/test_limits.py

.PHONY: demo demo-smoke stack stack-smoke test test-protocol lint install install-dev bench bench-reconcile bench-admin bench-payout-batch browser-deps test-browser \
	test-chaos bench-webhooks bench-api

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) requirements.txt
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The embedded default: SQLite, no Redis, providers in sandbox mode.
demo: install
	mkdir -p var
	DATABASE_URL=sqlite:///$(CURDIR)/$(DEMO_DB) REDIS_URL= $(PY) manage.py demo --serve

demo-smoke: install
	mkdir -p var
	rm -f var/demo-smoke.sqlite3
	DATABASE_URL=sqlite:///$(CURDIR)/var/demo-smoke.sqlite3 REDIS_URL= $(PY) manage.py demo --smoke

# The real stack (ops/stack.py): sandbox, gunicorn, two named Celery workers and beat, until Ctrl-C. DATABASE_URL and
# REDIS_URL as set (or in .env), else PostgreSQL backoffice_stack and Redis db 6; WEB_PORT 8000, SANDBOX_PORT 8765.
stack: install
	$(PY) -m ops.stack

# The real stack from nothing (backoffice_stack_smoke, Redis db 7) moving money over the API; exits 0 (about 2 minutes).
stack-smoke: install
	$(PY) -m ops.stack_smoke

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install-dev browser-deps
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) scripts/check_services.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) -m pytest -n $(TEST_WORKERS) -m "not fault_matrix and not chaos" $(PYTEST_ARGS)
	# The embedded default (SQLite, no Redis) posts through the Python writer: keep it honest too.
	rm -f var/test-sqlite.sqlite3 && mkdir -p var
	DATABASE_URL=sqlite:///$(CURDIR)/var/test-sqlite.sqlite3 REDIS_URL= $(PY) -m pytest -q $(SQLITE_TESTS)

# Debian's chromium, which the dashboard's browser test drives with Playwright (tests marked `browser`; Playwright
# never downloads a browser of its own). Installs only when missing; needs root, as apt-get does.
browser-deps:
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

# Only the browser tests (also part of make test): the dashboard seen by a finance operator; screenshot in var/artifacts/.
test-browser: install-dev browser-deps
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) -m pytest -m browser $(PYTEST_ARGS)

# The protocol's fault matrix: every money-moving operation against every fault sequence (about 2 minutes).
test-protocol: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) scripts/check_services.py
	DATABASE_URL=$(DATABASE_URL_TEST) REDIS_URL=$(REDIS_URL_TEST) $(PY) -m pytest -m fault_matrix tests/protocol $(PYTEST_ARGS)

bench: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/ledger.py

bench-reconcile: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/reconcile.py

# Admin changelists and the dashboard over 1,000,000 rows per table (about 10 minutes, most of it building them).
bench-admin: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/admin.py

bench-payout-batch: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/payout_batch.py

# Faults and real processes (tests/chaos/, about 8 minutes): a stateful Hypothesis run of the whole bank under the
# sandbox's faults, then the real stack (ops.stack) with workers SIGKILLed at each protocol step, a web worker killed
# mid-request, Redis restarted, PostgreSQL connections cut. Its own databases (backoffice_chaos*) and Redis dbs
# 12-13; writes docs/chaos-results.md.
CHAOS_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/backoffice_chaos
test-chaos: install-dev
	DATABASE_URL=$(CHAOS_DATABASE_URL) REDIS_URL=redis://127.0.0.1:6379/12 $(PY) scripts/check_services.py
	DATABASE_URL=$(CHAOS_DATABASE_URL) REDIS_URL=redis://127.0.0.1:6379/12 CHAOS_RESULTS=docs/chaos-results.md \
		$(PY) -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

# Webhook intake and payment initiation under load against the real stack (ops.stack), on backoffice_chaos_bench.
bench-webhooks: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/webhooks.py

bench-api: install-dev
	DATABASE_URL=$(DATABASE_URL_TEST) $(PY) bench/api.py

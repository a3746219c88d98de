# Assent: `make run` runs the app, `make test` runs the whole test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The test suite's services (overridable). pytest-django creates test_<db>.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/assent
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

# The dev outbox only runs when no real mail server is configured; the bounce-mailbox reader only
# when BOUNCE_MAILBOX_URL is set.
PROCS := web worker beat $(if $(EMAIL_URL),,outbox) $(if $(BOUNCE_MAILBOX_URL),bounces)

.PHONY: run test lint format venv chromium dovecot clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@if [ "$${DEBUG:-true}" = false ]; then $(BIN)/python manage.py collectstatic --noinput -v0; fi
	@echo "Starting $(PROCS) (Ctrl-C stops them all)"
	PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/honcho start $(PROCS)

test: $(STAMP) chromium dovecot
	DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" CELERY_BROKER_URL="$(TEST_BROKER_URL)" \
	EMAIL_URL="smtp://127.0.0.1:1" DEBUG=true \
	$(BIN)/pytest $(PYTEST_ARGS)

# Browser tests drive Debian's Chromium; install it when missing and we may.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Browser tests need /usr/bin/chromium: sudo apt-get install chromium" >&2; exit 1; fi; \
	fi

# The bounce-mailbox reader's IMAP tests start their own Dovecot; install it when missing and we may.
dovecot:
	@if [ ! -x /usr/sbin/dovecot ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's dovecot-imapd for the IMAP tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache test-output

# usertasks developer commands.  Every target creates the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite runs in 3 pytest-xdist processes (most of its time is spent waiting on worker
# processes); each has its own Redis, temporary directory and test database.  PYTEST_ARGS=-n0
# runs it in one process.
PYTEST_ARGS ?= -n 3 --dist worksteal

.PHONY: demo test test-sqlite test-postgres test-upstream bench lint docs clean

$(STAMP): pyproject.toml requirements-test.txt requirements-docs.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e . -r requirements-test.txt -r requirements-docs.txt
	touch $(STAMP)

## demo: SQLite + a private Redis + a worker + runserver, with sample tasks
demo: $(STAMP)
	$(BIN)/python demo/run.py

## lint: ruff (lint and format), mypy, and the floors of .importlinter
lint: $(STAMP)
	$(BIN)/ruff check usertasks compat
	$(BIN)/ruff format --check usertasks compat
	$(BIN)/mypy
	PYTHONPATH=compat $(BIN)/lint-imports --no-cache

## docs: the documentation site (mkdocs.yml), every link checked; into site/
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

## test-upstream: django-user-tasks' own test modules (its sdist, from the package index) against compat/
test-upstream: $(STAMP)
	$(BIN)/python compat/upstream-suite/run.py

## test: the quality gates, the docs, django-user-tasks' suite, then ours on SQLite, then on PostgreSQL when DATABASE_URL is set
test: lint docs test-upstream
	@command -v chromium >/dev/null 2>&1 || { echo "== installing Chromium (Debian package) for the browser test"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } \
		|| echo "== Chromium could not be installed: the browser test will be skipped"; }
	env -u DATABASE_URL $(BIN)/python -m pytest $(PYTEST_ARGS)
	@if [ -n "$$DATABASE_URL" ]; then \
		echo "== again on $$DATABASE_URL"; \
		$(BIN)/python -m pytest $(PYTEST_ARGS); \
	fi

test-sqlite: $(STAMP)
	env -u DATABASE_URL $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} $(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: benchmarks (not tests); results go to bench/results and docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build dist site *.egg-info

# TaskFlow: `make run` starts everything on the local services, `make test` runs lint and the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PORT ?= 8000

.PHONY: install run test lint format typecheck migrate services superuser bench bench-quick soak clean browser flower

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

services:  ## check PostgreSQL, RabbitMQ and Redis; create the database if missing
	@$(BIN)/python scripts/check_services.py

migrate: install services
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py setup_broker --policies

run: migrate  ## API + workers + beat + dead-letter consumer, through honcho
	@$(BIN)/python scripts/banner.py
	exec $(BIN)/honcho --procfile Procfile start

superuser: migrate  ## create an admin login interactively
	$(BIN)/python manage.py createsuperuser

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

browser:  ## Debian's Chromium and chromedriver, for the dashboard's browser test
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

flower: install  ## Flower on :5555, on the same broker (live view of the workers; see README)
	exec $(BIN)/celery -A taskflow flower --port=$${FLOWER_PORT:-5555}

test: install services browser lint
	$(BIN)/pytest $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) services  ## the benchmark of docs/benchmarks.md (about 8 min); BENCH_ARGS=--help
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) services  ## the same, small (under 2 min)
	$(BIN)/python -m tests.bench --quick $(BENCH_ARGS)

soak: $(BENCH_STAMP) services  ## 10 min of mixed load with random faults (docs/reliability.md); SOAK_ARGS=--help
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var

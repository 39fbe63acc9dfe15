# TaskFlow: `make run` starts everything on the local services, `make test` runs lint and the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PORT ?= 8000

.PHONY: install run test lint format typecheck migrate services superuser bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

services:  ## check PostgreSQL, RabbitMQ and Redis; create the database if missing
	@$(BIN)/python scripts/check_services.py

migrate: install services
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py setup_broker

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

test: install services lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var

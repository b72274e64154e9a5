# Nudge: `make run` starts the whole system, `make test` runs every check. `make` lists targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto' | sort)

.DEFAULT_GOAL := help
.PHONY: help venv run infra kafka mail proto lint fmt test test-unit test-tansu bench up down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install Nudge with its dev tools

run: $(STAMP) ## start infrastructure and every service (Ctrl-C stops all)
	$(BIN)/python -m deploy.local run

infra: $(STAMP) ## start only the infrastructure (PostgreSQL, Redis, Kafka, SMTP sink) in the foreground
	$(BIN)/python -m deploy.local up

kafka: $(STAMP) ## resolve (once) and start Apache Kafka alone, KRaft single node
	$(BIN)/python -m deploy.local kafka

mail: $(STAMP) ## print the mail the local SMTP sink received
	$(BIN)/python -m deploy.local mail

proto: $(STAMP) ## regenerate the Python code of proto/ (committed)
	$(BIN)/python -m grpc_tools.protoc --proto_path=proto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=proto --grpc_python_out=proto --mypy_out=proto --mypy_grpc_out=proto $(PROTOS)
	@find proto/nudge -type d -exec sh -c 'touch "$$0/__init__.py"' {} \;

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check services deploy tests bench
	$(BIN)/ruff format --check services deploy tests bench
	$(BIN)/mypy

fmt: $(STAMP) ## format and autofix
	$(BIN)/ruff format services deploy tests bench
	$(BIN)/ruff check --fix services deploy tests bench

test: lint ## lint, type-check and run the whole suite on Apache Kafka (Tansu without Java)
	$(BIN)/python -m pytest -q tests

test-unit: $(STAMP) ## the unit tests only (no infrastructure)
	$(BIN)/python -m pytest -q tests/unit

test-tansu: $(STAMP) ## the end-to-end path on Tansu
	NUDGE_KAFKA=tansu $(BIN)/python -m pytest -q tests/e2e

bench: $(STAMP) ## run every benchmark in bench/
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

up: ## docker compose: the full stack with Apache Kafka, PostgreSQL, Redis, Jaeger, Mailpit
	docker compose up --build -d

down: ## docker compose: stop the stack
	docker compose down

clean: ## remove .venv, caches and local data (.nudge/)
	rm -rf $(VENV) .nudge .mypy_cache .ruff_cache .pytest_cache

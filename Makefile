# omnirec — every entry point a person or CI needs. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/omnirec/v1/*.proto)
GEN    := omnirec/v1

.PHONY: help venv system-deps proto proto-check lint test test-unit demo up down serve bench clean

# What `make up` made (settings with the identity secret, Redis, MLflow): `make serve`
# serves it too. Where it is absent, `serve` reads the environment alone.
STACK_ENV := $(or $(OMNIREC_STACK_DIR),.omnirec/stack)/env

help:
	@echo "make demo         synthetic data -> train -> serve -> print recommendations"
	@echo "make test         lint, generated-code check, unit + integration tests"
	@echo "make test-unit    the tests that need no servers"
	@echo "make up           leave Redis, a trained demo model and the service running"
	@echo "make down         stop what make up started (its data stays)"
	@echo "make serve        serve the champion model in the foreground (python -m service serve)"
	@echo "make bench        quality and speed benchmarks (reads ../shared/datasets if present)"
	@echo "make proto        regenerate $(GEN) from protos/"

# The venv is rebuilt when the dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@scripts/ensure-system-deps

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# CI fails when the checked-in generated code differs from what `make proto` writes.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	diff -r -x __pycache__ -x __init__.py $$tmp/$(GEN) $(GEN) >/dev/null || \
	{ echo "error: $(GEN) is stale: run 'make proto' and commit the result" >&2; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp; echo "generated code is up to date"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: system-deps $(STAMP) proto-check lint
	$(PY) -m pytest -q

test-unit: system-deps $(STAMP)
	$(PY) -m pytest -q -m "not integration"

demo: system-deps $(STAMP)
	$(PY) -m training demo

up: system-deps $(STAMP)
	$(PY) -m training up

down: $(STAMP)
	$(PY) -m training down

serve: $(STAMP)
	$(PY) -m service serve $(if $(wildcard $(STACK_ENV)),--env-file $(STACK_ENV))

bench: system-deps $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf .omnirec .pytest_cache .ruff_cache

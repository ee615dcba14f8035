# imgpipe: `make run` starts everything locally, `make test` runs the whole suite.
SHELL := /bin/bash
PY := .venv/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-tools/bin/uv)

.PHONY: install run test test-unit test-integration test-e2e lint typecheck stack-up stack-down bench clean

# A virtualenv from the lock file (uv is bootstrapped with pip if missing).
install: .venv/.installed
.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x .venv-tools/bin/uv ] || \
	  (python3 -m venv .venv-tools && .venv-tools/bin/pip install --quiet uv)
	$(UV) sync --frozen --all-groups
	@touch $@

run: install
	$(PY) -m deploy.run

test: install
	$(PY) -m pytest -q -ra

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install
	$(PY) -m pytest -q tests/integration

test-e2e: install
	$(PY) -m pytest -q tests/e2e

lint: install
	.venv/bin/ruff check .
	.venv/bin/mypy shared services deploy tests bench

stack-up: install
	$(PY) -m deploy.localstack up

stack-down: install
	$(PY) -m deploy.localstack down

bench: install
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_outbox.py

clean:
	$(PY) -m deploy.localstack down || true
	rm -rf .data

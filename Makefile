# The two commands of the README. Each first runs the idempotent set-up.
.PHONY: setup demo test test-fast lint clean

setup:
	@scripts/setup_env.sh

demo: setup
	.venv/bin/xtts-ft demo

test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf data/processed runs exports models

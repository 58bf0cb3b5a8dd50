# sosbeacon — the two commands a newcomer needs are `make demo` and `make test`.
# Every target bootstraps what it needs (system packages, venv, Python dependencies).

VENV    ?= .venv
BIN     := $(VENV)/bin
SOURCES := device hw sim
export VENV

.PHONY: help bootstrap test lint typecheck pytest bench soak demo clean

help:
	@echo "make test       lint, type-check and run all tests (bootstraps everything)"
	@echo "make demo       run the system without hardware"
	@echo "make bench      print performance figures"
	@echo "make soak       long fault campaigns, about 45 minutes (not part of make test)"

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(BIN)/ruff check $(SOURCES) tests bench
	$(BIN)/ruff format --check $(SOURCES) tests bench

typecheck: bootstrap
	$(BIN)/mypy --strict $(SOURCES)

pytest: bootstrap
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: bootstrap
	$(BIN)/python -m bench

soak: bootstrap
	$(BIN)/python -m bench.soak

demo: bootstrap
	$(BIN)/python -m sim.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# sosbeacon — the two commands a newcomer needs are `make demo` and `make test`.
# Every target bootstraps what it needs (system packages, venv, Python dependencies).

VENV    ?= .venv
BIN     := $(VENV)/bin
SOURCES := device hw sim relay
export VENV

.PHONY: help bootstrap test lint typecheck pytest timeshift bench soak scale demo clean

help:
	@echo "make test       lint, type-check and run all tests (bootstraps everything)"
	@echo "make timeshift  the date-bound tests again with the clock 400 days ahead (in make test)"
	@echo "make demo       run the system without hardware"
	@echo "make bench      print performance figures"
	@echo "make soak       long fault campaigns, about 45 minutes (not part of make test)"
	@echo "make scale      the cost curve: fleets through the relay, about 20 minutes (not in make test)"

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(BIN)/ruff check $(SOURCES) tests bench
	$(BIN)/ruff format --check $(SOURCES) tests bench

# each folder type-checked as the package it is installed as (sosbeacon/ links to them)
typecheck: bootstrap
	$(BIN)/mypy --strict $(addprefix -p sosbeacon.,$(SOURCES))

pytest: bootstrap
	$(BIN)/pytest -q

# The tests most bound to dates (outbox, uplink, SOS lifecycle, the device's clock, the
# relay's 72-hour links), run
# again with the clock 400 days ahead under libfaketime: a test that mixes a fixed date
# with the wall clock fails the day it is written, not months later.
SHIFT_DAYS  := 400
SHIFT_TESTS := tests/test_outbox.py tests/test_uplink.py tests/test_sos.py tests/test_device_clock.py \
	tests/test_relay.py tests/test_relay_page.py
timeshift: bootstrap
	SOSBEACON_CLOCK_SHIFT_DAYS=$(SHIFT_DAYS) SOSBEACON_REAL_EPOCH=$$(env -u LD_PRELOAD date +%s) \
		faketime -f '+$(SHIFT_DAYS)d' $(BIN)/pytest -q -p no:cacheprovider $(SHIFT_TESTS)

test: lint typecheck pytest timeshift

bench: bootstrap
	$(BIN)/python -m bench

soak: bootstrap
	$(BIN)/python -m bench.soak

scale: bootstrap
	$(BIN)/python -m bench.scale

demo: bootstrap
	$(BIN)/python -m sosbeacon.sim.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Two commands from a fresh clone: `make sim` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MICROPYTHON := $(BIN)/micropython
STAMP := $(VENV)/.installed
CERTS := build/certs

.PHONY: all venv certs sim test unit lint bench clean

all: test

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(STAMP)

# A test CA and server certificates for the emulator, made here and never committed.
certs: $(STAMP)
	$(BIN)/python tools/certs.py $(CERTS) >/dev/null

# The firmware on the real unix port against the local DRS/LwA emulator, in virtual time.
sim: certs
	$(BIN)/python tools/sim.py

# Device logic unit tests alone, inside MicroPython.
unit: $(STAMP)
	MICROPYPATH=lib $(MICROPYTHON) tests/unit/run.py

# The published ESP32 stubs, so mypy checks calls into machine, network, tls, socket...
STUBS := build/stubs/.installed
$(STUBS): requirements-stubs.txt $(STAMP)
	rm -rf build/stubs
	$(BIN)/pip install -q --disable-pip-version-check --target build/stubs -r requirements-stubs.txt
	touch $@

lint: $(STAMP) $(STUBS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# RAM, flash wear, handshakes, latency and code size beside a naive baseline (a few minutes).
bench: certs
	$(BIN)/python tools/bench.py

test: certs lint
	$(BIN)/pytest -q

clean:
	rm -rf build .pytest_cache

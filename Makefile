# Two commands from a fresh clone: `make sim` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MICROPYTHON := $(BIN)/micropython
STAMP := $(VENV)/.installed
CERTS := build/certs
# micropython-lib modules the unix port needs on MICROPYPATH (frozen into stock ESP32 firmware).
MPLIB := build/mplib
MPLIB_STAMP := $(MPLIB)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: all venv certs mplib broker sim test unit lint bench mpy32 faults board emulator auth-code \
	deploy deploy-romfs provision status clean

all: test

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(STAMP)

# A test CA and server certificates for the emulator, made here and never committed.
certs: $(STAMP)
	$(BIN)/python tools/certs.py $(CERTS) >/dev/null

# umqtt.simple for the unix port, pinned (tools/mplib.py says where it comes from).
$(MPLIB_STAMP): tools/mplib.py $(STAMP)
	$(BIN)/python tools/mplib.py $(MPLIB) >/dev/null
	touch $@

mplib: $(MPLIB_STAMP)

# Debian's mosquitto: the real broker the tests, the simulator and the bench start.
broker:
	@PATH="$$PATH:/usr/sbin" command -v mosquitto >/dev/null || { \
	  echo "mosquitto is missing: installing Debian's package"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >/dev/null; }; }

# The firmware on the real unix port against the local DRS/LwA emulator, in virtual time.
sim: certs mplib broker
	$(BIN)/python tools/sim.py

# Device logic unit tests alone, inside MicroPython.
unit: $(STAMP) $(MPLIB_STAMP)
	MICROPYPATH=lib:$(MPLIB) $(MICROPYTHON) tests/unit/run.py

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
# With MPY_DIR set to a MicroPython source tree, the 32-bit figures too (tools/bench32.py).
bench: certs mplib broker
	$(BIN)/python tools/bench.py

# The unix port 32-bit, plain and with dash frozen in, and mpy-cross, from the MicroPython tree
# MPY_DIR names (a maker's clone), cached under build/mpy (tools/mpybuild.py). Needs gcc-multilib.
mpy32: $(STAMP)
	@test -n "$(MPY_DIR)" || { echo "set MPY_DIR to a MicroPython source tree"; exit 1; }
	$(BIN)/python tools/mpybuild.py --mpy-dir "$(MPY_DIR)"

# Power cuts at every point of an order cycle and of a token rotation, hostile servers under a
# small heap, back-offs against the time the answer came (minutes; `make test` runs a slice).
faults: certs mplib broker
	$(BIN)/python tools/faults.py

# The bench workflow on a board (PORT=/dev/ttyUSB0, or an mpremote shortcut such as u0).
PORT ?=
DASHCTL = $(BIN)/python tools/dashctl.py $(if $(PORT),-p $(PORT))
deploy: $(STAMP)
	$(DASHCTL) deploy
deploy-romfs: $(STAMP)
	$(DASHCTL) deploy --romfs
provision: $(STAMP)
	$(DASHCTL) provision --config $(CONFIG) $(if $(SECRETS),--secrets $(SECRETS)) $(if $(CA),--ca $(CA))
status: $(STAMP)
	$(DASHCTL) status

# A board without hardware: the unix port on a pty, build/board/flash as its flash. Then
# `make deploy PORT=build/board/tty` and the rest work against it.
board: $(STAMP)
	mkdir -p build/board/flash
	$(BIN)/python tools/boardemu.py --flash build/board/flash --link build/board/tty

# DRS and LwA on https://localhost:$(EMU_PORT), as examples/ expects them: a test registration
# of slot-a, client id amzn1.application-oa2-client.test, secret test-secret, the CA in
# build/certs/ca.pem. `make auth-code` (another terminal) prints a fresh authorization code.
EMU_PORT ?= 8443
emulator: certs
	@echo "DRS/LwA emulator on https://localhost:$(EMU_PORT) (CA $(CERTS)/ca.pem); Ctrl-C stops it"
	@echo "an authorization code for registration: make auth-code"
	$(BIN)/python tools/drs_emulator.py --certs $(CERTS) --port $(EMU_PORT) --test-device
auth-code: $(STAMP)
	@$(BIN)/python tools/drs_emulator.py auth-code --port $(EMU_PORT) --certs $(CERTS) \
	  $(if $(CHALLENGE),--challenge $(CHALLENGE))

# The suite on two workers (most of its time is spent waiting on sockets and subprocesses).
JOBS ?= 2
test: certs mplib broker lint
	$(BIN)/pytest -q -n $(JOBS)

clean:
	rm -rf build .pytest_cache

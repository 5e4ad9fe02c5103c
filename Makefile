# gridedge: one-command set-up. `make demo` and `make test` each run `setup` first, so each
# works alone on a fresh Debian machine (Python >= 3.11; root for apt-get, else a message).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup test lint demo bench eval soak flash frame-size clean

setup: $(INSTALLED) mpy-deps mosquitto

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gridedge needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: mpy-deps
mpy-deps: $(INSTALLED)
	@$(BIN)/gridedge fetch-mpy-deps

# OS packages: Mosquitto (broker for the gateway's tests and the demo; mosquitto-clients
# for mosquitto_sub) and socat (the pty bridge of the virtual device `gridedge
# flash` is tested against). Each is installed when missing.
.PHONY: mosquitto
mosquitto:
	@missing=""; \
	{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v socat >/dev/null 2>&1 || missing="$$missing socat"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "gridedge: missing OS packages; install them with: sudo apt-get install$$missing" >&2; \
	fi

lint: $(INSTALLED)
	$(BIN)/ruff check gateway tools tests
	$(BIN)/mypy gateway tools
	$(BIN)/basedpyright --project pyproject.toml

# Four workers on two cores: the tests mostly wait (brokers, subprocesses, timers), and 623
# of them took 4:55 with three workers, 3:41 with four.
test: setup lint
	$(BIN)/python -m pytest -n 4

# The whole system on this machine; Ctrl-C stops it. DEMO_SECONDS=60 make demo runs it for
# a fixed time and prints a summary (CI does that).
demo: setup
	$(BIN)/gridedge demo

bench: setup
	$(BIN)/python -m tools.bench --json build/bench.json

# The edge detectors on a seeded, labelled corpus (tools/evaluate.py): a table and
# build/eval.json. EVAL_PART=tune runs the seeds kept for tuning.
eval: setup
	$(BIN)/python -m tools.evaluate --part $(or $(EVAL_PART),report) --json build/eval.json

# Long fault-injection runs (default 10 minutes; SOAK_SECONDS=60 make soak for a short one).
soak: setup
	$(BIN)/python -m pytest -m soak -p no:cacheprovider -s

# make flash BOARD=esp32-devkitc PORT=/dev/ttyUSB0 [CONFIG=site.json] [FLASH_ARGS="--wipe"]
flash: setup
	@if [ -z "$(BOARD)" ] || [ -z "$(PORT)" ]; then \
	  echo "usage: make flash BOARD=NAME PORT=/dev/ttyUSB0 [CONFIG=FILE] [FLASH_ARGS='--dry-run --wipe']" >&2; \
	  echo "boards: $$(cd boards && ls *.json | sed 's/\.json$$//' | tr '\n' ' ')" >&2; exit 2; \
	fi
	$(BIN)/gridedge flash --board $(BOARD) --port $(PORT) $(if $(CONFIG),--config $(CONFIG)) $(FLASH_ARGS)

frame-size: setup
	@$(BIN)/gridedge frame-size

clean:
	rm -rf build .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis

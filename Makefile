# polekit: the two fresh-machine commands are `make demo` and `make test`.
# Every target bootstraps what it needs, once: a virtualenv with polekit installed
# editable, the MicroPython WebAssembly port from npm, and (as root, when missing)
# Debian's mosquitto. Re-runs only redo a step whose inputs changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps

.PHONY: demo test lint typecheck unit unit-as-user fuzz setup clean

demo: setup
	$(VENV)/bin/polekit demo

test: setup lint typecheck unit unit-as-user

setup: $(STAMPS)/venv $(STAMPS)/refs $(STAMPS)/npm $(STAMPS)/system

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The host code, then the MicroPython code (firmware/node, protocols/) against the ESP32's
# API: MicroPython 1.27's stubs with the corrections in tests/chip_overrides/.
typecheck: setup
	$(VENV)/bin/mypy polekit gateway firmware hil boards
	$(PY) tests/chipapi.py

unit: setup
	$(PY) -m pytest -q

# As root: a fast subset again as an unprivileged user, after root's run has left its files in
# the shared temporary folder, so what a normal user meets is proven too (.ci/test-as-user).
unit-as-user: unit
	.ci/test-as-user

# The long fuzz run, on demand (make test runs a short one): each parser for FUZZ_SECONDS
# (default 60), or only FUZZ_TARGETS="cbor senml_cbor"; FUZZ_SEED=N repeats a run. Failing
# inputs are kept in tests/fuzz/corpus/, which make test replays. See docs/protocols.md.
FUZZ_SECONDS ?= 60
fuzz: setup
	$(PY) tests/fuzz/fuzzkit.py --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED)) $(FUZZ_TARGETS)

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# the platforms' own clients (ThingsBoard's tb-mqtt-client, pysparkplug), which the
# platform tests run as references: a virtualenv each (.venv-refs/NAME), as their
# paho-mqtt copies and pins conflict with aiomqtt's and with each other (tests/refs/)
$(STAMPS)/refs: tests/refs/thingsboard.txt tests/refs/sparkplug.txt
	@mkdir -p $(STAMPS)
	for r in thingsboard sparkplug; do \
		test -x .venv-refs/$$r/bin/python || $(PYTHON) -m venv .venv-refs/$$r; \
		.venv-refs/$$r/bin/python -m pip install --quiet -r tests/refs/$$r.txt || exit 1; \
	done
	@touch $@

$(STAMPS)/npm: package.json package-lock.json
	@mkdir -p $(STAMPS)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# mosquitto is the broker the integration tests prefer; without it they use amqtt.
$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's mosquitto (the tests start their own on loopback)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null; \
	else echo "note: mosquitto not found and not root; tests fall back to the embedded amqtt broker"; fi
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache

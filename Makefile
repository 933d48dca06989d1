# Berth developer entry points. `make deps` is idempotent: it installs only what is missing.
#   make deps   Debian packages (as root, apt-get only when something is missing) + .venv
#   make test   the whole suite (unit, integration, e2e, browser); extra pytest args via ARGS="..."
#   make run    a complete local Berth: PostgreSQL, Redis, Docker engine, web, worker, beat, agent
#   make lint   ruff

SHELL := /bin/bash
PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp
REQUIREMENTS := requirements.txt $(wildcard agent/requirements.txt)

# What the harness, `make run` and the browser tests need from Debian.
DEB_PACKAGES := python3 python3-venv ca-certificates postgresql redis-server docker.io containerd runc \
	iptables iproute2 util-linux busybox-static chromium
# npm fetches the dashboard's front-end libraries (package-lock.json); Debian's if there is none.
ifeq ($(shell command -v npm),)
DEB_PACKAGES += nodejs npm
endif

# Front-end libraries: pinned in package-lock.json, copied from node_modules into a
# gitignored static directory. No CDN, no build step.
VENDOR := web/static/vendor
VENDOR_FILES := $(VENDOR)/xterm/xterm.js $(VENDOR)/xterm/xterm.css $(VENDOR)/xterm/addon-fit.js \
	$(VENDOR)/uplot/uPlot.iife.min.js $(VENDOR)/uplot/uPlot.min.css

.PHONY: deps system-deps vendor test run lint clean-test-leftovers

deps: system-deps $(STAMP) vendor

vendor: $(VENDOR)/.stamp

# `npm ci` whenever node_modules is missing or package-lock.json is newer.
node_modules/.package-lock.json: package-lock.json | system-deps
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

$(VENDOR)/.stamp: node_modules/.package-lock.json
	mkdir -p $(VENDOR)/xterm $(VENDOR)/uplot
	cp node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css $(VENDOR)/xterm/
	cp node_modules/@xterm/addon-fit/lib/addon-fit.js $(VENDOR)/xterm/
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(VENDOR)/uplot/
	cp node_modules/@xterm/xterm/LICENSE $(VENDOR)/xterm/LICENSE
	cp node_modules/uplot/LICENSE $(VENDOR)/uplot/LICENSE
	touch $@

system-deps:
	@if ! command -v dpkg-query >/dev/null; then \
		echo "make deps: not a Debian system; install by hand: $(DEB_PACKAGES)"; exit 0; \
	fi; \
	missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$pkg 2>/dev/null | grep -q '^ii' || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make deps: missing Debian packages:$$missing"; \
		echo "  install them with: sudo apt-get install -y$$missing   (or run 'sudo make deps')"; \
		exit 1; \
	fi; \
	echo "make deps: installing$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y$$missing

$(PY): | system-deps
	$(PYTHON3) -m venv $(VENV)

# Reinstalled whenever a requirements file is newer than the stamp.
$(STAMP): $(REQUIREMENTS) | $(PY)
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	touch $@

test: deps
	$(PY) -m pytest $(ARGS)

run: deps
	$(PY) -m devtools.run

lint: deps
	$(VENV)/bin/ruff check .

# Remove what killed test runs left behind (namespaces, engines, servers under /tmp/berth-test-*).
# Runs of other live sessions are never touched. Every test run also does this at its start.
clean-test-leftovers: deps
	$(PY) -m tests.harness cleanup

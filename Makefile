# The two commands that do everything on a fresh Debian 12 machine (as root):
#   make demo   - a local multi-node Slurm cluster and a training job on it
#   make test   - the whole test suite, cluster tests included
# Each installs what it needs: Debian packages (Slurm, munge, MariaDB) and a virtualenv in .venv.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SYSTEM_PACKAGES = slurm-wlm munge slurmdbd mariadb-server postgresql iproute2 util-linux
PYTEST_ARGS ?=

.PHONY: all deps system-deps venv test unit cluster bench demo demo-down clean

all: test

deps: system-deps venv

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

test: deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -m 'not cluster' $(PYTEST_ARGS)

cluster: deps
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

bench: deps
	$(BIN)/python benchmarks/attribution.py
	$(BIN)/python benchmarks/detectors.py
	$(BIN)/python benchmarks/telemetry.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/outbox.py
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/matcher.py
	$(BIN)/python benchmarks/recovery.py

demo: deps
	AJR=$(abspath $(BIN))/ajr PYTHON=$(abspath $(BIN))/python bash slurm_examples/demo.sh

demo-down: venv
	$(BIN)/ajr lab down

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

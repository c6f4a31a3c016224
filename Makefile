# Two commands do everything on a fresh machine:
#   make demo   simulator -> ... -> report, on small defaults
#   make test   the test suite (plus lint and type checks)
# Both create or reuse .venv at the repo root and install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.emgkey-installed
DEMO_OUT ?= runs/demo

.PHONY: venv test test-slow check lint typecheck demo clean

venv: $(STAMP)

# torch is installed first, alone and pinned, so pip takes the CPU wheel from
# this machine's disk before any other package can ask a resolver for one.
# requirements-constraints.txt pins every package (pip included) to the versions
# the tests last passed with.
$(STAMP): pyproject.toml requirements-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements-constraints.txt --upgrade pip
	$(PIP) install -c requirements-constraints.txt torch==2.13.0
	$(PIP) install -c requirements-constraints.txt -e '.[all,dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy emgkey firmware_sim edge_runtime

check: lint typecheck

test: venv check
	$(PY) -m pytest -m "not slow" -q

test-slow: venv
	$(PY) -m pytest -m slow -q

demo: venv
	$(VENV)/bin/emgkey demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

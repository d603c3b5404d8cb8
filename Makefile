# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest sysdeps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# System tools the tests use for real: ssh-keygen, gpg. Installed only when missing (as root).
sysdeps:
	@bash scripts/sysdeps.sh

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check reconciler agent schema tests bench
	$(VENV)/bin/ruff format --check reconciler agent schema tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) sysdeps
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

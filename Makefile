# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest sysdeps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# llama-cpp-python builds from source (~5 min on 2 cores): CPU only, no BLAS/GPU, portable
# x86-64/arm64 code; pip keeps the built wheel in its cache, so later installs take seconds.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF
PIP_CACHE ?= $(HOME)/.cache/pip

$(STAMP): $(PY) pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || echo 2) \
		$(PY) -m pip install -q --cache-dir "$(PIP_CACHE)" -e '.[server,test,llama,mlx]'
	touch $(STAMP)

# System tools the tests use for real: ssh-keygen, gpg, age. Installed only when missing (as root).
sysdeps:
	@bash scripts/sysdeps.sh

# The demo needs the server extra (no test tools, no model runtimes to build):
# skipped when the full install above is already there.
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): $(PY) pyproject.toml
	test -f $(STAMP) || $(PY) -m pip install -q -e '.[server]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check reconciler agent schema fleetkeeper_common tests bench scripts
	$(VENV)/bin/ruff format --check reconciler agent schema fleetkeeper_common tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# pytest-xdist workers: the tests mostly wait on subprocesses (agents, servers, git), so
# more workers than the 2 CI cores pay off; PYTEST_WORKERS=0 runs serially. loadgroup hands
# out one test at a time to whichever worker is free (no long tail on one worker).
PYTEST_WORKERS ?= 4
pytest: $(STAMP) sysdeps
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

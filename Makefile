# Fluid: the two commands a new user needs, plus a few for developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test install browser test-fast lint format clean

# Create the virtual environment and install Fluid with its test tools (once).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Generate the demo page from the shipped models (offline, CPU, a few minutes at most).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fluid demo --out demo

# The interactive page on http://localhost:7860 (this machine only; Ctrl-C stops it).
serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fluid serve

# Chromium for the browser tests (Debian's package; they skip, saying why, without it).
browser:
	bash scripts/install-chromium.sh

# The whole test suite.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n 2 --dist loadfile

# Lint and format checks (ruff, settings in pyproject.toml); `make format` rewrites in place.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n 2 --dist loadfile -m "not slow"

clean:
	rm -rf $(VENV) demo *.egg-info .pytest_cache

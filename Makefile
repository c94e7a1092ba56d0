# make test: venv + CPU torch + project + tests.  make demo: the main job end to end.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CORPUS ?=
DEMO_OUT ?= demo-out
NPROC ?= 2
STEPS ?= 150

.PHONY: install test test-slow test-all lint demo bench bench-setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, from the local file: a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# compat editable mode puts the checkout on sys.path, so a data folder named shards/ or pipeline/
	# in the working directory cannot shadow the packages (the default mode's import hook comes last).
	$(BIN)/pip install -q -e '.[test,ray,s3,http,plot,tensorboard]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

# The default suite (~4 min of tests on 2 cores); the slow tests (~15 min) run in CI too (.ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shards pipeline tools tests

demo: $(STAMP)
	$(BIN)/python -m tools.demo --out $(DEMO_OUT) --nproc $(NPROC) --steps $(STEPS) $(if $(CORPUS),--corpus $(CORPUS),)

bench-setup: $(STAMP)
	$(BIN)/python -m tools.bench --setup-peers

bench: $(STAMP)
	$(BIN)/python -m tools.bench --out bench.json --plot bench.png

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis *.egg-info

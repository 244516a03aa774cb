# `make demo`: set up and run the main job; `make test`: set up and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-test demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

setup: $(PY)
	$(PIP) install --quiet -e .

setup-test: $(PY)
	$(PIP) install --quiet -e ".[test]"
	# taming's reference modules for the parity tests; --no-deps: see setup.cfg.
	$(PIP) install --quiet --no-deps taming-transformers-rom1504==0.0.6

demo: setup
	$(VENV)/bin/vqgan-flax reconstruct examples/images --size 256 --out build/demo/reconstructions --quiet
	$(PY) examples/parity_demo.py --output build/demo/parity

test: setup-test
	$(PY) -m ruff check vqgan_flax tests examples benchmarks scripts
	$(PY) -m pytest -q

lint: setup-test
	$(PY) -m ruff check vqgan_flax tests examples benchmarks scripts
	$(PY) -m ruff format --check vqgan_flax tests examples benchmarks scripts

clean:
	rm -rf $(VENV) build

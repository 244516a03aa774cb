# `make demo`: set up the current stack (.venv-current) and run the main job.
# `make test`: set up both stacks, lint (ruff check, ruff format --check, mypy) and run the whole suite
#   on each (what CI runs).
#   legacy  (.venv):         Python 3.11, transformers 4.57.6 (Flax classes), jax 0.10.2, flax 0.12.8,
#                            huggingface_hub 0.36, torch 2.13.0 CPU + the taming reference;
#   current (.venv-current): Python >= 3.12 with the newest jax, flax, transformers 5.x, huggingface_hub.
LEGACY_VENV ?= .venv
CURRENT_VENV ?= .venv-current
LEGACY_PY := $(LEGACY_VENV)/bin/python
CURRENT_PY := $(CURRENT_VENV)/bin/python
PIP_QUIET := --quiet --disable-pip-version-check
# taming's reference modules for the parity tests, and the Lightning its VQModel subclasses (for
# scripts/make_taming_fixtures.py --check); --no-deps: taming's declared dependencies pull a
# torchvision that does not import beside torch 2.13, Lightning's would re-resolve torch.
TAMING := taming-transformers-rom1504==0.0.6 pytorch-lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0
LINT_PATHS := vqgan_flax tests examples benchmarks scripts ci

.PHONY: setup setup-test demo test test-legacy test-current lint clean

$(LEGACY_VENV)/.installed: pyproject.toml ci/legacy-constraints.txt
	py=$$(ci/find-python.sh legacy) && $$py -m venv $(LEGACY_VENV)
	$(LEGACY_PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(LEGACY_PY) -m pip install $(PIP_QUIET) -c ci/legacy-constraints.txt -e ".[test]"
	$(LEGACY_PY) -m pip install $(PIP_QUIET) --no-deps $(TAMING)
	touch $@

# The newest jax, flax, transformers and huggingface_hub go in first, as a user's environment would
# have them; installing vqgan-flax beside them must change none of them (checked, else the setup fails).
$(CURRENT_VENV)/.installed: pyproject.toml
	py=$$(ci/find-python.sh current) && $$py -m venv $(CURRENT_VENV)
	$(CURRENT_PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(CURRENT_PY) -m pip install $(PIP_QUIET) --upgrade jax jaxlib flax transformers huggingface_hub
	$(CURRENT_PY) ci/core_versions.py record $(CURRENT_VENV)/core-versions.json
	$(CURRENT_PY) -m pip install $(PIP_QUIET) -e ".[eval]"
	$(CURRENT_PY) ci/core_versions.py compare $(CURRENT_VENV)/core-versions.json
	touch $@

$(CURRENT_VENV)/.installed-test: $(CURRENT_VENV)/.installed
	$(CURRENT_PY) -m pip install $(PIP_QUIET) -e ".[test]"
	$(CURRENT_PY) ci/core_versions.py compare $(CURRENT_VENV)/core-versions.json
	touch $@

setup: $(CURRENT_VENV)/.installed

setup-test: $(LEGACY_VENV)/.installed $(CURRENT_VENV)/.installed-test

demo: setup
	$(CURRENT_VENV)/bin/vqgan-flax reconstruct examples/images --size 256 --out build/demo/reconstructions --quiet
	$(CURRENT_PY) examples/parity_demo.py --output build/demo/parity
	$(CURRENT_PY) scripts/evaluate_default_model.py --json build/demo/evaluation.json

# Each stack's suite also checks folders against the other stack's interpreter; on the legacy
# stack the PyTorch reference must import (a missing torch fails instead of skipping). The two
# suites run side by side (each prints its output when it ends); either failing fails the target.
# Each suite runs in two pytest-xdist workers that steal work from each other, so the stack that
# ends first leaves both cores to the other instead of one idle.
PYTEST_ARGS ?= -q --durations=25 -n 2 --dist worksteal
test: setup-test lint
	$(MAKE) --no-print-directory -j2 --output-sync=target test-legacy test-current

test-legacy: $(LEGACY_VENV)/.installed
	@echo "== legacy stack: $$($(LEGACY_PY) ci/core_versions.py show)"
	VQGAN_FLAX_REQUIRE_TORCH=1 VQGAN_FLAX_OTHER_PYTHON=$(abspath $(CURRENT_PY)) $(LEGACY_PY) -m pytest $(PYTEST_ARGS)

test-current: $(CURRENT_VENV)/.installed-test
	@echo "== current stack: $$($(CURRENT_PY) ci/core_versions.py show)"
	VQGAN_FLAX_OTHER_PYTHON=$(abspath $(LEGACY_PY)) $(CURRENT_PY) -m pytest $(PYTEST_ARGS)

# ruff's lint rules and formatting on everything, and mypy's basic check of the package.
lint: $(LEGACY_VENV)/.installed
	$(LEGACY_PY) -m ruff check $(LINT_PATHS)
	$(LEGACY_PY) -m ruff format --check $(LINT_PATHS)
	$(LEGACY_PY) -m mypy

clean:
	rm -rf $(LEGACY_VENV) $(CURRENT_VENV) build

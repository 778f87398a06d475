# One-command entry points. Each target creates the virtual environment itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= /tmp/t5x_instruct_quickstart
RUN_GIN ?= gin/runs/quickstart.gin
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (one per core; `--dist loadgroup` hands out tests one
# by one, except that tests sharing a module-scoped training run stay on one worker:
# tests/conftest.py groups them). 0 runs in-process.
PYTEST_WORKERS ?= auto
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-next lint quickstart adapt-demo distill-demo ablate-demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	# Pin the CPU build first: an open range would pull the newest (CUDA) torch wheels.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	# PromptSource's real template files for the P3 tests. Its metadata pins Python < 3.10
	# and old streamlit, neither of which its templates need, hence no deps / no version check.
	$(PY) -m pip install -q --no-deps --ignore-requires-python "promptsource==0.2.3"
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(PY) -m ruff check t5x_instruct tasks tests tools
	$(PY) -m ruff format --check t5x_instruct tasks tests tools

test: setup lint
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
		$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Second CI environment: the next Python / JAX generation (the GPU machines' Python 3.12 and
# jax 0.11), the whole suite. It installs pyproject's dependencies with TensorFlow, seqio and
# TFDS (tools/next_requirements.py) but without torch/transformers (PyPI's torch is a
# multi-GB CUDA build for this Python): the Hugging Face oracle tests are skipped there, each
# with a reason naming this environment (tests/helpers/next_environment.py). 14 min on
# 2 cores; `make test-next NEXT_PYTEST_ARGS=--core-selection` runs only each JAX surface
# that changes between generations once (kernels, Pallas interpret + lowering, sharded
# Pallas, partitioning, models, train step, checkpoints, decoding, plug-ins, TPU AOT): 2 min.
NEXT_PYTEST_ARGS ?= -n $(PYTEST_WORKERS) --dist loadgroup
NEXT_PYTHON_VERSION ?= 3.12
NEXT_JAX_SPEC ?= jax[tpu]==0.11.2
NEXT_VENV ?= .venv312
NEXT_PY := $(NEXT_VENV)/bin/python
# pyenv's 3.12.x (found in its versions folder, so pyenv need not be on PATH), else python3.12.
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
NEXT_PYTHON ?= $(or $(lastword $(sort $(wildcard $(PYENV_VERSIONS)/$(NEXT_PYTHON_VERSION).[0-9]*/bin/python))),$(shell command -v python$(NEXT_PYTHON_VERSION)))

$(NEXT_VENV)/.installed: pyproject.toml tools/next_requirements.py
	@if [ -z "$(NEXT_PYTHON)" ]; then \
		echo "make test-next: no Python $(NEXT_PYTHON_VERSION) found (neither pyenv nor" \
			"python$(NEXT_PYTHON_VERSION) on PATH). Install one (pyenv install $(NEXT_PYTHON_VERSION)" \
			"/ apt-get install python$(NEXT_PYTHON_VERSION)-venv) or pass NEXT_PYTHON=/path/to/python." >&2; \
		exit 1; fi
	$(NEXT_PYTHON) -m venv $(NEXT_VENV)
	$(NEXT_PY) -m pip install -q --upgrade "pip>=24"
	$(NEXT_PY) tools/next_requirements.py --jax "$(NEXT_JAX_SPEC)" > $(NEXT_VENV)/requirements.txt
	$(NEXT_PY) -m pip install -q -r $(NEXT_VENV)/requirements.txt
	$(NEXT_PY) -m pip install -q --no-deps -e .
	$(NEXT_PY) -m pip install -q --no-deps --ignore-requires-python "promptsource==0.2.3"
	touch $@

test-next: $(NEXT_VENV)/.installed
	$(NEXT_PY) -c "import jax, sys; print('test-next: Python', sys.version.split()[0], 'jax', jax.__version__)"
	T5X_INSTRUCT_NEXT_ENVIRONMENT=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 \
		JAX_PLATFORMS=cpu $(NEXT_PY) -m pytest -q $(NEXT_PYTEST_ARGS)

quickstart: setup
	JAX_PLATFORMS=cpu $(PY) -m t5x_instruct.train \
		--gin_file=$(RUN_GIN) \
		--gin.MODEL_DIR="'$(MODEL_DIR)'"

# Prompt tuning vs LoRA vs full fine-tuning from the quickstart model on its held-out task
# (docs/plugins.md); trains the quickstart model first if MODEL_DIR has none.
adapt-demo: setup
	JAX_PLATFORMS=cpu $(PY) tools/adapt_heldout.py --base_dir=$(MODEL_DIR) \
		--out_dir=$(MODEL_DIR)_adapt

# Distil the quickstart model into a half-width T5: CE vs each KD loss vs on-policy
# (docs/distillation.md); trains the quickstart model first if MODEL_DIR has none.
distill-demo: setup
	JAX_PLATFORMS=cpu $(PY) tools/distill_demo.py --teacher_dir=$(MODEL_DIR) \
		--out_dir=$(MODEL_DIR)_distill

# Mixture ablation on the demo data: number of task types and templates per task vs
# held-out generalisation (docs/ablations.md). Re-running skips finished variants; pass
# e.g. ABLATE_ARGS=--out_dir=/path to choose the output folder.
ablate-demo: setup
	JAX_PLATFORMS=cpu $(PY) tools/ablate.py run gin/ablations/tasks_and_templates.yaml \
		$(ABLATE_ARGS)

clean:
	rm -rf $(VENV) $(NEXT_VENV) .pytest_cache .ruff_cache

# One-command entry points. Each target creates the virtual environment itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= /tmp/t5x_instruct_quickstart
RUN_GIN ?= gin/runs/quickstart.gin
PYTEST_ARGS ?=
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint quickstart adapt-demo distill-demo ablate-demo bench clean

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
		$(PY) -m pytest -q $(PYTEST_ARGS)

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
	rm -rf $(VENV) .pytest_cache .ruff_cache

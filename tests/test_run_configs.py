"""Every run config in gin/runs parses with its includes and builds a model that fits its data."""

from __future__ import annotations

from pathlib import Path

import gin
import jax
import pytest
from flax import nnx

import tasks.demo
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import build_model
from t5x_instruct.training.loop import train  # noqa: F401  (registers `train`'s bindings)

RUNS = sorted((Path(__file__).resolve().parents[1] / "gin" / "runs").glob("*.gin"))
FILLED_IN = {  # what finetune.gin leaves to the user
    "MIXTURE_OR_TASK_NAME": "'demo_instructions'",
    "TASK_FEATURE_LENGTHS": "{'inputs': 48, 'targets': 8}",
    "TRAIN_STEPS": "10",
}


@pytest.mark.parametrize("run", RUNS, ids=[r.stem for r in RUNS])
def test_run_config_parses_and_its_model_covers_the_vocabulary(run: Path) -> None:
    files: list[str | Path] = [run]
    overrides = []  # quickstarts are self-contained: model, data and steps included
    if not run.stem.startswith("quickstart"):  # generic runs take a model preset and data
        files = ["models/t5_1_1/mini.gin", run]
        overrides = [f"{k} = {v}" for k, v in FILLED_IN.items()]
    parse_gin(files, [*overrides, "MODEL_DIR = '/tmp/unused'"], clear=True)
    mixture = gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value")
    model = nnx.eval_shape(build_model)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) > 0
    if mixture.startswith("demo_"):
        vocab = tasks.demo.seqio_tasks._vocabulary()
        assert model.cfg.vocab_size >= vocab.vocab_size, (run.name, model.cfg.vocab_size)

"""A MODEL_DIR holding only a parameters-only checkpoint (a conversion's output) trains as a
warm start from it instead of failing on missing optimizer state; later runs resume.

Oracle: with a zero learning rate the trained checkpoint must hold exactly the saved
parameters (drawn with another seed than the model's own initialisation)."""

from __future__ import annotations

import logging

import gin
import jax
import numpy as np
from flax import nnx

import tasks.demo
from t5x_instruct import partitioning
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.loop import train
from t5x_instruct.training.param_checkpoints import (
    checkpoint_steps,
    is_params_only,
    restore_model_params,
    save_params,
)
from t5x_instruct.training.train_state import ModelSpec

CONFIG = T5Config(
    vocab_size=640, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip


def _train(model_dir, steps: int):
    return train(
        model_dir=str(model_dir),
        mixture_or_task_name=tasks.demo.TRAIN_MIXTURE,
        task_feature_lengths=tasks.demo.TASK_FEATURE_LENGTHS,
        train_steps=steps,
        batch_size=8,
        log_period=1,
        checkpoint_period=2,
        async_checkpointing=False,
        final_eval=False,
        progress_bar=False,
        model_spec=ModelSpec.create(lambda: build_model(CONFIG)),
    )


def test_params_only_model_dir_is_a_warm_start_then_resumes(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="t5x_instruct")
    gin.parse_config("learning_rate_schedule.base_learning_rate = 0.0")
    other = nnx.to_pure_dict(nnx.state(build_model(CONFIG, seed=7)))
    save_params(str(tmp_path), other, step=0)
    assert is_params_only(str(tmp_path), 0)

    _train(tmp_path, 2)
    assert "Warm start from the parameters-only checkpoint" in caplog.text
    assert checkpoint_steps(str(tmp_path)) == [0, 2] and not is_params_only(str(tmp_path), 2)
    spec = ModelSpec.create(lambda: build_model(CONFIG))
    mesh = partitioning.create_mesh(partitioning.MeshConfig())
    rules = partitioning.standard_logical_axis_rules()
    trained = restore_model_params(str(tmp_path), spec, mesh, rules, step=2)
    flat_saved = jax.tree_util.tree_leaves_with_path(other)
    flat_trained = dict(jax.tree_util.tree_leaves_with_path(trained))
    for path, value in flat_saved:
        np.testing.assert_array_equal(np.asarray(flat_trained[path]), value, err_msg=str(path))

    caplog.clear()
    _train(tmp_path, 4)  # the training checkpoint (step 2) now wins over the params-only one
    assert "Resumed from" in caplog.text and "Warm start" not in caplog.text
    assert checkpoint_steps(str(tmp_path))[-1] == 4

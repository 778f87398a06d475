"""Plug-in hooks inside the real training loop (demo data): auxiliary state that is
checkpointed and resumed, eval metrics, a stop action, checkpoint exports, and the error for
a MODEL_DIR saved without a plug-in's parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tasks.demo
from t5x_instruct.errors import UserInputError
from t5x_instruct.layers.sequence import EmbeddedSequence
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.plugins import Action, AuxState, Plugin
from t5x_instruct.training.loop import train
from t5x_instruct.training.metrics import read_metrics
from t5x_instruct.training.train_state import ModelSpec

TINY = T5Config(
    vocab_size=640, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip


class StepCounter(Plugin):
    """Counts updates in the train state, reports it at evals, stops at ``stop_at``."""

    name = "counter"

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.exports: list[tuple[int, int]] = []

    def aux_state(self, setup):
        from jax.sharding import NamedSharding, PartitionSpec

        replicated = NamedSharding(setup.mesh, PartitionSpec())
        return AuxState(
            abstract={"updates": jax.ShapeDtypeStruct((), jnp.int32)},
            shardings={"updates": replicated},
            init=lambda: {"updates": jax.device_put(jnp.zeros((), jnp.int32), replicated)},
        )

    def update_aux(self, aux, params, step):
        return {"updates": aux["updates"] + 1}

    def eval_metrics(self, ctx) -> dict[str, float]:
        return {"updates": float(jax.device_get(ctx.aux["updates"]))}

    def after_eval(self, step: int, metrics: Mapping[str, float]) -> Action:
        return Action.STOP if self.stop_at is not None and step >= self.stop_at else Action.CONTINUE

    def on_checkpoint(self, ctx) -> None:
        self.exports.append((ctx.step, int(ctx.fetch(ctx.aux)["updates"])))


def _train(model_dir: Path, plugins, steps: int = 6, **overrides):
    args = dict(
        model_dir=str(model_dir),
        mixture_or_task_name=tasks.demo.TRAIN_MIXTURE,
        task_feature_lengths=dict(tasks.demo.TASK_FEATURE_LENGTHS),
        train_steps=steps,
        batch_size=8,
        log_period=2,
        checkpoint_period=2,
        eval_period=2,
        eval_mixture_or_task_name=tasks.demo.HELDOUT_TASK,
        max_eval_examples=8,
        eval_batch_size=8,
        async_checkpointing=False,
        progress_bar=False,
        plugins=plugins,
        model_spec=ModelSpec.create(lambda: build_model(TINY)),
    )
    args.update(overrides)
    return train(**args)


def test_aux_state_metrics_stop_and_exports(tmp_path) -> None:
    counter = StepCounter(stop_at=4)
    summary = _train(tmp_path, [counter], steps=6)
    # Stopped at the eval of step 4 (saved there), not at train_steps.
    assert summary["stopped_early"] == {"step": 4, "by": ["counter"]}
    assert summary["step"] == 4
    records = {r["step"]: r for r in read_metrics(str(tmp_path))}
    assert sorted(records) == [2, 4]
    # The aux counter rode along in the train state: one update per step.
    assert records[2]["counter/updates"] == 2.0
    assert records[4]["counter/updates"] == 4.0
    assert summary["plugins"]["counter/updates"] == 4.0
    assert counter.exports == [(2, 2), (4, 4)]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["stopped_early"]["step"] == 4

    # Resume: the counter comes back from the checkpoint, not from zero.
    resumed = StepCounter()
    summary = _train(tmp_path, [resumed], steps=6)
    assert summary["step"] == 6
    assert resumed.exports == [(6, 6)]


class _AddVector(nnx.Module):
    def __init__(self, dim: int) -> None:
        self.vector = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, seq: EmbeddedSequence) -> EmbeddedSequence:
        return seq.replace(x=seq.x + self.vector[...].astype(seq.x.dtype))


class AddVector(Plugin):
    name = "add_vector"

    def transform_model(self, model, rngs):
        model.add_sequence_hook(self.name, _AddVector(model.cfg.emb_dim))
        return model

    def owns(self, path: str) -> bool:
        return path.startswith("sequence_hooks/add_vector/")


def test_resuming_without_a_plugins_parameters_names_the_plugin(tmp_path) -> None:
    _train(tmp_path, [], steps=2, eval_period=0, final_eval=False)
    with pytest.raises(
        UserInputError, match="parameter sequence_hooks/add_vector/vector of plug-in 'add_vector'"
    ):
        _train(tmp_path, [AddVector()], steps=4, eval_period=0, final_eval=False)


def test_warm_start_from_a_base_checkpoint_initialises_plugin_params(tmp_path) -> None:
    base = tmp_path / "base"
    _train(base, [], steps=2, eval_period=0, final_eval=False)
    summary = _train(
        tmp_path / "adapted", [AddVector()], steps=2, eval_period=0, final_eval=False,
        initial_checkpoint_path=str(base), fallback_to_scratch=True,
    )  # fmt: skip
    assert summary["trainable_params"] == summary["params"]  # nothing frozen by this plug-in
    assert np.isfinite(read_metrics(str(tmp_path / "adapted"))[-1]["loss"])

"""Params-only checkpoints, and restoring only the parameters of any checkpoint, sharded."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.models import build, tiny_decoder_config, tiny_t5_config

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import build_model
from t5x_instruct.training.checkpoints import (
    Checkpointer,
    CheckpointShapeError,
    load_params_for_warm_start,
)
from t5x_instruct.training.param_checkpoints import (
    CheckpointNotFoundError,
    checkpoint_steps,
    is_params_only,
    resolve_checkpoint,
    restore_model_params,
    save_params,
)
from t5x_instruct.training.train_state import ModelSpec, init_train_state


def _params(cfg) -> dict:
    """Known values (drawn in numpy by the test helpers), as host arrays."""
    model = build(cfg)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _spec(cfg) -> ModelSpec:
    return ModelSpec.create(lambda: build_model(cfg))


MESHES = {
    "fsdp": (partitioning.MeshConfig(data=1, fsdp=8), "fsdp"),
    "tensor": (partitioning.MeshConfig(data=1, fsdp=2, tensor=4), "tensor"),
}


@pytest.mark.parametrize("layout", sorted(MESHES))
def test_params_only_checkpoint_restores_identical_values_in_target_shardings(
    tmp_path, layout: str
) -> None:
    cfg = tiny_t5_config()
    params = _params(cfg)
    step_dir = save_params(str(tmp_path), params, step=7)
    assert step_dir == str(tmp_path / "checkpoints" / "7")
    assert checkpoint_steps(str(tmp_path)) == [7]
    assert is_params_only(str(tmp_path))

    mesh_config, parallelism = MESHES[layout]
    mesh = partitioning.create_mesh(mesh_config)
    rules = partitioning.standard_logical_axis_rules(parallelism)
    spec = _spec(cfg)
    restored = restore_model_params(str(tmp_path), spec, mesh, rules)
    want = spec.param_shardings(mesh, rules)
    flat_got = jax.tree_util.tree_leaves_with_path(restored)
    flat_want = jax.tree.leaves(params)
    assert len(flat_got) == len(flat_want)
    split = 0
    for (path, got), value, sharding in zip(flat_got, flat_want, jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(got), value, err_msg=str(path))
        assert got.sharding.is_equivalent_to(sharding, got.ndim), path
        split += got.addressable_shards[0].data.size < got.size
    assert split >= 10  # most parameters are really split, not replicated


def test_params_of_a_training_checkpoint_only(tmp_path) -> None:
    """A full TrainState checkpoint (with optimizer slots) gives back just its params."""
    cfg = tiny_decoder_config(scan=True)
    params = jax.tree.map(jnp.asarray, _params(cfg))
    state = init_train_state(params, optax.adam(1e-3)).replace(step=jnp.asarray(3, jnp.int32))
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(state, {"position": 3}, force=True)
    ckpt.close()
    assert not is_params_only(str(tmp_path))
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, fsdp=4))
    rules = partitioning.standard_logical_axis_rules()
    restored = restore_model_params(str(tmp_path / "checkpoints" / "3"), _spec(cfg), mesh, rules)
    for got, value in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(value))


def test_params_only_checkpoint_is_a_warm_start_and_a_checkpointer_step(tmp_path) -> None:
    cfg = tiny_t5_config()
    params = _params(cfg)
    save_params(str(tmp_path), params, step=0)
    assert Checkpointer(str(tmp_path)).latest_step() == 0
    spec = _spec(cfg)
    zeros = jax.tree.map(jnp.zeros_like, spec.abstract_params())
    warm = load_params_for_warm_start(str(tmp_path), spec.abstract_params(), zeros)
    for got, value in zip(jax.tree.leaves(warm), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), value)


def test_other_architecture_and_missing_checkpoints_are_named(tmp_path) -> None:
    save_params(str(tmp_path), _params(tiny_t5_config()), step=1)
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=8))
    rules = partitioning.standard_logical_axis_rules()
    wider = dataclasses.replace(tiny_t5_config(), mlp_dim=64)
    with pytest.raises(CheckpointShapeError) as err:
        restore_model_params(str(tmp_path), _spec(wider), mesh, rules)
    wi_0 = "encoder/blocks/*/mlp/wi_0/kernel: checkpoint [32, 48] vs model [32, 64] (2 layers)"
    assert wi_0 in str(err.value)
    key = r"missing from the checkpoint: layers/blocks/\*/attention/key/kernel \(2 layers\)"
    with pytest.raises(CheckpointShapeError, match=key):
        restore_model_params(str(tmp_path), _spec(tiny_decoder_config()), mesh, rules)
    with pytest.raises(CheckpointNotFoundError, match="has no checkpoint at step 2; it has"):
        resolve_checkpoint(str(tmp_path), step=2)
    with pytest.raises(CheckpointNotFoundError, match="holds no t5x_instruct checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(UserInputError, match="already has a checkpoint at step 1"):
        save_params(str(tmp_path), _params(tiny_t5_config()), step=1)

"""Sharding must not change the math: loss and gradients agree across mesh layouts.

One jitted forward + backward (token cross-entropy) per layout, with parameter and batch
shardings from the logical rules and activation constraints active, compared in fp32
against the same step on a single device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_instruct import partitioning
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.partitioning import MeshConfig

# Sharded sizes divide every mesh below: emb 32, mlp 64, vocab 256, 8 heads / 4 KV heads.
CONFIGS: dict[str, T5Config | DecoderConfig] = {
    "t5": T5Config(
        vocab_size=256,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
    ),
    "decoder": DecoderConfig(
        vocab_size=256,
        emb_dim=32,
        num_heads=8,
        num_kv_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_layers=2,
    ),
}

# Data parallel; FSDP with the batch over data x fsdp; tensor (Megatron) parallel with data.
# (Compiles for 8 fake devices dominate the runtime, so each layout family appears once.)
LAYOUTS: dict[str, tuple[MeshConfig, Callable[[], list]]] = {
    "dp8": (MeshConfig(data=8), partitioning.data_parallel_rules),
    "dp2-fsdp4": (MeshConfig(data=2, fsdp=4), partitioning.fsdp_rules),
    "dp2-tp4": (MeshConfig(data=2, tensor=4), partitioning.tensor_parallel_rules),
}

BATCH, ENC_LEN, DEC_LEN = 8, 12, 10

# LLVM optimisation level 0 halves CPU compile time; SPMD partitioning (what is under test)
# happens before it, on the HLO, and is unaffected.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _batch(family: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    vocab = CONFIGS[family].vocab_size
    targets = rng.integers(1, vocab, (BATCH, DEC_LEN), dtype=np.int32)
    inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
    batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets}
    if family == "t5":
        enc = rng.integers(1, vocab, (BATCH, ENC_LEN), dtype=np.int32)
        enc[::2, -3:] = 0  # some right padding, so the encoder mask matters
        batch["encoder_input_tokens"] = enc
    else:
        # Prefix-LM on half the examples: bidirectional attention over the first 4 tokens.
        prefix = np.zeros((BATCH, DEC_LEN), np.int32)
        prefix[::2, :4] = 1
        batch["decoder_causal_attention"] = prefix
    return batch


def _loss_fn(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
    model = nnx.merge(graphdef, params)
    logits = model.logits_from_batch(batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = batch["decoder_target_tokens"]
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


@functools.cache
def _model(family: str) -> tuple[nnx.GraphDef, nnx.State]:
    graphdef, params = nnx.split(build_model(CONFIGS[family]), nnx.Param)
    return graphdef, params


@functools.cache
def _single_device_reference(family: str) -> tuple[float, Any]:
    graphdef, params = _model(family)
    step = jax.jit(jax.value_and_grad(functools.partial(_loss_fn, graphdef)))
    batch = {k: jnp.asarray(v) for k, v in _batch(family).items()}
    loss, grads = step.lower(params, batch).compile(FAST_COMPILE)(params, batch)
    assert len(jax.devices()) == 8 and loss.sharding.is_fully_replicated
    return float(loss), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_loss_and_gradients_match_single_device(layout: str, family: str) -> None:
    mesh_config, make_rules = LAYOUTS[layout]
    mesh = partitioning.create_mesh(mesh_config)
    rules = make_rules()
    graphdef, params = _model(family)
    param_shardings = partitioning.state_shardings(params, mesh, rules)
    host_batch = _batch(family)
    batch = partitioning.shard_batch(host_batch, mesh, rules)
    batch_shardings = {k: v.sharding for k, v in batch.items()}
    replicated = NamedSharding(mesh, P())

    step = jax.jit(
        jax.value_and_grad(functools.partial(_loss_fn, graphdef)),
        in_shardings=(param_shardings, batch_shardings),
        out_shardings=(replicated, param_shardings),
    )
    placed = jax.device_put(params, param_shardings)
    with partitioning.axis_rules(mesh, rules):
        lowered = step.lower(placed, batch)
    loss, grads = lowered.compile(FAST_COMPILE)(placed, batch)
    # The models' activation constraints were traced in (they are no-ops outside the rules).
    assert "sharding_constraint" in lowered.as_text()
    # The batch really was split: each device holds 8 / (data * fsdp) examples.
    per_device = BATCH // (mesh.shape["data"] * mesh.shape["fsdp"])
    assert {s.data.shape[0] for s in batch["decoder_input_tokens"].addressable_shards} == {
        per_device
    }

    ref_loss, ref_grads = _single_device_reference(family)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    flat_ref = jax.tree.leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, ref), got in zip(flat_ref, flat):
        assert got.sharding.is_equivalent_to(
            NamedSharding(
                mesh, partitioning.logical_to_mesh_axes(_logical_axes(params, path), rules)
            ),
            got.ndim,
        )
        np.testing.assert_allclose(
            np.asarray(got), ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
    # Gradients are not trivially zero (a broken mask or constraint could hide that).
    assert all(np.abs(ref).max() > 0 for _, ref in flat_ref)


def _logical_axes(params: nnx.State, path: tuple) -> tuple[str | None, ...]:
    node: Any = params
    for key in path:
        name = getattr(key, "key", getattr(key, "idx", None))
        if name is None:  # the Variable's own `.value` level
            break
        node = node[name]
    return partitioning.param_logical_axes(node)


def test_kv_heads_fewer_than_tensor_shards_are_replicated(caplog) -> None:
    """4 KV heads on ``tensor=8`` (the decoder 1b preset's case): the KV projections and K/V
    activations keep all KV heads on every tensor shard (one warning), the query heads stay
    split, and loss and gradients still equal the one-device step."""
    mesh = partitioning.create_mesh(MeshConfig(data=1, tensor=8))
    rules = partitioning.tensor_parallel_rules()
    graphdef, params = _model("decoder")
    partitioning._replicated_warned.clear()
    with caplog.at_level("WARNING", logger=partitioning.__name__):
        shardings = partitioning.state_shardings(params, mesh, rules)
    attention = shardings["layers"]["blocks"][0]["attention"]
    # (embed, kv_heads | heads, kv); fsdp is a size-1 axis here.
    assert attention["key"]["kernel"].spec == P("fsdp", None, None)
    assert attention["value"]["kernel"].spec == P("fsdp", None, None)
    assert attention["query"]["kernel"].spec == P("fsdp", "tensor", None)
    assert "Logical axis 'kv_heads' of size 4 does not split 8 ways" in caplog.text

    host_batch = _batch("decoder")
    batch = partitioning.shard_batch(host_batch, mesh, rules)
    step = jax.jit(
        jax.value_and_grad(functools.partial(_loss_fn, graphdef)),
        in_shardings=(shardings, {k: v.sharding for k, v in batch.items()}),
        out_shardings=(NamedSharding(mesh, P()), shardings),
    )
    placed = jax.device_put(params, shardings)
    with partitioning.axis_rules(mesh, rules):
        loss, grads = step.lower(placed, batch).compile(FAST_COMPILE)(placed, batch)
    ref_loss, ref_grads = _single_device_reference("decoder")
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    for (path, ref), got in zip(jax.tree.leaves_with_path(ref_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(
            np.asarray(got), ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )

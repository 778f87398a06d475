"""Pallas attention under sharded layouts: each device runs the kernel on its own shard.

On the fake 8-device CPU mesh the kernels run in the Pallas interpreter. The oracle is the
same computation with ``attention_impl='xla'`` on one device. The whole-model cases run the
project's real ``train_step`` (plain SGD with rate 1, so the parameter update *is* the
gradient) with packed batches, T5's relative bias and prefix-LM / GQA masks. That the
kernels really went through ``shard_map`` (and were not partitioned by XLA, which TPU
Mosaic kernels do not allow) is read from the lowered program; that the wrapped Mosaic
kernels compile for a multi-chip TPU is ``tests/test_aot_compile.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from t5x_instruct import partitioning
from t5x_instruct.kernels import AttentionMask, RelativeBias, dot_product_attention
from t5x_instruct.kernels import sharded as sharded_lib
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.partitioning import MeshConfig
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state

# Tiny shapes: sharded sizes divide every mesh below (emb 32, mlp 64, vocab 64; T5 4 heads,
# decoder 8 query heads on 4 KV heads, i.e. GQA). The kernel-level cases further down also
# cover fewer KV heads than head shards and a layout that shards the sequence.
T5_TINY = T5Config(
    vocab_size=64,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
DEC_TINY = DecoderConfig(
    vocab_size=64, emb_dim=32, num_heads=8, num_kv_heads=4, head_dim=8, mlp_dim=64, num_layers=1
)

LAYOUTS: dict[str, tuple[MeshConfig, Callable[[], list]]] = {
    "data": (MeshConfig(data=8), partitioning.data_parallel_rules),
    "fsdp": (MeshConfig(data=2, fsdp=4), partitioning.fsdp_rules),
    "tensor": (MeshConfig(data=2, tensor=4), partitioning.tensor_parallel_rules),
}

# As in test_sharded_equivalence: LLVM -O0 halves CPU compile time; partitioning is unaffected.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
BATCH = 8


def _packed(lengths: list[list[int]], total: int) -> np.ndarray:
    out = np.zeros((len(lengths), total), np.int32)
    for row, lens in zip(out, lengths):
        row[: sum(lens)] = np.repeat(np.arange(1, len(lens) + 1), lens)
    return out


def _batch(encoder_decoder: bool) -> dict[str, np.ndarray]:
    """Packed rows (two examples + padding) so segment masks and tile skipping matter."""
    rng = np.random.default_rng(0)
    dec_seg = _packed([[7, 5], [9, 6], [4, 4], [10, 3]] * 2, 16)
    targets = rng.integers(2, 64, size=dec_seg.shape).astype(np.int32) * (dec_seg > 0)
    inputs = np.where(dec_seg > 0, np.roll(targets, 1, axis=1), 0).astype(np.int32)
    inputs[np.diff(dec_seg, prepend=-1, axis=1) != 0] = 0
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": inputs,
        "decoder_segment_ids": dec_seg,
        "decoder_loss_weights": (dec_seg > 0).astype(np.float32),
    }
    if encoder_decoder:
        enc_seg = _packed([[6, 8], [11, 4], [5, 5], [12, 2]] * 2, 16)
        enc = rng.integers(2, 64, size=enc_seg.shape).astype(np.int32) * (enc_seg > 0)
        batch["encoder_input_tokens"] = enc
        batch["encoder_segment_ids"] = enc_seg
    else:
        starts = np.diff(dec_seg, prepend=-1, axis=1) != 0
        seg_start = np.maximum.accumulate(np.where(starts, np.arange(16), 0), axis=1)
        positions = (np.arange(16)[None] - seg_start) * (dec_seg > 0)
        batch["decoder_positions"] = positions.astype(np.int32)
        batch["decoder_causal_attention"] = ((positions < 3) & (dec_seg > 0)).astype(np.int32)
    return batch


def _step_fn(spec: ModelSpec, optimizer, mesh=None, rules=None):
    def step(state, batch):
        rng = jax.random.PRNGKey(0)
        loss_config = LossConfig(z_loss=0.0)
        if mesh is None:
            return train_step(spec, optimizer, loss_config, state, batch, rng)
        with partitioning.axis_rules(mesh, rules):
            return train_step(spec, optimizer, loss_config, state, batch, rng)

    return step


def _spec(family: str, impl: str) -> ModelSpec:
    config = dataclasses.replace(T5_TINY if family == "t5" else DEC_TINY, attention_impl=impl)
    return ModelSpec.create(functools.partial(build_model, config))


def _random_params(spec: ModelSpec) -> dict:
    """Host-drawn parameters (compiling the models' initialisers costs ~10 s of CPU here)."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        is_scale = jax.tree_util.keystr(path).endswith("['scale']")
        return jnp.asarray(1.0 + 0.1 * noise if is_scale else 0.3 * noise)

    return jax.tree_util.tree_map_with_path(draw, spec.abstract_params())


@functools.cache
def _reference(family: str) -> tuple[dict, float, dict]:
    """Initial parameters, then loss and gradients of the XLA-attention model on one device."""
    spec = _spec(family, "xla")
    params = _random_params(spec)
    optimizer = optax.sgd(1.0)
    state = init_train_state(params, optimizer)
    batch = {k: jnp.asarray(v) for k, v in _batch(family == "t5").items()}
    new_state, metrics = (
        jax.jit(_step_fn(spec, optimizer)).lower(state, batch).compile(FAST_COMPILE)(state, batch)
    )
    grads = jax.tree.map(lambda old, new: np.asarray(old - new), params, new_state.params)
    return jax.tree.map(np.asarray, params), float(metrics["loss"]), grads


# Every layout, and each model under tensor parallelism (heads, T5's bias table and GQA
# KV heads sharded). Data and FSDP give the kernels the same layout (batch over data x fsdp,
# heads whole), so each appears with one model: interpreted kernels compile slowly on CPU.
MODEL_CASES = [("t5", "data"), ("t5", "tensor"), ("decoder", "fsdp"), ("decoder", "tensor")]


@pytest.mark.parametrize(("family", "layout"), MODEL_CASES, ids=["-".join(c) for c in MODEL_CASES])
def test_train_step_sharded_pallas_matches_xla(family: str, layout: str) -> None:
    """Loss and every parameter gradient of one sharded Pallas step = one-device XLA step."""
    mesh_config, make_rules = LAYOUTS[layout]
    mesh = partitioning.create_mesh(mesh_config)
    rules = make_rules()
    spec = _spec(family, "pallas")
    optimizer = optax.sgd(1.0)
    host_params, ref_loss, ref_grads = _reference(family)
    params = jax.device_put(host_params, spec.param_shardings(mesh, rules))
    state = init_train_state(params, optimizer)
    batch = partitioning.shard_batch(_batch(family == "t5"), mesh, rules)
    lowered = jax.jit(_step_fn(spec, optimizer, mesh, rules)).lower(state, batch)
    text = lowered.as_text()
    # The kernels sit inside shard_map's manual region (Shardy or GSPMD spelling).
    assert "manual_computation" in text or "SPMDFullToShardShape" in text
    new_state, metrics = lowered.compile(FAST_COMPILE)(state, batch)

    np.testing.assert_allclose(float(metrics["loss"]), ref_loss, rtol=1e-6)
    grads = jax.tree.map(lambda old, new: np.asarray(old - new), params, new_state.params)
    flat_ref = jax.tree.leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, ref), got in zip(flat_ref, flat):
        # fp32; flash's online softmax and sharded reductions sum in other orders, so the
        # absolute tolerance is 1e-5 of the leaf's largest gradient.
        np.testing.assert_allclose(
            got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=jax.tree_util.keystr(path)
        )
    assert all(np.abs(ref).max() > 0 for _, ref in flat_ref)


# ----------------------------------------------------------------- kernel level


def _attention_inputs(q_len: int, kv_len: int, heads: int, kv_heads: int):
    rng = np.random.default_rng(1)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    q = normal(BATCH, q_len, heads, 8)
    k, v = normal(BATCH, kv_len, kv_heads, 8), normal(BATCH, kv_len, kv_heads, 8)
    kv_seg = _packed([[kv_len // 2, kv_len // 2 - 2]] * BATCH, kv_len)
    table = normal(heads, 8)
    return q, k, v, kv_seg, table


def _grads_under(mesh, rules, attend, *args):
    def run(*args):
        with partitioning.axis_rules(mesh, rules):
            return jax.value_and_grad(attend, argnums=tuple(range(len(args))))(*args)

    return jax.jit(run).lower(*args).compile(FAST_COMPILE)(*args)


def test_flash_kernel_sequence_sharded_mqa(caplog) -> None:
    """Forward + dq/dk/dv/dtable under a layout that shards the sequence (gathered, with a
    warning), the batch over data and the heads over tensor, with one KV head (MQA: every
    shard slices the same KV head)."""
    q, k, v, seg, table = _attention_inputs(16, 16, 4, 1)
    mask = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, causal=True)

    def attend(q, k, v, table, impl="pallas"):
        bias = RelativeBias(table, bidirectional=False, max_distance=16)
        out = dot_product_attention(q, k, v, mask, bias=bias, scale=0.5, impl=impl)
        return jnp.sum(out * jnp.sin(out))

    grad_fn = jax.value_and_grad(functools.partial(attend, impl="xla"), argnums=(0, 1, 2, 3))
    ref = jax.jit(grad_fn)(q, k, v, table)
    mesh = partitioning.create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = [
        ("batch", "data"),
        ("length", "fsdp"),
        ("kv_length", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("kv", None),
    ]
    assert sharded_lib.plan_layout(mesh, rules, batch=BATCH, num_heads=4, num_kv_heads=1) == (
        ("data",),
        ("tensor",),
        "slice",
    )
    sharding = NamedSharding(mesh, partitioning.logical_to_mesh_axes(sharded_lib.Q_AXES, rules))
    sharded_lib._warned.clear()
    with caplog.at_level(logging.WARNING, logger=sharded_lib.__name__):
        got = _grads_under(mesh, rules, attend, jax.device_put(q, sharding), k, v, table)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert any("'length' over ('fsdp',)" in r.message for r in caplog.records), caplog.text


def test_decode_kernel_sharded() -> None:
    """One decode step (q_len 1: the split-K decode kernel) over a partly written KV cache,
    batch over data, query heads over tensor, each shard slicing its KV head."""
    q, k, v, _, table = _attention_inputs(1, 40, 4, 2)
    kv_pos = jnp.arange(40, dtype=jnp.int32)[None]
    q_pos = jnp.asarray(np.arange(BATCH)[:, None] + 20, jnp.int32)
    mask = AttentionMask(q_positions=q_pos, kv_positions=kv_pos, causal=True)

    def attend(q, k, v, impl):
        bias = RelativeBias(table, bidirectional=False, max_distance=16)
        return dot_product_attention(q, k, v, mask, bias=bias, impl=impl)

    ref = jax.jit(functools.partial(attend, impl="xla"))(q, k, v)
    mesh_config, make_rules = LAYOUTS["tensor"]
    mesh, rules = partitioning.create_mesh(mesh_config), make_rules()

    def run(q, k, v):
        with partitioning.axis_rules(mesh, rules):
            return attend(q, k, v, "pallas")

    lowered = jax.jit(run).lower(q, k, v)
    assert "manual_computation" in lowered.as_text() or "SPMDFullToShardShape" in lowered.as_text()
    got = lowered.compile(FAST_COMPILE)(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_layout_plan_from_rules() -> None:
    """Batch / head mesh axes come from the rules; indivisible counts fall back to gathering."""
    mesh = partitioning.create_mesh(MeshConfig(data=2, tensor=4))
    plan = functools.partial(sharded_lib.plan_layout, mesh, partitioning.tensor_parallel_rules())
    assert plan(batch=8, num_heads=8, num_kv_heads=4) == (("data", "fsdp"), ("tensor",), "split")
    assert plan(batch=8, num_heads=8, num_kv_heads=2) == (("data", "fsdp"), ("tensor",), "slice")
    assert plan(batch=8, num_heads=8, num_kv_heads=1) == (("data", "fsdp"), ("tensor",), "slice")
    assert plan(batch=8, num_heads=6, num_kv_heads=6) == (("data", "fsdp"), (), "split")
    assert plan(batch=8, num_heads=12, num_kv_heads=3) == (("data", "fsdp"), (), "split")
    assert plan(batch=1, num_heads=8, num_kv_heads=8) == ((), ("tensor",), "split")
    fsdp = sharded_lib.plan_layout(
        mesh, partitioning.fsdp_rules(), batch=8, num_heads=8, num_kv_heads=8
    )
    assert fsdp == (("data", "fsdp"), (), "split")


def test_evaluator_decodes_through_sharded_kernels() -> None:
    """Evaluation traces under the run's axis rules, as training does: greedy decoding of a
    GQA decoder on the tensor layout runs the Pallas kernels inside ``shard_map`` (prefill:
    flash, then the decode kernel) and yields the one-device XLA evaluator's tokens and
    sequence scores."""
    from t5x_instruct.training.evaluation import GreedyEvaluator

    mesh_config, make_rules = LAYOUTS["tensor"]
    mesh, rules = partitioning.create_mesh(mesh_config), make_rules()
    host_params = _random_params(_spec("decoder", "xla"))
    inputs = np.random.default_rng(3).integers(2, 64, size=(BATCH, 6)).astype(np.int32)
    inputs[::2, 4:] = 0  # ragged prompts

    def evaluator(impl: str, **where) -> GreedyEvaluator:
        return GreedyEvaluator(
            _spec("decoder", impl),
            encoder_decoder=False,
            prefix_lm=True,
            batch_size=BATCH,
            input_length=6,
            max_decode_length=5,
            eos_id=1,
            **where,
        )

    ref_tokens, ref_scores = evaluator("xla").decode_array(host_params, inputs)
    sharded = evaluator("pallas", mesh=mesh, rules=rules)
    params = jax.device_put(host_params, _spec("decoder", "pallas").param_shardings(mesh, rules))
    batch = sharded.place(sharded.model_batch(inputs))
    text = sharded._decode._jitted.lower(params, batch, sharded._rng).as_text()
    assert "manual_computation" in text or "SPMDFullToShardShape" in text
    tokens, scores = sharded.decode_array(params, inputs)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)

"""LoRA plug-in: exactness at init, the low-rank forward, merge, freezing, sharding, files.

Oracles: numpy ``x @ (W + (alpha/r) A @ B)`` for one layer; the un-adapted base model (a
fresh LoRA model must compute it bit for bit, and merged weights must reproduce the adapted
model); single-device gradients for the sharded layouts; hand-written PartitionSpecs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.models import build, tiny_decoder_config, tiny_t5_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.layers.linear import DenseGeneral
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.partitioning import MeshConfig
from t5x_instruct.plugins import CheckpointContext, PluginSet
from t5x_instruct.plugins.lora import DEFAULT_TARGETS, LoRA, LoRADenseGeneral, read_adapters
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import (
    ModelSpec,
    init_train_state,
    merge_params,
    split_params,
)

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(_flat(value, name) if isinstance(value, dict) else {name: value})
    return out


def _unflat(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return out


def _run(fn: Callable, *args: Any) -> Any:
    """``jax.jit(fn)(*args)`` compiled at LLVM -O0: compiles dominate tiny models on CPU."""
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def _adapted(base: nnx.Module, plugin: LoRA) -> tuple[ModelSpec, dict]:
    """The LoRA-transformed ``base`` as (spec, fresh params); init runs in one jit."""
    graphdef, state = nnx.split(base)
    build_fn = lambda: PluginSet([plugin]).transform_model(nnx.merge(graphdef, state))
    spec = ModelSpec.create(build_fn)
    params = _run(lambda: nnx.to_pure_dict(nnx.state(build_fn())))
    return spec, params


def _with_random_b(params: dict, seed: int = 1, std: float = 0.05) -> dict:
    """Adapters as after training: ``lora_b`` non-zero, so the update is visible."""
    rng = np.random.default_rng(seed)
    flat = {
        k: (jnp.asarray(rng.normal(0, std, v.shape), jnp.float32) if k.endswith("lora_b") else v)
        for k, v in _flat(params).items()
    }
    return _unflat(flat)


def _inputs(cfg: T5Config | DecoderConfig, b: int = 2) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    batch = {"decoder_input_tokens": jnp.asarray(rng.integers(1, cfg.vocab_size, (b, 6)))}
    if isinstance(cfg, T5Config):
        batch["encoder_input_tokens"] = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, 7)))
    return batch


def _logits(spec: ModelSpec, params: dict, batch: dict) -> jax.Array:
    return _run(lambda p, b: spec.module(p).logits_from_batch(b), params, batch)


def _base_params(base: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(base))


FAMILIES: dict[str, Callable[..., T5Config | DecoderConfig]] = {
    "t5": tiny_t5_config,
    "decoder": tiny_decoder_config,
}


def _cfg(
    family: str, scan: bool = False, remat: str = "none", layers: int = 2
) -> T5Config | DecoderConfig:
    cfg = dataclasses.replace(FAMILIES[family](scan=scan), remat_policy=remat)
    if isinstance(cfg, T5Config):
        return dataclasses.replace(cfg, num_encoder_layers=layers, num_decoder_layers=layers)
    return dataclasses.replace(cfg, num_layers=layers)


# ----------------------------------------------------------------------------- one layer


@pytest.mark.parametrize(
    "in_features,out_features,axes",
    [((32,), (4, 8), ("embed", "heads", "kv")), ((4, 8), (32,), ("heads", "kv", "embed"))],
    ids=["query", "out"],
)
def test_one_layer_matches_numpy(in_features, out_features, axes) -> None:
    rank, alpha = 3, 6.0
    layer = nnx.eval_shape(
        lambda: LoRADenseGeneral(
            DenseGeneral(in_features, out_features, logical_axes=axes, rngs=nnx.Rngs(0)),
            rank=rank,
            scale=alpha / rank,
            dropout_rate=0.0,
            salt=0,
            rngs=nnx.Rngs(1),
        )
    )
    rng = np.random.default_rng(0)
    w = rng.normal(size=(*in_features, *out_features)).astype(np.float32)
    a = rng.normal(size=(*in_features, rank)).astype(np.float32)
    b = rng.normal(size=(rank, *out_features)).astype(np.float32)
    for var, value in ((layer.kernel, w), (layer.lora_a, a), (layer.lora_b, b)):
        var.set_value(jnp.asarray(value))
    x = rng.normal(size=(2, 5, *in_features)).astype(np.float32)

    n_in, n_out = int(np.prod(in_features)), int(np.prod(out_features))
    w_eff = w.reshape(n_in, n_out).astype(np.float64) + (alpha / rank) * (
        a.reshape(n_in, rank).astype(np.float64) @ b.reshape(rank, n_out)
    )
    want = (x.reshape(2, 5, n_in) @ w_eff).reshape(2, 5, *out_features)
    got = np.asarray(nnx.jit(lambda layer, x: layer(x))(layer, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A and B follow the kernel's logical axes, the rank axis unnamed.
    assert layer.lora_a.get_metadata()["logical_axes"] == (*axes[: len(in_features)], None)
    assert layer.lora_b.get_metadata()["logical_axes"] == (None, *axes[len(in_features) :])


# ----------------------------------------------------------------------------- whole models


CASES = [
    ("t5", False, "none", 1),
    ("t5", True, "full", 2),
    ("decoder", False, "dots", 1),
    ("decoder", True, "none", 2),
]
CASE_IDS = [f"{f}-{'scan' if s else 'loop'}-remat_{r}" for f, s, r, _ in CASES]


@pytest.mark.parametrize("family,scan,remat,layers", CASES, ids=CASE_IDS)
def test_fresh_model_is_the_base_and_merge_folds_trained_adapters(
    family: str, scan: bool, remat: str, layers: int
) -> None:
    cfg = _cfg(family, scan, remat, layers)
    base = build(cfg)
    base_params = _base_params(base)
    plugin = LoRA(rank=4, alpha=12.0)
    spec, params = _adapted(base, plugin)
    flat, base_flat = _flat(params), _flat(base_params)
    # Base parameters keep their paths and values; adapters sit beside each targeted kernel.
    for name, value in base_flat.items():
        np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(value), err_msg=name)
    adapters = sorted(k for k in flat if k not in base_flat)
    kernels = [
        k for k in base_flat if re.search(r"(attention/(query|key|value|out)|mlp/w\w+)/kernel$", k)
    ]
    assert adapters == sorted(
        k[: -len("kernel")] + s for k in kernels for s in ("lora_a", "lora_b")
    )
    assert all(not np.any(np.asarray(flat[k])) for k in adapters if k.endswith("lora_b"))
    assert all(np.std(np.asarray(flat[k])) > 0 for k in adapters if k.endswith("lora_a"))

    # Fresh (B = 0): exactly the base model's logits.
    batch = _inputs(cfg)
    base_spec = ModelSpec.create(lambda: build_model(cfg))
    base_logits = np.asarray(_logits(base_spec, base_params, batch))
    np.testing.assert_array_equal(np.asarray(_logits(spec, params, batch)), base_logits)

    # Trained (B != 0): merged kernels are W + (alpha/r) A @ B (numpy, per layer) and the
    # un-adapted model with them computes what the adapted model computes.
    params = _with_random_b(params)
    merged = plugin.merge(params)
    flat, merged_flat = _flat(params), _flat(merged)
    assert set(merged_flat) == set(base_flat)
    for name in [k for k in flat if k.endswith("lora_a")]:
        prefix = name[: -len("lora_a")]
        w, a, b = (np.asarray(flat[prefix + n], np.float64) for n in ("kernel", "lora_a", "lora_b"))
        if scan:
            delta = np.stack([np.tensordot(ai, bi, axes=1) for ai, bi in zip(a, b)])
        else:
            delta = np.tensordot(a, b, axes=1)
        np.testing.assert_allclose(
            np.asarray(merged_flat[prefix + "kernel"]), w + 3.0 * delta, rtol=1e-6, atol=1e-6
        )
    unmerged = np.asarray(_logits(spec, params, batch))
    np.testing.assert_allclose(
        np.asarray(_logits(base_spec, merged, batch)), unmerged, rtol=1e-5, atol=1e-5
    )
    assert np.abs(unmerged - base_logits).max() > 1e-2  # the adapters do change the function


def test_lora_dropout_only_in_training_and_only_on_the_adapter_path() -> None:
    cfg = _cfg("decoder", scan=True)
    base = build(cfg)
    spec, params = _adapted(base, LoRA(rank=4, alpha=4.0, dropout=0.5))
    batch = _inputs(cfg, b=4)

    def run(params: dict, rng: jax.Array) -> jax.Array:
        return spec.module(params).logits_from_batch(batch, deterministic=False, dropout_rng=rng)

    train = jax.jit(run).lower(params, jax.random.key(0)).compile(FAST_COMPILE)
    evaluate = jax.jit(lambda p: spec.module(p).logits_from_batch(batch)).lower(params)
    evaluate = evaluate.compile(FAST_COMPILE)
    # B = 0: the adapters' dropout leaves the base path (and its dropout stream) alone.
    np.testing.assert_array_equal(
        np.asarray(train(params, jax.random.key(3))), np.asarray(evaluate(params))
    )
    trained = _with_random_b(params)
    eval_logits = np.asarray(evaluate(trained))
    merged = LoRA(rank=4, alpha=4.0).merge(trained)
    base_spec = ModelSpec.create(lambda: build_model(cfg))
    np.testing.assert_allclose(  # no dropout when deterministic: the merged model's output
        np.asarray(_logits(base_spec, merged, batch)), eval_logits, rtol=1e-5, atol=1e-5
    )
    train_a = np.asarray(train(trained, jax.random.key(3)))
    train_b = np.asarray(train(trained, jax.random.key(4)))
    assert np.abs(train_a - eval_logits).max() > 1e-3  # dropout acts in training
    assert np.abs(train_a - train_b).max() > 1e-3  # with a fresh mask per key


# ----------------------------------------------------------------------------- training


def _train_batch(cfg: T5Config | DecoderConfig, b: int = 4) -> dict[str, jax.Array]:
    rng = np.random.default_rng(1)
    targets = rng.integers(2, cfg.vocab_size, (b, 6)).astype(np.int32)
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
        "decoder_loss_weights": np.ones((b, 6), np.float32),
    }
    if isinstance(cfg, T5Config):
        batch["encoder_input_tokens"] = rng.integers(1, cfg.vocab_size, (b, 7)).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("family,scan,layers", [("t5", False, 1), ("decoder", True, 2)])
def test_train_steps_change_only_the_adapters(family: str, scan: bool, layers: int) -> None:
    cfg = _cfg(family, scan, layers=layers)
    base = build(cfg)
    plugin = LoRA(rank=4, dropout=0.1)
    plugins = PluginSet([plugin])
    spec, params = _adapted(base, plugin)
    optimizer = optax.adam(1e-2)
    state = init_train_state(params, optimizer, plugins.is_trainable)

    # Optimizer state only for adapters: every non-scalar slot sits at an adapter's path.
    slots = jax.tree_util.tree_leaves_with_path(state.opt_state)
    slot_paths = [jax.tree_util.keystr(path) for path, leaf in slots if np.ndim(leaf)]
    assert slot_paths and all(p.endswith(("['lora_a']", "['lora_b']")) for p in slot_paths)
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    n_adapters = sum(v.size for k, v in _flat(params).items() if k.endswith(("lora_a", "lora_b")))
    assert n_opt == 2 * n_adapters + 1  # mu and nu of every adapter, plus adam's count

    batch = _train_batch(cfg)
    step = (
        jax.jit(
            lambda s, b, r: train_step(
                spec,
                optimizer,
                LossConfig(),
                s,
                b,
                r,
                plugins=plugins,
                is_trainable=plugins.is_trainable,
            )
        )
        .lower(state, batch, jax.random.key(0))
        .compile(FAST_COMPILE)
    )
    losses = []
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]

    before, after = _flat(params), _flat(state.params)
    for name, value in before.items():
        if name.endswith(("lora_a", "lora_b")):
            assert not np.array_equal(np.asarray(after[name]), np.asarray(value)), name
        else:
            np.testing.assert_array_equal(np.asarray(after[name]), np.asarray(value), err_msg=name)


def test_base_checkpoint_warm_starts_without_adapters(tmp_path) -> None:
    base = build(_cfg("t5", layers=1))
    # The base checkpoint holds other values than a fresh init, to see them arrive.
    saved = jax.tree.map(lambda x: x + 1.0, _base_params(base))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "base"), async_save=False)
    ckpt.save(init_train_state(saved, optax.sgd(0.1)), {})
    ckpt.wait()

    plugin = LoRA(rank=2)
    spec, fresh = _adapted(base, plugin)
    loaded = ckpt_lib.load_params_for_warm_start(
        str(tmp_path / "base"),
        spec.abstract_params(),
        fresh,
        assignment_map=PluginSet([plugin]).assignment_map([]),
        fallback_to_scratch=False,  # no other parameter may be missing
    )
    saved_flat, fresh_flat = _flat(saved), _flat(fresh)
    for name, value in _flat(loaded).items():
        want = fresh_flat[name] if name.endswith(("lora_a", "lora_b")) else saved_flat[name]
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want), err_msg=name)


# ----------------------------------------------------------------------------- sharding

SHARD_CONFIGS = {
    "t5": T5Config(
        vocab_size=256,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        remat_policy="full",
    ),
    "decoder": DecoderConfig(
        vocab_size=256,
        emb_dim=32,
        num_heads=8,
        num_kv_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_layers=2,
        scan_layers=True,
    ),
}
LAYOUTS: dict[str, tuple[MeshConfig, Callable[[], list]]] = {
    "dp8": (MeshConfig(data=8), partitioning.data_parallel_rules),
    "dp2-fsdp4": (MeshConfig(data=2, fsdp=4), partitioning.fsdp_rules),
    "dp2-tp4": (MeshConfig(data=2, tensor=4), partitioning.tensor_parallel_rules),
}
# What the rules must make of a query projection's adapters (hand-derived from each layout's
# rules: A keeps the kernel's `embed` axis, B its `heads` and `kv` axes).
QUERY_SPECS = {
    "dp8": (P(None, None), P(None, None, None)),
    "dp2-fsdp4": (P("fsdp", None), P(None, None, None)),
    "dp2-tp4": (P("fsdp", None), P(None, "tensor", None)),
}


@functools.cache
def _shard_model(family: str) -> tuple[ModelSpec, dict]:
    spec, params = _adapted(build(SHARD_CONFIGS[family]), LoRA(rank=4, alpha=4.0))
    return spec, _with_random_b(params, std=0.1)


def _shard_batch(family: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 256, (8, 10), dtype=np.int32)
    batch = {
        "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], 1),
        "decoder_target_tokens": targets,
    }
    if family == "t5":
        batch["encoder_input_tokens"] = rng.integers(1, 256, (8, 12), dtype=np.int32)
    return batch


def _loss(spec: ModelSpec, frozen: dict, adapters: dict, batch: dict) -> jax.Array:
    logits = spec.module(merge_params(adapters, frozen)).logits_from_batch(batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1))


def _split(params: dict) -> tuple[dict, dict]:
    """(adapters, frozen base) as the train step splits them."""
    return split_params(params, PluginSet([LoRA()]).is_trainable)


@functools.cache
def _reference(family: str) -> tuple[float, dict]:
    spec, params = _shard_model(family)
    adapters, frozen = _split(params)
    batch = {k: jnp.asarray(v) for k, v in _shard_batch(family).items()}
    grad_fn = jax.value_and_grad(functools.partial(_loss, spec), argnums=1)
    loss, grads = _run(grad_fn, frozen, adapters, batch)
    return float(loss), jax.tree.map(np.asarray, grads)


# Each layout once, each family at least once (8-device compiles dominate the runtime).
SHARD_CASES = [("t5", "dp2-fsdp4"), ("decoder", "dp2-tp4"), ("decoder", "dp8")]


@pytest.mark.parametrize("family,layout", SHARD_CASES)
def test_sharded_loss_and_gradients_match_single_device(family: str, layout: str) -> None:
    """T5 with full remat (loop), the decoder scanned; adapter gradients as in training."""
    mesh_config, make_rules = LAYOUTS[layout]
    mesh = partitioning.create_mesh(mesh_config)
    rules = PluginSet([LoRA()]).axis_rules(make_rules())
    spec, params = _shard_model(family)
    shardings = spec.param_shardings(mesh, rules)
    axes = _flat(spec.logical_axes())

    # Adapters are named after their kernel: (*lead, *in, None) and (*lead, None, *out).
    for name in [k for k in axes if k.endswith("lora_a")]:
        kernel = axes[name[: -len("lora_a")] + "kernel"]
        a, b = axes[name], axes[name[: -len("lora_a")] + "lora_b"]
        n_lead = 1 if kernel[0] == "layers" else 0
        assert a[-1] is None and b[n_lead] is None and b[:n_lead] == kernel[:n_lead]
        assert a[:-1] + b[n_lead + 1 :] == kernel
    flat_shardings = _flat(shardings)
    query = next(k for k in flat_shardings if k.endswith("attention/query/lora_a"))
    lead = (None,) if "/block/" in query else ()
    want_a, want_b = QUERY_SPECS[layout]
    for name, want in ((query, want_a), (query.replace("lora_a", "lora_b"), want_b)):
        assert flat_shardings[name].is_equivalent_to(
            NamedSharding(mesh, P(*lead, *want)), len(lead) + len(want)
        ), (name, flat_shardings[name].spec)

    adapters, frozen = _split(jax.device_put(params, shardings))
    adapter_shardings, frozen_shardings = _split(shardings)
    batch = partitioning.shard_batch(_shard_batch(family), mesh, rules)
    step = jax.jit(
        jax.value_and_grad(functools.partial(_loss, spec), argnums=1),
        in_shardings=(
            frozen_shardings,
            adapter_shardings,
            {k: v.sharding for k, v in batch.items()},
        ),
        out_shardings=(NamedSharding(mesh, P()), adapter_shardings),
    )
    with partitioning.axis_rules(mesh, rules):
        lowered = step.lower(frozen, adapters, batch)
    loss, grads = lowered.compile(FAST_COMPILE)(frozen, adapters, batch)

    ref_loss, ref_grads = _reference(family)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    flat_ref, flat_got = _flat(ref_grads), _flat(grads)
    assert set(flat_ref) == set(flat_got) and all("lora_" in k for k in flat_ref)
    for name, ref in flat_ref.items():
        got = flat_got[name]
        assert got.sharding.is_equivalent_to(flat_shardings[name], got.ndim), name
        # Sharded reductions sum fp32 terms in another order: an element that is a sum of
        # cancelling terms is exact to ~1e-5 of the array's scale, not of its own size.
        atol = 3e-5 * float(np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=atol, err_msg=name)
        assert np.abs(ref).max() > 0, name


# ----------------------------------------------------------------------------- adapter files


def _export(plugin: LoRA, params: dict, model_dir: str, step: int, writer: bool = True) -> None:
    plugin.on_checkpoint(
        CheckpointContext(
            step=step,
            params=params,
            aux=None,
            model_dir=model_dir,
            fetch=lambda tree: jax.tree.map(np.asarray, tree),
            is_writer=writer,
        )
    )


def test_adapters_round_trip_and_move_between_loop_and_scan(tmp_path) -> None:
    loop_cfg, scan_cfg = _cfg("decoder"), _cfg("decoder", scan=True)
    plugin = LoRA(rank=4, alpha=4.0)
    spec, params = _adapted(build(loop_cfg), plugin)
    params = _with_random_b(params)

    _export(plugin, params, str(tmp_path / "other"), 7, writer=False)
    assert not (tmp_path / "other").exists()  # only the writer process writes
    _export(plugin, params, str(tmp_path), 7)
    path = tmp_path / "lora" / "adapters_7.safetensors"
    arrays, metadata = read_adapters(path, "test")
    assert metadata == {"rank": 4, "alpha": 4.0, "targets": list(plugin.targets)}
    adapters = {k: v for k, v in _flat(params).items() if k.endswith(("lora_a", "lora_b"))}
    assert set(arrays) == set(adapters)
    # Only adapters are written: a small file next to the checkpoint.
    data_bytes = sum(v.size * 4 for v in adapters.values())
    assert path.stat().st_size < data_bytes + 200 * len(adapters) + 1024

    # Loaded over the base model (loop, then scanned): the same adapters and the same logits.
    _, again = _adapted(build(loop_cfg), LoRA(rank=4, alpha=4.0, init_from=str(path)))
    for name, value in adapters.items():
        np.testing.assert_array_equal(np.asarray(_flat(again)[name]), np.asarray(value))
    scan_spec, scanned = _adapted(build(scan_cfg), LoRA(rank=4, alpha=4.0, init_from=str(path)))
    batch = _inputs(loop_cfg)
    np.testing.assert_allclose(
        np.asarray(_logits(scan_spec, scanned, batch)),
        np.asarray(_logits(spec, params, batch)),
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- bad input


def test_target_matching_nothing_is_one_clear_error() -> None:
    model = nnx.eval_shape(lambda: build_model(_cfg("decoder")))
    plugin = LoRA(targets=[r".*mlp/wi_0/kernel", r".*attn/q_proj/kernel"])
    with pytest.raises(UserInputError) as err:
        PluginSet([plugin]).transform_model(model)
    msg = str(err.value)
    assert "'lora'" in msg and "LoRA.targets" in msg and "attn/q_proj" in msg
    assert "layers/blocks/0/attention/query/kernel" in msg
    assert "layers/blocks/1/" not in msg  # a few paths, one layer's worth
    with pytest.raises(UserInputError, match=r"LoRA.targets entry '\(' is not a regex"):
        LoRA(targets=["("])
    with pytest.raises(UserInputError, match=r"LoRA\.rank"):
        LoRA(rank=0)


def test_adapter_file_for_another_model_is_one_clear_error(tmp_path) -> None:
    plugin = LoRA(rank=2)
    model = nnx.eval_shape(lambda: PluginSet([plugin]).transform_model(build_model(_cfg("t5"))))
    shapes = nnx.to_pure_dict(nnx.state(model))
    plugin.save(tmp_path / "a.safetensors", jax.tree.map(lambda x: np.zeros(x.shape), shapes))
    path = str(tmp_path / "a.safetensors")

    wider = dataclasses.replace(_cfg("t5"), mlp_dim=40)
    with pytest.raises(
        UserInputError, match=r"lora_[ab] has shape \[.*\] in the file but this model needs"
    ):
        PluginSet([LoRA(rank=2, init_from=path)]).transform_model(
            nnx.eval_shape(lambda: build_model(wider))
        )
    with pytest.raises(UserInputError, match=r"rank-2 adapters; set LoRA.rank = 2"):
        PluginSet([LoRA(rank=4, init_from=path)]).transform_model(
            nnx.eval_shape(lambda: build_model(_cfg("t5")))
        )
    with pytest.raises(UserInputError, match="no adapters for"):
        PluginSet([LoRA(rank=2, init_from=path)]).transform_model(
            nnx.eval_shape(lambda: build_model(_cfg("decoder")))
        )
    with pytest.raises(UserInputError, match="no such adapter file"):
        PluginSet([LoRA(init_from=str(tmp_path / "missing.safetensors"))]).transform_model(
            nnx.eval_shape(lambda: build_model(_cfg("t5")))
        )


def test_gin_file_binds_the_plugin() -> None:
    import t5x_instruct.training.loop  # noqa: F401  (registers `train`)
    from t5x_instruct.gin_utils import parse_gin

    parse_gin(["plugins/lora.gin"], ["LORA_RANK = 4", "LORA_DROPOUT = 0.05"], clear=True)
    (reference,) = gin.query_parameter("train.plugins")
    plugin = reference.scoped_configurable_fn()
    assert isinstance(plugin, LoRA) and plugin.name == "lora" and plugin.freeze_base
    assert (plugin.rank, plugin.alpha, plugin.dropout, plugin.init_from) == (4, 16.0, 0.05, None)
    assert plugin.targets == DEFAULT_TARGETS


def test_exporting_a_step_again_replaces_the_file(tmp_path) -> None:
    """A run killed between a step's export and its checkpoint commit exports that step again."""
    from t5x_instruct.plugins.lora.adapters import save_adapters

    path = tmp_path / "lora" / "adapters_8.safetensors"
    first = {"encoder": {"lora_a": np.zeros((2, 3), np.float32)}}
    second = {"encoder": {"lora_a": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    save_adapters(path, first, {"rank": 1})
    save_adapters(path, second, {"rank": 2})
    arrays, metadata = read_adapters(path, "test")
    np.testing.assert_array_equal(arrays["encoder/lora_a"], second["encoder"]["lora_a"])
    assert metadata == {"rank": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left

"""Train step mechanics that need no data pipeline: losses, accumulation, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_instruct import partitioning
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training.losses import cross_entropy_sums
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state, train_state_shardings

T5_TINY = T5Config(
    vocab_size=40,
    emb_dim=16,
    num_heads=2,
    head_dim=8,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
)
DEC_TINY = DecoderConfig(
    vocab_size=40,
    emb_dim=16,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    mlp_dim=32,
    num_layers=2,
)


def _batch(rng: np.random.Generator, encoder_decoder: bool, b: int = 8, t: int = 6) -> dict:
    targets = rng.integers(2, 40, size=(b, t)).astype(np.int32)
    weights = (rng.random((b, t)) > 0.2).astype(np.float32)
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
        "decoder_loss_weights": weights,
    }
    if encoder_decoder:
        batch["encoder_input_tokens"] = rng.integers(1, 40, size=(b, 7)).astype(np.int32)
    return batch


def test_cross_entropy_matches_numpy_with_smoothing_and_z_loss() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
    ls, z = 0.1, 1e-2
    out = cross_entropy_sums(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.asarray(weights),
        z_loss=z,
        label_smoothing=ls,
    )
    log_z = np.log(np.exp(logits).sum(-1))
    logp = logits - log_z[..., None]
    soft = np.full(logits.shape, ls / 4)
    np.put_along_axis(soft, targets[..., None], 1 - ls, axis=-1)
    entropy = -(soft * np.log(soft)).sum(-1)
    xent = -(soft * logp).sum(-1) - entropy
    np.testing.assert_allclose(out["cross_entropy"], (xent * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(out["z_loss"], (z * log_z**2 * weights).sum(), rtol=1e-5)
    assert float(out["weight"]) == weights.sum()


@pytest.mark.parametrize("config", [T5_TINY, DEC_TINY], ids=["t5", "decoder"])
def test_gradient_accumulation_equals_full_batch(config) -> None:
    spec = ModelSpec.create(lambda: build_model(config))
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    rules = partitioning.standard_logical_axis_rules("data")
    params = spec.init_params(mesh, rules)
    optimizer = optax.sgd(0.1)
    batch = _batch(np.random.default_rng(1), isinstance(config, T5Config))
    results = []
    for k in (1, 4):
        state = init_train_state(params, optimizer)
        new_state, metrics = jax.jit(
            lambda s, b, k=k: train_step(
                spec, optimizer, LossConfig(), s, b, jax.random.PRNGKey(0), num_microbatches=k
            )
        )(state, batch)
        results.append((new_state, metrics))
    (s1, m1), (s4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # And the step did something: parameters moved.
    moved = [
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(params))
    ]
    assert any(moved)


def _state(spec: ModelSpec, mesh, rules, optimizer):
    shardings = train_state_shardings(spec, optimizer, mesh, rules)
    params = spec.init_params(mesh, rules)
    return jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=shardings)(
        params
    ), shardings


def test_checkpoint_round_trip_is_exact_and_sharded(tmp_path) -> None:
    spec = ModelSpec.create(lambda: build_model(T5_TINY))
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, fsdp=4))
    rules = partitioning.standard_logical_axis_rules("fsdp")
    optimizer = optax.adamw(1e-3)
    state, shardings = _state(spec, mesh, rules, optimizer)
    batch = partitioning.shard_batch(_batch(np.random.default_rng(2), True), mesh, rules)
    state, _ = jax.jit(
        lambda s, b: train_step(spec, optimizer, LossConfig(), s, b, jax.random.PRNGKey(0))
    )(state, batch)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(state, {"batches_consumed": 7})
    ckpt.wait()
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    restored, data_state = ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()
    assert data_state == {"batches_consumed": 7}
    assert int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


def test_checkpoint_of_other_model_shape_is_refused(tmp_path) -> None:
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    rules = partitioning.standard_logical_axis_rules("data")
    optimizer = optax.sgd(0.1)
    small = ModelSpec.create(lambda: build_model(T5_TINY))
    state, _ = _state(small, mesh, rules, optimizer)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save(state, {})
    ckpt.wait()
    wider = T5Config(**{**T5_TINY.__dict__, "mlp_dim": 48})
    other = ModelSpec.create(lambda: build_model(wider))
    other_state, shardings = _state(other, mesh, rules, optimizer)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), other_state, shardings
    )
    with pytest.raises(
        ckpt_lib.CheckpointShapeError,
        match=r"mlp/wi_0/kernel: checkpoint \[16, 32\] vs model \[16, 48\]",
    ):
        ckpt.restore(ckpt.latest_step(), abstract)
    ckpt.close()


def test_warm_start_assignment_map_and_fallback(tmp_path) -> None:
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    rules = partitioning.standard_logical_axis_rules("data")
    optimizer = optax.sgd(0.1)
    source = ModelSpec.create(lambda: build_model(T5_TINY))
    state, _ = _state(source, mesh, rules, optimizer)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save(state, {})
    ckpt.close()
    # Target: same shapes but tied embeddings (no logits_dense) and a fresh seed.
    target_cfg = T5Config(**{**T5_TINY.__dict__, "logits_via_embedding": True})
    target = ModelSpec.create(lambda: build_model(target_cfg, seed=5))
    fresh = target.init_params(mesh, rules)
    # Load everything except the decoder norm, which we ask to keep from scratch.
    loaded = ckpt_lib.load_params_for_warm_start(
        str(tmp_path),
        target.abstract_params(),
        fresh,
        assignment_map=[(r"decoder_norm/.*", None)],
    )
    np.testing.assert_array_equal(
        loaded["encoder"]["blocks"][0]["mlp"]["wo"]["kernel"],
        state.params["encoder"]["blocks"][0]["mlp"]["wo"]["kernel"],
    )
    np.testing.assert_array_equal(loaded["decoder_norm"]["scale"], fresh["decoder_norm"]["scale"])
    # A renamed parameter can be pulled from another name with a regex.
    loaded = ckpt_lib.load_params_for_warm_start(
        str(tmp_path),
        target.abstract_params(),
        fresh,
        assignment_map=[(r"encoder_norm/scale", "decoder_norm/scale")],
    )
    np.testing.assert_array_equal(
        loaded["encoder_norm"]["scale"], state.params["decoder_norm"]["scale"]
    )
    # A model with parameters the checkpoint lacks needs fallback_to_scratch.
    bigger = ModelSpec.create(
        lambda: build_model(T5Config(**{**T5_TINY.__dict__, "num_encoder_layers": 2}))
    )
    fresh_big = bigger.init_params(mesh, rules)
    with pytest.raises(KeyError, match="fallback_to_scratch"):
        ckpt_lib.load_params_for_warm_start(str(tmp_path), bigger.abstract_params(), fresh_big)
    loaded = ckpt_lib.load_params_for_warm_start(
        str(tmp_path), bigger.abstract_params(), fresh_big, fallback_to_scratch=True
    )
    np.testing.assert_array_equal(
        loaded["encoder"]["blocks"][1]["mlp"]["wo"]["kernel"],
        fresh_big["encoder"]["blocks"][1]["mlp"]["wo"]["kernel"],
    )

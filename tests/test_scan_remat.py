"""Layer scanning and rematerialisation are layout/memory choices: the numbers must not move.

The scanned model gets the looped model's weights stacked along the new leading ``layers``
axis (it is built from a different seed first, so nothing matches by accident).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_instruct.models import DecoderConfig, T5Config, build_model

CONFIGS: dict[str, T5Config | DecoderConfig] = {
    "t5": T5Config(
        vocab_size=64,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
    ),
    "decoder": DecoderConfig(
        vocab_size=64,
        emb_dim=16,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_layers=2,
    ),
}
STACKS = {"t5": ("encoder", "decoder"), "decoder": ("layers",)}

# LLVM optimisation level 0 halves CPU compile time; the program itself is unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _batch(family: str) -> dict[str, jax.Array]:
    rng = np.random.default_rng(1)
    targets = rng.integers(1, 64, (2, 7), dtype=np.int32)
    inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
    batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets}
    if family == "t5":
        batch["encoder_input_tokens"] = rng.integers(1, 64, (2, 9), dtype=np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _loss(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array]) -> Any:
    logits = nnx.merge(graphdef, params).logits_from_batch(batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)
    return jnp.mean(nll), logits


def _loss_logits_grads(model: nnx.Module, batch: dict[str, jax.Array]) -> tuple:
    graphdef, params = nnx.split(model, nnx.Param)
    step = jax.jit(jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True))
    (loss, logits), grads = step.lower(params, batch).compile(FAST_COMPILE)(params, batch)
    return float(loss), np.asarray(logits), nnx.to_pure_dict(grads)


def _assert_grads_close(got: dict, want: dict) -> None:
    """Tight fp32 agreement, relative to each gradient's scale.

    Summation order differs between layouts (scan, remat), and scattered embedding gradients
    sum terms that cancel, so single entries may differ by a few ulps of the largest entry.
    """
    leaves = jax.tree.leaves_with_path(want)
    assert len(leaves) == len(jax.tree.leaves(got))
    for (path, w), g in zip(leaves, jax.tree.leaves(got)):
        scale = float(np.max(np.abs(w)))
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(
            g, w, rtol=1e-5, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path)
        )


def _stack_layers(tree: dict, stacks: tuple[str, ...]) -> dict:
    """Looped layout ``{stack: {'blocks': {i: block}}}`` -> scanned ``{stack: {'block': ...}}``."""
    out = dict(tree)
    for name in stacks:
        blocks = tree[name]["blocks"]
        per_layer = [blocks[i] for i in sorted(blocks)]
        out[name] = {"block": jax.tree.map(lambda *xs: np.stack(xs), *per_layer)}
    return out


@functools.cache
def _looped(family: str) -> tuple[nnx.Module, tuple]:
    model = build_model(CONFIGS[family])
    return model, _loss_logits_grads(model, _batch(family))


def _build_with_looped_weights(family: str, **overrides: Any) -> nnx.Module:
    """A model of another layout/policy (other seed) carrying the looped model's weights."""
    cfg = dataclasses.replace(CONFIGS[family], **overrides)
    model = build_model(cfg, seed=1)
    weights = nnx.to_pure_dict(nnx.state(_looped(family)[0], nnx.Param))
    if cfg.scan_layers:
        weights = _stack_layers(weights, STACKS[family])
    state = nnx.state(model, nnx.Param)
    assert jax.tree.map(np.shape, nnx.to_pure_dict(state)) == jax.tree.map(np.shape, weights)
    nnx.replace_by_pure_dict(state, weights)
    nnx.update(model, state)
    return model


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_scan_matches_loop(family: str) -> None:
    _, (loss, logits, grads) = _looped(family)
    scanned = _build_with_looped_weights(family, scan_layers=True)

    scan_loss, scan_logits, scan_grads = _loss_logits_grads(scanned, _batch(family))
    np.testing.assert_allclose(scan_logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scan_loss, loss, rtol=1e-6)
    _assert_grads_close(scan_grads, _stack_layers(grads, STACKS[family]))
    # Scanned parameters carry the leading logical 'layers' axis.
    some_block = nnx.state(scanned, nnx.Param)[STACKS[family][0]]["block"]
    for variable in jax.tree.leaves(some_block, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        assert variable.get_metadata()["logical_axes"][0] == "layers"


# Every policy on the scanned stack (the layout large models use) of the decoder; the looped
# stack wraps each block in the same jax.checkpoint. Policies are family-independent (they
# live in LayerStack), so T5, whose decoder layers also close over the encoder output, runs
# one policy per layout: compiles dominate this file's runtime.
REMAT_CASES = [
    pytest.param("decoder", "full", True, id="decoder-full-scan"),
    pytest.param("decoder", "dots", True, id="decoder-dots-scan"),
    pytest.param("decoder", "dots_no_batch", True, id="decoder-dots_no_batch-scan"),
    pytest.param("decoder", "full", False, id="decoder-full-loop"),
    pytest.param("t5", "full", True, id="t5-full-scan"),
    pytest.param("t5", "dots_no_batch", False, id="t5-dots_no_batch-loop"),
]


@pytest.mark.parametrize(("family", "policy", "scan"), REMAT_CASES)
def test_remat_policy_keeps_gradients(family: str, policy: str, scan: bool) -> None:
    _, (loss, _, grads) = _looped(family)  # remat_policy='none'
    model = _build_with_looped_weights(family, scan_layers=scan, remat_policy=policy)
    if scan:
        grads = _stack_layers(grads, STACKS[family])
    # The policy really is in the program: remat shows up in the backward jaxpr.
    graphdef, params = nnx.split(model, nnx.Param)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: _loss(graphdef, p, _batch(family))[0]))(params)
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)

    remat_loss, _, remat_grads = _loss_logits_grads(model, _batch(family))
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    _assert_grads_close(remat_grads, grads)


def test_unknown_remat_policy_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="remat_policy='everything'"):
        build_model(dataclasses.replace(CONFIGS["decoder"], remat_policy="everything"))

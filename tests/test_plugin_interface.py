"""The plug-in interface itself: composition rules, the README example, sequence hooks,
frozen parameters, and that the core never names a concrete plug-in."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_instruct import partitioning
from t5x_instruct.layers.sequence import EmbeddedSequence
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.plugins import Plugin, PluginSet
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state, split_params

REPO = Path(__file__).resolve().parents[1]
T5 = T5Config(
    vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
    num_encoder_layers=1, num_decoder_layers=1,
)  # fmt: skip
DEC = DecoderConfig(
    vocab_size=40, emb_dim=16, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=32,
    num_layers=2, rope_theta=500.0,
)  # fmt: skip


def _batch(seed: int, encoder_decoder: bool, b: int = 4, t: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(2, 38, size=(b, t)).astype(np.int32)
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
        "decoder_loss_weights": (rng.random((b, t)) > 0.2).astype(np.float32),
    }
    if encoder_decoder:
        batch["encoder_input_tokens"] = rng.integers(1, 38, size=(b, 7)).astype(np.int32)
    return batch


@functools.cache  # gin registers the class once per process
def _readme_plugin_namespace() -> dict:
    text = (REPO / "README.md").read_text()
    section = text.split("### Write a plug-in", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Write a plug-in)", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------------ the core is generic


def test_core_never_names_a_concrete_plugin() -> None:
    core = ["kernels", "layers", "models", "training", "decoding", "partitioning.py"]
    names = re.compile(
        r"prompt_tuning|PromptTuning|\blora\b|LoRA|distill|Distill|\bifs\b|InstructionFollowing",
        re.I,
    )
    offenders = []
    for part in core:
        root = REPO / "t5x_instruct" / part
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if names.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------------ composition rules


class _Owner(Plugin):
    def __init__(self, name: str, prefix: str, freeze: bool) -> None:
        self.name, self.prefix, self.freeze_base = name, prefix, freeze

    def owns(self, path: str) -> bool:
        return path.startswith(self.prefix)


class _Unfreeze(Plugin):
    name = "unfreeze_norms"

    def trainable(self, path: str) -> bool | None:
        return True if path.endswith("scale") else None


def test_trainability_composes() -> None:
    paths = ["a/x/kernel", "b/y/kernel", "base/kernel", "base/norm/scale"]
    assert [PluginSet().is_trainable(p) for p in paths] == [True] * 4
    a = _Owner("a", "a/", freeze=True)
    b = _Owner("b", "b/", freeze=False)
    assert [PluginSet([a]).is_trainable(p) for p in paths] == [True, False, False, False]
    # Two plug-ins: each one's parameters train, the base stays frozen if any freezes it.
    assert [PluginSet([a, b]).is_trainable(p) for p in paths] == [True, True, False, False]
    assert [PluginSet([b]).is_trainable(p) for p in paths] == [True] * 4
    # An explicit answer overrides the ownership rule.
    assert [PluginSet([a, _Unfreeze()]).is_trainable(p) for p in paths] == [
        True, False, False, True,
    ]  # fmt: skip


def test_duplicate_names_and_non_plugins_are_rejected() -> None:
    with pytest.raises(ValueError, match="several plug-ins named \\['a'\\]"):
        PluginSet([_Owner("a", "x", False), _Owner("a", "y", False)])
    with pytest.raises(ValueError, match="not a t5x_instruct Plugin"):
        PluginSet([object()])


# ------------------------------------------------------------------------ the README example


@pytest.mark.parametrize("config", [T5, DEC], ids=["t5", "decoder"])
def test_readme_plugin_adds_its_loss_term(config) -> None:
    penalty_cls = _readme_plugin_namespace()["ConfidencePenalty"]
    beta = 0.3
    plugins = PluginSet([penalty_cls(beta=beta)])
    spec = ModelSpec.create(lambda: build_model(config))
    batch = _batch(0, isinstance(config, T5Config))
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.split(build_model(config))[1]))()
    state = init_train_state(params, optax.sgd(0.0))
    loss_config = LossConfig(z_loss=0.0)
    _, metrics = jax.jit(
        lambda s, b: train_step(
            spec, optax.sgd(0.0), loss_config, s, b, jax.random.key(0), plugins=plugins
        )
    )(state, batch)
    # Oracle: the entropy of each prediction in numpy, from the model's logits.
    logits = np.asarray(
        jax.jit(lambda p, b: spec.module(p).logits_from_batch(b))(params, batch), np.float64
    )
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    entropy = -(np.exp(logp) * logp).sum(-1)
    w = batch["decoder_loss_weights"]
    expected = -beta * (entropy * w).sum() / w.sum()
    np.testing.assert_allclose(metrics["confidence_penalty/neg_entropy"], expected, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["loss"], metrics["cross_entropy"] + expected, rtol=1e-5, atol=1e-6
    )


def test_plugin_terms_keep_gradient_accumulation_exact() -> None:
    penalty_cls = _readme_plugin_namespace()["ConfidencePenalty"]
    plugins = PluginSet([penalty_cls(beta=0.5)])
    spec = ModelSpec.create(lambda: build_model(DEC))
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.split(build_model(DEC))[1]))()
    opt = optax.sgd(0.1)
    batch = _batch(1, False, b=8)
    out = {}
    for k in (1, 4):
        state = init_train_state(params, opt)
        new_state, metrics = jax.jit(
            lambda s, b, k=k: train_step(
                spec, opt, LossConfig(), s, b, jax.random.key(0), num_microbatches=k,
                plugins=plugins,
            )
        )(state, batch)  # fmt: skip
        out[k] = (new_state.params, metrics)
    for a, b in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[4][0])):
        np.testing.assert_allclose(a, b, atol=2e-6)
    for key in ("loss", "confidence_penalty/neg_entropy"):
        np.testing.assert_allclose(out[1][1][key], out[4][1][key], rtol=1e-5)


# ------------------------------------------------------------------------ sequence hooks


class _PrependVector(nnx.Module):
    """Prepends one learned vector to every (unpacked) row: the simplest length-changing hook."""

    def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
        self.vector = nnx.Param(jax.random.normal(rngs.params(), (dim,)))

    def __call__(self, seq: EmbeddedSequence) -> EmbeddedSequence:
        b = seq.x.shape[0]
        first = jnp.broadcast_to(self.vector[...].astype(seq.x.dtype), (b, 1, seq.x.shape[2]))
        ones = jnp.ones((b, 1), jnp.int32)
        prefix = None if seq.in_prefix is None else jnp.concatenate(
            [jnp.ones((b, 1), bool), seq.in_prefix], axis=1
        )  # fmt: skip
        return EmbeddedSequence(
            x=jnp.concatenate([first, seq.x], axis=1),
            segment_ids=jnp.concatenate([ones * seq.segment_ids[:, :1], seq.segment_ids], 1),
            positions=jnp.concatenate([0 * ones, seq.positions + 1], axis=1),
            in_prefix=prefix,
            token_index=seq.token_index + 1,
            features=seq.features,
            stack=seq.stack,
        )


class _PrependPlugin(Plugin):
    name = "prepend"
    freeze_base = True

    def transform_model(self, model, rngs):
        model.add_sequence_hook(self.name, _PrependVector(model.cfg.emb_dim, rngs))
        return model

    def owns(self, path: str) -> bool:
        return path.startswith("sequence_hooks/prepend/")


def _hooked_and_reference(config):
    """The hooked model, and the same weights with the vector as token id ``vocab-1``."""
    plugins = PluginSet([_PrependPlugin()])
    spec = ModelSpec.create(plugins.build(lambda: build_model(config)))
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.split(spec.build())[1]))()
    ref_spec = ModelSpec.create(lambda: build_model(config))
    ref = {k: v for k, v in params.items() if k != "sequence_hooks"}
    table = np.asarray(ref["token_embedder"]["embedding"]).copy()
    table[-1] = np.asarray(params["sequence_hooks"]["prepend"]["vector"])
    ref["token_embedder"] = {"embedding": jnp.asarray(table)}
    return spec, params, ref_spec, ref


def test_length_changing_hook_equals_an_extra_token_decoder() -> None:
    """A prepended vector = a prepended token whose embedding is that vector (prefix-LM)."""
    spec, params, ref_spec, ref = _hooked_and_reference(DEC)
    batch = _batch(2, False)
    batch["decoder_causal_attention"] = np.zeros_like(batch["decoder_input_tokens"])
    batch["decoder_causal_attention"][:, :3] = 1
    hooked = jax.jit(lambda p, b: spec.module(p).logits_from_batch(b))(params, batch)
    extra = {
        "decoder_input_tokens": np.concatenate(
            [np.full((4, 1), DEC.vocab_size - 1, np.int32), batch["decoder_input_tokens"]], 1
        ),
        "decoder_causal_attention": np.concatenate(
            [np.ones((4, 1), np.int32), batch["decoder_causal_attention"]], 1
        ),
    }
    expected = jax.jit(lambda p, b: ref_spec.module(p).logits_from_batch(b))(ref, extra)
    assert hooked.shape == (4, 6, DEC.vocab_size)
    np.testing.assert_allclose(hooked, expected[:, 1:], atol=1e-5)


def test_length_changing_hook_equals_an_extra_token_t5() -> None:
    spec, params, ref_spec, ref = _hooked_and_reference(T5)
    batch = _batch(3, True)
    batch["encoder_input_tokens"][:, 5:] = 0  # padding stays padding
    hooked = jax.jit(lambda p, b: spec.module(p).logits_from_batch(b))(params, batch)
    extra = dict(batch)
    extra["encoder_input_tokens"] = np.concatenate(
        [np.full((4, 1), T5.vocab_size - 1, np.int32), batch["encoder_input_tokens"]], 1
    )
    expected = jax.jit(lambda p, b: ref_spec.module(p).logits_from_batch(b))(ref, extra)
    np.testing.assert_allclose(hooked, expected, atol=1e-5)


def test_frozen_base_is_untouched_and_has_no_optimizer_state() -> None:
    plugins = PluginSet([_PrependPlugin()])
    spec = ModelSpec.create(plugins.build(lambda: build_model(DEC)))
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
    rules = partitioning.standard_logical_axis_rules("data")
    params = spec.init_params(mesh, rules)
    opt = optax.adam(1e-2)
    state = init_train_state(params, opt, plugins.is_trainable)
    step = jax.jit(
        lambda s, b: train_step(
            spec, opt, LossConfig(), s, b, jax.random.key(0), plugins=plugins,
            is_trainable=plugins.is_trainable,
        )
    )  # fmt: skip
    for i in range(3):
        state, _ = step(state, _batch(10 + i, False))
    before_train, before_frozen = split_params(params, plugins.is_trainable)
    after_train, after_frozen = split_params(state.params, plugins.is_trainable)
    assert list(before_train) == ["sequence_hooks"]
    for a, b in zip(jax.tree.leaves(before_frozen), jax.tree.leaves(after_frozen), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert not np.allclose(
        before_train["sequence_hooks"]["prepend"]["vector"],
        after_train["sequence_hooks"]["prepend"]["vector"],
    )
    # Adam's two moments exist for the one trainable vector and for nothing else.
    shapes = [x.shape for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert shapes == [(DEC.emb_dim,), (DEC.emb_dim,)]

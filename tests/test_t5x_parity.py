"""Our T5 matches T5X's example T5 (t5x/examples/t5/{network,layers}.py) where it matters.

The oracles are numpy transcriptions of T5X's formulas: the bucketing of
``RelativePositionBiases._relative_position_bucket`` (float32, with its ``+ eps``),
``LayerNorm`` (float32 mean of squares, eps 1e-6, cast, times scale) and flax's ``gelu``
(``jax.nn.gelu``, whose default is the tanh approximation).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.kernels.relative_bias import relative_position_bucket
from t5x_instruct.layers import Attention, RMSNorm
from t5x_instruct.layers.mlp import ACTIVATIONS
from t5x_instruct.models import EncoderDecoder, build_model
from t5x_instruct.models.encoder_decoder import _t5_attention


def _t5x_bucket(rel: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int):
    ret = np.zeros_like(rel)
    n = -rel
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        ratio = np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    large = max_exact + (ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = np.minimum(large.astype(np.int32), num_buckets - 1)
    return ret + np.where(n < max_exact, n, large)


@pytest.mark.parametrize("bidirectional", [True, False], ids=["encoder", "decoder"])
def test_relative_position_buckets_equal_t5x(bidirectional: bool) -> None:
    rel = np.arange(-3000, 3000, dtype=np.int32)
    ours = relative_position_bucket(
        jnp.asarray(rel), bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    np.testing.assert_array_equal(np.asarray(ours), _t5x_bucket(rel, bidirectional, 32, 128))


def test_gelu_is_the_tanh_approximation() -> None:
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    exact = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))
    ours = np.asarray(ACTIVATIONS["gelu"](jnp.asarray(x)))
    np.testing.assert_allclose(ours, tanh, atol=1e-6)
    assert np.abs(ours - exact).max() > 1e-4  # the check tells the two apart


def test_rms_norm_is_float32_with_eps_1e6_like_t5x_layernorm() -> None:
    norm = RMSNorm(16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert norm.epsilon == 1e-6
    scale = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    norm.scale.set_value(jnp.asarray(scale))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 16)) * 300).astype(ml_dtypes.bfloat16)
    x32 = x.astype(np.float32)
    y = (x32 / np.sqrt(np.mean(x32**2, axis=-1, keepdims=True) + 1e-6)).astype(ml_dtypes.bfloat16)
    want = (y.astype(np.float32) * scale.astype(ml_dtypes.bfloat16).astype(np.float32)).astype(
        ml_dtypes.bfloat16
    )
    got = np.asarray(norm(jnp.asarray(x)))
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def test_t5_preset_structure_matches_t5x() -> None:
    """No runtime 1/sqrt(d) (folded into the query init), one table per stack, untied dense."""
    # The shared T5 v1.1 architecture file, at the tiny preset's size (fast to initialise).
    parse_gin(["gin/models/t5_1_1/mini.gin"], ["T5Config.vocab_size = 128"], clear=True)
    model = nnx.eval_shape(build_model)  # structure only
    assert isinstance(model, EncoderDecoder)
    attentions = [m for _, m in nnx.iter_graph(model) if isinstance(m, Attention)]
    assert len(attentions) == 2 + 2 * 2 and all(a.scale == 1.0 for a in attentions)
    # T5X: query_init = kernel_init / sqrt(head_dim), kernel_init ~ N(0, 1/fan_in). One
    # attention block built as the model builds its own, wide enough for a tight estimate.
    wide = dataclasses.replace(model.cfg, emb_dim=256, head_dim=64)
    block = _t5_attention(wide, jnp.float32, nnx.Rngs(0))
    q = np.asarray(block.query.kernel.get_value())  # 65536 draws: std within ~1%
    k = np.asarray(block.key.kernel.get_value())
    np.testing.assert_allclose(q.std() * math.sqrt(256 * 64), 1.0, rtol=0.03)
    np.testing.assert_allclose(k.std() * math.sqrt(256), 1.0, rtol=0.03)
    tables = {
        path: var
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if path[-1] == "rel_embedding"
    }
    assert set(tables) == {
        ("encoder_relpos_bias", "rel_embedding"),
        ("decoder_relpos_bias", "rel_embedding"),
    }
    assert model.encoder_relpos_bias.bidirectional and not model.decoder_relpos_bias.bidirectional
    assert model.encoder_relpos_bias.max_distance == 128
    assert tables["encoder_relpos_bias", "rel_embedding"].get_value().shape == (4, 32)
    assert hasattr(model, "logits_dense") and not model.cfg.logits_via_embedding

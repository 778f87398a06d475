"""Initialisers: the statistics of freshly built models against the published recipes.

T5 v1.1 as T5X's ``t5x/examples/t5`` (network.py, layers.py): MLP and output kernels
``variance_scaling(1.0, 'fan_in', 'truncated_normal')``, attention kernels
``variance_scaling(1.0, 'fan_in', 'normal')`` on the flattened ``[embed, heads*kv]`` kernel
(the query divided by sqrt(head_dim)), the token embedding ``normal(stddev=1.0)``, the
relative-bias table ``variance_scaling(1.0, 'fan_avg', 'uniform')`` on ``[heads, buckets]``,
norm scales ones. Expected moments and bounds are computed here from those formulas.
"""

from __future__ import annotations

import math

import gin
import jax
import numpy as np
import pytest
from flax import nnx

from t5x_instruct.errors import UserInputError
from t5x_instruct.layers import RelativePositionBias
from t5x_instruct.models import DecoderConfig, T5Config, build_model

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _truncated_unit_std() -> float:
    """Standard deviation of N(0, 1) truncated to [-2, 2]."""
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    return math.sqrt(1 - 2 * 2 * phi2 / mass)


def _params(config=None) -> dict:
    build = (lambda: build_model(config)) if config is not None else build_model
    fn = jax.jit(lambda: nnx.to_pure_dict(nnx.split(build())[1]))
    return jax.tree.map(np.asarray, fn.lower().compile(FAST_COMPILE)())


def _check_normal(x: np.ndarray, std: float, what: str) -> None:
    """Zero mean, variance within 2 %, and tails of an untruncated normal."""
    x = x.astype(np.float64).ravel()
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size), what
    assert x.var() == pytest.approx(std**2, rel=0.02), what
    # 2.27 sigma: a normal puts 2.3 % of its mass beyond it, the truncated one none.
    beyond = np.mean(np.abs(x) > 2 / _truncated_unit_std() * std)
    assert 0.015 < beyond < 0.032, (what, beyond)


def _check_truncated(x: np.ndarray, std: float, what: str) -> None:
    """Variance ``std**2`` within 2 %, nothing beyond two underlying standard deviations."""
    x = x.astype(np.float64).ravel()
    bound = 2 * std / _truncated_unit_std()
    assert x.var() == pytest.approx(std**2, rel=0.02), what
    assert np.abs(x).max() <= bound * (1 + 1e-6), what
    assert np.abs(x).max() > 0.99 * bound, what  # the whole range is used
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size), what


T5_SHAPES = dict(
    vocab_size=1024,
    emb_dim=512,
    num_heads=8,
    head_dim=64,
    mlp_dim=1024,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dtype="float32",
)


def test_t5_initialisers_are_t5x_s() -> None:
    params = _params(T5Config(**T5_SHAPES))
    emb, hk, mlp = 512, 8 * 64, 1024
    enc = params["encoder"]["blocks"][0]
    dec = params["decoder"]["blocks"][0]
    for name, block in (("encoder", enc), ("decoder", dec)):
        _check_truncated(block["mlp"]["wi_0"]["kernel"], emb**-0.5, f"{name} wi_0")
        _check_truncated(block["mlp"]["wi_1"]["kernel"], emb**-0.5, f"{name} wi_1")
        _check_truncated(block["mlp"]["wo"]["kernel"], mlp**-0.5, f"{name} wo")
        attentions = ["attention"] if name == "encoder" else ["self_attention"]
        if name == "decoder":
            attentions.append("encoder_decoder_attention")
        for att in attentions:
            a = block[att]
            # query: fan-in normal on [embed, heads*kv], divided by sqrt(head_dim)
            _check_normal(a["query"]["kernel"], emb**-0.5 * 64**-0.5, f"{name} {att} q")
            _check_normal(a["key"]["kernel"], emb**-0.5, f"{name} {att} k")
            _check_normal(a["value"]["kernel"], emb**-0.5, f"{name} {att} v")
            _check_normal(a["out"]["kernel"], hk**-0.5, f"{name} {att} out")
        for norm in [k for k in block if k.endswith("layer_norm")]:
            np.testing.assert_array_equal(block[norm]["scale"], 1.0)
    _check_truncated(params["logits_dense"]["kernel"], emb**-0.5, "logits_dense")
    _check_normal(params["token_embedder"]["embedding"], 1.0, "embedding")
    for stack in ("encoder", "decoder"):
        table = params[f"{stack}_relpos_bias"]["rel_embedding"]
        limit = math.sqrt(3.0 / ((8 + 32) / 2))  # variance 1 / fan_avg, uniform
        assert table.shape == (8, 32)
        assert np.abs(table).max() <= limit and np.abs(table).max() > 0.9 * limit


def test_relative_bias_table_is_fan_avg_uniform() -> None:
    """On a table large enough for moments: heads 256, buckets 512."""
    module = RelativePositionBias(256, num_buckets=512, rngs=nnx.Rngs(params=0))
    x = np.asarray(module.rel_embedding.get_value(), np.float64).ravel()
    limit = math.sqrt(3.0 / ((256 + 512) / 2))
    assert np.abs(x).max() <= limit
    assert x.var() == pytest.approx(limit**2 / 3, rel=0.02)
    # uniform: a quarter of the mass in each half-interval of each sign
    assert np.mean((x > 0) & (x < limit / 2)) == pytest.approx(0.25, abs=0.01)


def test_t5_initialisers_from_gin_and_one_error_for_a_bad_name() -> None:
    gin.parse_config(
        [
            "build_model.config = @T5Config()",
            *(f"T5Config.{k} = {v!r}" for k, v in T5_SHAPES.items()),
            "T5Config.kernel_init = 'normal'",
            "T5Config.attention_kernel_init = 'truncated_normal'",
            "T5Config.embedding_init_stddev = 0.5",
        ]
    )
    params = _params()
    block = params["decoder"]["blocks"][0]
    _check_normal(block["mlp"]["wi_0"]["kernel"], 512**-0.5, "wi_0")
    _check_truncated(block["self_attention"]["key"]["kernel"], 512**-0.5, "key")
    _check_normal(params["token_embedder"]["embedding"], 0.5, "embedding")
    with pytest.raises(UserInputError, match=r"T5Config\.kernel_init='trunc'"):
        T5Config(kernel_init="trunc")


def test_decoder_initialisers_default_and_llama_fixed_stddev() -> None:
    shapes = dict(
        vocab_size=1024,
        emb_dim=512,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=1024,
        num_layers=1,
    )
    params = _params(DecoderConfig(**shapes))
    block = params["layers"]["blocks"][0]
    _check_normal(params["token_embedder"]["embedding"], 0.02, "embedding")
    _check_normal(block["mlp"]["wi_0"]["kernel"], 512**-0.5, "wi_0")
    _check_normal(block["attention"]["query"]["kernel"], 512**-0.5, "query (scaled at runtime)")
    _check_normal(block["attention"]["out"]["kernel"], 512**-0.5, "out")
    # Hugging Face Llama's recipe: every kernel N(0, 0.02**2)
    params = _params(DecoderConfig(**shapes, kernel_init_stddev=0.02))
    block = params["layers"]["blocks"][0]
    for path, x in [
        ("query", block["attention"]["query"]["kernel"]),
        ("out", block["attention"]["out"]["kernel"]),
        ("wo", block["mlp"]["wo"]["kernel"]),
        ("logits", params["logits_dense"]["kernel"]),
    ]:
        _check_normal(x, 0.02, path)


def test_build_model_seed_from_gin_changes_the_initialisation() -> None:
    tiny = [
        "build_model.config = @T5Config()",
        "T5Config.vocab_size = 32",
        "T5Config.emb_dim = 16",
        "T5Config.num_heads = 2",
        "T5Config.head_dim = 8",
        "T5Config.mlp_dim = 32",
        "T5Config.num_encoder_layers = 1",
        "T5Config.num_decoder_layers = 1",
    ]
    draws = []
    for seed in (0, 3):
        gin.clear_config()
        gin.parse_config([*tiny, f"build_model.seed = {seed}"])
        draws.append(_params()["token_embedder"]["embedding"])
    assert not np.allclose(draws[0], draws[1])

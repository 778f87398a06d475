"""Gin model presets: published shapes and parameter counts, built abstractly (no allocation).

Parameter counts are checked against the figures published with the checkpoints (T5 v1.1
paper / model cards, Llama 2, TinyLlama), so a wrong shape or a missing or extra weight fails.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gin
import jax
import pytest
from flax import nnx

from t5x_instruct import partitioning
from t5x_instruct.gin_utils import GIN_DIR, GinConfigError, parse_gin
from t5x_instruct.models import DecoderConfig, T5Config, build_model

REPO = Path(__file__).resolve().parents[1]

# Published shapes: (emb_dim, mlp_dim, head_dim, num_heads, encoder layers, decoder layers).
T5_SHAPES = {
    "tiny": (8, 16, 3, 4, 2, 2),  # T5X's t5_1_1/tiny.gin
    "small": (512, 1024, 64, 6, 8, 8),
    "base": (768, 2048, 64, 12, 12, 12),
    "large": (1024, 2816, 64, 16, 24, 24),
    "xl": (2048, 5120, 64, 32, 24, 24),
    "xxl": (4096, 10240, 64, 64, 24, 24),
}
# (emb_dim, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim).
DECODER_SHAPES = {
    "125m": (768, 12, 12, 12, 64, 2048),
    "350m": (1024, 24, 16, 16, 64, 2816),
    "1b": (2048, 22, 32, 4, 64, 5632),  # TinyLlama-1.1B
    "7b": (4096, 32, 32, 32, 128, 11008),  # Llama-2-7B
}

# Published parameter counts and the relative tolerance they are quoted to.
PUBLISHED_PARAMS = {
    "models/t5_1_1/small.gin": (77e6, 0.01),
    "models/t5_1_1/base.gin": (248e6, 0.01),
    "models/t5_1_1/large.gin": (783e6, 0.01),
    "models/t5_1_1/xl.gin": (2.85e9, 0.01),
    "models/t5_1_1/xxl.gin": (11.1e9, 0.01),
    "models/decoder/7b.gin": (6.74e9, 0.005),
    "models/decoder/1b.gin": (1.1e9, 0.01),
}

PRESETS = sorted(
    str(p.relative_to(GIN_DIR))
    for p in (GIN_DIR / "models").rglob("*.gin")
    if p.name != "architecture.gin"
)


@pytest.fixture(autouse=True)
def _fresh_gin_config() -> Iterator[None]:
    """Gin bindings are global: leave none behind, or later tests' ``T5Config()`` change."""
    gin.clear_config()
    yield
    gin.clear_config()


def _param_count(model: nnx.Module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _analytic_t5_params(c: T5Config) -> int:
    """T5 v1.1 weights by hand: embeddings, attention, gated MLP, RMSNorm scales, rel. bias."""
    inner = c.num_heads * c.head_dim
    attention = 4 * c.emb_dim * inner
    mlp = 3 * c.emb_dim * c.mlp_dim
    encoder = c.num_encoder_layers * (attention + mlp + 2 * c.emb_dim)
    decoder = c.num_decoder_layers * (2 * attention + mlp + 3 * c.emb_dim)
    embeddings = c.vocab_size * c.emb_dim * (1 if c.logits_via_embedding else 2)
    rel_bias = 2 * c.num_heads * c.relative_attention_num_buckets
    return embeddings + encoder + decoder + rel_bias + 2 * c.emb_dim


def _analytic_decoder_params(c: DecoderConfig) -> int:
    """Llama weights by hand: q/o over all heads, k/v over KV heads, SwiGLU, RMSNorm scales."""
    attention = 2 * c.emb_dim * c.num_heads * c.head_dim
    attention += 2 * c.emb_dim * c.num_kv_heads * c.head_dim
    layer = attention + 3 * c.emb_dim * c.mlp_dim + 2 * c.emb_dim
    embeddings = c.vocab_size * c.emb_dim * (1 if c.tie_embeddings else 2)
    return embeddings + c.num_layers * layer + c.emb_dim


def _bound_config(preset: str, bindings: tuple[str, ...] = ()) -> T5Config | DecoderConfig:
    parse_gin([preset], bindings, clear=True)
    return gin.query_parameter("build_model.config").scoped_configurable_fn()


def test_every_preset_is_listed() -> None:
    expected = {f"models/t5_1_1/{s}.gin" for s in [*T5_SHAPES, "mini"]}
    expected |= {f"models/decoder/{s}.gin" for s in [*DECODER_SHAPES, "tiny"]}
    assert set(PRESETS) == expected


def _abstract_model() -> nnx.Module:
    """``build_model()`` traced with shapes only; no parameter memory is allocated.

    Tracing the init of an 11B model creates millions of short-lived Python objects, so the
    cyclic garbage collector is paused meanwhile (it otherwise doubles the time).
    """
    gc.disable()
    try:
        return nnx.eval_shape(lambda: build_model())
    finally:
        gc.enable()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_with_expected_parameter_count(preset: str) -> None:
    parse_gin([preset], clear=True)
    model = _abstract_model()
    cfg = model.cfg
    size = Path(preset).stem
    if isinstance(cfg, T5Config):
        assert preset.startswith("models/t5_1_1/")
        if size in T5_SHAPES:
            assert (
                cfg.emb_dim,
                cfg.mlp_dim,
                cfg.head_dim,
                cfg.num_heads,
                cfg.num_encoder_layers,
                cfg.num_decoder_layers,
            ) == T5_SHAPES[size]
        assert cfg.vocab_size == 32128
        assert not cfg.logits_via_embedding
        buckets = (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        assert buckets == (32, 128)
        assert cfg.mlp_activation == "gelu"
        expected = _analytic_t5_params(cfg)
    else:
        assert isinstance(cfg, DecoderConfig)
        assert preset.startswith("models/decoder/")
        if size in DECODER_SHAPES:
            assert (
                cfg.emb_dim,
                cfg.num_layers,
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim,
                cfg.mlp_dim,
            ) == DECODER_SHAPES[size]
        assert cfg.vocab_size == 32000
        assert (cfg.rope_theta, cfg.norm_epsilon, cfg.mlp_activation) == (10000.0, 1e-5, "silu")
        assert not cfg.tie_embeddings
        expected = _analytic_decoder_params(cfg)
    test_presets = ("models/t5_1_1/mini.gin", "models/decoder/tiny.gin")  # fp32 for CPU tests
    assert cfg.dtype == ("float32" if preset in test_presets else "bfloat16")
    assert cfg.dropout_rate == 0.0
    assert (cfg.scan_layers, cfg.remat_policy) == (False, "none")

    count = _param_count(model)
    assert count == expected
    if preset in PUBLISHED_PARAMS:
        published, rtol = PUBLISHED_PARAMS[preset]
        assert abs(count - published) <= rtol * published, (count, published)

    # FSDP over 8 devices must divide every parameter, whatever the head count.
    params = nnx.state(model, nnx.Param)
    for mesh_config in (
        partitioning.MeshConfig(data=1, fsdp=8),
        partitioning.MeshConfig(data=2, fsdp=4),
    ):
        mesh = partitioning.create_mesh(mesh_config)
        shardings = partitioning.state_shardings(params, mesh, partitioning.fsdp_rules())
        for variable, sharding in zip(
            jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)),
            jax.tree.leaves(shardings),
        ):
            sharding.shard_shape(variable.get_value().shape)  # raises if not divisible


@pytest.mark.parametrize("preset", ["models/t5_1_1/base.gin", "models/decoder/1b.gin"])
def test_macros_override_preset_defaults(preset: str) -> None:
    cfg = _bound_config(
        preset,
        (
            "DROPOUT_RATE = 0.1",
            "ACTIVATION_DTYPE = 'float32'",
            "SCAN_LAYERS = True",
            "REMAT_POLICY = 'dots'",
        ),
    )
    assert (cfg.dropout_rate, cfg.dtype, cfg.scan_layers, cfg.remat_policy) == (
        0.1,
        "float32",
        True,
        "dots",
    )
    # A direct binding after the preset wins over the macro.
    cfg = _bound_config(preset, ("T5Config.dropout_rate = 0.2", "DecoderConfig.dropout_rate = 0.2"))
    assert cfg.dropout_rate == 0.2


def test_later_files_override_earlier_ones(tmp_path: Path) -> None:
    override = tmp_path / "wider.gin"
    override.write_text("T5Config.mlp_dim = 4096\n")
    parse_gin(["models/t5_1_1/small.gin", override], clear=True)
    cfg = gin.query_parameter("build_model.config").scoped_configurable_fn()
    assert dataclasses.replace(cfg, mlp_dim=1024) == _bound_config("models/t5_1_1/small.gin")
    assert cfg.mlp_dim == 4096


def test_files_resolve_from_extra_search_paths(tmp_path: Path) -> None:
    (tmp_path / "mine.gin").write_text("include 'models/t5_1_1/mini.gin'\nT5Config.num_heads = 8\n")
    parse_gin(["mine.gin"], search_paths=[tmp_path], clear=True)
    cfg = gin.query_parameter("build_model.config").scoped_configurable_fn()
    assert (cfg.num_heads, cfg.emb_dim) == (8, 64)


def test_clear_drops_earlier_bindings() -> None:
    parse_gin(["models/t5_1_1/small.gin"], ["T5Config.mlp_dim = 7"], clear=True)
    parse_gin(["models/t5_1_1/small.gin"], clear=True)
    assert gin.query_parameter("T5Config.mlp_dim") == 1024


def test_bad_binding_error_names_the_binding() -> None:
    with pytest.raises(GinConfigError, match=r"binding 'T5Config\.emb_dimm = 3'") as info:
        parse_gin(["models/t5_1_1/small.gin"], ["T5Config.emb_dimm = 3"], clear=True)
    assert "emb_dimm" in str(info.value)
    with pytest.raises(GinConfigError, match=r"binding 'T5Config\.emb_dim = \('"):
        parse_gin([], ["T5Config.emb_dim = ("], clear=True)


def test_bad_file_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'models/t5_1_1/small.gin'\n\nT5Config.no_such_field = 1\n")
    with pytest.raises(GinConfigError, match=r"bad\.gin") as info:
        parse_gin([bad], clear=True)
    assert "no_such_field" in str(info.value) and "line 3" in str(info.value)
    with pytest.raises(GinConfigError, match=r"models/t5_1_1/medium\.gin"):
        parse_gin(["models/t5_1_1/medium.gin"], clear=True)
    missing_include = tmp_path / "inc.gin"
    missing_include.write_text("include 'models/nope.gin'\n")
    with pytest.raises(GinConfigError, match=r"inc\.gin.*models/nope\.gin"):
        parse_gin([missing_include], clear=True)


def test_relative_bias_distance_must_exceed_exact_buckets() -> None:
    with pytest.raises(ValueError, match="relative_attention_max_distance=16 must exceed"):
        T5Config(relative_attention_num_buckets=32, relative_attention_max_distance=16)
    assert T5Config(relative_attention_num_buckets=32, relative_attention_max_distance=17)


def test_operative_config_parses_back_in_a_fresh_process(tmp_path: Path) -> None:
    """A configurable registered by a Python import (not by a gin file's ``import``) still
    parses back from the written config: the module is imported first."""
    from t5x_instruct.gin_utils import operative_config_text
    from t5x_instruct.training.optimizers import learning_rate_schedule

    parse_gin(bindings=["learning_rate_schedule.base_learning_rate = 0.25"], clear=True)
    learning_rate_schedule()
    text = operative_config_text()
    assert text.startswith("import t5x_instruct.training.optimizers\n")
    (tmp_path / "config.gin").write_text(text)
    read_back = (
        "import gin; from t5x_instruct.gin_utils import parse_gin; "
        f"parse_gin([{str(tmp_path / 'config.gin')!r}]); "
        "print(gin.query_parameter('learning_rate_schedule.base_learning_rate'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", read_back], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0.25"

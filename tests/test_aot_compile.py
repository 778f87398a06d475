"""``tools/aot_compile.py``: the real train step compiled for a TPU slice on this CPU host.

The compile case needs libtpu (the ``tpu`` / ``test`` extras install it from PyPI); it is
skipped, with that reason, only where libtpu cannot be imported. Topology names are
checked without it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from t5x_instruct.errors import UserInputError

TOOL = Path(__file__).resolve().parents[1] / "tools" / "aot_compile.py"


@functools.cache
def _tool():
    spec = importlib.util.spec_from_file_location("aot_compile", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its module by name
    spec.loader.exec_module(module)
    return module


def _needs_libtpu() -> None:
    pytest.importorskip("libtpu", reason="libtpu (pip install -e '.[tpu]') is not installed")


@pytest.mark.parametrize(
    ("name", "libtpu_name", "chips"),
    [
        ("v5e:16x16", "v5e:16x16", 256),
        ("v5e-256", "v5e:16x16", 256),
        ("v5litepod-16", "v5e:4x4", 16),
        ("v5p-128", "v5p:4x4x4", 64),  # v5p names count TensorCores, two per chip
        ("v4-32", "v4:2x2x4", 16),
        ("V5P:2x2x1", "v5p:2x2x1", 4),
    ],
)
def test_topology_names(name: str, libtpu_name: str, chips: int) -> None:
    topology = _tool().parse_topology(name)
    assert (topology.libtpu_name, topology.chips) == (libtpu_name, chips)


@pytest.mark.parametrize("name", ["v9x:2x2", "tpu", "v5e-12", "v5e:2x2:1"])
def test_unknown_topology_is_one_clear_error(name: str) -> None:
    with pytest.raises(UserInputError, match=r"--topology=.*v5e:16x16.*v5p-128"):
        _tool().parse_topology(name)


def test_shape_libtpu_rejects_is_one_clear_error() -> None:
    _needs_libtpu()
    tool = _tool()
    with pytest.raises(UserInputError, match=r"libtpu rejects 'v5e:3x3'.*GENERATION:SHAPE"):
        tool.topology_devices(tool.parse_topology("v5e:3x3"))


def _tiny_decoder_params() -> int:
    """Parameters of gin/models/decoder/tiny.gin, counted by hand from its dimensions."""
    vocab, emb, layers, heads, kv_heads, head_dim, mlp = 32000, 64, 2, 4, 2, 16, 128
    attention = emb * heads * head_dim * 2 + emb * kv_heads * head_dim * 2  # q, out; k, v
    per_layer = attention + 3 * emb * mlp + 2 * emb  # SwiGLU wi_0, wi_1, wo; two RMSNorms
    return 2 * vocab * emb + layers * per_layer + emb  # untied embed/logits; final norm


def test_tiny_preset_compiles_for_v5e_2x2_with_pallas(tmp_path, capsys) -> None:
    """FSDP x tensor on 4 chips with the Mosaic flash kernels inside ``shard_map``."""
    _needs_libtpu()
    out = tmp_path / "aot.jsonl"
    _tool().main([
        "--topology=v5e:2x2", "--gin_file=gin/models/decoder/tiny.gin", "--batch_size=4",
        "--inputs_length=24", "--targets_length=8", "--mesh=1,2,2", "--parallelism=tensor",
        "--gin.DecoderConfig.attention_impl='pallas'", "--gin.make_optimizer.name='adamw'",
        f"--output={out}",
    ])  # fmt: skip
    row = json.loads(out.read_text())
    assert (row["devices"], row["mesh"]) == (4, {"data": 1, "fsdp": 2, "tensor": 2})
    assert row["device_kind"] == "TPU v5 lite" and row["hbm_gib"] == 16
    # The Mosaic kernels were compiled (flash forward and backward in each layer).
    assert row["attention_impl"] == "pallas" and row["mosaic_kernels"] >= 2 * 2
    # Arguments: fp32 parameters and AdamW's two moments, every one split 4 ways (embed
    # over fsdp, heads/mlp/vocab over tensor) but the 2-way norm scales (320 values), plus
    # the step, the rng and a 1-row batch slice. TPU layouts pad each array's two minor
    # dimensions to (8, 128) tiles, which the tiny model's [embed, 2 heads, 16] attention
    # kernels feel (3% here): hence the upper bound.
    expected = 3 * 4 * _tiny_decoder_params() / 4
    assert expected <= row["bytes"]["arguments"] <= 1.05 * expected
    assert row["fits"] and 0 < row["total_gib"] < 1
    assert "v5e:2x2: " in capsys.readouterr().out

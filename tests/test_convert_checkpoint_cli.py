"""tools/convert_checkpoint.py: conversions end to end, and one clear line per bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from helpers.hf_models import numpy_state_dict, tiny_hf_t5
from helpers.t5x_layout import t5x_target_from_hf, write_msgpack_checkpoint
from transformers import AutoModelForSeq2SeqLM

from t5x_instruct import partitioning
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.param_checkpoints import restore_model_params
from t5x_instruct.training.train_state import ModelSpec

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"

# The tiny HF model's shapes, written out by hand as a user would.
TINY_GIN = """
include 'models/t5_1_1/architecture.gin'
ACTIVATION_DTYPE = 'float32'
T5Config.vocab_size = 64
T5Config.emb_dim = 32
T5Config.num_heads = 4
T5Config.head_dim = 8
T5Config.mlp_dim = 48
T5Config.num_encoder_layers = 2
T5Config.num_decoder_layers = 2
T5Config.relative_attention_num_buckets = 8
T5Config.relative_attention_max_distance = 20
"""


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _tool()


def test_hf_to_ours_to_hf_through_the_cli(tmp_path, tool, capsys) -> None:
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=8)
    hf.save_pretrained(tmp_path / "hf")
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert tool.main(["hf-to-ours", "--input", str(tmp_path / "hf"), "--output", str(ours)]) == 0
    assert (ours / "checkpoints" / "0" / "state").is_dir()
    gin_file = str(ours / "model.gin")
    argv = ["ours-to-hf", "--input", str(ours), "--output", str(back), "--gin_file", gin_file]
    assert tool.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(back).state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(reloaded[key], value), key


def test_t5x_to_ours_with_gin_file_and_overrides(tmp_path, tool) -> None:
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=9)  # three decoder layers
    target = t5x_target_from_hf(
        numpy_state_dict(hf), encoder_layers=2, decoder_layers=3, tied=False
    )
    write_msgpack_checkpoint(str(tmp_path / "t5x" / "checkpoint_20"), target, {}, step=20)
    (tmp_path / "tiny.gin").write_text(TINY_GIN)
    argv = ["t5x-to-ours", "--input", str(tmp_path / "t5x"), "--output", str(tmp_path / "ours")]
    argv += ["--gin_file", str(tmp_path / "tiny.gin"), "--gin.T5Config.num_decoder_layers=3"]
    assert tool.main(argv) == 0
    cfg = T5Config(
        vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48, num_encoder_layers=2,
        num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
    )  # fmt: skip
    mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1, fsdp=8))
    spec = ModelSpec.create(lambda: build_model(cfg))
    rules = partitioning.standard_logical_axis_rules()
    params = restore_model_params(str(tmp_path / "ours"), spec, mesh, rules, step=20)
    np.testing.assert_array_equal(
        np.asarray(params["decoder"]["blocks"][2]["mlp"]["wo"]["kernel"]),
        target["decoder/layers_2/mlp/wo/kernel"],
    )
    np.testing.assert_array_equal(
        np.asarray(params["encoder"]["blocks"][1]["attention"]["query"]["kernel"]).reshape(32, 32),
        target["encoder/layers_1/attention/query/kernel"],
    )


def _error(tool: ModuleType, capsys, argv: list[str]) -> str:
    capsys.readouterr()  # drop earlier output (HF progress bars)
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_input_gives_one_line_and_status_2(tmp_path, tool, capsys) -> None:
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=10)
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(hf_dir)
    out = str(tmp_path / "out")

    err = _error(tool, capsys, ["hf-to-ours", "--input", str(tmp_path / "nope"), "--output", out])
    assert "nope does not exist" in err
    # The tiny preset is wider than this checkpoint: the parameters that differ are named.
    argv = ["hf-to-ours", "--input", hf_dir, "--output", out]
    err = _error(tool, capsys, [*argv, "--gin_file", "gin/models/t5_1_1/mini.gin"])
    assert "shared.weight: checkpoint [64, 32] vs model [32128, 64]" in err
    assert "decoder.block.2.* (14)" in err  # the layer the preset lacks
    err = _error(tool, capsys, [*argv, "--gin_file", "gin/models/t5_1_1/nope.gin"])
    assert "nope.gin" in err
    assert "need a --gin_file" in _error(tool, capsys, [*argv, "--gin.T5Config.emb_dim=8"])
    err = _error(
        tool, capsys, [*argv, "--gin_file", "models/t5_1_1/mini.gin", "--gin.T5Config.emb_dim"]
    )
    assert "Malformed gin binding" in err
    err = _error(tool, capsys, ["t5x-to-ours", "--input", hf_dir, "--output", out])
    assert "needs --gin_file" in err
    t5x = [
        "t5x-to-ours",
        "--input",
        hf_dir,
        "--output",
        out,
        "--gin_file",
        "models/t5_1_1/mini.gin",
    ]
    assert "holds no T5X checkpoint" in _error(tool, capsys, t5x)
    to_hf = [
        "ours-to-hf",
        "--input",
        hf_dir,
        "--output",
        out,
        "--gin_file",
        "models/t5_1_1/mini.gin",
    ]
    assert "holds no t5x_instruct checkpoint" in _error(tool, capsys, to_hf)
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(tool, capsys, ["hf-to-ours", "--input", str(empty), "--output", out])
    assert "has no config.json" in err
    taken = [
        "ours-to-hf",
        "--input",
        hf_dir,
        "--output",
        hf_dir,
        "--gin_file",
        "models/t5_1_1/mini.gin",
    ]
    assert "already holds config.json" in _error(tool, capsys, taken)

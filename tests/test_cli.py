"""The training CLI: each kind of bad input gets one clear line and exit status 2."""

from __future__ import annotations

import pytest

from t5x_instruct import train
from t5x_instruct.cli.gin_flags import normalise_binding

QUICK = [
    "--gin_file=gin/runs/quickstart.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=8",
    "--gin.train.eval_period=0",
    "--gin.train.final_eval=False",
    "--gin.train.progress_bar=False",
]


def _error(capsys, argv: list[str]) -> str:
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_unknown_task_suggests_close_names(capsys, tmp_path) -> None:
    message = _error(
        capsys,
        [*QUICK, f"--gin.MODEL_DIR={tmp_path}", "--gin.MIXTURE_OR_TASK_NAME=demo_instruction"],
    )
    assert "'demo_instruction'" in message
    assert "Did you mean: demo_instructions" in message


def test_missing_required_macro_is_named(capsys) -> None:
    argv = [
        "--gin_file=gin/models/t5_1_1/mini.gin",
        "--gin_file=gin/runs/finetune.gin",
        "--gin.MIXTURE_OR_TASK_NAME=demo_instructions",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 8}",
    ]
    message = _error(capsys, argv)
    assert "MODEL_DIR" in message and "TRAIN_STEPS" in message
    assert "--gin.MODEL_DIR=..." in message


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        ("--gin.TRAIN_STEPS", "Malformed gin binding 'TRAIN_STEPS': expected KEY=VALUE"),
        ("--gin.T5Config.emb_dimm=3", "doesn't have a parameter named 'emb_dimm'"),
        ("--gin.TRAIN_STEPS=[1,", "Invalid gin binding 'TRAIN_STEPS = [1,'"),
        ("--gin.TRAIN_STEPS=ten", "train.train_steps must be a positive integer, got 'ten'"),
    ],
)
def test_malformed_binding_is_named(capsys, tmp_path, binding: str, expected: str) -> None:
    message = _error(capsys, [*QUICK, f"--gin.MODEL_DIR={tmp_path}", binding])
    assert expected in message


def test_bad_gin_file_is_named(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.gin"
    bad.write_text("T5Config.emb_dim = = 3\n")
    message = _error(capsys, [f"--gin_file={bad}"])
    assert str(bad) in message


def test_model_dir_with_other_model_shape_is_refused(capsys, tmp_path) -> None:
    assert train.main([*QUICK, f"--gin.MODEL_DIR={tmp_path}"]) == 0
    message = _error(capsys, [*QUICK, f"--gin.MODEL_DIR={tmp_path}", "--gin.T5Config.mlp_dim=64"])
    assert "holds a different model" in message
    assert "mlp/wi_0/kernel: checkpoint [128, 256] vs model [128, 64]" in message


def test_bare_string_values_are_quoted_for_gin() -> None:
    assert normalise_binding("MODEL_DIR=/tmp/run") == "MODEL_DIR = '/tmp/run'"
    assert normalise_binding("TRAIN_STEPS=10") == "TRAIN_STEPS = 10"
    assert normalise_binding("x.y=@foo()") == "x.y = @foo()"
    assert normalise_binding("MODEL_DIR='/a b'") == "MODEL_DIR = '/a b'"


def test_batch_size_that_does_not_split_over_the_mesh_is_refused(capsys, tmp_path) -> None:
    message = _error(capsys, [*QUICK, f"--gin.MODEL_DIR={tmp_path}", "--gin.BATCH_SIZE=12"])
    assert "train.batch_size=12 must be divisible by the 8 batch shards" in message

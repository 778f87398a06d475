"""How a run ends: a missing final-eval split is decided before training (a warning, not a crash
after the last step), a re-run of a finished run exits cleanly, and training never imports
PyTorch (tensorboardX would, for nothing: +1 s and ~200 MiB per run)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.xla_flags import xla_flags

from t5x_instruct.training.loop import _final_eval_split

REPO = Path(__file__).resolve().parents[1]

# The CLI, then whether anything imported torch on the way.
_SCRIPT = """
import sys
from t5x_instruct import train
code = train.main(sys.argv[1:])
print(f"torch imported: {'torch' in sys.modules}", file=sys.stderr)
sys.exit(code)
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    import seqio  # noqa: F401  (the subprocess reads its task: skipped where seqio is not)

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def test_task_without_test_split_trains_warns_first_and_ends_cleanly(tmp_path) -> None:
    rows = [{"instruction": f"Repeat {w}.", "output": w} for w in ("red", "blue", "green", "tea")]
    sft = tmp_path / "train.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task_gin = tmp_path / "task.gin"
    task_gin.write_text(
        "import t5x_instruct.data.custom\nimport tasks.custom\n"
        f"register_jsonl_tasks.tasks = [{{'name': 'end_sft', 'paths': ['{sft}']}}]\n"
        "get_vocabulary.path = 'tasks/demo/vocab/demo.model'\n"
    )
    model_dir = tmp_path / "run"
    args = [
        "--gin_file=gin/runs/quickstart.gin",
        f"--gin_file={task_gin}",
        "--gin.MIXTURE_OR_TASK_NAME='end_sft'",
        "--gin.train.eval_mixture_or_task_name=None",
        "--gin.train.eval_period=0",  # final_eval keeps its default, True
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4",
        "--gin.train.log_period=1",
        "--gin.train.progress_bar=False",
        "--gin.T5Config.num_encoder_layers=1",
        "--gin.T5Config.num_decoder_layers=1",
        f"--gin.MODEL_DIR={model_dir}",
    ]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if "final_eval_split" in line)
    assert "no 'test' split" in lines[warning] and "no final evaluation" in lines[warning]
    # Decided before training: the warning precedes the model line and the first step.
    assert warning < next(i for i, line in enumerate(lines) if "Model: T5Config" in line)
    assert "torch imported: False" in first.stderr
    assert "Traceback" not in first.stderr
    assert [r["step"] for r in map(json.loads, (model_dir / "metrics.jsonl").open())] == [1, 2]
    # The re-run finds the finished checkpoint, trains nothing and ends the same way.
    again = _run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    "available, expected, says",
    [
        ({"train", "validation", "test"}, "test", None),
        ({"train", "validation"}, "validation", "uses 'validation' instead"),
        ({"train"}, None, "no final evaluation will run"),
    ],
)
def test_final_eval_split_falls_back_to_validation_then_to_none(
    caplog, available, expected, says
) -> None:
    with caplog.at_level(logging.WARNING):
        assert _final_eval_split(available, "test", "validation") == expected
    if says is None:
        assert not caplog.records
    else:
        assert len(caplog.records) == 1 and says in caplog.text

"""End-to-end training on the embedded demo mixture: loss falls, kill/resume is exact."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import gin
import pytest
from helpers.xla_flags import xla_flags

import tasks.demo
from t5x_instruct.models import DecoderConfig, T5Config, build_model
from t5x_instruct.runtime.preemption import PREEMPTED_EXIT_CODE
from t5x_instruct.training.loop import train
from t5x_instruct.training.metrics import read_metrics
from t5x_instruct.training.train_state import ModelSpec

REPO = Path(__file__).resolve().parents[1]
VOCAB = 640  # the demo SentencePiece model has 600 pieces

SMALL_T5 = T5Config(
    vocab_size=VOCAB, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
    num_encoder_layers=2, num_decoder_layers=2,
)  # fmt: skip
SMALL_DECODER = DecoderConfig(
    vocab_size=VOCAB, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
    num_layers=2,
)  # fmt: skip


@pytest.mark.parametrize("config", [SMALL_T5, SMALL_DECODER], ids=["encoder_decoder", "prefix_lm"])
def test_loss_falls_on_demo_mixture(tmp_path, caplog, config) -> None:
    caplog.set_level(logging.INFO, logger="t5x_instruct")
    gin.parse_config(
        [
            "make_optimizer.name = 'adamw'",
            "learning_rate_schedule.base_learning_rate = 3e-3",
            "learning_rate_schedule.warmup_steps = 10",
        ]
    )
    lengths = dict(tasks.demo.TASK_FEATURE_LENGTHS)
    if isinstance(config, DecoderConfig):
        lengths = {"inputs": lengths["inputs"], "targets": lengths["targets"]}
    summary = train(
        model_dir=str(tmp_path),
        mixture_or_task_name=tasks.demo.TRAIN_MIXTURE,
        task_feature_lengths=lengths,
        train_steps=60,
        batch_size=16,
        log_period=5,
        checkpoint_period=1000,
        eval_period=30,
        eval_mixture_or_task_name=tasks.demo.EVAL_MIXTURE,
        max_eval_examples=8,
        eval_batch_size=8,
        progress_bar=False,
        model_spec=ModelSpec.create(lambda: build_model(config)),
    )
    assert summary["step"] == 60
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == list(range(5, 61, 5))
    for r in records:
        assert {"loss", "learning_rate", "tokens_per_sec"} <= r.keys()
        assert r["tokens_per_sec"] > 0
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    # TensorBoard event files are written too.
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
    # Periodic evals land in the record of their step: validation loss and per-task metrics.
    by_step = {r["step"]: r for r in records}
    for step in (30, 60):
        assert by_step[step]["validation/loss"] > 0
        assert 0.0 <= by_step[step]["eval/demo_sentiment/exact_match"] <= 1.0
    assert "validation/loss" not in by_step[25]
    assert "step 30: validation loss" in caplog.text
    assert "train_tasks exact match" in caplog.text
    # The final summary covers every eval task, grouped as the quickstart reports them.
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    per_task = saved["eval"]["per_task"]
    assert len(per_task) == 23
    assert {t["group"] for t in per_task.values()} == {
        "train_tasks", "heldout_templates", "heldout_task",
    }  # fmt: skip
    assert all(t["num_examples"] == 8 for t in per_task.values())


RUN_ARGS = [
    "--gin_file=gin/runs/quickstart.gin",
    "--gin.TRAIN_STEPS=12",
    "--gin.BATCH_SIZE=8",
    "--gin.train.log_period=1",
    "--gin.train.checkpoint_period=4",
    "--gin.train.eval_period=0",
    "--gin.train.final_eval=False",
    "--gin.train.progress_bar=False",
]

# Runs the CLI, but the process signals itself right after logging `step` (as a preemption or
# a crash would, at an arbitrary point after some checkpoints were started).
_SELF_SIGNAL = """
import os, signal, sys
from t5x_instruct import train
from t5x_instruct.training import metrics
step_to_hit, signum = int(sys.argv[1]), int(sys.argv[2])
original = metrics.MetricsWriter.write
def write(self, step, values):
    out = original(self, step, values)
    if step == step_to_hit:
        os.kill(os.getpid(), signum)
    return out
metrics.MetricsWriter.write = write
sys.exit(train.main(sys.argv[3:]))
"""


def _run(args: list[str], *prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    return subprocess.run(
        [sys.executable, *prefix, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def _losses(model_dir: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in read_metrics(str(model_dir))}


# Both shipped plug-ins on one model: a soft prompt in every packed segment plus LoRA
# adapters, base frozen (the demo packs at most 3 examples per row at these lengths).
PLUGIN_ARGS = [
    "--gin_file=gin/plugins/prompt_tuning.gin",
    "--gin_file=gin/plugins/lora.gin",
    "--gin.train.plugins=[@PromptTuning(), @LoRA()]",
    "--gin.PROMPT_LENGTH=4",
    "--gin.PROMPT_MAX_SEGMENTS_PER_ROW=3",
]


@pytest.mark.parametrize("extra", [[], PLUGIN_ARGS], ids=["plain", "prompt_tuning+lora"])
def test_sigkill_then_restart_reproduces_uninterrupted_losses(tmp_path, extra) -> None:
    run_args = [*RUN_ARGS, *extra]
    straight = _run(
        [*run_args, f"--gin.MODEL_DIR={tmp_path / 'straight'}"], "-m", "t5x_instruct.train"
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    args = [*run_args, f"--gin.MODEL_DIR={killed_dir}"]
    killed = _run(args, "-c", _SELF_SIGNAL, "10", str(int(signal.SIGKILL)))
    assert killed.returncode == -signal.SIGKILL
    steps_on_disk = sorted(int(d) for d in os.listdir(killed_dir / "checkpoints") if d.isdigit())
    assert steps_on_disk and max(steps_on_disk) < 12
    resumed = _run([*run_args, f"--gin.MODEL_DIR={killed_dir}"], "-m", "t5x_instruct.train")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    # O(1): the data iterators came back from their checkpoints, nothing was skipped.
    assert "restored the tf.data iterators" in resumed.stderr, resumed.stderr[-3000:]
    assert "Data position: skipping" not in resumed.stderr
    expected, got = _losses(tmp_path / "straight"), _losses(killed_dir)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    if extra:  # the plug-ins' exports were written next to the checkpoints
        assert (killed_dir / "prompt_tuning" / "prompt_12.npy").exists()
        assert (killed_dir / "lora" / "adapters_12.safetensors").exists()


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path) -> None:
    model_dir = tmp_path / "run"
    args = [*RUN_ARGS, f"--gin.MODEL_DIR={model_dir}"]
    result = _run(args, "-c", _SELF_SIGNAL, "6", str(int(signal.SIGTERM)))
    # A preempted run says so in its exit status (a scheduler restarts it; 0 means finished).
    assert result.returncode == PREEMPTED_EXIT_CODE == 42, result.stderr[-3000:]
    assert "SIGTERM received: saving step 6" in result.stderr
    steps = sorted(int(d) for d in os.listdir(model_dir / "checkpoints") if d.isdigit())
    assert steps[-1] == 6

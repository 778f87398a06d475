"""A few training steps, then ``python -m t5x_instruct.eval`` on every checkpoint, resumed.

The training run (the quickstart model, 6 steps, a checkpoint every 2) also checks the loop's
side of evaluation: MODEL_DIR/config.gin holds the run's bindings and parses back, and a
mixture with a rank-classification (``_score_eval``) task evaluates in the loop with
accuracy next to exact match. Oracle for the predictions: each checkpoint exported to a
Hugging Face model (transformers' own forward pass, greedy by hand); metrics are recounted
here from the written predictions.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest
import tensorflow as tf
from helpers.score_tasks import register_score_eval_mixture, remove
from helpers.tiny_checkpoints import DemoTokenizer, hf_greedy, hf_log_likelihood
from helpers.xla_flags import xla_flags
from transformers import AutoModelForSeq2SeqLM, T5ForConditionalGeneration

import tasks.demo
from t5x_instruct import eval as eval_cli
from t5x_instruct import partitioning, train
from t5x_instruct.convert.hf_export import save_hf_checkpoint
from t5x_instruct.data.metrics import strip_whitespace
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.inference.model_setup import InferenceModel
from t5x_instruct.models import build_model
from t5x_instruct.training.param_checkpoints import restore_model_params
from t5x_instruct.training.train_state import ModelSpec

REPO = Path(__file__).resolve().parents[1]
RC_TASK = "eval_cli_test_pick_score_eval"
MIXTURE = "eval_cli_test_mixture"
TASK = tasks.demo.HELDOUT_TASK


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    register_score_eval_mixture(RC_TASK, MIXTURE)
    model_dir = tmp_path_factory.mktemp("eval_cli") / "run"
    argv = [
        "--gin_file=gin/runs/quickstart.gin",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TRAIN_STEPS=6",
        "--gin.BATCH_SIZE=8",
        "--gin.train.log_period=2",
        "--gin.train.checkpoint_period=2",
        "--gin.train.eval_period=6",
        f"--gin.train.eval_mixture_or_task_name='{MIXTURE}'",
        "--gin.train.max_eval_examples=4",
        "--gin.train.eval_batch_size=8",
        "--gin.train.async_checkpointing=False",
        "--gin.train.progress_bar=False",
        # Large steps from the start, so that the checkpoints predict differently.
        "--gin.learning_rate_schedule.warmup_steps=1",
        "--gin.learning_rate_schedule.base_learning_rate=0.02",
    ]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert train.main(argv) == 0
    finally:
        os.chdir(cwd)
    yield model_dir
    remove(RC_TASK, MIXTURE)


def test_training_writes_its_operative_config_and_scores_score_eval_tasks(run_dir) -> None:
    text = (run_dir / "config.gin").read_text()
    for line in ("TRAIN_STEPS = 6", "train.checkpoint_period = 2", "T5Config.emb_dim = 128",
                 "learning_rate_schedule.warmup_steps = 1", "import tasks.demo"):  # fmt: skip
        assert line in text, line
    gin.clear_config()
    parse_gin([run_dir / "config.gin"])  # it parses back as a gin file
    assert gin.query_parameter("train.eval_period") == 6
    assert gin.query_parameter("MODEL_DIR/macro.value") == str(run_dir)

    # Periodic eval (validation) and final eval (test) route the `_score_eval` task to scoring.
    record = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").open())}[6]
    assert 0.0 <= record[f"eval/{RC_TASK}/accuracy"] <= 1.0
    assert 0.0 <= record[f"eval/{TASK}/exact_match"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())["eval"]
    assert summary["per_task"][RC_TASK]["primary_metric"] == "accuracy"
    assert summary["per_task"][TASK]["primary_metric"] == "exact_match"
    means = summary["means"]["heldout_task"]
    assert set(means) == {"accuracy", "exact_match"}
    assert all(np.isfinite(v) for v in means.values())
    assert means["accuracy"] == summary["per_task"][RC_TASK]["accuracy"]


def _eval_args(run_dir: Path, out: Path) -> list[str]:
    return [
        f"--gin_file={run_dir / 'config.gin'}",
        f"--gin.MIXTURE_OR_TASK_NAME={TASK}",
        "--gin.evaluate.split='validation'",
        "--gin.evaluate.max_examples=5",
        "--gin.evaluate.batch_size=8",
        f"--gin.evaluate.output_dir={out}",
    ]


def _hf_model(run_dir: Path, step: int, tmp: Path) -> T5ForConditionalGeneration:
    """The checkpoint of ``step`` exported and loaded by transformers (the decoding oracle)."""
    gin.clear_config()
    parse_gin([run_dir / "config.gin"])
    spec = ModelSpec.create(build_model)
    mesh = partitioning.create_mesh(partitioning.MeshConfig())
    params = restore_model_params(
        str(run_dir), spec, mesh, partitioning.standard_logical_axis_rules(), step=step
    )
    save_hf_checkpoint(params, spec.config, str(tmp))
    return AutoModelForSeq2SeqLM.from_pretrained(tmp).eval()


def test_eval_every_checkpoint_resumes_after_a_kill(run_dir, tmp_path, monkeypatch) -> None:
    out = tmp_path / "eval"
    restore = InferenceModel.restore

    def killed_at_step_4(self, path, step=None):
        if path.endswith(f"{os.sep}4"):
            raise KeyboardInterrupt  # as a SIGINT / preemption would, mid-run
        return restore(self, path, step)

    monkeypatch.setattr(InferenceModel, "restore", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        eval_cli.main(_eval_args(run_dir, out))
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [
        "config.gin", "metrics.jsonl", "predictions", "step_2.json", "tb",
    ]  # fmt: skip
    step_2 = (out / "step_2.json").read_bytes()

    # The real command line, in a fresh process: only the steps not evaluated yet.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    done = subprocess.run(
        [sys.executable, "-m", "t5x_instruct.eval", *_eval_args(run_dir, out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Already evaluated in {out}: steps [2]" in done.stderr
    assert "step 2:" not in done.stdout and "step 4:" in done.stdout and "step 6:" in done.stdout
    assert (out / "step_2.json").read_bytes() == step_2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [2, 4, 6]

    tok = DemoTokenizer()
    scores = {}
    for step in (2, 4, 6):
        record = json.loads((out / f"step_{step}.json").read_text())
        assert record["checkpoint"].endswith(f"checkpoints{os.sep}{step}")
        rows = [json.loads(x) for x in (out / f"predictions/step_{step}/{TASK}.jsonl").open()]
        assert len(rows) == 5
        em = np.mean([strip_whitespace(r["prediction"]) == r["targets"] for r in rows])
        assert record["eval"]["per_task"][TASK]["exact_match"] == pytest.approx(em)
        hf = _hf_model(run_dir, step, tmp_path / f"hf_{step}")
        for r in rows:
            inputs = tok.ids(r["inputs"], 48)
            ids = hf_greedy(hf, inputs, 8)
            assert r["prediction"] == tok.text(ids), (step, r)
            # Greedy's score: the log-probability of the generated tokens (EOS included).
            expected = hf_log_likelihood(hf, inputs, ids)
            assert r["prediction_score"] == pytest.approx(expected, abs=1e-4)
        scores[step] = np.array([r["prediction_score"] for r in rows])
    # Each step's own parameters were evaluated.
    assert np.abs(scores[2] - scores[6]).max() > 1e-2

    # TensorBoard holds one scalar per step for the task (both runs' event files).
    steps = sorted(
        event.step
        for path in glob.glob(str(out / "tb" / "events.out.tfevents.*"))
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
        if value.tag == f"eval/{TASK}/exact_match"
    )
    assert steps == [2, 4, 6]

    # Nothing left: a third run evaluates nothing and returns the stored records.
    gin.clear_config()
    assert eval_cli.main(_eval_args(run_dir, out)) == 0
    assert (out / "step_2.json").read_bytes() == step_2


def test_eval_unknown_split_and_missing_macro_are_one_line(run_dir, capsys) -> None:
    assert eval_cli.main([*_eval_args(run_dir, run_dir / "x"), "--gin.evaluate.split='dev'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "'dev'" in err and "evaluate.split" in err
    assert eval_cli.main(["--gin_file=gin/models/t5_1_1/mini.gin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "MODEL_DIR" in err and "MIXTURE_OR_TASK_NAME" in err and "TASK_FEATURE_LENGTHS" in err

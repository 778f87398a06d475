"""``python -m t5x_instruct.eval`` / ``.infer`` on a converted Hugging Face checkpoint.

Oracle: the Hugging Face model itself (same weights, before conversion) — greedy decoding by
plain forward passes, target log-likelihoods in float64 numpy, and rank-classification
accuracy as the argmax of those sums — with the demo SentencePiece model read by
``sentencepiece`` directly for token ids. Score tolerances are 1e-4 absolute: each score sums
about ten float32 log-probabilities from two implementations (logits agree to ~1e-5).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
from helpers.score_tasks import RC_EXAMPLES, register_score_eval_mixture, remove
from helpers.tiny_checkpoints import (
    DemoTokenizer,
    convert_to_ours,
    hf_greedy,
    hf_log_likelihood,
    tiny_flan_t5,
)
from transformers import AutoModelForSeq2SeqLM

import tasks.demo
from t5x_instruct import eval as eval_cli
from t5x_instruct import infer as infer_cli
from t5x_instruct import partitioning
from t5x_instruct.convert.hf_export import save_hf_checkpoint
from t5x_instruct.data.metrics import strip_whitespace
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import build_model
from t5x_instruct.plugins.plugin_set import PluginSet
from t5x_instruct.training import loop  # noqa: F401 - registers `train` (plug-in gin files)
from t5x_instruct.training.checkpoints import load_params_for_warm_start
from t5x_instruct.training.param_checkpoints import save_params
from t5x_instruct.training.train_state import ModelSpec

REPO = Path(__file__).resolve().parents[1]
RC_TASK = "hf_eval_test_pick_score_eval"  # a P3-style `_score_eval` twin
MIXTURE = "hf_eval_test_mixture"
LENGTHS = {"inputs": 16, "targets": 4}
JSONL_LINES = [
    {"inputs": "Which day is in this sentence? On Monday we met.", "targets": "Monday"},
    {"inputs": "Give the day of the week. Friday came."},
    {"inputs": "Pick the city: Sam drove to Vienna.", "targets": "Vienna"},
    {"inputs": "Hello there", "id": 4},
    {"inputs": "Last Sunday Wei took a train to Prague and then a long walk.", "targets": "x"},
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_eval")
    hf_model = tiny_flan_t5()
    model_gin = convert_to_ours(hf_model, root / "hf", root / "ours")
    return hf_model, model_gin, root / "ours"


@pytest.fixture(scope="module")
def rc_mixture():
    register_score_eval_mixture(RC_TASK, MIXTURE)
    yield MIXTURE
    remove(RC_TASK, MIXTURE)


def _common(model_gin, ckpt) -> list[str]:
    return [
        f"--gin_file={model_gin}",
        f"--gin.MODEL_DIR={ckpt}",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    ]


def _one_error_line(capsys, status: int) -> str:
    assert status == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------------- evaluate


def test_mixture_of_score_eval_and_decoding_tasks_against_hf(converted, rc_mixture, tmp_path):
    hf_model, model_gin, ckpt = converted
    out = tmp_path / "eval"
    argv = [
        *_common(model_gin, ckpt),
        f"--gin.MIXTURE_OR_TASK_NAME={rc_mixture}",
        "--gin.evaluate.split='validation'",
        "--gin.evaluate.max_examples=6",
        "--gin.evaluate.batch_size=4",
        f"--gin.evaluate.output_dir={out}",
    ]
    assert eval_cli.main(argv) == 0
    record = json.loads((out / "step_0.json").read_text())
    per_task = record["eval"]["per_task"]
    tok = DemoTokenizer()

    # Rank classification: per-row log-likelihoods and accuracy from the HF model.
    expected_scores, hits = [], []
    for ex in RC_EXAMPLES:
        inputs = tok.ids(ex["inputs"], LENGTHS["inputs"])
        scores = [
            hf_log_likelihood(hf_model, inputs, tok.ids(c, LENGTHS["targets"]))
            for c in ex["answer_choices"]
        ]
        expected_scores += scores
        hits.append(ex["answer_choices"][int(np.argmax(scores))] == ex["targets"])
    accuracy = float(np.mean(hits))
    assert 0.0 < accuracy < 1.0, "the oracle case should be neither all right nor all wrong"
    assert per_task[RC_TASK]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert per_task[RC_TASK]["primary_metric"] == "accuracy"
    assert per_task[RC_TASK]["num_examples"] == len(RC_EXAMPLES)
    rows = [json.loads(line) for line in (out / "predictions/step_0" / f"{RC_TASK}.jsonl").open()]
    assert [r["targets"] for r in rows] == [c for ex in RC_EXAMPLES for c in ex["answer_choices"]]
    np.testing.assert_allclose([r["score"] for r in rows], expected_scores, rtol=0, atol=1e-4)

    # Decoding task: greedy predictions of the HF model, exact match counted here.
    preds = [
        json.loads(line)
        for line in (out / "predictions/step_0" / f"{tasks.demo.HELDOUT_TASK}.jsonl").open()
    ]
    assert len(preds) == 6
    for p in preds:
        ids = hf_greedy(hf_model, tok.ids(p["inputs"], LENGTHS["inputs"]), LENGTHS["targets"])
        assert p["prediction"] == tok.text(ids), p
    em = np.mean([strip_whitespace(p["prediction"]) == p["targets"] for p in preds])
    assert per_task[tasks.demo.HELDOUT_TASK]["exact_match"] == pytest.approx(em)

    # Group means per metric: the scoring task adds accuracy without making exact match NaN.
    means = record["eval"]["means"]["heldout_task"]
    assert means == {"accuracy": pytest.approx(accuracy), "exact_match": pytest.approx(em)}
    assert record["eval"]["mean_exact_match"] == {"heldout_task": pytest.approx(em)}
    assert (out / "config.gin").read_text().count("evaluate.split = 'validation'") == 1


def test_eval_of_another_architecture_names_the_parameters(converted, capsys, tmp_path):
    _, model_gin, ckpt = converted
    argv = [
        *_common(model_gin, ckpt),
        f"--gin.MIXTURE_OR_TASK_NAME={tasks.demo.HELDOUT_TASK}",
        "--gin.T5Config.mlp_dim=64",
        f"--gin.evaluate.output_dir={tmp_path}",
    ]
    line = _one_error_line(capsys, eval_cli.main(argv))
    assert "holds a different model" in line
    assert "mlp/wi_0/kernel" in line and "checkpoint [32, 48] vs model [32, 64]" in line


def test_eval_beam_size_zero_names_the_binding(converted, capsys, tmp_path):
    _, model_gin, ckpt = converted
    argv = [
        *_common(model_gin, ckpt),
        f"--gin.MIXTURE_OR_TASK_NAME={tasks.demo.HELDOUT_TASK}",
        "--gin.GreedyEvaluator.decode_fn=@decoding.beam_search",
        "--gin.GreedyEvaluator.num_decodes=0",
        f"--gin.evaluate.output_dir={tmp_path}",
    ]
    line = _one_error_line(capsys, eval_cli.main(argv))
    assert "GreedyEvaluator.num_decodes=0" in line


# ------------------------------------------------------------------------------------ infer


def _write_jsonl(path, lines) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _infer(model_gin, ckpt, jsonl, out, *extra: str) -> int:
    return infer_cli.main(
        [
            *_common(model_gin, ckpt),
            f"--gin.infer.input_file={jsonl}",
            f"--gin.infer.output_dir={out}",
            "--gin.infer.vocabulary=@get_vocabulary()",
            f"--gin.get_vocabulary.path={tasks.demo.VOCAB_PATH}",
            "--gin.infer.batch_size=2",
            "--gin.infer.chunk_size=2",
            "--gin.infer.progress_bar=False",
            *extra,
        ]
    )


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def test_infer_predict_jsonl_matches_hf_and_resumes(converted, tmp_path, caplog):
    hf_model, model_gin, ckpt = converted
    jsonl = tmp_path / "inputs.jsonl"
    _write_jsonl(jsonl, JSONL_LINES)
    straight = tmp_path / "straight"
    assert _infer(model_gin, ckpt, jsonl, straight, "--mode=predict") == 0
    got = _read(straight / "inputs.jsonl")
    tok = DemoTokenizer()
    assert [r["inputs"] for r in got] == [x["inputs"] for x in JSONL_LINES]
    assert [r.get("targets") for r in got] == [x.get("targets") for x in JSONL_LINES]
    for r in got:
        ids = hf_greedy(hf_model, tok.ids(r["inputs"], LENGTHS["inputs"]), LENGTHS["targets"])
        assert r["prediction"] == tok.text(ids)
        assert "predictions" not in r
    assert sorted(p.name for p in (straight / "inputs.chunks").iterdir()) == ["manifest.json"]

    # A killed job: chunk 0 complete, chunk 1 half-written under its temporary name.
    resumed = tmp_path / "resumed"
    (resumed / "inputs.chunks").mkdir(parents=True)
    shutil.copy(straight / "inputs.chunks/manifest.json", resumed / "inputs.chunks")
    first = (straight / "inputs.jsonl").read_text().splitlines(keepends=True)
    (resumed / "inputs.chunks/00000.jsonl").write_text("".join(first[:2]))
    (resumed / "inputs.chunks/00001.jsonl.123.tmp").write_text('{"inputs": "half')
    caplog.set_level(logging.INFO, logger="t5x_instruct")
    assert _infer(model_gin, ckpt, jsonl, resumed, "--mode=predict") == 0
    assert "resuming, 1 of 3 chunks already written" in caplog.text
    assert (resumed / "inputs.jsonl").read_text() == (straight / "inputs.jsonl").read_text()
    assert sorted(p.name for p in (resumed / "inputs.chunks").iterdir()) == ["manifest.json"]

    # A finished job reruns as a no-op; other settings in the same folder are refused
    # instead of mixing their results with these.
    caplog.clear()
    assert _infer(model_gin, ckpt, jsonl, resumed) == 0
    assert "is complete; nothing to do" in caplog.text
    assert _infer(model_gin, ckpt, jsonl, resumed, "--gin.infer.max_decode_length=3") == 2


def test_infer_beam_writes_every_decode(converted, tmp_path):
    _, model_gin, ckpt = converted
    jsonl = tmp_path / "inputs.jsonl"
    _write_jsonl(jsonl, JSONL_LINES[:3])
    out = tmp_path / "beam"
    extra = ["--gin.GreedyEvaluator.decode_fn=@decoding.beam_search",
             "--gin.GreedyEvaluator.num_decodes=3"]  # fmt: skip
    assert _infer(model_gin, ckpt, jsonl, out, *extra) == 0
    for r in _read(out / "inputs.jsonl"):
        assert len(r["predictions"]) == 3 and r["predictions"][0] == r["prediction"]
        assert r["scores"] == sorted(r["scores"], reverse=True) and r["scores"][0] == r["score"]


def test_infer_score_mode_matches_hf_log_likelihood(converted, tmp_path):
    hf_model, model_gin, ckpt = converted
    lines = [x for x in JSONL_LINES if "targets" in x]
    jsonl = tmp_path / "pairs.jsonl"
    _write_jsonl(jsonl, lines)
    out = tmp_path / "score"
    assert _infer(model_gin, ckpt, jsonl, out, "--mode=score") == 0
    got = _read(out / "pairs.jsonl")
    tok = DemoTokenizer()
    expected = [
        hf_log_likelihood(hf_model, tok.ids(x["inputs"], 16), tok.ids(x["targets"], 4))
        for x in lines
    ]
    np.testing.assert_allclose([r["score"] for r in got], expected, rtol=0, atol=1e-4)
    assert [r["targets"] for r in got] == [x["targets"] for x in lines]


def test_infer_bad_inputs_one_line_each(converted, capsys, tmp_path):
    _, model_gin, ckpt = converted
    jsonl = tmp_path / "bad.jsonl"
    _write_jsonl(jsonl, [JSONL_LINES[0], {"text": "no inputs field"}])
    jsonl.write_text("\n" + jsonl.read_text())  # a blank first line still counts as a line
    line = _one_error_line(capsys, _infer(model_gin, ckpt, jsonl, tmp_path / "o1"))
    assert f"{jsonl}, line 3: no 'inputs' field" in line and "infer.input_field" in line

    _write_jsonl(jsonl, [JSONL_LINES[0], JSONL_LINES[1]])
    line = _one_error_line(capsys, _infer(model_gin, ckpt, jsonl, tmp_path / "o2", "--mode=score"))
    assert f"{jsonl}, line 2: no 'targets' field" in line

    missing = tmp_path / "nowhere" / "spiece.model"
    line = _one_error_line(
        capsys,
        _infer(model_gin, ckpt, jsonl, tmp_path / "o3", f"--gin.get_vocabulary.path={missing}"),
    )
    assert "get_vocabulary" in line and str(missing) in line and "does not exist" in line


# ------------------------------------------------------------------------------- plug-ins


def test_eval_builds_the_model_with_the_runs_plugins(converted, capsys, tmp_path):
    """A LoRA checkpoint evaluates with its adapters applied (``train.plugins`` in gin).

    Oracle: the adapters merged into the kernels (``W + alpha/r * A @ B``), exported and run
    by transformers; without the plug-in file the checkpoint is refused, naming adapters."""
    _, model_gin, ckpt = converted
    lora_gin = REPO / "gin/plugins/lora.gin"
    parse_gin([model_gin, lora_gin], clear=True)
    plugins = PluginSet(copy.deepcopy(gin.query_parameter("train.plugins")))
    spec = ModelSpec.create(plugins.build(build_model))
    mesh = partitioning.create_mesh(partitioning.MeshConfig())
    rules = plugins.axis_rules(partitioning.standard_logical_axis_rules())
    params = load_params_for_warm_start(
        str(ckpt), spec.abstract_params(), spec.init_params(mesh, rules),
        assignment_map=plugins.assignment_map([]),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            rng.normal(0, 0.3, x.shape).astype(np.float32)
            if str(path[-1].key) == "lora_b"
            else np.asarray(x)
        ),
        params,
    )  # B = 0 at init would make the adapters invisible
    lora_dir = tmp_path / "lora_run"
    save_params(str(lora_dir), params, step=0)
    merged_dir = tmp_path / "merged_hf"
    save_hf_checkpoint(plugins.plugins[0].merge(params), spec.config, str(merged_dir))
    hf_merged = AutoModelForSeq2SeqLM.from_pretrained(merged_dir).eval()

    out = tmp_path / "eval"
    argv = [
        f"--gin_file={model_gin}",
        f"--gin_file={lora_gin}",
        f"--gin.MODEL_DIR={lora_dir}",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        f"--gin.MIXTURE_OR_TASK_NAME={tasks.demo.HELDOUT_TASK}",
        "--gin.evaluate.split='validation'",
        "--gin.evaluate.max_examples=4",
        f"--gin.evaluate.output_dir={out}",
    ]
    assert eval_cli.main(argv) == 0
    tok = DemoTokenizer()
    rows = _read(out / f"predictions/step_0/{tasks.demo.HELDOUT_TASK}.jsonl")
    for r in rows:
        inputs = tok.ids(r["inputs"], LENGTHS["inputs"])
        ids = hf_greedy(hf_merged, inputs, LENGTHS["targets"])
        assert r["prediction"] == tok.text(ids)
        expected = hf_log_likelihood(hf_merged, inputs, ids)
        assert r["prediction_score"] == pytest.approx(expected, abs=1e-4)

    no_plugin = [a for a in argv if a != f"--gin_file={lora_gin}"]
    no_plugin[-1] = f"--gin.evaluate.output_dir={tmp_path / 'eval_without_lora'}"
    line = _one_error_line(capsys, eval_cli.main(no_plugin))
    assert "holds a different model" in line and "lora_a" in line and "not in the model" in line

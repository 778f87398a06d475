"""The IFS plug-in: the metric on stub classifiers/evaluators with known outputs, the plateau
rule on hand-built sequences, the rank-classification classifier against per-example
scoring, and a real training loop that logs IFS and stops when the rule fires.

Oracles: hand-counted fractions; hand-evaluated plateau decisions; a numpy log-softmax of
one unpadded example at a time (no batching, padding or label stacking); IFS recomputed
from the responses the run wrote, with the stub classifier's rule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_instruct.errors import UserInputError
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.plugins import Action, EvalContext
from t5x_instruct.plugins.ifs import (
    Instruction,
    InstructionFollowingScore,
    InstructionSource,
    ToneClassifier,
    ifs_scores,
    plateaued,
)
from t5x_instruct.plugins.ifs.classifier import write_classifier_config
from t5x_instruct.plugins.ifs.data import instruction_set, write_jsonl
from t5x_instruct.training.train_state import ModelSpec


class CharVocab:
    """Printable ASCII, one id per character (pad 0, EOS 1)."""

    eos_id, pad_id = 1, 0

    def encode(self, s: str) -> list[int]:
        return [ord(c) - 29 for c in s]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i + 29) for i in ids)


class RuleClassifier:
    """p(answer) = 0.9 for texts starting with 'A:', else 0.1; remembers what it saw."""

    def __init__(self, rule=lambda t: t.startswith("A:")) -> None:
        self.rule = rule
        self.seen: list[str] = []

    def answer_probability(self, texts: Sequence[str]) -> np.ndarray:
        self.seen += list(texts)
        return np.array([0.9 if self.rule(t) else 0.1 for t in texts])


class StubEvaluator:
    """Answers each instruction (by its inputs text) with a fixed response."""

    def __init__(self, responses: dict[str, str], length: int = 12) -> None:
        self.responses = responses
        self.length = length

    def predict(self, params, source) -> list[np.ndarray]:
        del params
        vocab = CharVocab()
        rows = []
        for text in source.inputs_text:
            row = np.zeros(self.length, np.int32)
            ids = [*vocab.encode(self.responses[text]), vocab.eos_id, 50]  # junk after EOS
            row[: len(ids)] = ids[: self.length]
            rows.append(row)
        return rows


ITEMS = [
    Instruction("partial", "Name", "Name"),
    Instruction("partial", "List the", "List the"),
    Instruction("partial", "Add 2", "Add 2"),
    Instruction("full", "Say hi.", "Say hi."),
    Instruction("full", "Add 2 and 3.", "Add 2 and 3."),
]
RESPONSES = {"Name": "A: Ada", "List the": "items below", "Add 2": "", "Say hi.": "A: hi",
             "Add 2 and 3.": "A: 5"}  # fmt: skip


def _instructions_file(tmp_path: Path, items=ITEMS) -> str:
    path = tmp_path / "instructions.jsonl"
    write_jsonl(str(path), (i.to_json() for i in items))
    return str(path)


def _ctx(tmp_path: Path, evaluator, step: int = 10) -> EvalContext:
    return EvalContext(step=step, params=None, aux=None, model_spec=None, evaluator=evaluator,
                       mesh=None, rules=(), model_dir=str(tmp_path), metrics={})  # fmt: skip


def _plugin(tmp_path: Path, classifier=None, **kwargs) -> InstructionFollowingScore:
    return InstructionFollowingScore(
        classifier=classifier or RuleClassifier(),
        instructions=_instructions_file(tmp_path),
        vocabulary=CharVocab(),
        **kwargs,
    )


# ------------------------------------------------------------------------------ the metric


def test_ifs_is_the_fraction_of_answer_like_responses(tmp_path) -> None:
    classifier = RuleClassifier()
    plugin = _plugin(tmp_path, classifier)
    metrics = plugin.eval_metrics(_ctx(tmp_path, StubEvaluator(RESPONSES), step=10))
    # Answer-like: "A: Ada", "A: hi", "A: 5" -> 3 of 5; partial 1 of 3; full 2 of 2.
    assert metrics == {"ifs": 3 / 5, "ifs_partial": 1 / 3, "ifs_full": 1.0, "empty": 1 / 5}
    # Decoding stopped at EOS; the empty response was never sent to the classifier.
    assert classifier.seen == ["A: Ada", "items below", "A: hi", "A: 5"]
    rows = [json.loads(line) for line in (tmp_path / "ifs" / "responses_10.jsonl").open()]
    assert [r["response"] for r in rows] == [RESPONSES[i.inputs] for i in ITEMS]
    assert [r["answer_like"] for r in rows] == [True, False, False, True, True]


def test_threshold_and_splits_without_instructions(tmp_path) -> None:
    class Half:
        def answer_probability(self, texts):
            return np.full(len(texts), 0.5)

    plugin = _plugin(tmp_path, Half(), threshold=0.5, write_responses=False)
    metrics = plugin.eval_metrics(_ctx(tmp_path, StubEvaluator(RESPONSES)))
    assert metrics["ifs"] == 4 / 5  # p >= threshold counts; the empty response does not
    assert ifs_scores(["full", "full"], [True, False]) == {"ifs": 0.5, "ifs_full": 0.5}
    assert not (tmp_path / "ifs").exists()


def test_instruction_source_cuts_inputs_like_training(caplog) -> None:
    items = (Instruction("full", "abcdef", "abcdef"), Instruction("partial", "ab", "ab"))
    source = InstructionSource(items, CharVocab())
    with caplog.at_level(logging.WARNING):
        rows = source.inputs_array(4)
        source.inputs_array(4)
    # ord('a') - 29 = 68: the first 3 ids then EOS; a short one padded with 0.
    np.testing.assert_array_equal(rows, [[68, 69, 70, 1], [68, 69, 1, 0]])
    assert caplog.text.count("1 of 2 instructions are longer than 4 tokens") == 1
    assert source.decode(np.array([68, 69, 1, 70])) == "ab"


# ------------------------------------------------------------------------------ plateau rule


@pytest.mark.parametrize(
    "values, patience, epsilon, expected",
    [
        ([0.5], 1, 0.01, False),  # needs patience + 1 evals
        ([0.5, 0.505], 1, 0.01, True),
        ([0.5, 0.52], 1, 0.01, False),
        ([0.2, 0.5, 0.8, 0.85, 0.855], 2, 0.01, False),  # 0.855 - 0.8 = 0.055
        ([0.2, 0.5, 0.8, 0.85, 0.855, 0.858], 2, 0.01, True),  # 0.858 - 0.85 = 0.008
        ([0.9, 0.5, 0.95], 1, 0.01, False),  # a dip then a new best: improvement 0.05
        ([0.9, 0.95, 0.94], 1, 0.01, True),  # below the best so far
        ([0.9, 0.95, 0.94, 0.96], 2, 0.01, False),  # 0.96 - 0.9 over the two before
        ([0.3, 0.3, 0.3], 2, 0.0, False),  # epsilon 0: a tie is not below 0 ...
        ([0.3, 0.31, 0.29, 0.3], 2, 0.0, True),  # ... but getting worse is
    ],
)
def test_plateau_rule(values, patience, epsilon, expected) -> None:
    assert plateaued(values, patience, epsilon) is expected


def test_min_score_blocks_an_early_plateau() -> None:
    assert plateaued([0.1, 0.1, 0.1], 2, 0.01)
    assert not plateaued([0.1, 0.1, 0.1], 2, 0.01, min_score=0.5)
    assert plateaued([0.6, 0.6, 0.6], 2, 0.01, min_score=0.5)


def test_after_eval_stops_when_the_rule_fires(tmp_path) -> None:
    plugin = _plugin(tmp_path, plateau_evals=2, plateau_epsilon=0.01)
    sequence = [(100, 0.2), (200, 0.6), (300, 0.9), (400, 0.905), (500, 0.903)]
    actions = [plugin.after_eval(s, {"ifs/ifs": v, "loss": 1.0}) for s, v in sequence]
    assert actions == [Action.CONTINUE] * 4 + [Action.STOP]
    assert plugin.stopped_at == 500
    assert plugin.after_eval(600, {"loss": 1.0}) == Action.CONTINUE  # no IFS at this record

    quiet = _plugin(tmp_path, plateau_evals=1, early_stop=False)
    assert {quiet.after_eval(s, {"ifs/ifs": 0.5}) for s in (1, 2, 3)} == {Action.CONTINUE}

    partial = _plugin(tmp_path, plateau_evals=1, monitor="ifs_partial")
    partial.after_eval(1, {"ifs/ifs": 0.1, "ifs/ifs_partial": 0.5})
    assert partial.after_eval(2, {"ifs/ifs": 0.9, "ifs/ifs_partial": 0.5}) == Action.STOP


def test_history_comes_back_from_metrics_jsonl_on_resume(tmp_path) -> None:
    records = [{"step": 10, "loss": 2.0}, {"step": 20, "ifs/ifs": 0.6},
               {"step": 30, "ifs/ifs": 0.6}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plugin = _plugin(tmp_path, plateau_evals=2, write_responses=False)
    metrics = plugin.eval_metrics(_ctx(tmp_path, StubEvaluator(RESPONSES), step=40))
    assert plugin.history == [(20, 0.6), (30, 0.6)]
    assert metrics["ifs"] == 0.6  # 3 of 5 (see the first test)
    # The best of the last two evals (0.6, 0.6) is no better than the best before (0.6).
    assert plugin.after_eval(40, {f"ifs/{k}": v for k, v in metrics.items()}) == Action.STOP
    assert plugin.stopped_at == 40
    fresh = _plugin(tmp_path, plateau_evals=2)
    assert fresh.after_eval(40, {"ifs/ifs": 0.6}) == Action.CONTINUE  # no history loaded


def test_settings_are_checked(tmp_path) -> None:
    path = _instructions_file(tmp_path)
    with pytest.raises(UserInputError, match="exactly one of classifier_dir"):
        InstructionFollowingScore(instructions=path)
    with pytest.raises(UserInputError, match="monitor='loss'"):
        InstructionFollowingScore(classifier=RuleClassifier(), instructions=path, monitor="loss")
    with pytest.raises(UserInputError, match="plateau_evals=0"):
        InstructionFollowingScore(classifier=RuleClassifier(), instructions=path, plateau_evals=0)
    with pytest.raises(UserInputError, match=r"tools/train_ifs_classifier\.py"):
        InstructionFollowingScore(str(tmp_path / "nothing"))
    with pytest.raises(UserInputError, match="IFS instruction set not found"):
        p = InstructionFollowingScore(
            classifier=RuleClassifier(),
            instructions=str(tmp_path / "x.jsonl"),
            vocabulary=CharVocab(),
        )
        p.source()


# ------------------------------------------------------------------------------ classifier

FAST_COMPILE = {"xla_backend_optimization_level": 0}
CHAR_T5 = T5Config(
    vocab_size=128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=2,
    num_decoder_layers=1, relative_attention_num_buckets=8, relative_attention_max_distance=20,
)  # fmt: skip


def _random_params(spec: ModelSpec, seed: int) -> dict:
    """Host arrays N(0, 0.3^2) in the model's layout (an initialiser run costs tens of
    seconds of op-by-op compilation on a busy CPU; any weights serve these comparisons)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), spec.abstract_params()
    )


def _oracle_log_likelihood(forward, vocab, text: str, label: str) -> float:
    """log p(label + EOS | text + EOS) of one unpadded example, summed in numpy."""
    inputs = jnp.asarray([[*vocab.encode(text), 1]], jnp.int32)
    targets = np.asarray([*vocab.encode(label), 1], np.int32)
    dec_in = jnp.asarray([[0, *targets[:-1]]], jnp.int32)
    compiled = jax.jit(forward).lower(inputs, dec_in).compile(FAST_COMPILE)  # -O0: tiny model
    logits = np.asarray(compiled(inputs, dec_in)[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(logp[np.arange(len(targets)), targets].sum())


def test_rank_classification_matches_per_example_scoring() -> None:
    vocab = CharVocab()
    spec = ModelSpec.create(lambda: build_model(CHAR_T5))
    params = _random_params(spec, seed=3)
    forward = lambda i, d: spec.module(params)(i, d, deterministic=True)
    classifier = ToneClassifier(spec, params, vocab, input_length=16, batch_size=3)
    texts = ["red", "x y", "Tell me more about it", "4 2"]  # a full batch, then a padded one
    ll = classifier.log_likelihoods(texts)
    for i, text in enumerate(texts):
        clipped = vocab.decode(vocab.encode(text)[:15])  # input_length 16 keeps 15 + EOS
        for j, label in enumerate(("answer", "continuation")):
            expected = _oracle_log_likelihood(forward, vocab, clipped, label)
            np.testing.assert_allclose(ll[i, j], expected, rtol=1e-5, atol=1e-5)
    expected_p = 1 / (1 + np.exp(ll[:, 1] - ll[:, 0]))
    np.testing.assert_allclose(classifier.answer_probability(texts), expected_p, rtol=1e-6)


def test_classifier_directory_round_trip(tmp_path) -> None:
    import tasks.demo
    from t5x_instruct.data.vocabularies import make_vocabulary
    from t5x_instruct.training.param_checkpoints import save_params

    config = dataclasses.replace(CHAR_T5, vocab_size=640)
    spec = ModelSpec.create(lambda: build_model(config))
    params = _random_params(spec, seed=1)
    save_params(str(tmp_path), params, step=5)
    write_classifier_config(str(tmp_path), config, input_length=24)
    shutil.copyfile(tasks.demo.VOCAB_PATH, tmp_path / "spiece.model")
    loaded = ToneClassifier.load(str(tmp_path), batch_size=8)
    vocab = make_vocabulary("sentencepiece", tasks.demo.VOCAB_PATH)
    fresh = ToneClassifier(spec, params, vocab, input_length=24, batch_size=8)
    texts = ["Compute 1 plus", "10", "of this list: key, bat?"]
    np.testing.assert_allclose(
        loaded.answer_probability(texts), fresh.answer_probability(texts), rtol=1e-6
    )


# ------------------------------------------------------------------------------ gin + loop


def test_gin_file_binds_the_plugin(tmp_path) -> None:
    import t5x_instruct.training.loop  # noqa: F401  (registers `train`)
    from t5x_instruct.gin_utils import parse_gin

    write_classifier_config(str(tmp_path), CHAR_T5, input_length=16)
    parse_gin(["plugins/ifs.gin"], [f"IFS_CLASSIFIER_DIR = '{tmp_path}'",
                                    "IFS_PLATEAU_EVALS = 5"], clear=True)  # fmt: skip
    (reference,) = gin.query_parameter("train.plugins")
    plugin = reference.scoped_configurable_fn()
    assert isinstance(plugin, InstructionFollowingScore) and plugin.name == "ifs"
    assert (plugin.plateau_evals, plugin.plateau_epsilon, plugin.early_stop) == (5, 0.01, True)
    assert plugin.instructions_path == str(tmp_path / "instructions.jsonl")
    parse_gin(["plugins/ifs.gin"], clear=True)  # IFS_CLASSIFIER_DIR left %gin.REQUIRED
    (reference,) = gin.query_parameter("train.plugins")
    with pytest.raises(UserInputError, match=r"--gin\.IFS_CLASSIFIER_DIR="):
        reference.scoped_configurable_fn()
    gin.clear_config()


def test_training_loop_logs_ifs_and_stops_when_it_plateaus(tmp_path) -> None:
    import tasks.demo
    from t5x_instruct.data.vocabularies import make_vocabulary
    from t5x_instruct.training.loop import train
    from t5x_instruct.training.metrics import read_metrics
    from tasks.demo.ifs import demo_dialogues

    items = instruction_set(demo_dialogues("validation", per_type=1), seed=0)
    assert {i.kind for i in items} == {"full", "partial"}
    path = tmp_path / "instructions.jsonl"
    write_jsonl(str(path), (i.to_json() for i in items))
    rule = lambda t: len(t) % 2 == 0  # any fixed rule of the text
    classifier = RuleClassifier(rule)
    # epsilon > 1: no change of a fraction counts as progress, so the 2nd eval stops the run.
    plugin = InstructionFollowingScore(
        classifier=classifier, instructions=str(path),
        vocabulary=make_vocabulary("sentencepiece", tasks.demo.VOCAB_PATH),
        plateau_evals=1, plateau_epsilon=1.01,
    )  # fmt: skip
    tiny = T5Config(vocab_size=640, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                    num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
    model_dir = tmp_path / "run"
    summary = train(
        model_dir=str(model_dir), mixture_or_task_name=tasks.demo.TRAIN_MIXTURE,
        task_feature_lengths=dict(tasks.demo.TASK_FEATURE_LENGTHS), train_steps=8,
        batch_size=8, log_period=2, checkpoint_period=100, eval_period=2,
        eval_mixture_or_task_name=tasks.demo.HELDOUT_TASK, max_eval_examples=8,
        eval_batch_size=8, async_checkpointing=False, progress_bar=False, plugins=[plugin],
        model_spec=ModelSpec.create(lambda: build_model(tiny)),
    )  # fmt: skip
    assert summary["stopped_early"] == {"step": 4, "by": ["ifs"]}
    assert summary["step"] == 4 and plugin.stopped_at == 4
    assert (model_dir / "checkpoints" / "4").is_dir()  # the stop saved
    records = {r["step"]: r for r in read_metrics(str(model_dir))}
    assert sorted(records) == [2, 4]
    for step in (2, 4):
        rows = [json.loads(line) for line in (model_dir / "ifs" / f"responses_{step}.jsonl").open()]
        assert [r["inputs"] for r in rows] == [i.inputs for i in items]
        answer = [bool(r["response"].strip()) and rule(r["response"]) for r in rows]
        for kind, key in ((None, "ifs/ifs"), ("partial", "ifs/ifs_partial"),
                          ("full", "ifs/ifs_full")):  # fmt: skip
            chosen = [a for a, r in zip(answer, rows) if kind in (None, r["kind"])]
            assert records[step][key] == pytest.approx(sum(chosen) / len(chosen), abs=1e-12)
        empty = sum(not r["response"].strip() for r in rows) / len(rows)
        assert records[step]["ifs/empty"] == pytest.approx(empty, abs=1e-12)
    assert "ifs/ifs" in summary["plugins"]

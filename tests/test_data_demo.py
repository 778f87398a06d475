"""The embedded demo instruction data set: structure, held-out splits, vocabulary coverage."""

from __future__ import annotations

import collections
import re

import pytest
import sentencepiece as spm
import seqio

import tasks.demo
from t5x_instruct import data
from tasks.demo import generate, lexicon
from tasks.demo.task_types import HELDOUT_TASK_TYPE, TRAINING_TASK_TYPES


def _train_inputs() -> list[str]:
    return [e.inputs for t in TRAINING_TASK_TYPES for e in generate.generate(t.name, "train")]


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.DOTALL)


def test_training_mixture_has_at_least_ten_tasks_with_five_templates_each():
    tasks_in_mixture = data.leaf_tasks(tasks.demo.TRAIN_MIXTURE)
    assert len(tasks_in_mixture) >= 10
    assert {t.name for t in tasks_in_mixture} == {f"demo_{t.name}" for t in TRAINING_TASK_TYPES}
    for task_type in (*TRAINING_TASK_TYPES, HELDOUT_TASK_TYPE):
        assert len(set(task_type.templates)) >= 5, task_type.name
        used = {e.template_id for e in generate.generate(task_type.name, "validation")}
        assert used == set(range(len(task_type.templates))), task_type.name
    for task_type in TRAINING_TASK_TYPES:
        assert len(task_type.heldout_templates) >= 2, task_type.name
        assert not set(task_type.heldout_templates) & set(task_type.templates), task_type.name


def test_heldout_templates_never_appear_in_training_data():
    train_inputs = _train_inputs()
    for task_type in TRAINING_TASK_TYPES:
        for template in task_type.heldout_templates:
            pattern = _template_regex(template)
            hits = [s for s in train_inputs if pattern.fullmatch(s)]
            assert not hits, (task_type.name, template, hits[:3])
        heldout = generate.generate(task_type.name, "validation", heldout_templates=True)
        assert all(e.heldout_template for e in heldout)
        assert {e.template_id for e in heldout} == set(range(len(task_type.heldout_templates)))
    for ex in generate.generate(TRAINING_TASK_TYPES[0].name, "train"):
        assert not ex.heldout_template


def test_heldout_task_is_not_trained_on():
    mixture_tasks = {t.name for t in data.leaf_tasks(tasks.demo.TRAIN_MIXTURE)}
    assert tasks.demo.HELDOUT_TASK not in mixture_tasks
    assert not any(HELDOUT_TASK_TYPE.name in name for name in mixture_tasks)
    held_out = seqio.get_mixture_or_task(tasks.demo.HELDOUT_TASK)
    assert "train" not in held_out.splits
    with pytest.raises(ValueError, match="no 'train' split"):
        generate.generate(HELDOUT_TASK_TYPE.name, "train")
    # Its instructions appear nowhere in the training data either.
    train_inputs = _train_inputs()
    for template in HELDOUT_TASK_TYPE.templates:
        pattern = _template_regex(template)
        assert not any(pattern.fullmatch(s) for s in train_inputs), template


def test_splits_do_not_overlap():
    for task_type in TRAINING_TASK_TYPES:
        splits = {s: generate.generate(task_type.name, s) for s in ("train", "validation", "test")}
        inputs = {s: {e.inputs for e in exs} for s, exs in splits.items()}
        assert not inputs["train"] & inputs["validation"], task_type.name
        assert not inputs["train"] & inputs["test"], task_type.name
        assert not inputs["validation"] & inputs["test"], task_type.name
        # Evaluation examples are distinct problems, never repeated within a split.
        assert len(inputs["validation"]) == len(splits["validation"]), task_type.name
        if not task_type.key_includes_template:  # content-disjoint, not just text-disjoint
            val_answers_and_inputs = {(e.targets, e.inputs) for e in splits["validation"]}
            assert len(val_answers_and_inputs) == len(splits["validation"])
    assert sum(len(generate.generate(t.name, "train")) for t in TRAINING_TASK_TYPES) >= 20_000


def test_generation_is_deterministic_and_seeded():
    name = TRAINING_TASK_TYPES[1].name
    generate.generate.cache_clear()
    generate._problems.cache_clear()
    first = generate.generate(name, "train", seed=7)
    generate.generate.cache_clear()
    generate._problems.cache_clear()
    assert generate.generate(name, "train", seed=7) == first
    assert generate.generate(name, "train", seed=8) != first


def test_examples_are_short_and_answers_correct():
    vocab = seqio.SentencePieceVocabulary(tasks.demo.VOCAB_PATH)
    lengths = tasks.demo.TASK_FEATURE_LENGTHS
    for task_type in (*TRAINING_TASK_TYPES, HELDOUT_TASK_TYPE):
        for ex in generate.generate(task_type.name, "validation"):
            assert len(vocab.encode(ex.inputs)) + 1 <= lengths["inputs"], ex
            assert 1 <= len(vocab.encode(ex.targets)) + 1 <= min(lengths["targets"], 7), ex
    # Spot-check the answers of a few task types against their inputs.
    for ex in generate.generate("arithmetic", "test"):
        a, op, b = re.search(r"(\d+) (plus|minus) (\d+)", ex.inputs).groups()
        assert int(ex.targets) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
    for ex in generate.generate("reverse_list", "test"):
        items = re.search(r"((?:[a-z]+, )+[a-z]+)", ex.inputs).group(1).split(", ")
        assert ex.targets == " ".join(reversed(items))
    labels = collections.Counter(e.targets for e in generate.generate("sentiment", "train"))
    assert set(labels) == {"positive", "negative"} and min(labels.values()) > 1000


def test_vocabulary_covers_every_generated_word():
    sp = spm.SentencePieceProcessor(model_file=tasks.demo.VOCAB_PATH)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert 300 <= sp.get_piece_size() <= 600
    template_words = {
        w
        for t in (*TRAINING_TASK_TYPES, HELDOUT_TASK_TYPE)
        for tpl in (*t.templates, *t.heldout_templates)
        for w in re.sub(r"\{\w+\}", " ", tpl).split()
    }
    for word in (*lexicon.all_words(), *sorted(template_words)):
        assert sp.unk_id() not in sp.encode(word), word
    for text in generate.corpus():
        ids = sp.encode(text)
        assert sp.unk_id() not in ids, text
        assert sp.decode(ids) == text


def test_committed_vocabulary_is_reproducible():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "build_demo_vocab.py"
    spec = importlib.util.spec_from_file_location("build_demo_vocab", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with open(tasks.demo.VOCAB_PATH, "rb") as f:
        assert f.read() == tool.build(), "run tools/build_demo_vocab.py to refresh the model"


def test_eval_examples_cover_all_groups_and_score():
    evals = data.get_eval_examples(tasks.demo.EVAL_MIXTURE, "validation", max_examples=20)
    groups = collections.Counter(e.group for e in evals)
    n = len(TRAINING_TASK_TYPES)
    assert groups == {"train_tasks": n, "heldout_templates": n, "heldout_task": 1}
    for ev in evals:
        assert len(ev) == 20
        array = ev.inputs_array(tasks.demo.TASK_FEATURE_LENGTHS["inputs"])
        assert array.shape == (20, 48) and array.dtype.name == "int32"
        assert ev.decode(array[0]) == ev.inputs_text[0]
        assert (array == 1).sum() == 20  # exactly one EOS per row
    ev = evals[0]
    perfect = [f"  {t} " for t in ev.targets_text]  # whitespace is stripped before matching
    assert ev.score(perfect) == {"exact_match": 1.0}
    wrong = ["nope"] * len(ev)
    assert ev.score(wrong) == {"exact_match": 0.0}
    short = ev.inputs_array(4)  # too long: truncated as in training (EOS kept), no error
    assert short.shape == (20, 4) and (short[:, 3] == 1).all()

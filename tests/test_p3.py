"""P3 / T0 registration: names, score-eval twins, T0's caps and mixtures, and local data
end to end through SeqIO (data come from small local files, never the network)."""

from __future__ import annotations

import json
import os
import textwrap

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import seqio

import tasks.p3 as p3
from t5x_instruct import data
from t5x_instruct.data.promptsource import TemplateLibrary
from tasks.p3 import t0_datasets

RTE_ROWS = [
    {"premise": "A cat sat on the warm mat.", "hypothesis": "An animal sat.", "label": 0},
    {"premise": "It rained all day.", "hypothesis": "The street stayed dry.", "label": 1},
    {"premise": "Nobody labelled this one.", "hypothesis": "Unknown.", "label": -1},
    {"premise": "The shop opens at nine.", "hypothesis": "The shop opens.", "label": 0},
]


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    return TemplateLibrary()


@pytest.fixture
def local_rte(tmp_path):
    """Routes super_glue/rte to a local JSONL file read by Hugging Face ``datasets``."""
    import datasets

    path = tmp_path / "rte.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RTE_ROWS) + "\n", encoding="utf-8")
    calls = []

    def loader(name, subset, split):
        calls.append((name, subset, split))
        assert (name, subset) == ("super_glue", "rte"), (name, subset)
        return datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
        )

    previous = p3.set_example_loader(loader)
    yield calls
    p3.set_example_loader(previous)


def _mixture_names(name: str) -> set[str]:
    return {t.name for t in seqio.get_mixture_or_task(name).tasks}


def test_task_names_are_sanitised_as_in_p3(library):
    assert (
        p3.t0_task_name("super_glue", "wsc.fixed", "GPT-3 Style")
        == "super_glue_wsc.fixed_GPT_3_Style"
    )
    assert p3.t0_task_name("ai2_arc", "ARC-Challenge", "pick the answer") == (
        "ai2_arc_ARC_Challenge_pick_the_answer"
    )
    assert p3.t0_task_name("imdb", None, "Movie Expressed Sentiment 2") == (
        "imdb_Movie_Expressed_Sentiment_2"
    )
    assert p3.t0_task_name("anli", None, "can we infer", "_r1") == "anli_can_we_infer_r1"
    assert p3.t0_task_name("x", None, "\u2026why? C1 or C2") == "x__why_C1_or_C2"
    registered = set(seqio.TaskRegistry.names())
    for key in [
        ("super_glue", "rte"),
        ("super_glue", "copa"),
        ("glue", "mrpc"),
        ("hellaswag", None),
    ]:
        for template in library.get(*key):
            name = p3.t0_task_name(*key, template.name)
            assert name in registered, name
            assert p3.P3_TASKS[name].template == template
    for r in ("r1", "r2", "r3"):
        assert any(n.startswith("anli_") and n.endswith(f"_{r}") for n in p3.P3_TASKS)


def test_score_eval_twins_exist_exactly_for_templates_with_answer_choices():
    with_choices = 0
    for name, info in p3.P3_TASKS.items():
        twin = name + p3.SCORE_EVAL_SUFFIX
        assert (twin in seqio.TaskRegistry.names()) == info.template.has_answer_choices, name
        assert info.score_eval_name == (twin if info.template.has_answer_choices else None)
        if info.score_eval_name:
            with_choices += 1
    assert with_choices > 300
    task = seqio.get_mixture_or_task("super_glue_rte_GPT_3_style_score_eval")
    assert task.score_metric_fns and not task.predict_metric_fns
    assert seqio.get_mixture_or_task("super_glue_rte_GPT_3_style").predict_metric_fns


def test_caps_follow_t0(library):
    assert p3.t0_mixing_rate(3_600_000, 9) == 500_000 // 9 == 55_555
    assert p3.t0_mixing_rate(25_000, 11) == 25_000
    assert p3.t0_mixing_rate(500_000, 4) == 500_000  # not above the maximum: uncapped
    assert p3.t0_mixing_rate(500_001, 4) == 125_000
    with pytest.raises(ValueError):
        p3.t0_mixing_rate(10, 0)
    mixture = seqio.get_mixture_or_task("t0pp_train")
    capped = 0
    for task in mixture.tasks:
        d = p3.P3_TASKS[task.name].dataset
        n_templates = len(library.get(d.name, d.subset))  # counted from the file itself
        expected = 500_000 // n_templates if d.train_size > 500_000 else d.train_size
        assert mixture.get_rate(task) == expected, task.name
        capped += d.train_size > 500_000
    assert capped > 0
    amazon = [t for t in mixture.tasks if t.name.startswith("amazon_polarity_")]
    assert len(amazon) == 9 and {mixture.get_rate(t) for t in amazon} == {55_555.0}


def test_t0_mixtures_are_nested_supersets_as_in_the_paper():
    t0, t0p, t0pp = (_mixture_names(m) for m in ("t0_train", "t0p_train", "t0pp_train"))
    assert t0 < t0p < t0pp

    def datasets_of(names: set[str]) -> set[str]:
        return {p3.P3_TASKS[n].dataset.key for n in names}

    assert datasets_of(t0p - t0) == {d.key for d in t0_datasets.GPT3_EVAL_ADDITIONS}
    assert datasets_of(t0pp - t0p) == {d.key for d in t0_datasets.SUPERGLUE_ADDITIONS}
    assert {d.category for d in t0_datasets.T0_TRAIN} == {
        "multiple_choice_qa", "extractive_qa", "closed_book_qa", "sentiment",
        "topic_classification", "structure_to_text", "summarization", "paraphrase",
    }  # fmt: skip
    assert {"imdb", "ag_news", "glue/mrpc", "cos_e/v1.11", "xsum"} <= datasets_of(t0)
    assert {"ai2_arc/ARC-Challenge", "hellaswag", "race/high"} <= datasets_of(t0p)
    # Held-out evaluation sets: never in T0; NLI sets never in any of the three.
    heldout = {d.key for d in t0_datasets.T0_HELDOUT_EVAL}
    assert not datasets_of(t0) & heldout
    assert not datasets_of(t0pp) & {"super_glue/rte", "super_glue/cb", "anli", "story_cloze/2016"}
    assert {"super_glue/copa", "super_glue/wic", "super_glue/wsc.fixed"} <= datasets_of(t0pp)
    # Every score-eval task of the held-out mixture scores an original-task template.
    for name in _mixture_names(p3.HELDOUT_SCORE_EVAL_MIXTURE):
        info = p3.P3_TASKS[name.removesuffix(p3.SCORE_EVAL_SUFFIX)]
        assert info.dataset.key in heldout and info.template.metadata.original_task
        assert data.task_group(name) == "heldout_task"
    assert data.task_group("imdb_Movie_Expressed_Sentiment_2") == "train_tasks"


def test_registration_does_not_touch_data():
    def refuse(name, subset, split):
        raise AssertionError(f"registration read {name}/{subset}/{split}")

    previous = p3.set_example_loader(refuse)
    try:
        registered = p3.register()
    finally:
        p3.set_example_loader(previous)
    assert len(registered) == len(p3.P3_TASKS)


def test_local_dataset_end_to_end_through_seqio(local_rte, library):
    name = "super_glue_rte_GPT_3_style"
    template = library.get("super_glue", "rte").by_name("GPT-3 style")
    expected = [template.render(r) for r in RTE_ROWS if r["label"] != -1]

    batches = list(
        data.get_dataset(
            name,
            task_feature_lengths={"inputs": 128, "targets": 8},
            batch_size=3,
            split="validation",
            shuffle=False,
            num_epochs=1,
        ).as_numpy_iterator()
    )
    assert local_rte and local_rte[0] == ("super_glue", "rte", "validation")
    assert len(batches) == 1  # 3 labelled rows; the unlabelled one is dropped
    vocab = seqio.get_mixture_or_task(name).output_features["inputs"].vocabulary
    tokens = batches[0]["encoder_input_tokens"]
    decoded = [vocab.decode([int(i) for i in row if i > 1]) for row in tokens]
    assert decoded == [e.inputs for e in expected]

    (examples,) = data.get_eval_examples(name, "validation")
    assert list(examples.targets_text) == [e.targets for e in expected]
    assert examples.score([e.targets for e in expected]) == {"exact_match": 1.0}

    (scored,) = data.get_score_examples(name + p3.SCORE_EVAL_SUFFIX, "validation")
    assert [e.choices_text for e in scored.examples] == [expected[0].answer_choices] * 3
    assert [e.correct_choices for e in scored.examples] == [(0,), (1,), (0,)]  # labels 0, 1, 0
    assert scored.metrics([0.0, -1.0, -1.0, 0.0, -3.0, -2.0]) == {"accuracy": pytest.approx(2 / 3)}
    score_task = seqio.get_mixture_or_task(name + p3.SCORE_EVAL_SUFFIX)
    rows = list(
        score_task.get_dataset(
            sequence_length=None, split="validation", shuffle=False
        ).as_numpy_iterator()
    )
    assert len(rows) == sum(len(e.answer_choices) for e in expected) == 6
    targets = [score_task.postprocess_fn(b"", example=r, is_target=True) for r in rows]
    assert [t[0] for t in targets] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    oracle = [0.0 if r["is_correct"] else -5.0 for r in rows]
    always_first = [-float(r["idx"][1]) for r in rows]
    (metric,) = score_task.score_metric_fns
    assert metric(targets, oracle) == {"accuracy": 1.0}
    assert metric(targets, always_first) == {"accuracy": pytest.approx(2 / 3)}
    np.testing.assert_array_equal(rows[0]["inputs"][-1], 1)  # EOS appended


def _toy_library(tmp_path) -> TemplateLibrary:
    folder = tmp_path / "toyset"
    folder.mkdir()
    (folder / "templates.yaml").write_text(
        textwrap.dedent(
            """\
            dataset: toyset
            templates:
              ok-1: !Template
                answer_choices: null
                id: ok-1
                jinja: '{{ a }} ||| {{ b }}'
                metadata: !TemplateMetadata {original_task: true, choices_in_prompt: false,
                  metrics: [Accuracy]}
                name: fine one
                reference: ''
              zz-9: !Template
                answer_choices: null
                id: zz-9
                jinja: '{{ a }} ||| {{ b.missing_method() }}'
                metadata: !TemplateMetadata {original_task: true, choices_in_prompt: false,
                  metrics: [Accuracy]}
                name: broken one
                reference: ''
            """
        ),
        encoding="utf-8",
    )
    return TemplateLibrary(str(tmp_path))


def test_template_error_while_reading_names_file_and_template(tmp_path, caplog):
    library = _toy_library(tmp_path)
    dataset = t0_datasets.P3Dataset("toyset", None, 2, "test", ("train",))
    infos = p3.register_p3_tasks(
        [dataset], library=library, vocabulary=seqio.ByteVocabulary(), score_eval=False
    )
    assert [i.name for i in infos] == ["toyset_fine_one", "toyset_broken_one"]
    assert {i.rate for i in infos} == {2}
    rows = [{"a": "x", "b": "y"}]
    previous = p3.set_example_loader(lambda n, s, split: rows)
    try:
        fine = seqio.get_mixture_or_task("toyset_fine_one").source
        assert list(fine.examples("train")) == [
            {"inputs": "x", "targets": "y", "answer_choices": []}
        ]
        broken = seqio.get_mixture_or_task("toyset_broken_one")
        with caplog.at_level("WARNING"):  # one bad example: skipped, logged, no error
            got = list(broken.get_dataset(sequence_length=None, split="train").as_numpy_iterator())
        assert got == []
        stats = p3.render_stats("toyset_broken_one", "train")
        assert (stats.read, stats.rendered, stats.skipped) == (1, 0, 1)
        assert "zz-9" in stats.reasons[0] and library.path("toyset") in stats.reasons[0]
        assert "toyset_broken_one" in caplog.text and "broken one" in caplog.text
        rows[:] = [{"a": str(i), "b": "y"} for i in range(12)]  # every example fails: raise
        with pytest.raises(Exception, match="all 12 examples failed to render") as err:
            list(broken.get_dataset(sequence_length=None, split="train").as_numpy_iterator())
        assert "zz-9" in str(err.value)
        with pytest.raises(ValueError, match="no split 'validation'"):
            broken.source.get_dataset("validation")
    finally:
        p3.set_example_loader(previous)
        for info in infos:
            seqio.TaskRegistry.remove(info.name)
            p3.P3_TASKS.pop(info.name)


PICKY_TEMPLATES = """\
dataset: picky
templates:
  p-1: !Template
    answer_choices: '{{ c1 }} ||| {{ c2 }}'
    id: p-1
    jinja: '{{ a }} says {{ b.upper() }} ||| {{ answer_choices[label] }}'
    metadata: !TemplateMetadata {original_task: true, choices_in_prompt: false,
      metrics: [Accuracy]}
    name: picky
    reference: ''
"""
PICKY_ROWS = [
    {"a": "one", "b": "hi", "c1": "yes", "c2": "no", "label": 0},
    {"a": "two", "b": 7, "c1": "yes", "c2": "no", "label": 1},  # int has no .upper(): raises
    {"a": "three", "b": "ok", "c1": "y ||| es", "c2": "no", "label": 0},  # target splits
    {"a": "four", "b": "ok", "c1": "y ||| es", "c2": "no", "label": 1},  # fine: prints "no"
    {"a": "five", "b": "go", "c1": "yes", "c2": "no", "label": 1},
]


def test_bad_examples_are_skipped_counted_and_logged_and_the_run_goes_on(tmp_path, caplog):
    folder = tmp_path / "picky"
    folder.mkdir()
    (folder / "templates.yaml").write_text(PICKY_TEMPLATES, encoding="utf-8")
    library = TemplateLibrary(str(tmp_path))
    dataset = t0_datasets.P3Dataset("picky", None, 5, "test", ("train",))
    (info,) = p3.register_p3_tasks([dataset], library=library, vocabulary=seqio.ByteVocabulary())
    previous = p3.set_example_loader(lambda n, s, split: PICKY_ROWS)
    try:
        with caplog.at_level("WARNING"):
            batches = list(
                data.get_dataset(
                    info.name, task_feature_lengths={"inputs": 32, "targets": 8}, batch_size=1,
                    shuffle=False, num_epochs=1,
                ).as_numpy_iterator()
            )  # fmt: skip
        vocab = seqio.ByteVocabulary()
        texts = [vocab.decode([int(i) for i in b["encoder_input_tokens"][0] if i > 1])
                 for b in batches]  # fmt: skip
        assert texts == ["one says HI", "four says OK", "five says GO"]
        stats = p3.render_stats(info.name, "train")
        assert (stats.read, stats.rendered, stats.skipped, stats.incomplete) == (5, 3, 2, 0)
        assert "example 1" in stats.reasons[0] and "UndefinedError" in stats.reasons[0]
        assert "example 2" in stats.reasons[1] and "3 parts" in stats.reasons[1]
        assert info.name in caplog.text and "'p-1'" in caplog.text
        # The rank-classification twin keeps the choice containing '|||' as one choice.
        (score,) = data.get_score_examples(info.score_eval_name, "train")
        assert [e.choices_text for e in score.examples] == [
            ("yes", "no"), ("y ||| es", "no"), ("yes", "no"),
        ]  # fmt: skip
        assert [e.correct_choices for e in score.examples] == [(0,), (1,), (1,)]
    finally:
        p3.set_example_loader(previous)
        for name in (info.name, info.score_eval_name):
            seqio.TaskRegistry.remove(name)
        p3.P3_TASKS.pop(info.name)


def test_generation_tasks_get_the_metrics_their_templates_name(library):
    """PromptSource's metadata names the metrics: ROUGE, BLEU and Squad templates get them."""
    from t5x_instruct.data import metrics

    named = {"ROUGE": metrics.rouge, "BLEU": metrics.bleu, "Squad": metrics.squad}
    seen = set()
    for info in p3.P3_TASKS.values():
        fns = seqio.get_mixture_or_task(info.name).predict_metric_fns
        assert fns[0] is metrics.exact_match
        for name, fn in named.items():
            assert (fn in fns) == (name in info.template.metadata.metrics), info.name
            if fn in fns:
                seen.add(name)
    assert seen == {"ROUGE", "BLEU", "Squad"}

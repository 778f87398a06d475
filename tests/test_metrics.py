"""Metric fns against hand-computed values: SQuAD F1, ROUGE n-gram overlaps, BLEU's formula;
and which metrics the Flan tasks register."""

from __future__ import annotations

import math

import pytest
import seqio

from t5x_instruct.data import metrics
from t5x_instruct.data.custom import InMemorySource


def test_exact_match_and_accuracy():
    assert metrics.exact_match(["a", "b", "c", "d"], ["a", "x", "c", "D"]) == {"exact_match": 0.5}
    assert metrics.accuracy([0, 1, 2], [0, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    assert metrics.accuracy([], []) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.accuracy([1, 2], [1])


def test_squad_normalisation():
    assert metrics.normalize_squad("The  Quick, brown-fox's AN apple.") == "quick brownfoxs apple"
    assert metrics.normalize_squad(b"Theatre: a play") == "theatre play"  # 'the' inside a word


def test_squad_f1_on_hand_computed_cases():
    cases = [
        # pred [cat, sat] vs ref [cat, sat, on, mat]: P = 1, R = 1/2
        ("a cat sat on the mat", "The Cat sat!", 2 / 3),
        # best of two references: [paris] gives P = 1/2, R = 1 (2/3); [city, of, paris] 0.4
        (["Paris", "the city of Paris"], "Paris, France", 2 / 3),
        # repeated tokens count at most as often as in the reference: 2 of 3 either way
        ("cat cat dog", "the the cat cat cat", 2 / 3),
        ("an answer", "", 0.0),  # empty prediction against a non-empty reference
        ("a", "The", 1.0),  # both normalise to nothing
        ("red", "blue", 0.0),
    ]
    targets = [c[0] for c in cases]
    predictions = [c[1] for c in cases]
    for target, prediction, expected in cases:
        assert metrics.f1([target], [prediction]) == {"f1": pytest.approx(expected)}
    mean = sum(c[2] for c in cases) / len(cases)
    assert metrics.f1(targets, predictions) == {"f1": pytest.approx(mean)}
    result = metrics.squad(targets, predictions)
    # Normalised exact match: only "The" vs "a" (both empty) matches exactly.
    assert result == {"squad_exact_match": pytest.approx(1 / 6), "f1": pytest.approx(mean)}
    assert metrics.squad(["Sat."], ["sat"]) == {"squad_exact_match": 1.0, "f1": 1.0}


def test_rouge_against_hand_counted_ngram_overlaps():
    targets = ["the cat sat on the mat", "a b c d"]
    predictions = ["The cat lay on the mat.", "d c b a"]
    # Example 1: 5 of 6 unigrams shared; bigrams {the cat, on the, the mat} = 3 of 5 on both
    # sides; longest common subsequence "the cat on the mat" = 5 of 6.
    # Example 2: every unigram shared; no bigram; the LCS is one token of 4.
    expected = {
        "rouge1": (5 / 6 + 1.0) / 2,
        "rouge2": (3 / 5 + 0.0) / 2,
        "rougeL": (5 / 6 + 1 / 4) / 2,
    }
    got = metrics.rouge(targets, predictions)
    assert got == pytest.approx(expected, abs=1e-12)
    # Unequal lengths: pred [the, cat] vs ref of 6 tokens: P = 1, R = 2/6 -> F = 1/2.
    assert metrics.rouge(["the cat sat on the mat"], ["the cat"])["rouge1"] == pytest.approx(0.5)
    # Several references: the best one counts.
    best = metrics.rouge([["x y z", "the cat"]], ["the cat"])
    assert best == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def _bleu(matches: list[int], totals: list[int], hyp_len: int, ref_len: int) -> float:
    """BLEU by its definition (Papineni et al.): brevity penalty times the geometric mean of
    the clipped n-gram precisions, n = 1..4, on a 0-100 scale."""
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def test_bleu_against_the_formula_computed_by_hand():
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == {
        "bleu": pytest.approx(100.0)
    }
    # "a b c d e f" vs "a b c d e g": 5/6, 4/5, 3/4, 2/3 n-grams match, equal lengths.
    one = metrics.bleu(["a b c d e g"], ["a b c d e f"])["bleu"]
    assert one == pytest.approx(_bleu([5, 4, 3, 2], [6, 5, 4, 3], 6, 6))
    assert one == pytest.approx(100 * (1 / 3) ** 0.25)
    # Too short: every n-gram matches, brevity penalty exp(1 - 6/4).
    short = metrics.bleu(["a b c d e f"], ["a b c d"])["bleu"]
    assert short == pytest.approx(100 * math.exp(-0.5))
    # Corpus BLEU sums the counts over sentences (it is not the mean of sentence scores).
    corpus = metrics.bleu(["a b c d e g", "a b c d e f"], ["a b c d e f", "a b c d"])["bleu"]
    assert corpus == pytest.approx(_bleu([9, 7, 5, 3], [10, 8, 6, 4], 10, 12))
    # Two references per sentence: an n-gram may match either. 6/6 unigrams, {ab, bc, de, ef}
    # 4/5 bigrams, {abc, def} 2/4 trigrams, no 4-gram: sacrebleu's default 'exp' smoothing
    # (NIST's) counts the first zero precision as 1 / (2 * total) = 1/6.
    two = metrics.bleu([["a b c x y z", "q r s d e f"]], ["a b c d e f"])["bleu"]
    assert two == pytest.approx(_bleu([6, 4, 2, 0.5], [6, 5, 4, 3], 6, 6))
    with pytest.raises(ValueError, match="different numbers of references"):
        metrics.bleu([["a"], ["b", "c"]], ["a", "b"])


def test_flan_generation_tasks_use_rouge_and_bleu():
    from tasks.flan import registration
    from tasks.flan.datasets import all_specs

    specs = {s.name: s for s in all_specs()}
    expect = {
        "xsum": (metrics.rouge,),
        "cnn_dailymail": (metrics.rouge,),
        "wmt16_translate_deen": (metrics.bleu,),
        "wmt14_translate_enfr": (metrics.bleu,),
        "dart": (metrics.rouge, metrics.bleu),
        "squad_v1": (metrics.exact_match, metrics.squad),
        "trivia_qa": (metrics.exact_match, metrics.squad),
        "rte": (metrics.exact_match,),
        "ag_news_subset": (metrics.exact_match,),  # in the summarisation cluster, but options
        "arc_easy": (metrics.exact_match,),
    }
    for name, fns in expect.items():
        assert registration.metric_fns(specs[name]) == fns, name
    for spec in specs.values():
        fns = registration.metric_fns(spec)
        if spec.cluster in ("summarization", "translation") and not spec.classification:
            assert metrics.exact_match not in fns, spec.name
    # What registration hands SeqIO (a local source: no TFDS).
    source = InMemorySource({"train": [{"document": "d", "summary": "s"}]})
    names = registration.register_spec(specs["xsum"], source=source, per_template=False)
    try:
        for name in names:
            assert seqio.get_mixture_or_task(name).predict_metric_fns == [metrics.rouge]
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)

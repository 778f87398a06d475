"""Postprocessing and metrics of instruction tasks, as SeqIO postprocess and metric fns.

Every metric fn is ``fn(targets, predictions) -> {name: value}`` over a whole eval split (the
SeqIO contract), after the task's postprocessor. Scales: ``exact_match``, ``accuracy``,
``f1`` / ``squad_exact_match`` and ``rouge1`` / ``rouge2`` / ``rougeL`` are fractions in [0, 1]
(ROUGE is rouge-score's F-measure); ``bleu`` is sacrebleu's 0-100 score, as BLEU is always
reported. A target may be a list of references where noted (the best reference counts).
Rank-classification accuracy (from model scores) lives in
:mod:`t5x_instruct.data.rank_classification`.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

Reference = str | bytes | Sequence[str | bytes]


def _str(text: str | bytes) -> str:
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _references(target: Reference) -> list[str]:
    if isinstance(target, str | bytes):
        return [_str(target)]
    refs = [_str(t) for t in target]
    if not refs:
        raise ValueError("A target has an empty list of references.")
    return refs


def _check(name: str, targets: Sequence[Any], predictions: Sequence[Any]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{name}: {len(targets)} targets but {len(predictions)} predictions.")


def strip_whitespace(output: str | bytes, example: Any = None, is_target: bool = False) -> str:
    """Decoded text with surrounding whitespace removed and inner runs collapsed to one space.

    Accepts bytes because SeqIO hands pretokenized targets over as ``bytes``.
    """
    del example, is_target
    return " ".join(_str(output).split())


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Fraction (0..1) of predictions equal to their target, as a SeqIO metric fn."""
    _check("exact_match", targets, predictions)
    if not targets:
        return {"exact_match": 0.0}
    hits = sum(t == p for t, p in zip(targets, predictions, strict=True))
    return {"exact_match": hits / len(targets)}


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Fraction (0..1) of predictions equal to their target label (classification)."""
    _check("accuracy", targets, predictions)
    if not targets:
        return {"accuracy": 0.0}
    return {"accuracy": sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


# ----------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str | bytes) -> str:
    """SQuAD's answer normalisation: lowercase, drop ASCII punctuation, drop the articles
    a/an/the, collapse whitespace."""
    text = "".join(c for c in _str(text).lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(reference: str, prediction: str) -> float:
    ref, pred = normalize_squad(reference).split(), normalize_squad(prediction).split()
    if not ref or not pred:  # SQuAD v2: an empty answer is only right against an empty one
        return float(ref == pred)
    common = sum((collections.Counter(ref) & collections.Counter(pred)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(targets: Sequence[Reference], predictions: Sequence[str | bytes]) -> dict[str, float]:
    """Mean SQuAD token F1 (0..1), each prediction against its best reference."""
    _check("f1", targets, predictions)
    if not targets:
        return {"f1": 0.0}
    scores = [
        max(_token_f1(ref, _str(pred)) for ref in _references(target))
        for target, pred in zip(targets, predictions)
    ]
    return {"f1": sum(scores) / len(scores)}


def squad(targets: Sequence[Reference], predictions: Sequence[str | bytes]) -> dict[str, float]:
    """SQuAD's two metrics: normalised exact match and token F1 (both 0..1, best reference)."""
    _check("squad", targets, predictions)
    if not targets:
        return {"squad_exact_match": 0.0, "f1": 0.0}
    em = [
        max(float(normalize_squad(ref) == normalize_squad(pred)) for ref in _references(target))
        for target, pred in zip(targets, predictions)
    ]
    return {"squad_exact_match": sum(em) / len(em), **f1(targets, predictions)}


# ----------------------------------------------------------------------------- ROUGE, BLEU

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(
    targets: Sequence[Reference],
    predictions: Sequence[str | bytes],
    *,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE F-measure (0..1) per type, by Google's ``rouge-score`` package (its default
    tokenizer: lowercase, alphanumeric tokens). Several references: the best one counts.

    ``rougeLsum`` may be added to ``rouge_types`` (sentences split on newlines).
    """
    _check("rouge", targets, predictions)
    if not targets:
        return {t: 0.0 for t in rouge_types}
    from rouge_score import rouge_scorer  # imports nltk: only when ROUGE is computed

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for target, pred in zip(targets, predictions):
        scores = scorer.score_multi(_references(target), _str(pred))
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    return {t: v / len(targets) for t, v in totals.items()}


def bleu(
    targets: Sequence[Reference], predictions: Sequence[str | bytes], *, tokenize: str = "13a"
) -> dict[str, float]:
    """Corpus BLEU (0-100) by ``sacrebleu`` with its defaults (``13a`` tokenizer, exponential
    smoothing, case-sensitive). T5's metric used ``tokenize='intl'``: bind it with
    ``functools.partial(bleu, tokenize='intl')``. Several references per target are allowed
    when every target has the same number."""
    _check("bleu", targets, predictions)
    if not targets:
        return {"bleu": 0.0}
    import sacrebleu

    refs = [_references(t) for t in targets]
    counts = {len(r) for r in refs}
    if len(counts) != 1:
        raise ValueError(f"bleu: targets have different numbers of references {sorted(counts)}.")
    streams = [list(s) for s in zip(*refs)]  # sacrebleu: one list per reference position
    result = sacrebleu.corpus_bleu([_str(p) for p in predictions], streams, tokenize=tokenize)
    return {"bleu": float(result.score)}

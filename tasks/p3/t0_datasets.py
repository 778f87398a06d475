"""Which data sets make up T0, T0+ and T0++ (Sanh et al. 2021, "Multitask Prompted Training
Enables Zero-Shot Task Generalization"), kept as data.

* T0 trains on the multiple-choice QA, extractive QA, closed-book QA, sentiment, topic
  classification, structure-to-text, summarisation and paraphrase-identification data sets.
* T0+ adds the data sets GPT-3 was evaluated on (ARC, OpenBookQA, PiQA, RACE, HellaSwag,
  SQuAD v2, TriviaQA, WebQuestions).
* T0++ adds SuperGLUE except its NLI sets (RTE, CB): BoolQ, COPA, MultiRC, ReCoRD, WiC, WSC.
* Held out from T0's training for zero-shot evaluation: NLI (ANLI, CB, RTE), coreference
  (WSC, Winogrande), word sense (WiC), sentence completion (COPA, HellaSwag, StoryCloze).

``train_size`` is the number of training examples of the Hugging Face data set as T0 counted
them; it sets the mixing rate without touching the data (registration stays cheap).
``splits`` are our split names; ``split_mapping`` renames them to the data set's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

TVT = ("train", "validation", "test")
TV = ("train", "validation")
TT = ("train", "test")


@dataclasses.dataclass(frozen=True)
class P3Dataset:
    """One Hugging Face data set (and subset) with its PromptSource templates."""

    name: str
    subset: str | None = None
    train_size: int = 0
    category: str = ""
    splits: tuple[str, ...] = TVT
    split_mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    task_suffix: str = ""  # appended to task names (ANLI rounds share one templates file)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.subset}" if self.subset else self.name


def _d(
    name: str, subset: str | None, size: int, category: str, splits: tuple[str, ...] = TVT
) -> P3Dataset:
    return P3Dataset(name, subset, size, category, tuple(splits))


T0_TRAIN: tuple[P3Dataset, ...] = (
    # Multiple-choice QA (CommonsenseQA is used through its CoS-E release, as T0 did).
    _d("cos_e", "v1.11", 9741, "multiple_choice_qa", TV),
    _d("cosmos_qa", None, 25262, "multiple_choice_qa"),
    _d("dream", None, 6116, "multiple_choice_qa"),
    _d("qasc", None, 8134, "multiple_choice_qa"),
    _d("quail", None, 10246, "multiple_choice_qa", ("train", "validation", "challenge")),
    _d("quarel", None, 1941, "multiple_choice_qa"),
    _d("quartz", None, 2696, "multiple_choice_qa"),
    _d("sciq", None, 11679, "multiple_choice_qa"),
    _d("social_i_qa", None, 33410, "multiple_choice_qa", TV),
    _d("wiki_hop", "original", 43738, "multiple_choice_qa", TV),
    _d("wiqa", None, 29808, "multiple_choice_qa"),
    # Extractive QA
    _d("adversarial_qa", "dbidaf", 10000, "extractive_qa"),
    _d("adversarial_qa", "dbert", 10000, "extractive_qa"),
    _d("adversarial_qa", "droberta", 10000, "extractive_qa"),
    _d("duorc", "SelfRC", 60721, "extractive_qa"),
    _d("duorc", "ParaphraseRC", 69524, "extractive_qa"),
    _d("quoref", None, 19399, "extractive_qa", TV),
    _d("ropes", None, 10924, "extractive_qa"),
    # Closed-book QA (HotpotQA through KILT, without its passages)
    _d("kilt_tasks", "hotpotqa", 88869, "closed_book_qa"),
    _d("wiki_qa", None, 20360, "closed_book_qa"),
    # Sentiment
    _d("amazon_polarity", None, 3600000, "sentiment", TT),
    _d("app_reviews", None, 288065, "sentiment", ("train",)),
    _d("imdb", None, 25000, "sentiment", TT),
    _d("rotten_tomatoes", None, 8530, "sentiment"),
    _d("yelp_review_full", None, 650000, "sentiment", TT),
    # Topic classification
    _d("ag_news", None, 120000, "topic_classification", TT),
    _d("dbpedia_14", None, 560000, "topic_classification", TT),
    _d("trec", None, 5452, "topic_classification", TT),
    # Structure-to-text
    _d("common_gen", None, 67389, "structure_to_text"),
    _d("wiki_bio", None, 582659, "structure_to_text", ("train", "test", "val")),
    # Summarisation
    _d("cnn_dailymail", "3.0.0", 287113, "summarization"),
    _d("gigaword", None, 3803957, "summarization"),
    _d("multi_news", None, 44972, "summarization"),
    _d("samsum", None, 14732, "summarization"),
    _d("xsum", None, 204045, "summarization"),
    # Paraphrase identification
    _d("glue", "mrpc", 3668, "paraphrase"),
    _d("glue", "qqp", 363846, "paraphrase"),
    _d("paws", "labeled_final", 49401, "paraphrase"),
)

GPT3_EVAL_ADDITIONS: tuple[P3Dataset, ...] = (
    _d("ai2_arc", "ARC-Challenge", 1119, "closed_book_qa"),
    _d("ai2_arc", "ARC-Easy", 2251, "closed_book_qa"),
    _d("trivia_qa", "unfiltered", 87622, "closed_book_qa"),
    _d("web_questions", None, 3778, "closed_book_qa", TT),
    _d("squad_v2", None, 130319, "extractive_qa", TV),
    _d("openbookqa", "main", 4957, "multiple_choice_qa"),
    _d("race", "high", 62445, "multiple_choice_qa"),
    _d("race", "middle", 25421, "multiple_choice_qa"),
    _d("piqa", None, 16113, "multiple_choice_qa"),
    _d("hellaswag", None, 39905, "sentence_completion"),
)

SUPERGLUE_ADDITIONS: tuple[P3Dataset, ...] = (
    _d("super_glue", "boolq", 9427, "multiple_choice_qa"),
    _d("super_glue", "copa", 400, "sentence_completion"),
    _d("super_glue", "multirc", 27243, "multiple_choice_qa"),
    _d("super_glue", "record", 100730, "extractive_qa"),
    _d("super_glue", "wic", 5428, "word_sense_disambiguation"),
    _d("super_glue", "wsc.fixed", 554, "coreference"),
)


def _anli_round(r: str) -> P3Dataset:
    mapping = {"train": f"train_{r}", "validation": f"dev_{r}", "test": f"test_{r}"}
    return P3Dataset("anli", None, 0, "nli", TVT, mapping, task_suffix=f"_{r}")


# Evaluated zero-shot (T0 used the validation splits).
T0_HELDOUT_EVAL: tuple[P3Dataset, ...] = (
    _anli_round("r1"),
    _anli_round("r2"),
    _anli_round("r3"),
    _d("super_glue", "cb", 250, "nli"),
    _d("super_glue", "rte", 2490, "nli"),
    _d("super_glue", "wsc.fixed", 554, "coreference"),
    _d("winogrande", "winogrande_xl", 40398, "coreference"),
    _d("super_glue", "wic", 5428, "word_sense_disambiguation"),
    _d("super_glue", "copa", 400, "sentence_completion"),
    _d("hellaswag", None, 39905, "sentence_completion"),
    _d("story_cloze", "2016", 0, "sentence_completion", ("validation", "test")),
)

T0_MIXTURES: dict[str, tuple[P3Dataset, ...]] = {
    "t0_train": T0_TRAIN,
    "t0p_train": T0_TRAIN + GPT3_EVAL_ADDITIONS,
    "t0pp_train": T0_TRAIN + GPT3_EVAL_ADDITIONS + SUPERGLUE_ADDITIONS,
}


def all_datasets() -> tuple[P3Dataset, ...]:
    """Every data set above once (the held-out sets that T0+/T0++ also train on included)."""
    seen: dict[tuple[str, str | None, str], P3Dataset] = {}
    for d in (*T0_MIXTURES["t0pp_train"], *T0_HELDOUT_EVAL):
        seen.setdefault((d.name, d.subset, d.task_suffix), d)
    return tuple(seen.values())

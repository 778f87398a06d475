"""Mixing data kept as data: published train sizes, the rate cap and the Flan 2022 weights.

A data set's mixing rate is ``min(cap, num_train_examples)`` (examples-proportional mixing with
a ceiling, so that huge sets such as WMT or Gigaword do not drown the small ones). The number
of train examples comes from the locally prepared TFDS metadata when available, else from
:data:`PUBLISHED_TRAIN_SIZES` (the sizes of the TFDS train splits as published), so that
computing rates never reads or downloads data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

# The FLAN 2021 paper's maximum mixing rate per data set (examples-proportional, capped).
FLAN2021_RATE_CAP = 3_000

# Flan 2022 collection: share of each sub-collection in the final mixture (Longpre et al.,
# 2023). Tests assert these as golden numbers.
FLAN2022_COLLECTION_WEIGHTS: Mapping[str, float] = {
    "flan2021": 0.4,
    "t0": 0.32,
    "niv2": 0.2,
    "cot": 0.05,
    "dialog": 0.03,
}

# TFDS train-split sizes (as published with each data set), keyed by TFDS name.
PUBLISHED_TRAIN_SIZES: Mapping[str, int] = {
    "glue/rte": 2_490,
    "glue/mnli": 392_702,
    "glue/wnli": 635,
    "anli/r1": 16_946,
    "anli/r2": 45_460,
    "anli/r3": 100_459,
    "snli": 550_152,
    "super_glue/cb": 250,
    "super_glue/copa": 400,
    "hellaswag": 39_905,
    "piqa": 16_113,
    "imdb_reviews/plain_text": 25_000,
    "glue/sst2": 67_349,
    "yelp_polarity_reviews": 560_000,
    "sentiment140": 1_600_000,
    "glue/mrpc": 3_668,
    "glue/qqp": 363_846,
    "paws_wiki": 49_401,
    "trivia_qa/rc.nocontext": 138_384,
    "natural_questions_open": 87_925,
    "ai2_arc/ARC-Easy": 2_251,
    "ai2_arc/ARC-Challenge": 1_119,
    "openbookqa": 4_957,
    "squad/v1.1": 87_599,
    "drop": 77_409,
    "super_glue/boolq": 9_427,
    "cosmos_qa": 25_262,
    "winogrande": 40_398,
    "definite_pronoun_resolution": 1_322,
    "cnn_dailymail": 287_113,
    "gigaword": 3_803_957,
    "xsum": 203_577,
    "multi_news": 44_972,
    "aeslc": 14_436,
    "ag_news_subset": 120_000,
    "wmt16_translate/de-en": 4_548_885,
    "wmt16_translate/ro-en": 610_320,
    "wmt16_translate/cs-en": 997_712,
    "wmt16_translate/fi-en": 2_073_394,
    "wmt16_translate/ru-en": 2_516_162,
    "wmt16_translate/tr-en": 205_756,
    "wmt14_translate/fr-en": 40_836_715,
    "web_nlg": 35_426,
    "e2e_cleaned": 33_525,
    "dart": 62_659,
    "glue/cola": 8_551,
    "trec": 5_452,
    "esnli": 549_367,
    "cos_e": 9_741,
    "gsm8k": 7_473,
}


def capped_rate(num_examples: int, cap: int = FLAN2021_RATE_CAP) -> float:
    """``min(cap, num_examples)`` as a float mixing rate."""
    if num_examples < 0 or cap <= 0:
        raise ValueError(
            f"capped_rate needs num_examples >= 0 and cap > 0, got {num_examples}, {cap}."
        )
    return float(min(cap, num_examples))


def num_train_examples(tfds_name: str, data_dir: str | None = None, split: str = "train") -> int:
    """Train examples of ``tfds_name``: prepared TFDS metadata if present, else the table.

    Only metadata (``dataset_info.json``) is read, and only when the data set's folder
    exists, so this never touches the network or the records themselves.
    """
    default_dir = os.path.expanduser("~/tensorflow_datasets")
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR", default_dir)
    if os.path.isdir(os.path.join(data_dir, *tfds_name.split("/"))):
        try:
            import tensorflow_datasets as tfds

            info = tfds.builder(tfds_name, data_dir=data_dir, try_gcs=False).info
            if split in info.splits:
                return int(info.splits[split].num_examples)
        except Exception as e:  # metadata unreadable: fall back to the published size
            logging.warning("No TFDS metadata for %s (%s); using the published size.",
                            tfds_name, e)  # fmt: skip
    if tfds_name not in PUBLISHED_TRAIN_SIZES:
        raise KeyError(
            f"No published train size for {tfds_name!r}; add it to PUBLISHED_TRAIN_SIZES."
        )
    return PUBLISHED_TRAIN_SIZES[tfds_name]

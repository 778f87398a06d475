"""Flan 2021 instruction tasks from TFDS; ``import tasks.flan`` registers them (no data read).

See :mod:`tasks.flan.registration` for the naming scheme and mixtures,
:mod:`tasks.flan.datasets` for the data sets and :mod:`tasks.flan.sizes` for the rate data.
"""

from tasks.flan.datasets import CLUSTERS, DatasetSpec, all_specs
from tasks.flan.registration import (
    PREFIX,
    few_shot_task,
    heldout_cluster_mixtures,
    register,
    register_collection,
    register_spec,
)
from tasks.flan.sizes import (
    FLAN2021_RATE_CAP,
    FLAN2022_COLLECTION_WEIGHTS,
    PUBLISHED_TRAIN_SIZES,
    capped_rate,
)

TASK_NAMES = register()

__all__ = [
    "CLUSTERS",
    "FLAN2021_RATE_CAP",
    "FLAN2022_COLLECTION_WEIGHTS",
    "PREFIX",
    "PUBLISHED_TRAIN_SIZES",
    "TASK_NAMES",
    "DatasetSpec",
    "all_specs",
    "capped_rate",
    "few_shot_task",
    "heldout_cluster_mixtures",
    "register",
    "register_collection",
    "register_spec",
]

"""P3 / T0 tasks from PromptSource templates; ``import tasks.p3`` registers them.

Registered (see :mod:`tasks.p3.registration` and :mod:`tasks.p3.t0_datasets`):

* a task per (data set, template) of every T0 / T0+ / T0++ / held-out data set, named as in
  P3 (e.g. ``super_glue_rte_GPT_3_style``), plus ``..._score_eval`` (rank classification) for
  templates with answer choices;
* mixtures ``t0_train`` (T0), ``t0p_train`` (T0+), ``t0pp_train`` (T0++), rated as T0 was,
  and ``t0_eval_score_eval``: the held-out data sets' original-task templates, scored.

Only the PromptSource template files are read at import (``templates_root``, default: the
installed ``promptsource`` package); data come through :func:`set_example_loader`'s loader
(Hugging Face ``datasets`` by name unless replaced) when a split is read.
"""

from __future__ import annotations

import gin
import seqio

from t5x_instruct.data.promptsource import TemplateLibrary
from t5x_instruct.data.vocabularies import ConfiguredVocabulary
from tasks.p3.registration import (
    MAX_EXAMPLES_PER_DATASET,
    P3_TASKS,
    SCORE_EVAL_SUFFIX,
    P3Task,
    PromptedSource,
    RenderStats,
    add_mixture,
    huggingface_loader,
    p3_metric_fns,
    p3_vocabulary,
    register_p3_tasks,
    render_stats,
    set_example_loader,
    t0_mixing_rate,
    t0_task_name,
    tasks_of,
)
from tasks.p3.t0_datasets import T0_HELDOUT_EVAL, T0_MIXTURES, P3Dataset, all_datasets

HELDOUT_SCORE_EVAL_MIXTURE = "t0_eval_score_eval"


@gin.configurable
def register(
    templates_root: str | None = None, vocabulary: seqio.Vocabulary | None = None
) -> list[P3Task]:
    """Registers every P3 task and the T0 mixtures (safe to call again)."""
    library = TemplateLibrary(templates_root)
    vocabulary = vocabulary or ConfiguredVocabulary(p3_vocabulary)  # resolved when used
    heldout = {(d.name, d.subset, d.task_suffix) for d in T0_HELDOUT_EVAL}
    registered = []
    for d in all_datasets():
        group = "heldout_task" if (d.name, d.subset, d.task_suffix) in heldout else "train_tasks"
        registered += register_p3_tasks([d], library=library, vocabulary=vocabulary, group=group)
    for name, datasets in T0_MIXTURES.items():
        add_mixture(name, tasks_of(datasets))
    score_tasks = [
        P3_TASKS[n].score_eval_name
        for n in tasks_of(T0_HELDOUT_EVAL)
        if P3_TASKS[n].template.metadata.original_task and P3_TASKS[n].score_eval_name
    ]
    add_mixture(HELDOUT_SCORE_EVAL_MIXTURE, score_tasks, rate=1.0)
    return registered


register()

__all__ = [
    "HELDOUT_SCORE_EVAL_MIXTURE",
    "MAX_EXAMPLES_PER_DATASET",
    "P3_TASKS",
    "SCORE_EVAL_SUFFIX",
    "P3Dataset",
    "P3Task",
    "PromptedSource",
    "RenderStats",
    "add_mixture",
    "huggingface_loader",
    "p3_metric_fns",
    "p3_vocabulary",
    "register",
    "register_p3_tasks",
    "render_stats",
    "set_example_loader",
    "t0_mixing_rate",
    "t0_task_name",
    "tasks_of",
]

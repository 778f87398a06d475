"""The embedded demo instruction mixture; ``import tasks.demo`` registers its SeqIO tasks.

Registered names (see :mod:`tasks.demo.seqio_tasks`):

* ``demo_<type>`` for 11 training task types (train / validation / test, training templates),
* ``demo_<type>_heldout_templates`` (validation / test, templates never used in training),
* ``demo_heldout_extract_day`` (validation / test; a task type absent from training),
* ``demo_adapt_extract_day``: the same task type with a 1,000-example training split, for
  adaptation experiments (never part of a training mixture),
* mixtures ``demo_instructions`` (training), ``demo_instructions_heldout_templates`` and
  ``demo_eval`` (everything above, for evaluation).
"""

from tasks.demo.seqio_tasks import (
    ADAPT_TASK,
    EVAL_MIXTURE,
    HELDOUT_TASK,
    HELDOUT_TEMPLATES_MIXTURE,
    TASK_FEATURE_LENGTHS,
    TRAIN_MIXTURE,
    VOCAB_PATH,
    register,
)

register()

__all__ = [
    "ADAPT_TASK",
    "EVAL_MIXTURE",
    "HELDOUT_TASK",
    "HELDOUT_TEMPLATES_MIXTURE",
    "TASK_FEATURE_LENGTHS",
    "TRAIN_MIXTURE",
    "VOCAB_PATH",
    "register",
]

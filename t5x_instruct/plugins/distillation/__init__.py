"""Knowledge distillation: a frozen teacher (online, or offline top-k) into the student.

``train.plugins = [@Distillation()]`` (see ``gin/plugins/distillation.gin`` and
``docs/distillation.md``). :mod:`losses` holds the divergences, :mod:`teacher` the teacher
model, :mod:`features` the batch conversions (other family, on-policy samples) and
:mod:`topk_store` the offline teacher's files.
"""

from t5x_instruct.plugins.distillation.losses import (
    DIVERGENCES,
    divergence_fn,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
)
from t5x_instruct.plugins.distillation.plugin import Distillation
from t5x_instruct.plugins.distillation.teacher import Teacher
from t5x_instruct.plugins.distillation.topk_store import TopKStore, TopKWriter, example_key

__all__ = [
    "DIVERGENCES",
    "Distillation",
    "Teacher",
    "TopKStore",
    "TopKWriter",
    "divergence_fn",
    "example_key",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
]

"""Mixture ablations: a sweep file in, a results table and plots out (``tools/ablate.py``).

* :mod:`~t5x_instruct.ablation.spec`: the sweep file (YAML) and its variants;
* :mod:`~t5x_instruct.ablation.resolve`: tasks, rates and caps to effective proportions
  (:mod:`~t5x_instruct.ablation.proportions`), template variants, eval set, gin bindings;
* :mod:`~t5x_instruct.ablation.naming`: deterministic variant and mixture names;
* :mod:`~t5x_instruct.ablation.runner`: resumable local runs or launch commands;
* :mod:`~t5x_instruct.ablation.report` / :mod:`~t5x_instruct.ablation.plots`: the table.

Nothing here imports SeqIO or TensorFlow at import time; resolving a sweep against the
registered tasks does (through :class:`~t5x_instruct.ablation.catalog.SeqioCatalog`).
"""

from t5x_instruct.ablation.catalog import SeqioCatalog, StaticCatalog
from t5x_instruct.ablation.proportions import Component, SourceTasks, effective_proportions
from t5x_instruct.ablation.providers import TemplateProvider, register_template_provider
from t5x_instruct.ablation.resolve import ResolvedVariant, resolve_sweep
from t5x_instruct.ablation.runner import LocalLauncher, register_launcher, run_sweep
from t5x_instruct.ablation.spec import SweepError, SweepSpec, load_sweep, parse_sweep

__all__ = [
    "Component",
    "LocalLauncher",
    "ResolvedVariant",
    "SeqioCatalog",
    "SourceTasks",
    "StaticCatalog",
    "SweepError",
    "SweepSpec",
    "TemplateProvider",
    "effective_proportions",
    "load_sweep",
    "parse_sweep",
    "register_launcher",
    "register_template_provider",
    "resolve_sweep",
    "run_sweep",
]

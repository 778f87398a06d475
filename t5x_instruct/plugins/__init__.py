"""Plug-ins: extend the model, loss, optimizer and loop through one narrow interface.

Write one by subclassing :class:`Plugin` (see its module docstring for where each hook is
called) and bind it in gin: ``train.plugins = [@PromptTuning(), @LoRA()]``. The core only
talks to a :class:`PluginSet`; it never names a particular plug-in.
"""

from t5x_instruct.plugins.base import (
    Action,
    AuxState,
    CheckpointContext,
    EvalContext,
    Plugin,
    SetupContext,
    StepContext,
    path_matcher,
)
from t5x_instruct.plugins.plugin_set import PluginSet

__all__ = [
    "Action",
    "AuxState",
    "CheckpointContext",
    "EvalContext",
    "Plugin",
    "PluginSet",
    "SetupContext",
    "StepContext",
    "path_matcher",
]

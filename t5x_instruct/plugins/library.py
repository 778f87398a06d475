"""Imports every plug-in shipped with the project, so gin files can bind them by name."""

from __future__ import annotations

from t5x_instruct.plugins.distillation import Distillation  # noqa: F401
from t5x_instruct.plugins.ifs import InstructionFollowingScore  # noqa: F401
from t5x_instruct.plugins.lora import LoRA  # noqa: F401
from t5x_instruct.plugins.prompt_tuning import PromptTuning  # noqa: F401

"""Prompt tuning (Lester et al. 2021): a learned soft prompt per packed segment.

``plugin`` holds the gin-configurable :class:`PromptTuning`, ``hook`` the sequence surgery
(packing-aware), ``initializers`` the gin-selectable initial values.
"""

from t5x_instruct.plugins.prompt_tuning.hook import SoftPrompt, insert_prompts
from t5x_instruct.plugins.prompt_tuning.initializers import (
    ClassLabelPromptInit,
    InitContext,
    NpyPromptInit,
    SentencePieceVocabulary,
    TextPromptInit,
    UniformPromptInit,
    VocabSamplePromptInit,
)
from t5x_instruct.plugins.prompt_tuning.plugin import PromptTuning, prompt_path

__all__ = [
    "ClassLabelPromptInit",
    "InitContext",
    "NpyPromptInit",
    "PromptTuning",
    "SentencePieceVocabulary",
    "SoftPrompt",
    "TextPromptInit",
    "UniformPromptInit",
    "VocabSamplePromptInit",
    "insert_prompts",
    "prompt_path",
]

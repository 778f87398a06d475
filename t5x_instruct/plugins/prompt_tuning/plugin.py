"""``PromptTuning``: a learned soft prompt on a frozen model (Lester et al. 2021).

gin: ``train.plugins = [@PromptTuning()]`` with ``include 'gin/plugins/prompt_tuning.gin'``.
The prompt is the one trainable parameter (``sequence_hooks/<name>/prompt``, logical axes
``('prompt', 'embed')``: replicated over ``prompt``, sharded like the embeddings' ``embed``
axis), lives in every checkpoint for exact resume, and is also exported after each
checkpoint as ``MODEL_DIR/<name>/prompt_<step>.npy``; ``NpyPromptInit.path`` loads such a
file over any base checkpoint of the same embedding width.
"""

from __future__ import annotations

import re
from typing import Any

import gin
import jax
import numpy as np
from flax import nnx

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.base import AssignmentMap, AxisRules, CheckpointContext, Plugin
from t5x_instruct.plugins.prompt_tuning.hook import OVERFLOW, PLACEMENTS, SoftPrompt
from t5x_instruct.plugins.prompt_tuning.initializers import (
    InitContext,
    VocabSamplePromptInit,
    rederive,
)

EMBEDDING_PATH = ("token_embedder", "embedding")


@gin.configurable
class PromptTuning(Plugin):
    """Soft prompt of ``length`` vectors, one copy per packed segment.

    Settings:
      length: prompt vectors ``P``.
      placement: ``'prefix'`` | ``'after_bos'`` | ``'suffix_of_inputs'`` (see ``hook``):
        on the T5 encoder input, or on a decoder-only sequence (inside the bidirectional
        prefix of a prefix-LM).
      init: a ``PromptInit`` (``@UniformPromptInit()``, ``@VocabSamplePromptInit()``,
        ``@ClassLabelPromptInit()``, ``@TextPromptInit()``, ``@NpyPromptInit()``).
      num_tasks: > 1 holds one prompt per task, ``[num_tasks, P, d]``, picked per packed
        segment by the batch feature ``task_feature`` (``[b]`` per row, or ``[b, t]``
        per token, packed like the tokens of the hooked input); batches without it (the
        built-in greedy eval sends only inputs) use ``default_task_id`` (None: error).
        SeqIO's feature converters drop unknown features, so a mixture provides it with a
        preprocessor adding the task's index per ``inputs`` token and a converter that
        packs that feature like ``inputs`` (not shipped yet); hand-built batches pass it.
      max_segments_per_row: prompt copies a *packed* row has room for; a packed row grows
        from ``t`` to ``t + length * max_segments_per_row`` vectors (unpacked rows and
        decoding: ``t + length``).
      on_overflow: a packed row with more segments (the extra ones get no prompt), or a
        task id out of range: ``'error'`` (raised from the device at that step; on several
        devices XLA may abort the process after logging it), ``'warn'`` (logged) or
        ``'skip'``.
      freeze_base: train only the prompt (the base gets no gradient or optimizer state).
      export: write ``MODEL_DIR/<name>/prompt_<step>.npy`` after each checkpoint.
      name: plug-in name (metrics, parameter path ``sequence_hooks/<name>/prompt``).
    """

    def __init__(
        self,
        length: int = 20,
        placement: str = "prefix",
        init: Any = None,
        num_tasks: int = 1,
        task_feature: str = "prompt_task_id",
        default_task_id: int | None = 0,
        max_segments_per_row: int = 8,
        on_overflow: str = "error",
        freeze_base: bool = True,
        export: bool = True,
        name: str = "prompt_tuning",
    ) -> None:
        self.name = name
        _check(
            isinstance(length, int) and length >= 1,
            f"{name}: PromptTuning.length={length!r} must be an integer >= 1.",
        )
        _check(
            placement in PLACEMENTS,
            f"{name}: PromptTuning.placement={placement!r}; expected one of {PLACEMENTS}.",
        )
        _check(
            isinstance(num_tasks, int) and num_tasks >= 1,
            f"{name}: PromptTuning.num_tasks={num_tasks!r} must be an integer >= 1.",
        )
        _check(
            default_task_id is None or 0 <= default_task_id < num_tasks,
            f"{name}: PromptTuning.default_task_id={default_task_id!r} must be None or in "
            f"[0, num_tasks={num_tasks}).",
        )
        _check(
            isinstance(max_segments_per_row, int) and max_segments_per_row >= 1,
            f"{name}: PromptTuning.max_segments_per_row={max_segments_per_row!r} must be an "
            "integer >= 1.",
        )
        _check(
            on_overflow in OVERFLOW,
            f"{name}: PromptTuning.on_overflow={on_overflow!r}; expected one of {OVERFLOW}.",
        )
        self.length = length
        self.placement = placement
        self.init = init if init is not None else VocabSamplePromptInit()
        self.num_tasks = num_tasks
        self.task_feature = task_feature
        self.default_task_id = default_task_id
        self.max_segments_per_row = max_segments_per_row
        self.on_overflow = on_overflow
        self.freeze_base = freeze_base
        self.export = export

    # ---------------------------------------------------------------- model
    @property
    def param_path(self) -> tuple[str, ...]:
        return ("sequence_hooks", self.name, "prompt")

    def logical_axis_rules(self) -> AxisRules:
        return [("prompt", None), ("prompt_tasks", None)]

    def transform_model(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
        if not hasattr(model, "add_sequence_hook"):
            raise UserInputError(
                f"{self.name}: {type(model).__name__} has no sequence hooks, so a soft prompt "
                "cannot be attached (models must mix in layers.sequence.HookedModel)."
            )
        table = _embedding_table(model)
        ctx = self._context(table, rngs.params())
        value = self._initial_value(ctx)
        model.add_sequence_hook(
            self.name,
            SoftPrompt(
                value,
                plugin=self.name,
                placement=self.placement,
                max_segments=self.max_segments_per_row,
                on_overflow=self.on_overflow,
                task_feature=self.task_feature,
                default_task_id=self.default_task_id,
            ),
        )
        return model

    def _context(self, table: Any, key: jax.Array) -> InitContext:
        if table is None:
            raise UserInputError(
                f"{self.name}: the model has no `token_embedder.embedding` table, so the "
                "prompt's width is unknown."
            )
        vocab_size, width = table.shape
        return InitContext(
            plugin=self.name,
            num_tasks=self.num_tasks,
            length=self.length,
            width=int(width),
            vocab_size=int(vocab_size),
            key=key,
            embeddings=table,
        )

    def _initial_value(self, ctx: InitContext, current: Any = None) -> jax.Array:
        value = self.init(ctx) if current is None else rederive(self.init, ctx, current)
        if tuple(value.shape) != ctx.shape:
            raise UserInputError(
                f"{self.name}: PromptTuning.init={self.init!r} returned shape "
                f"{list(value.shape)}, expected {list(ctx.shape)} (num_tasks, length, width)."
            )
        return value[0] if self.num_tasks == 1 else value

    # ---------------------------------------------------------------- parameters
    def owns(self, path: str) -> bool:
        return path.startswith(f"sequence_hooks/{self.name}/")

    def assignment_map(self) -> AssignmentMap:
        # A base checkpoint never holds the prompt: keep the fresh initialisation.
        return [(f"sequence_hooks/{re.escape(self.name)}/.*", None)]

    def init_from_base(self, params: Any) -> Any:
        """After a warm start, re-read embedding-based initial values from the loaded table."""
        if not getattr(self.init, "uses_embeddings", False):
            return params
        table = params[EMBEDDING_PATH[0]][EMBEDDING_PATH[1]]
        hooks = params["sequence_hooks"]
        current = hooks[self.name]["prompt"]
        ctx = self._context(table, jax.random.key(0))  # embedding initialisers draw no key
        prompt = self._initial_value(ctx, current).astype(current.dtype)
        own = {**hooks[self.name], "prompt": prompt}
        return {**params, "sequence_hooks": {**hooks, self.name: own}}

    # ---------------------------------------------------------------- loop
    def on_checkpoint(self, ctx: CheckpointContext) -> None:
        if not self.export:
            return
        prompt = ctx.fetch(ctx.params["sequence_hooks"][self.name]["prompt"])  # collective
        if ctx.is_writer:
            export_prompt(np.asarray(prompt), prompt_path(ctx.model_dir, self.name, ctx.step))


def prompt_path(model_dir: str, name: str, step: int) -> Any:
    """``MODEL_DIR/<name>/prompt_<step>.npy`` as an ``epath.Path`` (local or ``gs://``)."""
    from etils import epath

    return epath.Path(model_dir) / name / f"prompt_{step}.npy"


def export_prompt(prompt: np.ndarray, path: Any) -> None:
    """Atomic write that replaces an existing file.

    A run killed after this export but before its checkpoint committed resumes from an older
    step and exports the same step again, so the file may already be there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with tmp.open("wb") as f:
        np.save(f, prompt.astype(np.float32))
    tmp.replace(path)


def _embedding_table(model: nnx.Module) -> Any:
    embedder = getattr(model, EMBEDDING_PATH[0], None)
    variable = getattr(embedder, EMBEDDING_PATH[1], None)
    return None if variable is None else variable.get_value()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)

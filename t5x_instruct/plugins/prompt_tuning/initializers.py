"""Initial values of a soft prompt (Lester et al. 2021, section 2.2), each gin-selectable.

Every initialiser maps an :class:`InitContext` to a ``[num_tasks, length, width]`` float32
array. Those that read the base model's embedding table set ``uses_embeddings``: they run
at build time (where the table may be abstract, under ``nnx.eval_shape``, or freshly random)
and again after a warm start, on the loaded table (``PromptTuning.init_from_base``), so the
same token ids pick rows of the pretrained vocabulary. Token ids come from a vocabulary
object with ``encode(text) -> list[int]`` (SentencePiece by default, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct.errors import UserInputError

# The embedded demo mixture's SentencePiece model (repository checkout).
DEMO_VOCABULARY = Path(__file__).resolve().parents[3] / "tasks" / "demo" / "vocab" / "demo.model"


@dataclasses.dataclass(frozen=True)
class InitContext:
    """What an initialiser may use; ``plugin`` names the plug-in in error messages."""

    plugin: str
    num_tasks: int
    length: int
    width: int
    vocab_size: int
    key: jax.Array
    embeddings: jax.Array | None  # [vocab, width]: concrete, traced or abstract

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_tasks, self.length, self.width)


class PromptInit(Protocol):
    uses_embeddings: bool

    def __call__(self, ctx: InitContext) -> jax.Array: ...


class Vocabulary(Protocol):
    """Anything with ``encode`` (ours below, or a ``seqio.SentencePieceVocabulary``)."""

    def encode(self, text: str) -> Sequence[int]: ...


@gin.configurable
class SentencePieceVocabulary:
    """Token ids of a SentencePiece model, read with ``sentencepiece`` directly.

    ``model_path`` defaults to the demo vocabulary; use your base model's (e.g. T5's
    ``cc_all.32000.100extra/sentencepiece.model``) so ids match its embedding table.
    """

    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = str(model_path or DEMO_VOCABULARY)

    @functools.cached_property
    def _processor(self) -> Any:
        import sentencepiece
        from etils import epath

        path = epath.Path(self.model_path)
        if not path.exists():
            raise UserInputError(
                f"SentencePieceVocabulary.model_path={self.model_path!r} does not exist; bind "
                "it to your base model's SentencePiece model."
            )
        return sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())

    def encode(self, text: str) -> list[int]:
        return list(self._processor.encode(text))


# ------------------------------------------------------------------------ initialisers


@gin.configurable
@dataclasses.dataclass(frozen=True)
class UniformPromptInit:
    """Independent uniform values in ``[-scale, scale]`` (Lester's "random uniform")."""

    scale: float = 0.5
    uses_embeddings = False

    def __call__(self, ctx: InitContext) -> jax.Array:
        return jax.random.uniform(ctx.key, ctx.shape, jnp.float32, -self.scale, self.scale)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class VocabSamplePromptInit:
    """Embeddings of token ids drawn without replacement from ``[min_id, max_id)``.

    Lester et al. sample from the 5,000 most common tokens; SentencePiece ids are roughly
    frequency-ordered, hence ``max_id=5000`` (capped at the vocabulary size). ``min_id``
    skips pad / EOS / UNK. Ids are drawn with numpy from ``seed`` (and the task index), so
    a warm start re-reads the very same rows from the loaded table.
    """

    min_id: int = 3
    max_id: int | None = 5000
    seed: int = 0
    uses_embeddings = True

    def token_ids(self, ctx: InitContext) -> np.ndarray:
        high = ctx.vocab_size if self.max_id is None else min(self.max_id, ctx.vocab_size)
        if not 0 <= self.min_id < high:
            raise UserInputError(
                f"{ctx.plugin}: VocabSamplePromptInit samples ids in [min_id={self.min_id}, "
                f"{high}) which is empty for a vocabulary of {ctx.vocab_size}; lower min_id."
            )
        n = high - self.min_id
        rows = []
        for task in range(ctx.num_tasks):
            rng = np.random.default_rng([self.seed, task])
            rows.append(self.min_id + rng.choice(n, ctx.length, replace=ctx.length > n))
        return np.stack(rows).astype(np.int32)

    def __call__(self, ctx: InitContext) -> jax.Array:
        return _rows(ctx, self.token_ids(ctx))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ClassLabelPromptInit:
    """Each prompt vector is a class label's embedding (mean over its tokens), labels cycled.

    ``labels`` are the verbalisers of the task (``['positive', 'negative']``); prompt row
    ``i`` is label ``i % len(labels)``.
    """

    labels: Sequence[str] = ()
    vocabulary: Any = None  # Vocabulary; None = SentencePieceVocabulary()
    uses_embeddings = True

    def label_token_ids(self, ctx: InitContext) -> list[list[int]]:
        if not self.labels:
            raise UserInputError(
                f"{ctx.plugin}: ClassLabelPromptInit.labels is empty; bind the class names, "
                "e.g. ClassLabelPromptInit.labels = ['positive', 'negative']."
            )
        if len(self.labels) > ctx.length:
            raise UserInputError(
                f"{ctx.plugin}: ClassLabelPromptInit.labels has {len(self.labels)} labels but "
                f"PromptTuning.length is {ctx.length}; every label needs a prompt vector."
            )
        vocab = self.vocabulary or SentencePieceVocabulary()
        ids = [list(vocab.encode(label)) for label in self.labels]
        for label, label_ids in zip(self.labels, ids):
            if not label_ids:
                raise UserInputError(
                    f"{ctx.plugin}: ClassLabelPromptInit label {label!r} has no tokens."
                )
            _check_ids(ctx, label_ids, f"ClassLabelPromptInit label {label!r}")
        return ids

    def __call__(self, ctx: InitContext) -> jax.Array:
        ids = self.label_token_ids(ctx)
        table = _table(ctx, "ClassLabelPromptInit")
        means = jnp.stack([jnp.mean(jnp.take(table, jnp.asarray(i), axis=0), 0) for i in ids])
        prompt = jnp.take(means, jnp.arange(ctx.length) % len(ids), axis=0)
        return jnp.broadcast_to(prompt, ctx.shape)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TextPromptInit:
    """The embeddings of a string's tokens, e.g. a task instruction.

    The text's tokens fill the first prompt rows; rows past them come from ``fill``
    (default: :class:`VocabSamplePromptInit`). A text longer than the prompt is an error.
    """

    text: str = ""
    vocabulary: Any = None  # Vocabulary; None = SentencePieceVocabulary()
    fill: Any = None  # PromptInit for rows past the text; None = VocabSamplePromptInit()
    uses_embeddings = True

    def token_ids(self, ctx: InitContext) -> list[int]:
        vocab = self.vocabulary or SentencePieceVocabulary()
        ids = list(vocab.encode(self.text))
        if not ids:
            raise UserInputError(
                f"{ctx.plugin}: TextPromptInit.text={self.text!r} has no tokens; bind the "
                "string to initialise the prompt from."
            )
        if len(ids) > ctx.length:
            raise UserInputError(
                f"{ctx.plugin}: TextPromptInit.text is {len(ids)} tokens long but "
                f"PromptTuning.length is {ctx.length}; shorten the text or raise "
                f"PromptTuning.length to at least {len(ids)}."
            )
        _check_ids(ctx, ids, "TextPromptInit.text")
        return ids

    def __call__(self, ctx: InitContext) -> jax.Array:
        return self.rederive(ctx, None)

    def rederive(self, ctx: InitContext, current: jax.Array | None) -> jax.Array:
        """The text rows from ``ctx``'s table; the rest from ``fill``, or kept from
        ``current`` when ``fill`` does not read the table (its random draw stays)."""
        ids = self.token_ids(ctx)
        text = jnp.take(_table(ctx, "TextPromptInit"), jnp.asarray(ids), axis=0)
        text = jnp.broadcast_to(text, (ctx.num_tasks, *text.shape))
        if len(ids) == ctx.length:
            return text
        fill = self.fill or VocabSamplePromptInit()
        if current is not None and not getattr(fill, "uses_embeddings", False):
            rest = jnp.asarray(current, jnp.float32).reshape(ctx.shape)[:, len(ids) :]
        else:
            rest = fill(ctx)[:, len(ids) :]
        return jnp.concatenate([text, rest], axis=1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NpyPromptInit:
    """A saved prompt (``.npy``, e.g. one ``PromptTuning`` exported), on any compatible base.

    ``[length, width]``, or ``[num_tasks, length, width]`` for per-task prompts (a
    ``[length, width]`` file then starts every task from the same prompt).
    """

    path: str = ""
    uses_embeddings = False

    def __call__(self, ctx: InitContext) -> jax.Array:
        from etils import epath

        setting = f"NpyPromptInit.path={self.path!r}"
        if not self.path or not epath.Path(self.path).exists():
            raise UserInputError(f"{ctx.plugin}: {setting} does not exist.")
        with epath.Path(self.path).open("rb") as f:
            value = np.load(f)
        want = ctx.shape[1:] if value.ndim == 2 else ctx.shape
        if value.shape != want:
            width = (
                f" (it was saved for embeddings {value.shape[-1]} wide; this model's are "
                f"{ctx.width})"
                if value.shape[-1] != ctx.width
                else ""
            )
            raise UserInputError(
                f"{ctx.plugin}: {setting} holds a prompt of shape {list(value.shape)} but "
                f"this PromptTuning needs {list(want)} (length, width"
                f"{'' if value.ndim == 2 else ', with num_tasks first'}){width}. Load a "
                "prompt trained with the same PromptTuning.length on a model of this width."
            )
        return jnp.broadcast_to(jnp.asarray(value, jnp.float32), ctx.shape)


# ------------------------------------------------------------------------ helpers


def _table(ctx: InitContext, who: str) -> jax.Array:
    if ctx.embeddings is None:
        raise UserInputError(
            f"{ctx.plugin}: {who} reads the model's token embeddings, but the model has none "
            "at `token_embedder.embedding`."
        )
    return jnp.asarray(ctx.embeddings, jnp.float32)


def _rows(ctx: InitContext, ids: np.ndarray) -> jax.Array:
    return jnp.take(_table(ctx, "VocabSamplePromptInit"), jnp.asarray(ids), axis=0)


def _check_ids(ctx: InitContext, ids: Sequence[int], what: str) -> None:
    bad = [i for i in ids if not 0 <= i < ctx.vocab_size]
    if bad:
        raise UserInputError(
            f"{ctx.plugin}: {what} has token ids {bad[:5]} outside the model's vocabulary of "
            f"{ctx.vocab_size}; the vocabulary does not belong to this model (set "
            "SentencePieceVocabulary.model_path)."
        )


def rederive(init: Any, ctx: InitContext, current: jax.Array) -> jax.Array:
    """``init``'s value on ``ctx``'s (loaded) table; ``current`` if it reads no table."""
    if hasattr(init, "rederive"):
        return init.rederive(ctx, current)
    if getattr(init, "uses_embeddings", False):
        return init(ctx)
    return jnp.asarray(current, jnp.float32).reshape(ctx.shape)

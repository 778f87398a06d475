"""Vocabularies: SeqIO's SentencePiece and byte vocabularies behind gin-configurable calls, and
the check that a task's vocabulary fits the model's embedding table.

Both follow the T5 id convention (pad=0, eos=1, unk=2 for SentencePiece; the byte vocabulary
reserves 0/1/2 the same way), which the models and the decoder assume.

A SentencePiece ``path`` is the ``.model`` file itself or a local directory holding one under
the name a checkpoint ships it with: ``spiece.model`` (T5 / Flan-T5, e.g. a downloaded
``google/flan-t5-base`` folder), ``tokenizer.model`` (Llama) or ``sentencepiece.model`` (T5X's
``gs://t5-data/vocabs/...``). Remote ``scheme://`` paths go through ``tf.io.gfile``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gin
import seqio

from t5x_instruct.data.registry import leaf_tasks
from t5x_instruct.errors import UserInputError

VOCABULARY_KINDS = ("sentencepiece", "byte")
SENTENCEPIECE_FILENAMES = ("spiece.model", "tokenizer.model", "sentencepiece.model")


class VocabularyNotFoundError(UserInputError, FileNotFoundError):
    """A SentencePiece path that does not lead to a model file (names the gin binding)."""


class VocabularySizeError(UserInputError):
    """A task's vocabulary has more ids than the model's embedding table."""


def _exists(path: str, *, directory: bool = False) -> bool:
    if "://" in path:  # gs://, s3://: what seqio/T5X users configure
        import tensorflow as tf

        return tf.io.gfile.isdir(path) if directory else tf.io.gfile.exists(path)
    return os.path.isdir(path) if directory else os.path.isfile(path)


def sentencepiece_model_file(path: str, *, binding: str = "get_vocabulary.path") -> str:
    """The ``.model`` file ``path`` names: itself, or the known file inside a directory.

    Raises:
      VocabularyNotFoundError: naming ``path`` and the gin ``binding`` that set it.
    """
    path = os.path.expanduser(str(path))
    if _exists(path, directory=True):
        for name in SENTENCEPIECE_FILENAMES:
            candidate = os.path.join(path, name)
            if _exists(candidate):
                return candidate
        raise VocabularyNotFoundError(
            f"{binding} = {path!r} is a directory without a SentencePiece model (looked for "
            f"{', '.join(SENTENCEPIECE_FILENAMES)}). Bind {binding} to the .model file itself."
        )
    if not _exists(path):
        raise VocabularyNotFoundError(
            f"SentencePiece vocabulary not found: {binding} = {path!r} does not exist. Bind "
            f"{binding} to a .model file or to a directory holding spiece.model (Flan-T5's "
            "layout)."
        )
    return path


@functools.lru_cache(maxsize=64)
def make_vocabulary(
    kind: str = "sentencepiece",
    path: str | None = None,
    extra_ids: int = 0,
    *,
    binding: str = "get_vocabulary",
) -> seqio.Vocabulary:
    """A SeqIO vocabulary; errors name the gin configurable ``binding`` (``kind``/``path``).

    The SentencePiece file is checked to exist now and read lazily (on first use). Memoised:
    the same arguments give the same object, so a model file is loaded once per process.
    """
    if kind == "sentencepiece":
        if not path:
            raise UserInputError(
                f"{binding}(kind='sentencepiece') needs path: bind {binding}.path to a .model "
                "file or a directory holding spiece.model."
            )
        model_file = sentencepiece_model_file(path, binding=f"{binding}.path")
        return seqio.SentencePieceVocabulary(model_file, extra_ids=extra_ids)
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=extra_ids)
    raise UserInputError(
        f"{binding}.kind = {kind!r} is not a vocabulary kind; expected one of {VOCABULARY_KINDS}."
    )


@gin.configurable
def get_vocabulary(
    kind: str = "sentencepiece", path: str | None = None, extra_ids: int = 0
) -> seqio.Vocabulary:
    """Returns a SeqIO vocabulary (gin: ``get_vocabulary.kind/path/extra_ids``).

    Args:
      kind: ``'sentencepiece'`` (needs ``path``) or ``'byte'`` (UTF-8 bytes, no file).
      path: a SentencePiece ``.model`` file, or a directory holding ``spiece.model`` (see the
        module docstring).
      extra_ids: sentinel ids appended after the base vocabulary (span corruption; T5X's T5
        vocabulary has 100); 0 for instruction tuning.
    """
    return make_vocabulary(kind, path, extra_ids, binding="get_vocabulary")


class ConfiguredVocabulary(seqio.Vocabulary):
    """A task vocabulary that is whatever its gin-configurable ``factory`` returns *when used*.

    Task modules register their tasks when imported, and a gin file imports them
    (``import tasks.flan``) before its later lines or ``--gin.`` flags bind
    ``flan_vocabulary.path``. Resolving at use (data pipelines, eval, the vocabulary check)
    rather than at registration makes those bindings count whatever their order; a missing
    file is reported at first use, naming the binding. Every call delegates to the resolved
    vocabulary (``make_vocabulary`` is memoised, so this costs no file reads).
    """

    def __init__(self, factory: Callable[[], seqio.Vocabulary], name: str = "") -> None:
        super().__init__(extra_ids=0)
        self._factory = factory
        self.name = name or getattr(factory, "__name__", "vocabulary")

    @property
    def resolved(self) -> seqio.Vocabulary:
        vocabulary = self._factory()
        while isinstance(vocabulary, ConfiguredVocabulary):
            vocabulary = vocabulary.resolved
        return vocabulary

    @property
    def bos_id(self) -> int | None:
        return self.resolved.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.resolved.eos_id

    @property
    def pad_id(self) -> int:
        return self.resolved.pad_id

    @property
    def unk_id(self) -> int | None:
        return self.resolved.unk_id

    @property
    def extra_ids(self) -> int:
        return self.resolved.extra_ids

    @property
    def vocab_size(self) -> int:
        return self.resolved.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolved._base_vocab_size

    def encode(self, s: Any) -> Any:
        return self.resolved.encode(s)

    def _encode(self, s: Any) -> Any:
        return self.resolved._encode(s)

    def decode(self, ids: Iterable[int]) -> Any:
        return self.resolved.decode(ids)

    def _decode(self, ids: Any) -> Any:
        return self.resolved._decode(ids)

    def encode_tf(self, s: Any) -> Any:
        return self.resolved.encode_tf(s)

    def _encode_tf(self, s: Any) -> Any:
        return self.resolved._encode_tf(s)

    def decode_tf(self, ids: Any) -> Any:
        return self.resolved.decode_tf(ids)

    def _decode_tf(self, ids: Any) -> Any:
        return self.resolved._decode_tf(ids)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConfiguredVocabulary):
            other = other.resolved
        return self.resolved == other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"ConfiguredVocabulary({self.name})"


def resolve_vocabulary(vocabulary: seqio.Vocabulary) -> seqio.Vocabulary:
    """The concrete vocabulary behind a :class:`ConfiguredVocabulary` (others as they are)."""
    return vocabulary.resolved if isinstance(vocabulary, ConfiguredVocabulary) else vocabulary


def describe_vocabulary(vocabulary: seqio.Vocabulary) -> str:
    """A short human description (kind and file) for messages."""
    if isinstance(vocabulary, ConfiguredVocabulary):
        return f"{describe_vocabulary(vocabulary.resolved)} (gin: {vocabulary.name})"
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        extra = f", {vocabulary.extra_ids} extra ids" if vocabulary.extra_ids else ""
        return f"SentencePiece vocabulary {vocabulary.sentencepiece_model_file!r}{extra}"
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return "byte vocabulary"
    return type(vocabulary).__name__


def check_vocabulary_fits(
    mixture_or_task_name: str, model_vocab_size: int, *, features: Sequence[str] | None = None
) -> None:
    """Checks that every id a task can produce indexes the model's embedding table.

    A token id >= ``model_vocab_size`` would otherwise read past the table and silently give
    NaN or garbage embeddings. A model table larger than the vocabulary is fine (T5's 32128
    rows hold the 32100 ids of its vocabulary).

    Args:
      mixture_or_task_name: a registered task or mixture.
      model_vocab_size: the model's ``vocab_size`` (``T5Config`` / ``DecoderConfig``).
      features: the output features to check (default: all of each task).

    Raises:
      VocabularySizeError: naming each offending task and feature, the vocabulary and its
        size, and the model's ``vocab_size``.
    """
    sizes: dict[int, int] = {}  # id(vocabulary) -> size (loads each SentencePiece file once)
    problems: list[str] = []
    for task in leaf_tasks(mixture_or_task_name):
        for name, feature in task.output_features.items():
            if features is not None and name not in features:
                continue
            vocab = resolve_vocabulary(feature.vocabulary)
            if id(vocab) not in sizes:
                sizes[id(vocab)] = int(vocab.vocab_size)
            size = sizes[id(vocab)]
            if size > model_vocab_size:
                problems.append(
                    f"task {task.name!r} feature {name!r}: "
                    f"{describe_vocabulary(feature.vocabulary)} has "
                    f"{size} ids"
                )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" * (len(problems) > 5))
        raise VocabularySizeError(
            f"The vocabulary of {mixture_or_task_name!r} does not fit the model: {shown}, but "
            f"the model's vocab_size is {model_vocab_size}, so ids >= {model_vocab_size} would "
            "index past its embedding table. Raise the model's vocab_size (T5Config.vocab_size "
            "/ DecoderConfig.vocab_size) to at least the vocabulary size, or give the tasks a "
            "vocabulary that fits."
        )

"""Vocabularies: SeqIO's SentencePiece and byte vocabularies behind one gin-configurable call.

Both follow the T5 id convention (pad=0, eos=1, unk=2 for SentencePiece; the byte vocabulary
reserves 0/1/2 the same way), which the models and the decoder assume.
"""

from __future__ import annotations

import os

import gin
import seqio

VOCABULARY_KINDS = ("sentencepiece", "byte")


@gin.configurable
def get_vocabulary(
    kind: str = "sentencepiece", path: str | None = None, extra_ids: int = 0
) -> seqio.Vocabulary:
    """Returns a SeqIO vocabulary.

    Args:
      kind: ``'sentencepiece'`` (needs ``path``) or ``'byte'`` (UTF-8 bytes, no file).
      path: the ``.model`` file of a SentencePiece vocabulary.
      extra_ids: sentinel ids appended after the base vocabulary (span corruption); 0 for
        instruction tuning.
    """
    if kind == "sentencepiece":
        if not path:
            raise ValueError("get_vocabulary(kind='sentencepiece') needs path=<.model file>.")
        if not os.path.exists(path):
            raise FileNotFoundError(f"SentencePiece model file not found: {path!r}")
        return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=extra_ids)
    raise ValueError(f"Unknown vocabulary kind {kind!r}; expected one of {VOCABULARY_KINDS}.")

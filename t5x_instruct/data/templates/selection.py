"""Seeded, order-free choices per example: a stable hash of (seed, task, salt, example key).

Why a hash and not a counter or an RNG stream: the choice for an example then depends only on
the example's content, so it is identical on every run, on every host or shard, under any
shuffle order and in any epoch, and no example needs to be dropped to balance templates (a
round-robin over a stream would depend on order and drop up to N-1 examples).

The hash is FarmHash Fingerprint64 via ``tf.strings.to_hash_bucket_fast``, which TensorFlow
documents as stable across processes and platforms. :func:`bucket` computes the same value
eagerly for Python callers (tests, tools, few-shot pools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

KEY_SEPARATOR = "\x1f"
LIST_SEPARATOR = "\x1e"


def hash_prefix(seed: int, name: str, salt: str) -> str:
    return KEY_SEPARATOR.join((str(seed), name, salt)) + KEY_SEPARATOR


def bucket_tf(prefix: str, key: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """int64 in ``[0, num_buckets)`` for a scalar string ``key`` (graph mode)."""
    return tf.strings.to_hash_bucket_fast(tf.strings.join([prefix, key]), num_buckets)


def bucket(prefix: str, key: str, num_buckets: int) -> int:
    """The same as :func:`bucket_tf`, eagerly, for Python callers."""
    return int(tf.strings.to_hash_bucket_fast(prefix + key, num_buckets).numpy())


def example_key(example: Mapping[str, object], fields: Sequence[str]) -> str:
    """The content key of a Python example (must match :func:`example_key_tf`)."""
    parts = []
    for f in fields:
        value = example[f]
        if isinstance(value, (list, tuple)):
            value = LIST_SEPARATOR.join(_text(v) for v in value)
        parts.append(_text(value))
    return KEY_SEPARATOR.join(parts)


def example_key_tf(example: Mapping[str, tf.Tensor], fields: Sequence[str]) -> tf.Tensor:
    parts = []
    for f in fields:
        value = example[f]
        if value.shape.rank:
            value = tf.strings.reduce_join(value, separator=LIST_SEPARATOR)
        parts.append(value)
    return tf.strings.join(parts, separator=KEY_SEPARATOR)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

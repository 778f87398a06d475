"""Autoregressive decoding on top of a model's ``prefill`` / ``decode_step`` (KV cache).

Both model families expose the same two methods, so one loop serves encoder-decoder and
decoder-only models. Sampling and beam search plug in as other ``choose`` functions.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct


class Decodable(Protocol):
    def prefill(
        self, batch: dict[str, jax.Array], max_decode_length: int
    ) -> tuple[jax.Array, Any]: ...

    def decode_step(
        self, tokens: jax.Array, index: jax.Array, state: Any
    ) -> tuple[jax.Array, Any]: ...


@struct.dataclass
class DecodeOutput:
    tokens: jax.Array  # [b, max_decode_length]; 0 after EOS
    logits: jax.Array | None  # [b, max_decode_length, vocab] if requested
    lengths: jax.Array  # [b] generated tokens including EOS


def first_token_index(model: Any, batch: dict[str, jax.Array], state: Any) -> jax.Array:
    """Sequence index the first generated token is written to (after prefill)."""
    if isinstance(state, dict) and "index" in state:
        return state["index"]
    return jnp.ones((jax.tree.leaves(batch)[0].shape[0],), jnp.int32)


def greedy_decode(
    model: Decodable,
    batch: dict[str, jax.Array],
    *,
    max_decode_length: int,
    eos_id: int = 1,
    return_logits: bool = False,
) -> DecodeOutput:
    """Greedy generation; stops early once every example has emitted ``eos_id``.

    Works under ``jax.jit`` (``max_decode_length`` must be static).
    """
    logits0, state = model.prefill(batch, max_decode_length)
    b, vocab = logits0.shape
    index0 = first_token_index(model, batch, state)
    tokens = jnp.zeros((b, max_decode_length), jnp.int32)
    all_logits = jnp.zeros((b, max_decode_length, vocab), jnp.float32) if return_logits else None
    done = jnp.zeros((b,), bool)
    lengths = jnp.zeros((b,), jnp.int32)

    def cond(carry):
        step, _, _, _, done, _, _, _ = carry
        return (step < max_decode_length) & ~jnp.all(done)

    def body(carry):
        step, logits, index, tokens, done, lengths, all_logits, state = carry
        next_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        next_tok = jnp.where(done, 0, next_tok)
        tokens = tokens.at[:, step].set(next_tok)
        if all_logits is not None:
            all_logits = all_logits.at[:, step].set(logits)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (next_tok == eos_id)
        # The last step needs no further forward pass; skip it to save one step of compute.
        logits, state = jax.lax.cond(
            step + 1 < max_decode_length,
            lambda: model.decode_step(next_tok, index, state),
            lambda: (logits, state),
        )
        return step + 1, logits, index + 1, tokens, done, lengths, all_logits, state

    carry = (jnp.int32(0), logits0, index0, tokens, done, lengths, all_logits, state)
    _, _, _, tokens, _, lengths, all_logits, _ = jax.lax.while_loop(cond, body, carry)
    return DecodeOutput(tokens=tokens, logits=all_logits, lengths=lengths)

"""The contract between models and decode functions, and the arguments' checks.

A model is :class:`Decodable`: ``prefill`` runs the inputs once and fills a KV cache,
``decode_step`` feeds one token per row. A decode function (:class:`DecodeFn`) drives those two
methods; greedy decoding, temperature sampling and beam search are the three provided. Which one
a run uses is a gin reference, T5X style (``GreedyEvaluator.decode_fn = @decoding.beam_search``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from t5x_instruct.errors import UserInputError


class Decodable(Protocol):
    """What decoding needs from a model (both families implement it).

    ``prefill`` returns next-token logits ``[b, vocab]`` and a state dict whose ``"cache"``
    entry is a :class:`~t5x_instruct.layers.LayerStack` cache and whose other leaves have the
    batch on axis 0; ``decode_step`` takes tokens ``[b]`` written at sequence index ``[b]``.
    """

    def prefill(
        self, batch: Mapping[str, jax.Array], max_decode_length: int
    ) -> tuple[jax.Array, Any]: ...

    def decode_step(
        self, tokens: jax.Array, index: jax.Array, state: Any
    ) -> tuple[jax.Array, Any]: ...


@struct.dataclass
class DecodeOutput:
    """Decoded sequences, best first.

    From a :class:`DecodeFn`: ``tokens [b, num_decodes, max_decode_length]`` (0 after EOS),
    ``lengths [b, num_decodes]`` (generated tokens, EOS included) and ``scores
    [b, num_decodes]`` (what the function ranks by: a log-probability, or for beam search the
    length-penalised one). :func:`~t5x_instruct.decoding.greedy_decode` returns the flat form
    without the ``num_decodes`` axis and optionally the step logits ``[b, L, vocab]``.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array | None = None
    logits: jax.Array | None = None


class DecodeFn(Protocol):
    """One decoding strategy: ``num_decodes`` sequences per row of ``batch``, best first.

    ``batch`` holds the model's inputs (``encoder_input_tokens``, or the decoder-only prompt
    ``decoder_input_tokens`` with ``prompt_lengths`` and, for prefix-LMs,
    ``decoder_causal_attention``). ``rng`` seeds sampling (ignored by deterministic
    strategies). Works under ``jax.jit`` with ``max_decode_length``, ``eos_id`` and
    ``num_decodes`` static; an ``eos_id`` outside the vocabulary never ends a sequence.
    """

    def __call__(
        self,
        model: Decodable,
        batch: Mapping[str, jax.Array],
        *,
        max_decode_length: int,
        eos_id: int,
        rng: jax.Array | None,
        num_decodes: int,
    ) -> DecodeOutput: ...


def first_token_index(batch: Mapping[str, jax.Array], state: Any) -> jax.Array:
    """Sequence index the first generated token is fed back at (``[b]``).

    Decoder-only models report it (the prompt length); encoder-decoders start at 1, after the
    start token that ``prefill`` already fed.
    """
    if isinstance(state, dict) and "index" in state:
        return state["index"]
    return jnp.ones((jax.tree.leaves(batch)[0].shape[0],), jnp.int32)


def check_num_decodes(fn_name: str, num_decodes: int, what: str = "num_decodes") -> None:
    if not isinstance(num_decodes, int) or num_decodes < 1:
        raise UserInputError(
            f"decoding.{fn_name}: {what}={num_decodes!r} must be an integer >= 1. It is the "
            "caller's `num_decodes` argument (e.g. the gin binding "
            "`GreedyEvaluator.num_decodes`); set it to 1 or more."
        )


def check_max_decode_length(fn_name: str, max_decode_length: int) -> None:
    if not isinstance(max_decode_length, int) or max_decode_length < 1:
        raise UserInputError(
            f"decoding.{fn_name}: max_decode_length={max_decode_length!r} must be an integer "
            ">= 1 (the number of tokens to generate)."
        )

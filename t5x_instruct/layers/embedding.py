"""Token embedding, optionally reused as the output projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.layers.params import Initializer, logical_param, normal_init


class Embed(nnx.Module):
    """``[vocab, embed]`` table; N(0, 1) unless ``embedding_init`` says otherwise (T5X's T5)."""

    def __init__(
        self,
        vocab_size: int,
        features: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        embedding_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.vocab_size = vocab_size
        self.dtype = dtype
        self.embedding = logical_param(
            rngs, embedding_init or normal_init(1.0), (vocab_size, features), ("vocab", "embed")
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = self.embedding.get_value().astype(self.dtype)
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table (tied output projection)."""
        table = self.embedding.get_value().astype(self.dtype)
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), table)

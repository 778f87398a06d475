"""RMSNorm without bias or mean subtraction (T5 and Llama)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.layers.params import logical_param, ones_init


class RMSNorm(nnx.Module):
    def __init__(
        self,
        features: int,
        *,
        epsilon: float = 1e-6,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = logical_param(rngs, ones_init, (features,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        # The variance is always taken in fp32; only the output is cast to the compute dtype.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(
            jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon
        )
        return (normed.astype(self.dtype) * self.scale.get_value().astype(self.dtype)).astype(
            self.dtype
        )

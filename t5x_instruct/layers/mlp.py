"""Gated feed-forward block: gated-GELU (T5 v1.1) and SwiGLU (Llama)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.layers.linear import DenseGeneral
from t5x_instruct.layers.params import Initializer, constrain, dropout

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "linear": lambda x: x,
}


class GatedMLP(nnx.Module):
    """``wo( act(wi_0 x) * wi_1 x )``; ``activations=('gelu', 'linear')`` is T5 v1.1."""

    def __init__(
        self,
        features: int,
        hidden: int,
        *,
        activation: str = "gelu",
        dropout_rate: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer | None = None,
        kernel_distribution: str = "normal",
        rngs: nnx.Rngs,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.dropout_rate = dropout_rate
        dense = dict(
            dtype=dtype, kernel_init=kernel_init, kernel_distribution=kernel_distribution, rngs=rngs
        )
        self.wi_0 = DenseGeneral((features,), (hidden,), logical_axes=("embed", "mlp"), **dense)
        self.wi_1 = DenseGeneral((features,), (hidden,), logical_axes=("embed", "mlp"), **dense)
        self.wo = DenseGeneral((hidden,), (features,), logical_axes=("mlp", "embed"), **dense)

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        h = ACTIVATIONS[self.activation](self.wi_0(x)) * self.wi_1(x)
        h = constrain(h, ("batch", "length", "mlp"))
        h = dropout(h, self.dropout_rate, dropout_rng, deterministic=deterministic)
        return self.wo(h)

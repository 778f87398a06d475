"""Dense projections over several input/output dims at once (``[embed] -> [heads, head_dim]``)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.layers.params import Initializer, fan_in_init, logical_param


class DenseGeneral(nnx.Module):
    """``y = x @ W`` contracting the trailing ``len(in_features)`` dims of ``x``.

    The kernel has shape ``in_features + out_features`` and one logical name per dim.
    Parameters stay fp32; the matmul runs in ``dtype`` (bf16 on accelerators). Without a
    ``kernel_init`` the kernel draws from ``kernel_distribution`` with variance 1 / fan_in
    (fan_in: the product of the input dims, as for T5X's flattened 2-D kernels).
    """

    def __init__(
        self,
        in_features: Sequence[int],
        out_features: Sequence[int],
        *,
        logical_axes: Sequence[str | None],
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer | None = None,
        kernel_distribution: str = "normal",
        rngs: nnx.Rngs,
    ) -> None:
        self.in_features = tuple(in_features)
        self.out_features = tuple(out_features)
        self.dtype = dtype
        n_in = len(self.in_features)
        init = kernel_init or fan_in_init(1.0, tuple(range(n_in)), kernel_distribution)
        self.kernel = logical_param(rngs, init, self.in_features + self.out_features, logical_axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_features)
        kernel = self.kernel.get_value().astype(self.dtype)
        contract_x = tuple(range(x.ndim - n_in, x.ndim))
        return jax.lax.dot_general(
            x.astype(self.dtype), kernel, ((contract_x, tuple(range(n_in))), ((), ()))
        )

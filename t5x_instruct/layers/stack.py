"""A stack of identical blocks: a Python loop, or one stacked block under ``lax.scan``.

Scanning compiles one layer instead of N (large models compile in seconds) and stores each
parameter with a leading ``layers`` axis. Rematerialisation policies are chosen by name.
Blocks are called as ``block(x, ctx, cache, dropout_rng) -> (x, cache)``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_instruct.partitioning import LOGICAL_AXES_KEY

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload_dots": "offload_dots",
}

BlockFn = Callable[[nnx.Module, jax.Array, Any, Any, jax.Array | None], tuple[jax.Array, Any]]

_BLOCK_DROPOUT_RNG: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "block_dropout_rng", default=None
)


def block_dropout_rng() -> jax.Array | None:
    """A dropout key for the block now being called, or None when it runs deterministically.

    For layers inside a block that are not handed a key (a plug-in's wrapper of
    ``DenseGeneral``): set only around each block call of a training forward pass, so it
    never outlives the trace that made it. Fold in a per-layer constant before use.
    """
    return _BLOCK_DROPOUT_RNG.get()


def _remat_policy(name: str) -> Any:
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={name!r}: expected one of {sorted(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[name]
    if policy == "offload_dots":
        policy = jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    return policy


def _stack_variables(*variables: nnx.Variable) -> nnx.Variable:
    first = variables[0]
    metadata = dict(first.get_metadata())
    metadata[LOGICAL_AXES_KEY] = ("layers", *metadata.get(LOGICAL_AXES_KEY, ()))
    value = jnp.stack([v.get_value() for v in variables])
    return type(first).from_metadata(value, metadata)


def _call(block: nnx.Module, x: jax.Array, ctx: Any, cache: Any, rng: jax.Array | None):
    return block(x, ctx, cache, rng)


class LayerStack(nnx.Module):
    def __init__(
        self,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        num_layers: int,
        *,
        scan: bool = False,
        remat_policy: str = "none",
        rngs: nnx.Rngs,
    ) -> None:
        self.num_layers = num_layers
        self.scan = scan
        self.remat_policy = remat_policy
        _remat_policy(remat_policy)  # validate early, at construction
        blocks = [make_block(rngs) for _ in range(num_layers)]
        if scan:
            graphdef = nnx.graphdef(blocks[0])
            stacked = jax.tree.map(
                _stack_variables,
                *[nnx.state(b) for b in blocks],
                is_leaf=lambda x: isinstance(x, nnx.Variable),
            )
            self.block = nnx.merge(graphdef, stacked)
        else:
            self.blocks = nnx.List(blocks)

    def __call__(
        self,
        x: jax.Array,
        ctx: Any,
        caches: Any = None,
        dropout_rng: jax.Array | None = None,
        *,
        call_block: BlockFn | None = None,
    ) -> tuple[jax.Array, Any]:
        """Run every block; ``caches`` is a list (loop) or a stacked pytree (scan).

        ``call_block`` replaces the plain ``block(x, ctx, cache, rng)`` call, e.g. to collect
        per-layer values (cross-attention keys) through the same loop or scan.
        """
        call_block = call_block or _call
        policy_name = self.remat_policy
        policy = _remat_policy(policy_name)

        def apply(graphdef: Any, state: Any, x: jax.Array, ctx: Any, cache: Any, idx: Any):
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, idx)
            training = rng is not None and not getattr(ctx, "deterministic", True)
            token = _BLOCK_DROPOUT_RNG.set(jax.random.fold_in(rng, 0xB10C) if training else None)
            try:
                return call_block(nnx.merge(graphdef, state), x, ctx, cache, rng)
            finally:
                _BLOCK_DROPOUT_RNG.reset(token)

        if self.scan:
            graphdef, state = nnx.split(self.block)

            def body(carry: jax.Array, xs: Any) -> tuple[jax.Array, Any]:
                layer_state, idx, cache = xs
                return apply(graphdef, layer_state, carry, ctx, cache, idx)

            if policy_name != "none":
                body = jax.checkpoint(body, policy=policy, prevent_cse=False)
            idxs = jnp.arange(self.num_layers)
            return jax.lax.scan(body, x, (state, idxs, caches))

        new_caches = []
        for i, block in enumerate(self.blocks):
            graphdef, state = nnx.split(block)
            fn = lambda state, x, ctx, cache, graphdef=graphdef, i=i: apply(
                graphdef, state, x, ctx, cache, i
            )
            if policy_name != "none":
                fn = jax.checkpoint(fn, policy=policy)
            x, cache = fn(state, x, ctx, None if caches is None else caches[i])
            new_caches.append(cache)
        if all(c is None for c in new_caches):
            return x, None
        return x, new_caches

    @staticmethod
    def first_layer_cache(caches: Any) -> Any:
        """Layer 0's cache (a list entry), or the stacked caches (leaves ``[layers, ...]``)."""
        return caches[0] if isinstance(caches, list) else caches

    def stack_caches(self, caches: list[Any]) -> Any:
        """Lay out per-layer caches as this stack expects them."""
        if self.scan:
            return jax.tree.map(lambda *xs: jnp.stack(xs), *caches)
        return caches

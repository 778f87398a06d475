"""Tiny configs of both model families and jitted entry points for fast CPU tests.

Everything is jitted because eager execution compiles every primitive separately, which
dominates the runtime of tiny models on CPU.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_instruct.decoding import DecodeOutput, greedy_decode
from t5x_instruct.models import DecoderConfig, Model, T5Config, build_model


def tiny_t5_config(*, scan: bool = False) -> T5Config:
    return T5Config(
        vocab_size=64,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=48,
        num_encoder_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        scan_layers=scan,
    )


def tiny_decoder_config(*, scan: bool = False, num_kv_heads: int = 2) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=64,
        emb_dim=32,
        num_heads=4,
        num_kv_heads=num_kv_heads,
        head_dim=8,
        mlp_dim=48,
        num_layers=2,
        rope_theta=500.0,
        scan_layers=scan,
    )


def _draw(key: tuple, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One parameter, seeded by its layout-independent name."""
    rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])
    name = key[-1]
    if name == "scale":  # norms away from 1, so that mixing two of them up shows
        return 1.0 + 0.2 * rng.standard_normal(shape)
    if name in ("embedding", "rel_embedding"):
        return rng.standard_normal(shape)
    fan_in = np.prod(shape[:-1]) if key[-2] == "out" else shape[0]  # kernels: [in..., out...]
    return rng.standard_normal(shape) / np.sqrt(fan_in)


def _value(path: tuple, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Layer ``i`` gets the same values whether the stack is a loop or scanned."""
    if len(path) > 1 and path[1] == "block":  # scanned: [layers, ...]
        return np.stack([_draw((path[0], i, *path[2:]), shape[1:], seed) for i in range(shape[0])])
    if len(path) > 2 and path[1] == "blocks":
        return _draw((path[0], path[2], *path[3:]), shape, seed)
    return _draw(path, shape, seed)


@functools.cache
def build(cfg: T5Config | DecoderConfig, seed: int = 0) -> Model:
    """A random model, shared between tests (none mutate it).

    Parameters come from numpy: compiling JAX's random init takes seconds per config on CPU.
    """
    model = nnx.eval_shape(lambda: build_model(cfg))
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(_value(tuple(path), var.get_value().shape, seed), jnp.float32))
    nnx.update(model, state)
    return model


@nnx.jit
def forward(model: Model, *args: jax.Array, **kwargs: jax.Array) -> jax.Array:
    """Teacher-forced logits without any cache."""
    return model(*args, **kwargs)


@nnx.jit(static_argnames=("max_decode_length", "eos_id", "return_logits"))
def greedy(model: Model, batch: dict[str, jax.Array], **kwargs: Any) -> DecodeOutput:
    return greedy_decode(model, batch, **kwargs)

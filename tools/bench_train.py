"""Training-step benchmark on synthetic batches: compile time, step time, tokens/s, memory.

Example (the command recorded in docs/benchmarks.md):
  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_train.py \
      --gin_file=gin/models/t5_1_1/small.gin --batch_size=8 --inputs_length=128 \
      --targets_length=32 --steps=5

MFU uses the standard 6 * N * tokens estimate (N = parameters, tokens = encoder + decoder
tokens), against ``--peak_tflops`` when given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
import time

import jax
import numpy as np

from t5x_instruct import partitioning
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training.optimizers import make_optimizer
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import (
    ModelSpec,
    init_train_state,
    train_state_shardings,
)


def synthetic_batch(
    encoder_decoder: bool, batch: int, inputs_len: int, targets_len: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dec_len = targets_len if encoder_decoder else inputs_len + targets_len
    targets = rng.integers(2, vocab, size=(batch, dec_len)).astype(np.int32)
    out = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate(
            [np.zeros((batch, 1), np.int32), targets[:, :-1]], 1
        ),
        "decoder_loss_weights": np.ones((batch, dec_len), np.float32),
    }
    if encoder_decoder:
        out["encoder_input_tokens"] = rng.integers(2, vocab, size=(batch, inputs_len)).astype(
            np.int32
        )
    return out


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin", action="append", default=[], help="extra binding KEY=VALUE")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs_length", type=int, default=128)
    parser.add_argument("--targets_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="override the preset's compute dtype")
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--output", default=None, help="append the JSON result to this file")
    args = parser.parse_args(argv)

    bindings = list(args.gin)
    if args.dtype:
        bindings += [f"T5Config.dtype = '{args.dtype}'", f"DecoderConfig.dtype = '{args.dtype}'"]
    parse_gin(args.gin_file, bindings, clear=True)
    spec = ModelSpec.create(build_model)
    config = spec.config
    encoder_decoder = isinstance(config, T5Config)
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    optimizer = make_optimizer(learning_rate=1e-3, logical_axes=spec.logical_axes())
    shardings = train_state_shardings(spec, optimizer, mesh, rules)
    state = jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=shardings)(
        spec.init_params(mesh, rules)
    )
    host = synthetic_batch(
        encoder_decoder, args.batch_size, args.inputs_length, args.targets_length, config.vocab_size
    )
    batch = partitioning.shard_batch(host, mesh, rules)

    def step_fn(state, batch):
        with partitioning.axis_rules(mesh, rules):
            return train_step(spec, optimizer, LossConfig(), state, batch, jax.random.PRNGKey(0))

    jit_step = jax.jit(step_fn, donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = jit_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = sum(
        int(np.count_nonzero(host[k]))
        for k in ("encoder_input_tokens", "decoder_target_tokens")
        if k in host
    )
    n_params = spec.num_params()
    flops = 6.0 * n_params * tokens
    device = jax.devices()[0]
    mem = device.memory_stats() or {}
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.processor() or platform.machine(),
        "model": " + ".join(args.gin_file),
        "dtype": getattr(config, "dtype", "?"),
        "params_m": round(n_params / 1e6, 2),
        "batch": args.batch_size,
        "inputs_length": args.inputs_length,
        "targets_length": args.targets_length,
        "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
        "tflops_per_s": round(flops / step_s / 1e12, 4),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_device_gib": round(mem.get("peak_bytes_in_use", 0) / 2**30, 2) if mem else None,
        "final_loss": float(metrics["loss"]),
    }
    if args.peak_tflops:
        result["mfu"] = round(result["tflops_per_s"] / args.peak_tflops, 4)
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

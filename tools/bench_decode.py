"""Decode throughput on synthetic prompts: greedy vs temperature sampling vs beam search.

Example (the commands recorded in docs/benchmarks.md):
  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_decode.py \
      --gin_file=gin/models/t5_1_1/small.gin --batch_size=4 --inputs_length=64 \
      --decode_length=16

Random weights (seeded), random prompts, and an EOS id the model never emits, so every method
generates exactly ``--decode_length`` tokens per sequence and the figures do not depend on
when random weights happen to stop. Decoder-only prompts have mixed lengths in
``[inputs_length / 2, inputs_length]``. ``tokens_per_s`` counts every generated token
(``batch * num_decodes * decode_length`` per call); ``sequences_per_s`` counts inputs done.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import resource
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_instruct import decoding
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import build_model, is_encoder_decoder

NEVER_EOS = -1

# name -> (decode function, num_decodes)
METHODS: dict[str, tuple[Callable, int]] = {
    "greedy": (decoding.greedy, 1),
    "sample": (functools.partial(decoding.temperature_sample, temperature=1.0, top_k=40), 1),
    "sample_top_p": (functools.partial(decoding.temperature_sample, top_p=0.9), 1),
    "beam4": (functools.partial(decoding.beam_search, alpha=0.6), 4),
}


def synthetic_prompts(
    encoder_decoder: bool, batch: int, length: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
    if encoder_decoder:
        return {"encoder_input_tokens": tokens}
    lengths = rng.integers(max(1, length // 2), length + 1, size=batch).astype(np.int32)
    tokens[np.arange(length)[None] >= lengths[:, None]] = 0
    return {"decoder_input_tokens": tokens, "prompt_lengths": lengths}


def bench_method(
    graphdef, state, batch, decode_fn: Callable, num_decodes: int, decode_length: int, iters: int
) -> dict:
    def run(state, batch, rng):
        model = nnx.merge(graphdef, state)
        out = decode_fn(model, batch, max_decode_length=decode_length, eos_id=NEVER_EOS,
                        rng=rng, num_decodes=num_decodes)  # fmt: skip
        return out.lengths

    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(state, batch, rng))  # warm-up
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        lengths = jax.block_until_ready(compiled(state, batch, jax.random.fold_in(rng, i)))
        times.append(time.perf_counter() - t0)
    call_s = float(np.median(times))
    b = jax.tree.leaves(batch)[0].shape[0]
    return {
        "num_decodes": num_decodes,
        "generated_tokens": int(np.sum(lengths)),  # per call, over all decodes
        "compile_s": round(compile_s, 2),
        "call_s": round(call_s, 4),
        "tokens_per_s": round(b * num_decodes * decode_length / call_s, 1),
        "sequences_per_s": round(b / call_s, 2),
    }


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin", action="append", default=[], help="extra binding KEY=VALUE")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--inputs_length", type=int, default=64)
    parser.add_argument("--decode_length", type=int, default=16)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--dtype", default=None, help="override the preset's compute dtype")
    parser.add_argument("--output", default=None, help="append one JSON line per method")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {sorted(METHODS)}")

    bindings = list(args.gin)
    if args.dtype:
        bindings += [f"T5Config.dtype = '{args.dtype}'", f"DecoderConfig.dtype = '{args.dtype}'"]
    parse_gin(args.gin_file, bindings, clear=True)
    # Initialised under jit: eager initialisation compiles every op on its own (slow on CPU).
    graphdef = nnx.graphdef(nnx.eval_shape(build_model))
    state = jax.jit(lambda: nnx.state(build_model()))()
    model = nnx.merge(graphdef, state)
    config = model.cfg
    encoder_decoder = is_encoder_decoder(config)
    host = synthetic_prompts(
        encoder_decoder, args.batch_size, args.inputs_length, config.vocab_size
    )
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    device = jax.devices()[0]
    common = {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "host": platform.processor() or platform.machine(),
        "model": " + ".join(args.gin_file),
        "dtype": getattr(config, "dtype", "?"),
        "params_m": round(n_params / 1e6, 2),
        "batch": args.batch_size,
        "inputs_length": args.inputs_length,
        "decode_length": args.decode_length,
    }
    results = []
    for name in methods:
        decode_fn, num_decodes = METHODS[name]
        row = bench_method(
            graphdef, state, batch, decode_fn, num_decodes, args.decode_length, args.iters
        )
        row = {**common, "method": name, **row,
               "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 2**20, 2)}  # fmt: skip
        results.append(row)
        print(json.dumps(row))
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    print("| method | num_decodes | compile (s) | call (s) | tokens/s | sequences/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['num_decodes']} | {r['compile_s']} | {r['call_s']} | "
              f"{r['tokens_per_s']:,} | {r['sequences_per_s']} |")  # fmt: skip
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

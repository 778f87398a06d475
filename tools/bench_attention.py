"""Attention kernel benchmark: forward and forward+backward time and memory per implementation.

Implementations: ``xla`` (reference), ``pallas`` (ours), ``cudnn`` (GPU only) and
``jax_pallas`` (JAX's own Pallas ops: ``pallas.ops.gpu.attention.mha`` on GPU, in interpret
mode on CPU; ``pallas.ops.tpu.flash_attention`` on TPU). Unsupported combinations are
skipped with a printed note, never silently.

Cases: ``causal_packed`` (decoder LM: causal + 4 packed segments per row, GQA),
``t5_bias`` (T5 encoder: bidirectional bucketed relative bias + 2 segments, MHA) and
``decode`` (one query step per row against a KV cache of ``seq`` slots, GQA, rows at different
fill levels; forward only). For ``decode``, ``pallas`` is our split-K decode kernel and
``jax_pallas`` is ``pallas.ops.gpu.decode_attention.gqa``.

GPU run (the command recorded in docs/benchmarks.md):
  .venv/bin/python tools/bench_attention.py --json_out=bench_attention.jsonl

CPU smoke test (interpret mode, tiny sizes):
  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_attention.py --seq_lens=64 --batch=1 \
      --heads=2 --kv_heads=1 --head_dim=16 --block_q=32 --block_kv=32 --iters=2

Memory is XLA's compiled-buffer estimate for the jitted call (arguments + outputs + temps,
``compiled.memory_analysis()``), which is per call and backend independent; on GPU the
device's ``peak_bytes_in_use`` after the run is printed too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct.kernels import (
    AttentionMask,
    RelativeBias,
    cudnn_attention,
    decode_attention,
    flash_attention,
    reference,
)

CASES = ("causal_packed", "t5_bias", "decode")
IMPLS = ("xla", "pallas", "cudnn", "jax_pallas")


class Skip(Exception):
    """This implementation cannot run this case on this platform."""


def make_inputs(case: str, args: argparse.Namespace, seq: int, seed: int = 0):
    if case == "decode":
        return make_decode_inputs(args, seq, seed)
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(args.dtype)
    kv_heads = args.kv_heads if case == "causal_packed" else args.heads
    num_segments = 4 if case == "causal_packed" else 2
    seg = np.repeat(np.arange(1, num_segments + 1), -(-seq // num_segments))[:seq]
    seg = jnp.asarray(np.broadcast_to(seg, (args.batch, seq)), jnp.int32)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)

    q = normal(args.batch, seq, args.heads, args.head_dim)
    k = normal(args.batch, seq, kv_heads, args.head_dim)
    v = normal(args.batch, seq, kv_heads, args.head_dim)
    mask = AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, causal=case == "causal_packed")
    table = None
    if case == "t5_bias":
        table = jnp.asarray(rng.normal(size=(args.heads, 32)), jnp.float32)
    return q, k, v, mask, table


def make_decode_inputs(args: argparse.Namespace, seq: int, seed: int = 0):
    """One query token per row; row i's cache holds ``fill[i]`` written slots out of ``seq``."""
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(args.dtype)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)

    fill = jnp.asarray(np.linspace(seq // 2, seq, args.batch).astype(np.int32))
    q = normal(args.batch, 1, args.heads, args.head_dim)
    k = normal(args.batch, seq, args.kv_heads, args.head_dim)
    v = normal(args.batch, seq, args.kv_heads, args.head_dim)
    mask = AttentionMask(causal=True, q_positions=(fill - 1)[:, None])
    return q, k, v, mask, None


def decode_fn(impl: str, args: argparse.Namespace, mask: AttentionMask) -> Callable:
    backend = jax.default_backend()
    scale = args.head_dim**-0.5
    if impl == "xla":
        return lambda q, k, v, t: reference.attention(q, k, v, mask, scale=scale)
    if impl == "pallas":
        return lambda q, k, v, t: decode_attention(q, k, v, mask, scale=scale)
    if impl == "cudnn":
        raise Skip("cuDNN fused attention is not a decode kernel (one query row)")
    if backend == "tpu":
        raise Skip("JAX ships no TPU GQA decode kernel with this interface")
    from jax.experimental.pallas.ops.gpu import decode_attention as jax_decode

    def gpu_fn(q, k, v, t):
        del t
        fill = mask.q_positions[:, 0] + 1
        out = jax_decode.gqa(
            q[:, 0],
            k,
            v,
            kv_seq_len=fill,
            sm_scale=scale,
            k_splits=min(16, k.shape[1] // 16),
            interpret=backend == "cpu",
        )
        return out[:, None]

    return gpu_fn


def attention_fn(impl: str, case: str, args: argparse.Namespace, mask: AttentionMask) -> Callable:
    """``f(q, k, v, table) -> out`` for one implementation, or raise Skip with the reason."""
    if case == "decode":
        return decode_fn(impl, args, mask)
    backend = jax.default_backend()
    scale = args.head_dim**-0.5

    def bias_of(table):
        return None if table is None else RelativeBias(table, bidirectional=True)

    if impl == "xla":
        return lambda q, k, v, t: reference.attention(q, k, v, mask, bias=bias_of(t), scale=scale)
    if impl == "pallas":
        return lambda q, k, v, t: flash_attention(
            q, k, v, mask, bias=bias_of(t), scale=scale, block_q=args.block_q,
            block_kv=args.block_kv,
        )  # fmt: skip
    if impl == "cudnn":
        if backend != "gpu":
            raise Skip(f"cudnn needs a CUDA GPU (backend={backend})")
        return lambda q, k, v, t: cudnn_attention(q, k, v, mask, bias=bias_of(t), scale=scale)
    if impl == "jax_pallas":
        if case == "t5_bias":
            raise Skip("JAX's Pallas attention ops take no bucketed relative bias")
        if backend == "tpu":
            from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa

            def tpu_fn(q, k, v, t):
                del t
                groups = q.shape[2] // k.shape[2]
                k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))  # no native GQA
                q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [b, h, s, d]
                seg = tpu_fa.SegmentIds(q=mask.q_segment_ids, kv=mask.kv_segment_ids)
                out = tpu_fa.flash_attention(q, k, v, segment_ids=seg, causal=True, sm_scale=scale)
                return out.transpose(0, 2, 1, 3)

            return tpu_fn
        from jax.experimental.pallas.ops.gpu import attention as gpu_attention

        def gpu_fn(q, k, v, t):
            del t
            groups = q.shape[2] // k.shape[2]
            k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))  # no native GQA
            return gpu_attention.mha(
                q, k, v, mask.q_segment_ids, sm_scale=scale, causal=True,
                interpret=backend == "cpu",
            )  # fmt: skip

        return gpu_fn
    raise ValueError(f"unknown impl {impl!r}; choose from {IMPLS}")


def time_call(fn: Callable, args: tuple, iters: int) -> tuple[float, float, float, object]:
    """(compile seconds, median milliseconds per call, compiled memory MiB, last result)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    result = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    mem = compiled.memory_analysis()
    mib = float("nan")
    if mem is not None:
        total = (
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        ) - mem.alias_size_in_bytes
        mib = total / 2**20
    return compile_s, 1e3 * float(np.median(times)), mib, result


def relative_error(result, expected) -> float:
    """max |result - expected| / max |expected| over every array (output or gradients)."""
    pairs = [
        (np.asarray(a, np.float32), np.asarray(b, np.float32))
        for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(expected), strict=True)
    ]
    err = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    scale = max(float(np.max(np.abs(b))) for _, b in pairs)
    return err / max(scale, 1e-30)


def bench_one(case: str, impl: str, seq: int, mode: str, args: argparse.Namespace) -> dict:
    q, k, v, mask, table = make_inputs(case, args, seq)
    if mode != "fwd" and case == "decode":
        raise Skip("decoding needs no backward pass")
    cot = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), q.dtype)

    def runner(fn: Callable) -> Callable:
        if mode == "fwd":
            return fn

        def run(q, k, v, t):
            # Gradients wrt q, k, v and the bias table (None when the case has no bias).
            _, vjp = jax.vjp(fn, q, k, v, t)
            return vjp(cot)

        return run

    run = runner(attention_fn(impl, case, args, mask))
    compile_s, ms, mib, result = time_call(run, (q, k, v, table), args.iters)
    rel_err = float("nan")
    if args.check and impl != "xla":
        try:  # the O(S^2) reference may not fit at long sequences: then no figure
            expected = jax.jit(runner(attention_fn("xla", case, args, mask)))(q, k, v, table)
            rel_err = relative_error(result, expected)
        except Exception as err:  # report it and keep benchmarking
            print(f"# {case} {impl} {seq} {mode}: reference check failed: {err}"[:160])
    row = {
        "case": case,
        "impl": impl,
        "seq": seq,
        "mode": mode,
        "ms": round(ms, 4),
        "mem_mib": round(mib, 2),
        "compile_s": round(compile_s, 2),
        "rel_err_vs_xla": rel_err,
        "batch": args.batch,
        "heads": args.heads,
        "kv_heads": args.heads if case == "t5_bias" else args.kv_heads,
        "head_dim": args.head_dim,
        "dtype": args.dtype,
        "block_q": args.block_q,
        "block_kv": args.block_kv,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    if jax.default_backend() == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        row["device_peak_mib"] = round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq_lens", default="512,1024,2048,4096,8192")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--modes", default="fwd,fwd_bwd")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=4, help="KV heads of the causal (GQA) case")
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--block_q", type=int, default=128)
    p.add_argument("--block_kv", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json_out", default=None, help="append one JSON line per measurement")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare each result (output or gradients) with the XLA reference",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"# jax {jax.__version__}, backend={jax.default_backend()}, "
          f"device={jax.devices()[0].device_kind}, python {platform.python_version()}")  # fmt: skip
    header = (
        f"{'case':<14} {'impl':<11} {'seq':>6} {'mode':<8} {'ms':>10} {'mem MiB':>9} {'rel err':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for case in args.cases.split(","):
        for seq in (int(s) for s in args.seq_lens.split(",")):
            for impl in args.impls.split(","):
                for mode in args.modes.split(","):
                    try:
                        row = bench_one(case, impl, seq, mode, args)
                    except Skip as why:
                        print(f"{case:<14} {impl:<11} {seq:>6} {mode:<8} skipped: {why}")
                        break
                    except Exception as err:  # e.g. out of memory: report, keep going
                        msg = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
                        print(f"{case:<14} {impl:<11} {seq:>6} {mode:<8} failed: {msg}")
                        continue
                    row["time"] = stamp
                    rows.append(row)
                    print(f"{case:<14} {impl:<11} {seq:>6} {mode:<8} {row['ms']:>10.3f} "
                          f"{row['mem_mib']:>9.2f} {row['rel_err_vs_xla']:>9.1e}")  # fmt: skip
                    sys.stdout.flush()
    if args.json_out:
        with open(args.json_out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"# appended {len(rows)} rows to {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

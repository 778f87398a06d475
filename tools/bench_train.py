"""Training-step benchmark on synthetic batches: time, XLA cost and memory analysis, MFU.

Example (the commands recorded in docs/benchmarks.md):
  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_train.py \
      --gin_file=gin/models/t5_1_1/small.gin --dtype=float32 --batch_size=8 \
      --inputs_length=128 --targets_length=32 --steps=3

Reports, besides step time and tokens/s: the lowering and compile times, the first call's
latency (separately from the median of the later steps), XLA's cost analysis of the compiled
step (FLOPs, bytes accessed, transcendentals; per device for a partitioned program), XLA's
memory analysis (argument, output, temporary and aliased bytes), parameter and optimizer-state
bytes, peak memory (the device's peak where it reports one, else the process's peak RSS), and
model FLOPs per step with MFU.

Model FLOPs come from :mod:`t5x_instruct.training.flops` (matmuls only, 3 x forward, full
attention square, no remat recomputation): an encoder token passes through the encoder only,
a decoder token through the decoder, cross-attention and the output projection.
MFU = model FLOPs per step / step time / (peak FLOP/s per device x devices); the peak comes
from ``--peak_tflops`` (per device) or a built-in table of bf16 dense peaks by device kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t5x_instruct import partitioning
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import T5Config, build_model
from t5x_instruct.training import compiled_stats
from t5x_instruct.training.flops import StepFlops, step_flops
from t5x_instruct.training.optimizers import make_optimizer
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import (
    ModelSpec,
    TrainState,
    init_train_state,
    train_state_shardings,
)

GIB = 2**30

# Dense bf16 peak TFLOP/s per device, from the vendors' data sheets: NVIDIA A100 312,
# H100 SXM 989 and H100 PCIe 756, H200 (SXM) 989 (the sheets' "with sparsity" figures are
# twice these); Google Cloud TPU v4 275, v5e 197, v5p 459 per chip. GPU kinds match by
# substring, most specific first; TPU kinds exactly (JAX calls v5p "TPU v5", v5e "TPU v5 lite").
GPU_PEAK_TFLOPS = (("h100 pcie", 756.0), ("h100", 989.0), ("h200", 989.0), ("a100", 312.0))
TPU_PEAK_TFLOPS = {
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,
    "tpu v5e": 197.0,
    "tpu v5": 459.0,
    "tpu v5p": 459.0,
}


def synthetic_batch(
    encoder_decoder: bool, batch: int, inputs_len: int, targets_len: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random tokens (no padding); a decoder-only row is inputs + targets long."""
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin", action="append", default=[], help="extra binding KEY=VALUE")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs_length", type=int, default=128)
    parser.add_argument("--targets_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--dtype", default=None, help="override the preset's compute dtype")
    parser.add_argument("--optimizer", default="adafactor", choices=("adafactor", "adamw"))
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak TFLOP/s of ONE device (default: the built-in bf16 table by device kind)",
    )
    parser.add_argument("--output", default=None, help="append the JSON result to this file")
    return parser.parse_args(argv)


@dataclasses.dataclass
class Setup:
    """A model, its sharded train state and one sharded synthetic batch."""

    spec: ModelSpec
    config: Any
    encoder_decoder: bool
    mesh: Any
    rules: Any
    optimizer: Any
    state: TrainState
    host_batch: dict[str, np.ndarray]
    batch: dict[str, jax.Array]


def build(args: argparse.Namespace) -> Setup:
    bindings = list(args.gin)
    if args.dtype:
        bindings += [f"T5Config.dtype = '{args.dtype}'", f"DecoderConfig.dtype = '{args.dtype}'"]
    parse_gin(args.gin_file, bindings, clear=True)
    spec = ModelSpec.create(build_model)
    config = spec.config
    encoder_decoder = isinstance(config, T5Config)
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    optimizer = make_optimizer(
        name=args.optimizer, learning_rate=1e-3, logical_axes=spec.logical_axes()
    )
    shardings = train_state_shardings(spec, optimizer, mesh, rules)
    state = jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=shardings)(
        spec.init_params(mesh, rules)
    )
    host = synthetic_batch(
        encoder_decoder, args.batch_size, args.inputs_length, args.targets_length, config.vocab_size
    )
    batch = partitioning.shard_batch(host, mesh, rules)
    return Setup(spec, config, encoder_decoder, mesh, rules, optimizer, state, host, batch)


def compile_step(setup: Setup) -> tuple[Any, float, float]:
    """The compiled train step, lowering seconds and compile seconds."""

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        with partitioning.axis_rules(setup.mesh, setup.rules):
            return train_step(
                setup.spec, setup.optimizer, LossConfig(), state, batch, jax.random.PRNGKey(0)
            )

    t0 = time.perf_counter()
    lowered = jax.jit(step_fn, donate_argnums=(0,)).lower(setup.state, setup.batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def xla_cost(compiled: Any) -> dict[str, float | None]:
    """XLA's cost analysis of the step, per device (:func:`compiled_stats.cost_analysis`)."""
    return {f"xla_{k}_per_device": v for k, v in compiled_stats.cost_analysis(compiled).items()}


def xla_memory(compiled: Any) -> dict[str, int | None]:
    """Per-device buffer bytes; total = args + out + temp - alias + code
    (:class:`compiled_stats.CompiledMemory`)."""
    memory = compiled_stats.memory_analysis(compiled)
    names = [f.name for f in dataclasses.fields(compiled_stats.CompiledMemory)] + ["total"]
    values = memory.as_dict() if memory else dict.fromkeys(names)
    return {f"mem_{n}_bytes": values[n] for n in names}


def tree_bytes(tree: Any) -> int:
    """Bytes of every array in ``tree`` (global sizes, whatever the sharding)."""
    return sum(int(x.size) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def time_steps(
    compiled: Any, state: TrainState, batch: dict[str, jax.Array], steps: int
) -> tuple[float, list[float], dict[str, jax.Array]]:
    """First-call latency, the later steps' times, and the last step's metrics."""
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return first_s, times, metrics


def peak_memory() -> dict[str, Any]:
    """Peak device bytes where the backend reports them (GPU, TPU), and peak host RSS."""
    device_peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    device_peaks = [p for p in device_peaks if p is not None]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    device_peak = max(device_peaks) if device_peaks else None
    return {
        "peak_device_gib": None if device_peak is None else round(device_peak / GIB, 3),
        "peak_host_rss_gib": round(rss / GIB, 3),
        "peak_memory_gib": round((device_peak if device_peak is not None else rss) / GIB, 3),
        "peak_memory_source": "device peak_bytes_in_use" if device_peaks else "host ru_maxrss",
    }


def peak_tflops_per_device(device: Any, override: float | None) -> tuple[float | None, str]:
    """Peak TFLOP/s of one device and where the figure came from."""
    if override:
        return override, "--peak_tflops"
    kind = str(getattr(device, "device_kind", "")).lower()
    if kind in TPU_PEAK_TFLOPS:
        return TPU_PEAK_TFLOPS[kind], f"table: {kind} bf16 dense"
    for pattern, peak in GPU_PEAK_TFLOPS:
        if pattern in kind:
            return peak, f"table: {pattern} bf16 dense"
    return None, "unknown device kind (pass --peak_tflops)"


def model_flops(setup: Setup, args: argparse.Namespace) -> StepFlops:
    if setup.encoder_decoder:
        return step_flops(
            setup.config,
            batch=args.batch_size,
            encoder_length=args.inputs_length,
            decoder_length=args.targets_length,
        )
    return step_flops(
        setup.config, batch=args.batch_size, decoder_length=args.inputs_length + args.targets_length
    )


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to significant digits (CPU MFUs are ~1e-4, GPU TFLOP/s ~1e2)."""
    return float(f"{x:.{digits}g}")


def utilisation(
    flops: StepFlops, xla_flops: float | None, step_s: float, peak_tflops: float | None
) -> dict[str, Any]:
    """Achieved TFLOP/s (model and XLA counts) and MFU / HFU against the devices' peak."""
    n_devices = jax.device_count()
    out: dict[str, Any] = {
        "tflops_per_s": _sig(flops.train / step_s / 1e12),
        # XLA counts every op (elementwise, optimizer too) of one device's partitioned program.
        "xla_tflops_per_s_per_device": (
            None if xla_flops is None else _sig(xla_flops / step_s / 1e12)
        ),
        "mfu": None,
        "hfu": None,
    }
    if peak_tflops:
        peak = peak_tflops * 1e12 * n_devices
        out["mfu"] = _sig(flops.train / step_s / peak)
        out["hfu"] = _sig(flops.hardware / step_s / peak)
    return out


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    setup = build(args)
    param_bytes = tree_bytes(setup.state.params)
    opt_state_bytes = tree_bytes(setup.state.opt_state)
    compiled, lower_s, compile_s = compile_step(setup)
    cost = xla_cost(compiled)
    first_s, times, metrics = time_steps(compiled, setup.state, setup.batch, args.steps)
    step_s = float(np.median(times)) if times else first_s
    host = setup.host_batch
    tokens = sum(
        int(np.count_nonzero(host[k]))
        for k in ("encoder_input_tokens", "decoder_target_tokens")
        if k in host
    )
    flops = model_flops(setup, args)
    device = jax.devices()[0]
    peak, peak_source = peak_tflops_per_device(device, args.peak_tflops)
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.processor() or platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "model": " + ".join(args.gin_file),
        "dtype": getattr(setup.config, "dtype", "?"),
        "remat_policy": getattr(setup.config, "remat_policy", "?"),
        "optimizer": args.optimizer,
        "params_m": round(setup.spec.num_params() / 1e6, 2),
        "param_bytes": param_bytes,
        "opt_state_bytes": opt_state_bytes,
        "batch": args.batch_size,
        "inputs_length": args.inputs_length,
        "targets_length": args.targets_length,
        "lower_s": round(lower_s, 2),
        "compile_s": round(lower_s + compile_s, 2),  # lowering + XLA compilation
        "first_step_s": round(first_s, 4),
        "step_s": round(step_s, 4),
        "timed_steps": len(times),
        "tokens_per_s": round(tokens / step_s, 1),
        **cost,
        **xla_memory(compiled),
        **peak_memory(),
        "model_flops_per_step": flops.train,
        "model_flops_breakdown": flops.breakdown(),
        "hardware_flops_per_step": flops.hardware,
        **utilisation(flops, cost["xla_flops_per_device"], step_s, peak),
        "peak_tflops_per_device": peak,
        "peak_tflops_source": peak_source,
        "final_loss": float(metrics["loss"]),
    }
    print(json.dumps(result, indent=2))
    if args.output and jax.process_index() == 0:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

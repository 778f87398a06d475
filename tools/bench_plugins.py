"""Full fine-tuning vs parameter-efficient plug-ins: optimizer state, memory and step time.

One configuration per process (peak RSS is per process). Plug-ins come from gin:

  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_plugins.py \
      --gin_file=gin/models/t5_1_1/small.gin --gin_file=gin/plugins/lora.gin \
      --gin="bench_plugins.plugins = [@LoRA()]" --label=lora

Reports trainable parameters, optimizer-state bytes (what ``optimizer.init`` allocates for
the trainable parameters), XLA's compiled memory estimate of the jitted step (arguments +
outputs + temporaries - aliased), peak host RSS, compile time and the median step time on a
synthetic batch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
import time
from pathlib import Path

import gin
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t5x_instruct import partitioning
from t5x_instruct.gin_utils import parse_gin
from t5x_instruct.models import build_model, is_encoder_decoder
from t5x_instruct.plugins import PluginSet
from t5x_instruct.training import loop  # noqa: F401  (registers `train`: plug-in gin files bind train.plugins)
from t5x_instruct.training.optimizers import make_optimizer
from t5x_instruct.training.state_init import make_layout
from t5x_instruct.training.step import LossConfig, train_step
from t5x_instruct.training.train_state import ModelSpec, init_train_state
from tools.bench_train import synthetic_batch


@gin.configurable
def bench_plugins(plugins: list | tuple = ()) -> PluginSet:
    """The plug-ins to benchmark (gin: ``bench_plugins.plugins = [@LoRA()]``)."""
    return PluginSet(list(plugins))


def _nbytes(tree: object) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin", action="append", default=[], help="extra binding")
    parser.add_argument("--label", default="full fine-tuning")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs_length", type=int, default=128)
    parser.add_argument("--targets_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizer", default="adamw", help="make_optimizer.name")
    parser.add_argument("--output", default=None, help="append the JSON result to this file")
    args = parser.parse_args(argv)

    parse_gin(args.gin_file, args.gin, clear=True)
    plugins = bench_plugins()
    spec = ModelSpec.create(plugins.build(build_model))
    config = spec.config
    mesh = partitioning.create_mesh()
    rules = plugins.axis_rules(partitioning.standard_logical_axis_rules())
    optimizer = make_optimizer(
        name=args.optimizer, learning_rate=1e-3, logical_axes=spec.logical_axes()
    )
    layout = make_layout(spec, optimizer, mesh, rules, plugins, "/tmp/bench_plugins")
    is_trainable = layout.is_trainable
    state = jax.jit(
        lambda p: init_train_state(p, optimizer, is_trainable), out_shardings=layout.shardings
    )(spec.init_params(mesh, rules))
    host = synthetic_batch(
        is_encoder_decoder(config),
        args.batch_size,
        args.inputs_length,
        args.targets_length,
        config.vocab_size,
    )
    batch = partitioning.shard_batch(host, mesh, rules)

    def step_fn(state, batch):
        with partitioning.axis_rules(mesh, rules):
            return train_step(
                spec, optimizer, LossConfig(), state, batch, jax.random.PRNGKey(0),
                plugins=plugins, is_trainable=is_trainable,
            )  # fmt: skip

    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_memory = None
    if analysis is not None:
        step_memory = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
    device = jax.devices()[0]
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.processor() or platform.machine(),
        "label": args.label,
        "model": " + ".join(args.gin_file),
        "optimizer": args.optimizer,
        "params_m": round(spec.num_params() / 1e6, 3),
        "trainable_params": layout.trainable_count(),
        "optimizer_state_mib": round(_nbytes(state.opt_state) / 2**20, 3),
        "step_memory_mib": None if step_memory is None else round(step_memory / 2**20, 1),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "compile_s": round(compile_s, 2),
        "step_s": round(float(np.median(times)), 4),
        "final_loss": float(metrics["loss"]),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

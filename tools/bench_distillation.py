"""Step time and memory of one student trained with CE only, online KD and offline top-k KD.

  JAX_PLATFORMS=cpu .venv/bin/python tools/bench_distillation.py \
      --gin_file=gin/runs/quickstart.gin --gin_file=gin/plugins/distillation.gin \
      --gin="T5Config.emb_dim = 64" --gin="T5Config.head_dim = 16" \
      --gin="T5Config.mlp_dim = 128" --modes=ce,online,offline

The student is the model the gin files configure (``build_model.config``); the teacher is
``Distillation.teacher_config`` (``teacher/...`` bindings, e.g. those of
``gin/plugins/distillation.gin``) with random weights written to a temporary checkpoint
(speed and memory do not depend on the values). Offline KD reads a top-k store written for
the synthetic batch (``--k`` entries per target token), so its host-side join is timed too.
Each mode runs in its own process (peak RSS is per process); the table reports XLA's compiled
memory estimate of the jitted step (arguments + outputs + temporaries - aliased), peak host
RSS, compile time and the median step time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t5x_instruct import partitioning  # noqa: E402
from t5x_instruct.gin_utils import parse_gin  # noqa: E402
from t5x_instruct.models import build_model, is_encoder_decoder  # noqa: E402
from t5x_instruct.plugins import PluginSet  # noqa: E402
from t5x_instruct.plugins.distillation import Distillation, TopKWriter  # noqa: E402
from t5x_instruct.plugins.distillation.topk_store import batch_segments  # noqa: E402
from t5x_instruct.training import loop  # noqa: E402, F401  (run files bind `train`)
from t5x_instruct.training.optimizers import make_optimizer  # noqa: E402
from t5x_instruct.training.param_checkpoints import save_params  # noqa: E402
from t5x_instruct.training.state_init import make_layout  # noqa: E402
from t5x_instruct.training.step import LossConfig, train_step  # noqa: E402
from t5x_instruct.training.train_state import ModelSpec, init_train_state  # noqa: E402
from tools.bench_train import synthetic_batch  # noqa: E402

MODES = ("ce", "online", "offline")


def _teacher_checkpoint(tmp: str, mesh, rules) -> str:
    """Random teacher weights for ``Distillation.teacher_config`` (gin), saved under ``tmp``."""
    probe = Distillation(teacher_checkpoint="unused")  # builds the gin-configured teacher
    save_params(f"{tmp}/teacher", probe.teacher.spec.init_params(mesh, rules))
    return f"{tmp}/teacher"


def _store(tmp: str, batch: dict, vocab: int, k: int) -> str:
    """A top-k store holding every example of ``batch`` (random teacher distributions)."""
    rng = np.random.default_rng(0)
    lengths = {"inputs": 0, "targets": int(batch["decoder_target_tokens"].shape[1])}
    writer = TopKWriter(
        f"{tmp}/store",
        dict(task="synthetic", split="train", task_feature_lengths=lengths, k=k,
             temperature=1.0, vocab_size=vocab, teacher_checkpoint="random", teacher_step=0,
             teacher_config="random", logprob_dtype="float16"),
        examples_per_shard=1024,
    )  # fmt: skip
    for _, key, positions in batch_segments(batch):
        n = len(positions)
        ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)]).astype(np.int32)
        logits = rng.normal(size=(n, k + 1))
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        writer.add(key, ids, logp[:, :k], logp[:, k])
    writer.finish()
    return f"{tmp}/store"


def run_mode(args: argparse.Namespace) -> dict:
    parse_gin(args.gin_file, args.gin, clear=True)
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    base = ModelSpec.create(build_model)
    config = base.config
    host = synthetic_batch(
        is_encoder_decoder(config), args.batch_size, args.inputs_length, args.targets_length,
        config.vocab_size,
    )  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="bench_distillation_")
    plugins = []
    if args.mode == "online":
        checkpoint = _teacher_checkpoint(tmp, mesh, rules)
        plugins = [Distillation(teacher_checkpoint=checkpoint)]
    elif args.mode == "offline":
        store = _store(tmp, host, config.vocab_size, args.k)
        plugins = [Distillation(teacher_config=None, teacher_checkpoint=None, topk_dir=store)]
    plugin_set = PluginSet(plugins)
    spec = ModelSpec.create(plugin_set.build(build_model))
    optimizer = make_optimizer(name="adamw", learning_rate=1e-3, logical_axes=spec.logical_axes())
    layout = make_layout(spec, optimizer, mesh, rules, plugin_set, tmp)
    state = jax.jit(
        lambda p, a: init_train_state(p, optimizer, layout.is_trainable, a),
        out_shardings=layout.shardings,
    )(spec.init_params(mesh, rules), layout.rebuilt_aux(False))
    batch = partitioning.shard_batch(host, mesh, rules)

    def step_fn(state, batch):
        with partitioning.axis_rules(mesh, rules):
            return train_step(
                spec, optimizer, LossConfig(), state, batch, jax.random.PRNGKey(0),
                plugins=plugin_set, is_trainable=layout.is_trainable,
            )  # fmt: skip

    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    memory = None
    if analysis is not None:
        memory = (
            analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes
        )  # fmt: skip
    device = jax.devices()[0]
    teacher = plugins[0].teacher if plugins and plugins[0].online else None
    return {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.processor() or platform.machine(),
        "mode": args.mode,
        "student_params_m": round(base.num_params() / 1e6, 3),
        "teacher_params_m": round(teacher.spec.num_params() / 1e6, 3) if teacher else None,
        "batch": f"{args.batch_size} x ({args.inputs_length}+{args.targets_length})",
        "step_memory_mib": None if memory is None else round(memory / 2**20, 1),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "compile_s": round(compile_s, 2),
        "step_s": round(float(np.median(times)), 4),
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin", action="append", default=[], help="extra binding")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--inputs_length", type=int, default=48)
    parser.add_argument("--targets_length", type=int, default=8)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", default=None, help="append the JSON results to this file")
    args = parser.parse_args(argv)
    if args.mode:
        result = run_mode(args)
        print("RESULT " + json.dumps(result), flush=True)
        return [result]
    results = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            sys.exit(f"--modes: unknown mode {mode!r}; expected {MODES}")
        child = subprocess.run(
            [sys.executable, __file__, *argv, f"--mode={mode}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
        if child.returncode or not lines:
            sys.exit(f"mode {mode} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    print("| mode | step (s) | compile (s) | step memory (MiB) | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['step_s']} | {r['compile_s']} | {r['step_memory_mib']} | "
              f"{r['peak_host_rss_gib']} |")  # fmt: skip
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps({**r, "command": " ".join(sys.argv)}) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

"""Benchmark: build a Flan-2022-scale mixture (1,500+ task variants) on mock data.

Registers every Flan 2021 task variant (``tasks.flan``, ~1,300 incl. per-template tasks) on
``tfds.testing.mock_data`` plus NIv2-shaped in-memory tasks, mixes them at the Flan 2022
collection weights, and measures (by default on the fused mixture: one pipeline per data
source, see ``t5x_instruct.data.templates.fused``; ``--path per_variant`` builds the plain
SeqIO mixture, one pipeline per task, for comparison): registration time, time and peak
memory (ru_maxrss; optionally tracemalloc) to the first packed batch, and steady-state
examples/s. A second part compares the two template renderers (``tf`` string ops vs
``py_function``) on one task.

    .venv/bin/python tools/bench_mixture.py                 # full run, fused mixture
    .venv/bin/python tools/bench_mixture.py --path per_variant   # the old path (minutes)
    .venv/bin/python tools/bench_mixture.py --niv2_tasks 50 --render_only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WORDS = (
    "river",
    "stone",
    "light",
    "quick",
    "paper",
    "green",
    "north",
    "table",
    "music",
    "window",
    "silver",
    "garden",
    "winter",
    "number",
    "people",
    "market",
    "simple",
    "letter",
    "yellow",
)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def register_niv2_like(num_tasks: int, examples: int) -> dict[str, float]:
    """In-memory tasks shaped like NIv2 (definition + input -> output); returns rates."""
    import seqio

    from t5x_instruct.data.custom import InMemorySource, add_rendered_task
    from t5x_instruct.data.templates import RenderConfig, Template

    vocab = seqio.ByteVocabulary()
    template = (Template("0", "{definition}\n\nInput: {input}\nOutput:", "{output}"),)
    rates = {}
    for i in range(num_tasks):
        rng = random.Random(i)
        definition = f"Task {i}: " + _sentence(rng, rng.randint(10, 40))
        rows = [
            {
                "definition": definition,
                "input": _sentence(rng, rng.randint(5, 80)),
                "output": _sentence(rng, rng.randint(1, 12)),
            }
            for _ in range(examples)
        ]
        name = f"bench_niv2_task{i:04d}"
        config = RenderConfig(name, template, fields=("definition", "input", "output"))
        add_rendered_task(name, InMemorySource({"train": rows}), config, vocabulary=vocab,
                          shuffle_buffer_size=examples)  # fmt: skip
        rates[name] = float(examples)
    return rates


def bench_render(mode: str, n: int) -> float:
    """Examples/s of rendering ``n`` NLI-shaped examples with one renderer."""
    import tensorflow as tf

    from t5x_instruct.data.templates import RenderConfig, apply_templates
    from tasks.flan.registration import build_templates
    from tasks.flan.templates_classification import NLI

    rng = random.Random(0)
    rows = {"premise": [_sentence(rng, 30) for _ in range(n)],
            "hypothesis": [_sentence(rng, 10) for _ in range(n)],
            "answer": ["yes"] * n}  # fmt: skip
    ds = tf.data.Dataset.from_tensor_slices(rows).map(
        lambda ex: {**ex, "options": tf.constant(["yes", "it is not possible to tell", "no"])}
    )
    config = RenderConfig("bench_render", build_templates("bench_render", NLI), mode=mode)
    out = apply_templates(ds, config).prefetch(64)
    start = time.perf_counter()
    count = sum(1 for _ in out)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--niv2_tasks", type=int, default=400)
    parser.add_argument("--mock_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--inputs_length", type=int, default=1024)
    parser.add_argument("--targets_length", type=int, default=256)
    parser.add_argument("--steady_batches", type=int, default=20)
    parser.add_argument("--render_examples", type=int, default=5000)
    parser.add_argument("--render_only", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--path",
        choices=("fused", "per_variant"),
        default="fused",
        help="fused: one pipeline per data source; per_variant: one per task",
    )
    parser.add_argument(
        "--tfdata_optimizations",
        action="store_true",
        help="keep tf.data's default graph optimizations (slower to start with "
        "thousands of inputs: measured 26 s vs 14 s for 100 tasks)",
    )
    args = parser.parse_args(argv)

    results = {}
    for mode in ("tf", "py") if args.render_examples else ():
        results[f"render_{mode}_ex_per_s"] = bench_render(mode, args.render_examples)
        print(f"render mode={mode}: {results[f'render_{mode}_ex_per_s']:.0f} examples/s",
              flush=True)  # fmt: skip
    if args.render_only:
        return 0

    import numpy as np
    import tensorflow_datasets as tfds

    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    import tasks.flan
    from t5x_instruct import data
    from t5x_instruct.data.custom import register_mixture

    flan_names = tasks.flan.TASK_NAMES
    niv2 = register_niv2_like(args.niv2_tasks, args.mock_examples)
    register_mixture("bench_niv2", niv2)
    flan_rates = {}
    for mix in ("flan2021", "flan2021_template_variants"):
        m = data.get_mixture_or_task(mix)
        flan_rates.update({t.name: m.get_rate(t) for t in m.tasks})
    register_mixture("bench_flan2021_all", flan_rates)
    tasks.flan.register_collection(
        "bench_flan2022",
        {"flan2021": "bench_flan2021_all", "cot": "flan2021_cot", "niv2": "bench_niv2"},
    )
    mixture = "bench_flan2022"
    if args.path == "fused":
        from t5x_instruct.data.templates.fused import register_fused_mixture

        mixture = "bench_flan2022_fused"
        register_fused_mixture(mixture, [("bench_flan2022", 1.0)])
    num_tasks = len(data.leaf_tasks(mixture))
    t_register = time.perf_counter() - t0
    print(f"registered {len(flan_names)} Flan + {len(niv2)} NIv2-shaped tasks; mixture has "
          f"{num_tasks} tasks ({t_register:.1f} s)", flush=True)  # fmt: skip

    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    with tfds.testing.mock_data(num_examples=args.mock_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE):  # fmt: skip
        t1 = time.perf_counter()
        ds = data.get_dataset(mixture, task_feature_lengths=lengths,
                              batch_size=args.batch_size, pack=True, seed=0)  # fmt: skip
        if not args.tfdata_optimizations:
            import tensorflow as tf

            options = tf.data.Options()
            options.experimental_optimization.apply_default_optimizations = False
            ds = ds.with_options(options)
        it = ds.as_numpy_iterator()
        t_build = time.perf_counter() - t1
        batch = next(it)
        t_first = time.perf_counter() - t0
        rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"first packed batch after {t_first:.1f} s (pipeline build {t_build:.1f} s), "
              f"peak RSS {rss_first:.2f} GiB", flush=True)  # fmt: skip
        traced = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
        t2 = time.perf_counter()
        examples = 0
        for _ in range(args.steady_batches):
            batch = next(it)
            examples += int(np.count_nonzero(batch["decoder_target_tokens"] == 1))  # EOS = 1
        dt = time.perf_counter() - t2
        eff = np.count_nonzero(batch["encoder_input_tokens"]) / batch["encoder_input_tokens"].size
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows_per_s = args.steady_batches * args.batch_size / dt
    print(
        f"steady state: {examples / dt:.0f} examples/s ({rows_per_s:.1f} "
        f"packed rows/s), encoder packing {eff:.0%}; peak RSS {rss:.2f} GiB"
        + (f"; tracemalloc peak {traced:.0f} MiB" if traced else "")
    )
    print(
        f"\n| date | {datetime.date.today()} |\n| machine | {platform.node()} "
        f"{os.cpu_count()} cores |\n| tasks | {num_tasks} |\n| path | {args.path} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Store a teacher's top-k log-probabilities per target token of a task, for offline KD.

  JAX_PLATFORMS=cpu .venv/bin/python tools/teacher_topk.py \
      --gin_file=gin/runs/quickstart.gin --teacher_checkpoint=/tmp/t5x_instruct_quickstart \
      --task=demo_instructions --split=train --inputs_length=48 --targets_length=8 \
      --k=16 --out_dir=/tmp/demo_topk

The teacher is the model the gin files configure (``build_model.config``), restored from
``--teacher_checkpoint``. Examples are read in a fixed order (leaf tasks by name, each in
data order, trimmed as training trims them) and written in shards of
``--examples_per_shard`` (format: :mod:`t5x_instruct.plugins.distillation.topk_store`). A
rerun with the same arguments resumes after the last whole shard; other arguments are
refused. Train with ``Distillation.topk_dir = '<out_dir>'`` (docs/distillation.md).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t5x_instruct.plugins.distillation import offline  # noqa: E402
from t5x_instruct.plugins.distillation.topk_store import TopKWriter, example_key  # noqa: E402

log = logging.getLogger("teacher_topk")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True, help="teacher model gin")
    parser.add_argument("--gin", action="append", default=[], help="extra binding")
    parser.add_argument("--teacher_checkpoint", required=True)
    parser.add_argument("--teacher_step", type=int, default=None)
    parser.add_argument("--task", required=True, help="task or mixture")
    parser.add_argument("--split", default="train")
    parser.add_argument("--inputs_length", type=int, required=True)
    parser.add_argument("--targets_length", type=int, required=True)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--examples_per_shard", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--logprob_dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--max_examples", type=int, default=None, help="stop after this many")
    parser.add_argument("--task_module", action="append", default=["tasks.demo"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)

    from t5x_instruct.data import import_task_modules

    import_task_modules(args.task_module)
    loaded = offline.load_teacher(args.gin_file, args.gin, args.teacher_checkpoint,
                                  step=args.teacher_step)  # fmt: skip
    teacher = loaded.teacher
    if not args.k < teacher.vocab_size:
        sys.exit(f"--k={args.k} must be below the vocabulary size {teacher.vocab_size}.")
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    writer = TopKWriter(
        args.out_dir,
        dict(
            task=args.task,
            split=args.split,
            task_feature_lengths=lengths,
            k=args.k,
            temperature=args.temperature,
            vocab_size=teacher.vocab_size,
            teacher_checkpoint=loaded.checkpoint,
            teacher_step=loaded.step,
            teacher_config=repr(teacher.config),
            logprob_dtype=args.logprob_dtype,
        ),
        args.examples_per_shard,
    )
    if writer.complete:
        log.info("%s is complete (%d examples).", args.out_dir, writer.examples_done)
        return writer.manifest
    done = writer.examples_done
    if done:
        log.info("Resuming %s after %d examples.", args.out_dir, done)
    examples = offline.task_examples(args.task, args.split, lengths, args.max_examples)
    examples = itertools.islice(examples, done, None)
    run = offline.topk_fn(teacher, args.k, args.temperature, args.targets_length)
    start_time, count = time.perf_counter(), 0
    for chunk in offline.batches(examples, args.batch_size):
        batch, start = offline.model_batch(chunk, teacher.encoder_decoder, lengths,
                                           args.batch_size)  # fmt: skip
        ids, top, rest = (np.asarray(x) for x in jax.device_get(run(loaded.params, batch, start)))
        for r, ex in enumerate(chunk):
            n = len(ex.targets)
            writer.add(example_key(ex.inputs, ex.targets), ids[r, :n], top[r, :n], rest[r, :n])
        count += len(chunk)
        if count % (args.batch_size * 20) < args.batch_size:
            log.info(
                "%d examples (%.1f/s)", done + count, count / (time.perf_counter() - start_time)
            )
    writer.finish()
    log.info("Wrote %d examples to %s (%d shards).", writer.examples_done, args.out_dir,
             len(writer.manifest["shards"]))  # fmt: skip
    return writer.manifest


if __name__ == "__main__":
    main(sys.argv[1:])

"""Sequence-level KD data: decode a teacher over a task or mixture and write a JSONL task.

  JAX_PLATFORMS=cpu .venv/bin/python tools/distill_sequences.py \
      --gin_file=gin/runs/quickstart.gin --teacher_checkpoint=/tmp/t5x_instruct_quickstart \
      --task=demo_instructions --split=train --inputs_length=48 --targets_length=8 \
      --out=/tmp/demo_seqkd.jsonl

Each record is ``{"inputs": the rendered input text, "targets": the teacher's output,
"task": the source task}`` (Kim & Rush 2016: train the student on the teacher's outputs
instead of the references). Greedy decoding by default; ``--decode=beam --num_decodes=4``
keeps the best beam, ``--decode=sample`` one sample. Records are written in a seeded random
order (``--no-shuffle``: source order, task by task), since a JSONL task only shuffles
within its buffer. Beside the file the tool writes
``<out>.gin`` with the bindings that register it as a SeqIO task through
``t5x_instruct.data.custom.register_jsonl_task`` (format ``inputs_targets``); add that file
after your run file and set ``MIXTURE_OR_TASK_NAME`` to the task name it prints.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t5x_instruct import decoding  # noqa: E402
from t5x_instruct.plugins.distillation import offline  # noqa: E402

log = logging.getLogger("distill_sequences")


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", action="append", required=True, help="teacher model gin")
    parser.add_argument("--gin", action="append", default=[], help="extra binding")
    parser.add_argument("--teacher_checkpoint", required=True)
    parser.add_argument("--teacher_step", type=int, default=None)
    parser.add_argument("--task", required=True, help="task or mixture")
    parser.add_argument("--split", default="train")
    parser.add_argument("--inputs_length", type=int, required=True)
    parser.add_argument("--targets_length", type=int, required=True)
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--task_name", default=None, help="registered name (default: file stem)")
    parser.add_argument("--decode", default="greedy", choices=["greedy", "beam", "sample"])
    parser.add_argument("--num_decodes", type=int, default=4, help="beams (--decode=beam)")
    parser.add_argument("--temperature", type=float, default=1.0, help="--decode=sample")
    parser.add_argument("--seed", type=int, default=0, help="sampling and record order")
    parser.add_argument(
        "--shuffle", action=argparse.BooleanOptionalAction, default=True,
        help="write the records in a seeded random order (default), not task by task",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--task_module", action="append", default=["tasks.demo"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)

    from t5x_instruct.data import get_mixture_or_task, import_task_modules, leaf_tasks

    import_task_modules(args.task_module)
    get_mixture_or_task(args.task)  # a clear error for unknown names, before any work
    vocabulary = leaf_tasks(args.task)[0].output_features["targets"].vocabulary
    loaded = offline.load_teacher(args.gin_file, args.gin, args.teacher_checkpoint,
                                  step=args.teacher_step)  # fmt: skip
    teacher = loaded.teacher
    fn = {
        "greedy": functools.partial(decoding.greedy, num_decodes=1),
        "beam": functools.partial(decoding.beam_search, num_decodes=args.num_decodes),
        "sample": functools.partial(
            decoding.temperature_sample, num_decodes=1, temperature=args.temperature
        ),
    }[args.decode]

    @jax.jit
    def decode(params, batch, rng):
        model = teacher.spec.module(params)
        out = fn(model, batch, max_decode_length=args.targets_length, eos_id=vocabulary.eos_id,
                 rng=rng)  # fmt: skip
        return out.tokens[:, 0]

    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    examples = offline.task_examples(args.task, args.split, lengths, args.max_examples)
    records: list[str] = []
    for number, chunk in enumerate(offline.batches(examples, args.batch_size)):
        batch = offline.prompt_batch(chunk, teacher.encoder_decoder, args.inputs_length,
                                     args.batch_size)  # fmt: skip
        rng = jax.random.fold_in(jax.random.PRNGKey(args.seed), number)
        rows = np.asarray(jax.device_get(decode(loaded.params, batch, rng)))
        for ex, row in zip(chunk, rows):
            ids = [int(i) for i in row]
            if vocabulary.eos_id in ids:
                ids = ids[: ids.index(vocabulary.eos_id)]
            text = vocabulary.decode([i for i in ids if i != 0])
            record = {"inputs": ex.inputs_text, "targets": text, "task": ex.task}
            records.append(json.dumps(record, ensure_ascii=False))
        if number % 20 == 0:
            log.info("%d examples decoded", len(records))
    count = len(records)
    # Examples arrive task after task; a JSONL task only shuffles within a 1000-example
    # buffer, so written in that order the student would see one source task at a time.
    order = np.random.default_rng(args.seed).permutation(count) if args.shuffle else range(count)
    tmp = f"{args.out}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(records[i] + "\n" for i in order)
    os.replace(tmp, args.out)
    name = args.task_name or Path(args.out).stem
    gin_path = f"{args.out}.gin"
    model_file = getattr(vocabulary, "sentencepiece_model_file", None)
    vocab_line = (
        f"get_vocabulary.path = '{model_file}'\n"
        if model_file
        else "# bind get_vocabulary.* to the source task's vocabulary\n"
    )
    spec = {"name": name, "paths": [os.path.abspath(args.out)], "format": "inputs_targets"}
    with open(gin_path, "w", encoding="utf-8") as f:
        f.write(
            f"# Sequence-level KD data: {args.task} ({args.split}) decoded by "
            f"{loaded.checkpoint} ({args.decode}).\n"
            "import t5x_instruct.data.custom\n"
            f"{vocab_line}"
            f"register_jsonl_tasks.tasks = [{spec!r}]\n"
            "import tasks.custom  # registers it, with the bindings above\n"
            f"MIXTURE_OR_TASK_NAME = '{name}'\n"
        )
    log.info("Wrote %d records to %s; task %r registers with %s", count, args.out, name, gin_path)
    return gin_path


if __name__ == "__main__":
    main(sys.argv[1:])

"""Build IFS data from dialogues and train the response-tone classifier (AlShikh et al. 2023).

  JAX_PLATFORMS=cpu .venv/bin/python tools/train_ifs_classifier.py \
      --model_dir=/tmp/t5x_instruct_ifs_classifier

Without ``--dialogues`` the data are the embedded demo mixture (classifier data from its
training split, the instruction set from its validation split); with ``--dialogues`` they
are JSONL chat records (``{"messages": [...]}``, first user + first assistant turn), of
which ``--num_instructions`` are held out for the instruction set. Writes to MODEL_DIR:
``data/{train,validation,test}.jsonl`` (classifier data), ``instructions.jsonl``,
``spiece.model``, the training run (``checkpoints/``, ``metrics.jsonl``) and
``ifs_classifier.json`` with accuracy / precision / recall on the held-out test split.
Bind the directory as ``IFS_CLASSIFIER_DIR`` in ``gin/plugins/ifs.gin``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK_NAME = "ifs_response_tone"
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--dialogues", nargs="*", default=None, help="JSONL chat files")
    parser.add_argument("--vocabulary", default=None, help="SentencePiece model (default: demo)")
    parser.add_argument("--prompt", default=None,
                        help="instruction-set prompt with {instruction} (default: as is for "
                        "the demo, 'User: {instruction}\\nAssistant:' for chat files)")  # fmt: skip
    parser.add_argument("--num_instructions", type=int, default=192)
    parser.add_argument("--partial_fraction", type=float, default=0.5)
    parser.add_argument("--max_examples", type=int, default=None, help="cap classifier data")
    parser.add_argument("--input_length", type=int, default=48)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--eval_period", type=int, default=100,
                        help="validation exact match every N steps (0: none)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _held_out(dialogue, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{dialogue.instruction}\x1f{dialogue.response}".encode())
    return int.from_bytes(digest.digest()[:8], "little") / 2**64


def build_data(args: argparse.Namespace) -> tuple[list, list, str]:
    """(classifier examples, instruction set, vocabulary path)."""
    from t5x_instruct.plugins.ifs import data as ifs_data

    if args.dialogues:
        dialogues, _ = ifs_data.read_dialogues(args.dialogues)
        order = sorted(dialogues, key=lambda d: _held_out(d, args.seed))
        if len(order) <= args.num_instructions:
            from t5x_instruct.errors import UserInputError

            raise UserInputError(
                f"{len(order)} usable dialogues cannot give {args.num_instructions} "
                "instructions and classifier data; lower --num_instructions."
            )
        instruction_dialogues = order[: args.num_instructions]
        classifier_dialogues = order[args.num_instructions :]
        prompt = args.prompt or ifs_data.CHAT_PROMPT
        vocab = args.vocabulary
        if vocab is None:
            from tasks.demo import VOCAB_PATH as vocab
    else:
        from tasks.demo import VOCAB_PATH
        from tasks.demo.ifs import demo_dialogues
        from tasks.demo.task_types import ALL_TASK_TYPES

        classifier_dialogues = demo_dialogues("train")
        per_type = -(-args.num_instructions // len(ALL_TASK_TYPES))  # all have validation data
        instruction_dialogues = demo_dialogues("validation", per_type)[: args.num_instructions]
        prompt = args.prompt or ifs_data.PLAIN_PROMPT
        vocab = args.vocabulary or VOCAB_PATH
    examples = ifs_data.classifier_examples(classifier_dialogues, seed=args.seed)
    if args.max_examples is not None and len(examples) > args.max_examples:
        # Keep the balance: the same number of each label, chosen by the seeded split order.
        parts = ifs_data.split_examples(
            examples, {"keep": args.max_examples, "drop": len(examples) - args.max_examples},
            seed=args.seed,
        )  # fmt: skip
        examples = parts["keep"]
    instructions = ifs_data.instruction_set(
        instruction_dialogues, seed=args.seed, partial_fraction=args.partial_fraction,
        prompt=prompt,
    )  # fmt: skip
    return examples, instructions, vocab


def main(argv: list[str]) -> dict:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.path.insert(0, str(REPO))
    import gin
    import numpy as np

    from t5x_instruct.data.custom import register_jsonl_task
    from t5x_instruct.data.vocabularies import make_vocabulary
    from t5x_instruct.models import build_model
    from t5x_instruct.plugins.ifs import classifier as clf
    from t5x_instruct.plugins.ifs import data as ifs_data
    from t5x_instruct.training.loop import train
    from t5x_instruct.training.optimizers import learning_rate_schedule, make_optimizer
    from t5x_instruct.training.train_state import ModelSpec

    start = time.perf_counter()
    model_dir = os.path.abspath(args.model_dir)
    os.makedirs(os.path.join(model_dir, "data"), exist_ok=True)
    examples, instructions, vocab_path = build_data(args)
    splits = ifs_data.split_examples(examples, SPLITS, seed=args.seed)
    label_words = {ifs_data.ANSWER: clf.LABELS[0], ifs_data.CONTINUATION: clf.LABELS[1]}
    paths = {}
    for split, rows in splits.items():
        paths[split] = [os.path.join(model_dir, "data", f"{split}.jsonl")]
        ifs_data.write_jsonl(
            paths[split][0],
            ({"inputs": e.text, "targets": label_words[e.label], "source": e.source} for e in rows),
        )
    ifs_data.write_jsonl(
        os.path.join(model_dir, clf.INSTRUCTIONS_FILE), (i.to_json() for i in instructions)
    )
    shutil.copyfile(vocab_path, os.path.join(model_dir, clf.VOCAB_FILE))
    vocabulary = make_vocabulary("sentencepiece", os.path.join(model_dir, clf.VOCAB_FILE))
    counts = {
        s: dict(collections.Counter(label_words[e.label] for e in r)) for s, r in splits.items()
    }
    kinds = dict(collections.Counter(i.kind for i in instructions))
    print(f"classifier data: {counts}; instruction set: {kinds}", flush=True)

    register_jsonl_task(
        TASK_NAME, paths, format="inputs_targets", vocabulary=vocabulary,
    )  # fmt: skip
    target_length = max(len(vocabulary.encode(w)) for w in clf.LABELS) + 1
    config = clf.classifier_model_config(vocabulary.vocab_size)
    clf.write_classifier_config(model_dir, config, input_length=args.input_length)

    gin.clear_config()
    gin.bind_parameter("learning_rate_schedule.kind", "constant")
    gin.bind_parameter("learning_rate_schedule.base_learning_rate", args.learning_rate)
    spec = ModelSpec.create(lambda: build_model(config, seed=args.seed))
    optimizer = make_optimizer(
        name="adamw", learning_rate=learning_rate_schedule(), logical_axes=spec.logical_axes()
    )
    train(
        model_dir=model_dir,
        mixture_or_task_name=TASK_NAME,
        task_feature_lengths={"inputs": args.input_length, "targets": target_length},
        train_steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        optimizer=optimizer,
        log_period=10,
        checkpoint_period=args.steps,
        keep_checkpoints=1,
        eval_period=args.eval_period,
        eval_batch_size=args.batch_size,
        max_eval_examples=256,
        final_eval=False,
        progress_bar=False,
        model_spec=spec,
    )

    classifier = clf.ToneClassifier.load(model_dir)
    test = splits["test"]
    probs = classifier.answer_probability([e.text for e in test])
    labels = [e.label == ifs_data.ANSWER for e in test]
    metrics = clf.classification_metrics(labels, probs >= 0.5)
    by_source = {
        source: float(np.mean([(p >= 0.5) == lab for e, p, lab in zip(test, probs, labels)
                               if e.source == source]))
        for source in ("R", "Ic", "Ic+R") if any(e.source == source for e in test)
    }  # fmt: skip
    extra = {
        "test_metrics": metrics,
        "test_accuracy_by_source": by_source,
        "data": {"splits": counts, "instructions": kinds, "dialogues": args.dialogues or "demo"},
        "training": {"steps": args.steps, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "seed": args.seed,
                     "seconds": round(time.perf_counter() - start, 1)},
    }  # fmt: skip
    clf.write_classifier_config(model_dir, config, input_length=args.input_length, extra=extra)
    print(json.dumps({"test_metrics": metrics, "by_source": by_source}, indent=2), flush=True)
    return extra


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from t5x_instruct.errors import UserInputError

    try:
        main(sys.argv[1:])
    except UserInputError as exc:
        sys.exit(f"error: {exc}")

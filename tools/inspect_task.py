"""Prints rendered examples of a task or mixture, with token counts and packing efficiency.

    .venv/bin/python tools/inspect_task.py demo_instructions -n 3
    .venv/bin/python tools/inspect_task.py flan_rte_x_shot --module tasks.flan --mock_tfds 16

``--mock_tfds N`` serves TFDS data sets from ``tfds.testing.mock_data`` (random examples shaped
like the real ones) for machines without the prepared data.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def packing_efficiency(name: str, split: str, seed: int, lengths: dict[str, int],
                       batches: int = 4, batch_size: int = 8) -> float:  # fmt: skip
    """Non-padding tokens / all token slots over a few packed encoder-decoder batches."""
    import numpy as np

    from t5x_instruct import data

    ds = data.get_dataset(name, task_feature_lengths=lengths, split=split, batch_size=batch_size,
                          pack=True, seed=seed)  # fmt: skip
    used = total = 0
    for batch in ds.take(batches).as_numpy_iterator():
        for key in ("encoder_input_tokens", "decoder_target_tokens"):
            used += int(np.count_nonzero(batch[key]))
            total += batch[key].size
    return used / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("-n", type=int, default=5, help="examples to print")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0, help="shuffle/mixture seed")
    parser.add_argument(
        "--module",
        action="append",
        default=None,
        help="task module to import (repeatable); default tasks.demo, tasks.flan",
    )
    parser.add_argument(
        "--mock_tfds",
        type=int,
        default=0,
        metavar="N",
        help="use N mock examples per TFDS data set",
    )
    parser.add_argument("--inputs_length", type=int, default=512)
    parser.add_argument("--targets_length", type=int, default=128)
    parser.add_argument("--no_packing", action="store_true", help="skip packing efficiency")
    args = parser.parse_args(argv)

    import seqio
    import tensorflow_datasets as tfds

    from t5x_instruct import data

    data.import_task_modules(args.module or ["tasks.demo", "tasks.flan"])
    provider = data.get_mixture_or_task(args.name)
    mock = (tfds.testing.mock_data(num_examples=args.mock_tfds,
                                   policy=tfds.testing.MockPolicy.USE_CODE)
            if args.mock_tfds else contextlib.nullcontext())  # fmt: skip
    with mock:
        ds = provider.get_dataset(sequence_length=None, split=args.split, shuffle=True,
                                  seed=args.seed, num_epochs=1)  # fmt: skip
        kind = "mixture" if isinstance(provider, seqio.Mixture) else "task"
        print(f"{args.name} ({kind}, split={args.split}, seed={args.seed})")
        for i, ex in enumerate(ds.take(args.n).as_numpy_iterator()):
            print(
                f"\n--- example {i}  template={_text(ex.get('template_id', b'-'))}  "
                f"inputs={len(ex['inputs'])} tokens  targets={len(ex['targets'])} tokens"
            )
            for feature in ("inputs", "targets"):
                # Mixtures drop the *_pretokenized copies; decode the ids instead.
                text = ex.get(f"{feature}_pretokenized")
                if text is None:
                    text = provider.output_features[feature].vocabulary.decode(ex[feature].tolist())
                print(f"[{feature}]\n" + _text(text))
        if not args.no_packing:
            lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
            eff = packing_efficiency(args.name, args.split, args.seed, lengths)
            print(f"\npacking efficiency (non-pad / total tokens, {lengths}): {eff:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

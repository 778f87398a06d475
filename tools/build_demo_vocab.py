"""Train the tiny SentencePiece model of the demo mixture (tasks/demo/vocab/demo.model).

A 600-piece BPE model trained on every generated example of the demo data set plus the
lexicon, so every word the generator can emit is covered (``character_coverage=1.0`` rules out
<unk> for any character seen here). Content words are single pieces and numbers are split into
digits. Training is single-threaded on unshuffled, unsampled input, which makes the model file
reproducible byte for byte; ``--check`` verifies the committed file. Rebuild it whenever the
generator, lexicon or templates change (``tests/test_data_demo.py`` fails until you do).

Ids follow the T5 / SeqIO convention: pad=0, eos=1, unk=2, no bos.

    .venv/bin/python tools/build_demo_vocab.py            # rebuild
    .venv/bin/python tools/build_demo_vocab.py --check    # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tasks.demo import generate, lexicon  # noqa: E402

DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "tasks", "demo", "vocab", "demo.model")
VOCAB_SIZE = 600
LEXICON_REPEATS = 500


def training_text(seed: int = generate.DEFAULT_SEED) -> list[str]:
    # The lexicon lines guarantee coverage even of words a split happens to miss; repeating
    # them makes BPE merge every content word (names, cities, items, ...) into one piece, so
    # that copying a word is copying one token. Template words matter less (fixed prompts).
    return [" ".join(lexicon.all_words())] * LEXICON_REPEATS + generate.corpus(seed)


def build(vocab_size: int = VOCAB_SIZE, seed: int = generate.DEFAULT_SEED) -> bytes:
    """Returns the serialised SentencePiece model trained on the demo text."""
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        # A one-rule normalizer (tab -> space) keeps the model tens of KB: the stock NFKC rules
        # add ~240 KB, and an empty rule set makes every load log a warning. Our text is ASCII.
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write("9\t20\n")
        # Feeding sentences (not a file) keeps temp paths out of the stored trainer spec.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(training_text(seed)),
            model_writer=model,
            model_type="bpe",  # frequent template words become whole pieces
            vocab_size=vocab_size,
            character_coverage=1.0,
            normalization_rule_tsv=rules,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            num_threads=1,  # determinism: no thread-order effects
            input_sentence_size=0,  # use every line, no sampling
            shuffle_input_sentence=False,
            split_digits=True,  # numbers are digit sequences: one consistent scheme for 0..99
            minloglevel=2,
        )
    proto = sp_model.ModelProto.FromString(model.getvalue())
    proto.normalizer_spec.normalization_rule_tsv = ""  # the temp path; the rules are compiled in
    proto.normalizer_spec.name = "demo_tab_to_space"
    return proto.SerializeToString(deterministic=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="compare with --output, write nothing")
    args = parser.parse_args(argv)
    data = build(args.vocab_size, args.seed)
    if args.check:
        with open(args.output, "rb") as f:
            same = f.read() == data
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(data)
    print(f"wrote {args.output} ({len(data)} bytes, vocab_size={args.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""IFS data (AlShikh et al. 2023): dialogue fragments, the instruction set, classifier data.

Pure Python (no TensorFlow), so the plug-in, its tools and its tests share one builder.

A dialogue's first user turn is the instruction ``I`` and the first assistant turn after it
the response ``R``. The concatenation ``"I R"`` is cut at a word boundary inside ``I``:

* ``Ip``: the partial instruction (the words before the cut),
* ``Ic``: the continuation of the instruction (the words after it); ``Ic R`` continues on
  into the response.

The *instruction set* holds ``I`` or ``Ip`` per dialogue (``partial_fraction`` of them
partial); a model follows instructions when it answers both rather than continuing them.
The *classifier data* labels text 1 (answer-like) for ``R`` and 0 (continuation-like) for
``Ic`` or ``Ic R`` (one of the two per dialogue), de-duplicated and balanced 1:1.

Every random choice is a seeded hash of the dialogue's content, so the same data and seed
always give the same fragments, in any order and on any host.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from t5x_instruct.errors import UserInputError, not_utf8

log = logging.getLogger(__name__)

ANSWER, CONTINUATION = 1, 0
KINDS = ("full", "partial")
# How t5x_instruct.data.custom renders a 'messages' record's first exchange (the prompt a
# model tuned on such data expects); '{instruction}' leaves instructions as they are (demo).
CHAT_PROMPT = "User: {instruction}\nAssistant:"
PLAIN_PROMPT = "{instruction}"
_WORD_GAP = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One exchange: the first user turn and the first assistant turn after it."""

    instruction: str
    response: str


@dataclasses.dataclass(frozen=True)
class Fragments:
    """The paper's fragments of one dialogue; ``partial``/``continuation`` are None when the
    instruction is a single word (no word boundary to cut at)."""

    instruction: str  # I
    partial: str | None  # Ip
    continuation: str | None  # Ic
    response: str  # R

    @property
    def continuation_and_response(self) -> str | None:
        """``Ic R``: the rest of the concatenation ``"I R"`` after the cut."""
        if self.continuation is None:
            return None
        return f"{self.continuation} {self.response}"


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One entry of the instruction set: what the model is prompted with, and its kind."""

    kind: str  # 'full' or 'partial'
    instruction: str  # I or Ip
    inputs: str  # the rendered prompt fed to the model

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClassifierExample:
    text: str
    label: int  # ANSWER (1) or CONTINUATION (0)
    source: str  # 'R', 'Ic' or 'Ic+R'


@dataclasses.dataclass(frozen=True)
class ReadStats:
    """Records read from dialogue files and why the skipped ones were skipped."""

    records: int
    kept: int
    skipped: Mapping[str, int]
    examples: tuple[str, ...]  # 'file:line: reason' of the first few skips


def _rng(seed: int, *parts: str) -> random.Random:
    """A generator keyed by the seed and the content (order-independent choices)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def word_boundaries(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every whitespace run between two words of ``text`` (stripped)."""
    return [m.span() for m in _WORD_GAP.finditer(text.strip())]


def fragment(dialogue: Dialogue, seed: int = 0) -> Fragments:
    """Cuts ``dialogue.instruction`` at one word boundary, chosen uniformly (seeded).

    Whitespace inside each fragment is kept as written; the cut's whitespace run is dropped.
    """
    text = dialogue.instruction.strip()
    response = dialogue.response.strip()
    gaps = word_boundaries(text)
    if not gaps:
        return Fragments(text, None, None, response)
    start, end = _rng(seed, "cut", text, response).choice(gaps)
    return Fragments(text, text[:start], text[end:], response)


# ------------------------------------------------------------------------- instruction set


def instruction_set(
    dialogues: Sequence[Dialogue],
    *,
    seed: int = 0,
    partial_fraction: float = 0.5,
    prompt: str = PLAIN_PROMPT,
) -> list[Instruction]:
    """``I`` or ``Ip`` per dialogue, in the dialogues' order; each is partial with probability
    ``partial_fraction`` (seeded per dialogue; one-word instructions stay full)."""
    if not 0.0 <= partial_fraction <= 1.0:
        raise UserInputError(f"partial_fraction={partial_fraction} must be in [0, 1].")
    if "{instruction}" not in prompt:
        raise UserInputError(f"prompt {prompt!r} must contain '{{instruction}}'.")
    out = []
    for dialogue in dialogues:
        frags = fragment(dialogue, seed)
        coin = _rng(seed, "kind", frags.instruction, frags.response).random()
        if frags.partial is not None and coin < partial_fraction:
            kind, text = "partial", frags.partial
        else:
            kind, text = "full", frags.instruction
        out.append(Instruction(kind, text, prompt.replace("{instruction}", text)))
    return out


# ------------------------------------------------------------------------- classifier data


def classifier_examples(dialogues: Iterable[Dialogue], *, seed: int = 0) -> list[ClassifierExample]:
    """Per dialogue ``(R, 1)`` and one of ``(Ic, 0)`` / ``(Ic R, 0)`` (a seeded coin), then
    de-duplicated by text (a text seen with both labels is dropped) and balanced 1:1 by a
    seeded subsample of the larger class. Sorted by text, so the result is order-free."""
    labels: dict[str, set[int]] = collections.defaultdict(set)
    sources: dict[tuple[str, int], str] = {}
    for dialogue in dialogues:
        frags = fragment(dialogue, seed)
        candidates = [(frags.response, ANSWER, "R")]
        if frags.continuation is not None:
            if _rng(seed, "negative", frags.instruction, frags.response).random() < 0.5:
                candidates.append((frags.continuation, CONTINUATION, "Ic"))
            else:
                candidates.append((frags.continuation_and_response, CONTINUATION, "Ic+R"))
        for text, label, source in candidates:
            if text:
                labels[text].add(label)
                sources.setdefault((text, label), source)
    conflicts = sorted(t for t, ls in labels.items() if len(ls) > 1)
    if conflicts:
        log.warning(
            "IFS classifier data: dropped %d text(s) that are both a response and a "
            "continuation, e.g. %r", len(conflicts), conflicts[0],
        )  # fmt: skip
    by_label: dict[int, list[str]] = {ANSWER: [], CONTINUATION: []}
    for text, ls in sorted(labels.items()):
        if len(ls) == 1:
            by_label[next(iter(ls))].append(text)
    n = min(len(by_label[ANSWER]), len(by_label[CONTINUATION]))
    rng = random.Random(f"ifs-balance:{seed}")
    kept = []
    for label, texts in by_label.items():
        chosen = texts if len(texts) == n else sorted(rng.sample(texts, n))
        kept += [ClassifierExample(t, label, sources[(t, label)]) for t in chosen]
    return sorted(kept, key=lambda e: (e.text, e.label))


def split_examples(
    examples: Sequence[ClassifierExample],
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
) -> dict[str, list[ClassifierExample]]:
    """Splits by text, each label on its own so every split stays balanced (seeded)."""
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise UserInputError(f"split fractions {dict(fractions)} must be >= 0 with a positive sum.")
    out: dict[str, list[ClassifierExample]] = {name: [] for name in fractions}
    for label in (ANSWER, CONTINUATION):
        group = sorted((e for e in examples if e.label == label), key=lambda e: e.text)
        random.Random(f"ifs-split:{seed}:{label}").shuffle(group)
        start = 0
        names = list(fractions)
        for i, name in enumerate(names):
            size = (
                len(group) - start
                if i == len(names) - 1
                else round(len(group) * fractions[name] / total)
            )
            out[name] += group[start : start + size]
            start += size
    return {name: sorted(rows, key=lambda e: (e.text, e.label)) for name, rows in out.items()}


# ------------------------------------------------------------------------- reading files


def _first_exchange(record: Any) -> tuple[str, str]:
    """(instruction, response) of a ``messages`` record; ValueError names what is missing."""
    if not isinstance(record, Mapping):
        raise ValueError(f"not a JSON object ({type(record).__name__})")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("no 'messages' list")
    instruction = None
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("a message is not an object")
        role, content = message.get("role"), message.get("content")
        if instruction is None and role == "user":
            instruction = content
        elif instruction is not None and role == "assistant":
            if not isinstance(content, str) or not content.strip():
                raise ValueError("empty response")
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError("empty instruction")
            return instruction, content
    if instruction is None:
        raise ValueError("no user turn")
    raise ValueError("no assistant turn")


def read_dialogues(paths: Sequence[str]) -> tuple[list[Dialogue], ReadStats]:
    """First exchanges of JSONL ``messages`` records (the custom chat format).

    Bad records (not UTF-8, not JSON, no user or assistant turn, empty response or
    instruction) are skipped and counted by reason in the log.

    Raises:
      UserInputError: a file is missing, or no record is usable (with the counts).
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise UserInputError("No dialogue files given.")
    dialogues: list[Dialogue] = []
    skipped: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    records = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError as exc:
            raise UserInputError(f"Dialogue file not found: {path}") from exc
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            records += 1
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError("not UTF-8") from exc
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError("invalid JSON") from exc
                dialogues.append(Dialogue(*_first_exchange(record)))
            except ValueError as exc:
                skipped[str(exc)] += 1
                if len(examples) < 5:
                    examples.append(f"{path}:{lineno}: {exc}")
    stats = ReadStats(records, len(dialogues), dict(skipped), tuple(examples))
    if skipped:
        log.warning(
            "IFS dialogues: skipped %d of %d record(s) (%s); first: %s",
            sum(skipped.values()), records,
            ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())), examples[0],
        )  # fmt: skip
    if not dialogues:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "no records"
        raise UserInputError(
            f"No usable dialogue in {list(paths)}: {records} record(s), {reasons}. IFS needs "
            'JSONL records {"messages": [{"role": "user", ...}, {"role": '
            '"assistant", ...}]} with a non-empty first assistant turn after a user turn.'
        )
    return dialogues, stats


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_instructions(path: str) -> list[Instruction]:
    """An instruction set written by :func:`write_jsonl` of ``Instruction.to_json`` rows."""
    out = []
    try:
        with open(path, "rb") as f:  # decoded per line, so a bad byte names its line
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise not_utf8(f"{path}:{lineno}", raw, exc) from exc
                try:
                    row = json.loads(line)
                    item = Instruction(row["kind"], row["instruction"], row["inputs"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise UserInputError(
                        f"{path}:{lineno}: not an IFS instruction record ({exc!r}); expected "
                        "{'kind': 'full'|'partial', 'instruction': ..., 'inputs': ...}."
                    ) from exc
                if item.kind not in KINDS:
                    raise UserInputError(f"{path}:{lineno}: kind {item.kind!r} not in {KINDS}.")
                out.append(item)
    except FileNotFoundError as exc:
        raise UserInputError(
            f"IFS instruction set not found: {path} (tools/train_ifs_classifier.py writes "
            "one next to the classifier)."
        ) from exc
    if not out:
        raise UserInputError(f"IFS instruction set {path} is empty.")
    return out

"""IFS data builder: fragments of hand-built dialogues, the instruction set, classifier data,
and reading chat files with bad records.

Oracles: fragments and word boundaries written out by hand; ``str.split`` prefixes for the
partial instructions; binomial bounds for the partial fraction.
"""

from __future__ import annotations

import json
import logging
import random

import pytest

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.ifs.data import (
    ANSWER,
    CHAT_PROMPT,
    CONTINUATION,
    Dialogue,
    Fragments,
    classifier_examples,
    fragment,
    instruction_set,
    read_dialogues,
    read_instructions,
    split_examples,
    write_jsonl,
)

COLOURS = Dialogue("Name three primary colours.", "Red, yellow and blue.")


def _dialogues(n: int) -> list[Dialogue]:
    rng = random.Random(7)
    words = ["list", "the", "items", "of", "this", "set", "please", "now", "give", "me"]
    out = []
    for i in range(n):
        instruction = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + f" #{i}?"
        out.append(Dialogue(instruction, f"answer{i}"))
    return out


def test_every_cut_is_a_word_boundary_and_all_of_them_occur() -> None:
    # "Name three primary colours." has three word boundaries; written out by hand.
    expected = {
        Fragments(COLOURS.instruction, "Name", "three primary colours.", COLOURS.response),
        Fragments(COLOURS.instruction, "Name three", "primary colours.", COLOURS.response),
        Fragments(COLOURS.instruction, "Name three primary", "colours.", COLOURS.response),
    }
    seen = {fragment(COLOURS, seed) for seed in range(60)}
    assert seen == expected
    frags = fragment(COLOURS, 0)
    assert frags.continuation_and_response == f"{frags.continuation} Red, yellow and blue."


def test_fragments_keep_inner_whitespace_and_single_words_are_not_cut() -> None:
    dialogue = Dialogue("  Sum\tthese:\n1  2 ", "3")
    seen = {(f.partial, f.continuation) for f in (fragment(dialogue, s) for s in range(80))}
    assert seen == {("Sum", "these:\n1  2"), ("Sum\tthese:", "1  2"), ("Sum\tthese:\n1", "2")}
    single = fragment(Dialogue("Hello", "Hi!"), 3)
    assert single == Fragments("Hello", None, None, "Hi!")
    assert single.continuation_and_response is None


def test_fragments_are_seeded_and_content_keyed() -> None:
    dialogues = _dialogues(50)
    first = instruction_set(dialogues, seed=3)
    assert instruction_set(dialogues, seed=3) == first
    # Reordering the data changes nothing per dialogue: choices hash the content.
    reordered = instruction_set(dialogues[::-1], seed=3)
    assert reordered[::-1] == first
    assert instruction_set(dialogues, seed=4) != first


def test_instruction_set_is_about_half_partial_with_true_prefixes() -> None:
    dialogues = _dialogues(400)
    items = instruction_set(dialogues, seed=0, prompt=CHAT_PROMPT)
    partial = [i for i in items if i.kind == "partial"]
    # Binomial(400, 0.5): 5 standard deviations are +-50.
    assert 150 <= len(partial) <= 250
    for dialogue, item in zip(dialogues, items):
        words = dialogue.instruction.split()
        if item.kind == "full":
            assert item.instruction == dialogue.instruction
        else:
            prefixes = {" ".join(words[:k]) for k in range(1, len(words))}
            assert item.instruction in prefixes
        assert item.inputs == f"User: {item.instruction}\nAssistant:"
    assert {i.kind for i in instruction_set(dialogues, partial_fraction=0.0)} == {"full"}
    assert {i.kind for i in instruction_set(dialogues, partial_fraction=1.0)} == {"partial"}
    one_word = instruction_set([Dialogue("Hello", "Hi")], partial_fraction=1.0)
    assert [i.kind for i in one_word] == ["full"]
    with pytest.raises(UserInputError, match="partial_fraction"):
        instruction_set(dialogues, partial_fraction=1.5)


def test_classifier_data_labels_and_balance() -> None:
    dialogues = _dialogues(300)
    examples = classifier_examples(dialogues, seed=1)
    answers = [e for e in examples if e.label == ANSWER]
    others = [e for e in examples if e.label == CONTINUATION]
    assert len(answers) == len(others) > 0
    responses = {d.response for d in dialogues}
    # Every possible Ic / "Ic R" of every dialogue, from str.split (instructions here use
    # single spaces, so joining words reproduces the text).
    continuations = {}
    for d in dialogues:
        words = d.instruction.split()
        for k in range(1, len(words)):
            ic = " ".join(words[k:])
            continuations[ic] = "Ic"
            continuations[f"{ic} {d.response}"] = "Ic+R"
    for e in answers:
        assert e.text in responses and e.source == "R"
    for e in others:
        assert continuations[e.text] == e.source
    assert {e.source for e in others} == {"Ic", "Ic+R"}
    assert classifier_examples(dialogues[::-1], seed=1) == examples


def test_a_text_with_both_labels_is_dropped(caplog) -> None:
    # "Paint sky." has one cut: Ic = "sky.", Ic R = "sky. done". Both are also responses of
    # other dialogues, so whichever negative dialogue 0 contributes conflicts and is dropped.
    dialogues = [
        Dialogue("Paint sky.", "done"),
        Dialogue("What is above?", "sky."),
        Dialogue("And then?", "sky. done"),
    ]
    for seed in range(10):
        with caplog.at_level(logging.WARNING):
            labels = {e.text: e.label for e in classifier_examples(dialogues, seed=seed)}
        present = [t for t in ("sky.", "sky. done") if t in labels]
        assert len(present) <= 1 and all(labels[t] == ANSWER for t in present)
    assert "both a response and a continuation" in caplog.text


def test_split_examples_are_disjoint_balanced_and_complete() -> None:
    examples = classifier_examples(_dialogues(400), seed=0)
    splits = split_examples(examples, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)
    texts = [set(e.text for e in rows) for rows in splits.values()]
    assert sum(map(len, texts)) == len(set().union(*texts)) == len(examples)
    for rows in splits.values():
        labels = [e.label for e in rows]
        assert labels.count(ANSWER) == labels.count(CONTINUATION)
    n = len(examples) // 2
    assert len(splits["test"]) == 2 * round(n * 0.1)


def _write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _chat(*turns: tuple[str, str]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}).encode()


def test_read_dialogues_skips_and_counts_bad_records(tmp_path, caplog) -> None:
    path = _write_lines(
        tmp_path / "chat.jsonl",
        [
            _chat(("system", "be brief"), ("user", "Name a colour."), ("assistant", "Red."),
                  ("user", "Another?"), ("assistant", "Blue.")),
            b"\xff\xfe not utf-8",
            b"{not json",
            _chat(("user", "Anyone there?")),
            _chat(("user", "Say nothing."), ("assistant", "   ")),
            _chat(("assistant", "Hello!"), ("user", "Hi.")),
            b"",
            _chat(("user", "Count to two."), ("assistant", "1 2")),
        ],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        dialogues, stats = read_dialogues([path])
    assert dialogues == [Dialogue("Name a colour.", "Red."), Dialogue("Count to two.", "1 2")]
    assert stats.records == 7 and stats.kept == 2
    assert stats.skipped == {
        "not UTF-8": 1, "invalid JSON": 1, "no assistant turn": 2, "empty response": 1,
    }  # fmt: skip
    assert f"{path}:2: not UTF-8" in stats.examples[0]
    assert "skipped 5 of 7 record(s)" in caplog.text


def test_read_dialogues_with_nothing_usable_is_one_clear_error(tmp_path) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [b"\xff", _chat(("user", "Hi?"))])
    with pytest.raises(UserInputError, match=r"No usable dialogue .*2 record\(s\), 1 no "
                       r"assistant turn, 1 not UTF-8"):  # fmt: skip
        read_dialogues([path])
    with pytest.raises(UserInputError, match="not found"):
        read_dialogues([str(tmp_path / "missing.jsonl")])


def test_instruction_files_round_trip_and_bad_rows_name_the_line(tmp_path) -> None:
    items = instruction_set(_dialogues(10), seed=0)
    path = tmp_path / "instructions.jsonl"
    write_jsonl(str(path), (i.to_json() for i in items))
    assert read_instructions(str(path)) == items
    path.write_text('{"kind": "full", "instruction": "a", "inputs": "a"}\n{"kind": "x"}\n')
    with pytest.raises(UserInputError, match=r"instructions.jsonl:2: not an IFS instruction"):
        read_instructions(str(path))

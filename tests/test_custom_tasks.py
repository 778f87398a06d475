"""Own data from JSONL/CSV: formats, one example per assistant turn, and registration errors."""

from __future__ import annotations

import json

import gin
import pytest
import seqio

from t5x_instruct import data
from t5x_instruct.data.custom import (
    DataFileError,
    load_stats,
    register_jsonl_task,
    register_jsonl_tasks,
    register_mixture,
)
from t5x_instruct.data.templates import Template, TemplateError

BYTES = seqio.ByteVocabulary()


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _texts(name: str) -> list[tuple[str, str]]:
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False)
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in ds.as_numpy_iterator()
    ]


def test_instruction_records_with_configurable_field_names(tmp_path):
    path = _write(tmp_path / "a.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "response": "5"},
        {"instruction": "Say hi.", "response": "hi"},
    ])  # fmt: skip
    register_jsonl_task("custom_alpaca", paths=[path], fields={"output": "response"},
                        vocabulary=BYTES)  # fmt: skip
    assert _texts("custom_alpaca") == [("Add the numbers.\n\n2 and 3", "5"), ("Say hi.", "hi")]
    assert load_stats("custom_alpaca").examples == 2


def test_messages_give_one_example_per_assistant_turn(tmp_path):
    chat = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]}  # fmt: skip
    path = _write(tmp_path / "chat.jsonl", [chat])
    register_jsonl_task("custom_chat", paths=[path], format="messages", vocabulary=BYTES)
    assert _texts("custom_chat") == [
        ("System: Be brief.\nUser: Hi\nAssistant:", "Hello."),
        ("System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: 2+2?\nAssistant:", "4"),
    ]
    # Targets are assistant turns only, so with prefix-LM the loss covers exactly them.
    batch = next(data.get_dataset("custom_chat", task_feature_lengths={"inputs": 96,
                 "targets": 8}, batch_size=2, model_type="prefix_lm", shuffle=False
                 ).as_numpy_iterator())  # fmt: skip
    assert sorted(batch["decoder_loss_weights"].sum(axis=1).tolist()) == [2, 7]  # + EOS


def test_csv_inputs_targets_with_a_template_and_splits(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("inputs,targets\nbonjour,hello\nmerci,thanks\n")
    val = tmp_path / "val.csv"
    val.write_text("inputs,targets\noui,yes\n")
    template = Template("fr", "Translate to English: {inputs}", "{targets}")
    task = register_jsonl_task("custom_csv", paths={"train": [str(train)],
                               "validation": [str(val)]}, format="inputs_targets",
                               template=template, vocabulary=BYTES)  # fmt: skip
    assert set(task.splits) == {"train", "validation"}
    assert _texts("custom_csv") == [("Translate to English: bonjour", "hello"),
                                    ("Translate to English: merci", "thanks")]  # fmt: skip


def test_bad_row_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        {"instruction": "ok", "output": "1"},
        "",
        {"instruction": "no output here"},
        "{not json",
        {"instruction": "ok too", "output": "2"},
    ])  # fmt: skip
    with pytest.raises(DataFileError, match=rf"custom_bad.*{path}:3: missing field 'output'"):
        register_jsonl_task("custom_bad", paths=[path], vocabulary=BYTES)
    register_jsonl_task("custom_bad", paths=[path], skip_bad_rows=True, vocabulary=BYTES)
    stats = load_stats("custom_bad")
    assert (stats.rows, stats.examples, stats.skipped) == (4, 2, 2)
    assert stats.skipped_reasons[1].startswith(f"{path}:4: invalid JSON")
    assert len(_texts("custom_bad")) == 2


def test_registration_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"custom_empty.*no examples"):
        register_jsonl_task("custom_empty", paths=[str(empty)], vocabulary=BYTES)
    good = _write(tmp_path / "g.jsonl", [{"inputs": "a", "targets": "b"}])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['answer'\]"):
        register_jsonl_task("custom_x", paths=[good], format="inputs_targets",
                            fields={"answer": "b"}, vocabulary=BYTES)  # fmt: skip
    with pytest.raises(TemplateError, match=r"Task 'custom_x', template 't'.*'question'"):
        register_jsonl_task(
            "custom_x",
            paths=[good],
            format="inputs_targets",
            template=Template("t", "{question}", "{targets}"),
            vocabulary=BYTES,
        )
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        register_jsonl_task("custom_x", paths=[str(tmp_path / "missing.jsonl")], vocabulary=BYTES)
    with pytest.raises(ValueError, match="unknown format"):
        register_jsonl_task("custom_x", paths=[good], format="alpaca", vocabulary=BYTES)
    register_jsonl_task("custom_ok", paths=[good], format="inputs_targets", vocabulary=BYTES)
    with pytest.raises(ValueError, match=r"custom_mix.*sum to zero"):
        register_mixture("custom_mix", {"custom_ok": 0.0})
    with pytest.raises(ValueError, match="no tasks"):
        register_mixture("custom_mix", {})
    assert (
        register_mixture("custom_mix", {"custom_ok": 2.0}).get_rate(
            seqio.get_mixture_or_task("custom_ok")
        )
        == 2.0
    )


def test_gin_binding_registers_tasks(tmp_path):
    path = _write(tmp_path / "g.jsonl", [{"inputs": "a", "targets": "b"}])
    with gin.unlock_config():
        gin.parse_config(
            f"register_jsonl_tasks.tasks = [{{'name': 'custom_gin', 'paths': ['{path}'], "
            "'format': 'inputs_targets'}]\nget_vocabulary.kind = 'byte'"
        )
    try:
        assert register_jsonl_tasks() == ["custom_gin"]
    finally:
        gin.clear_config()
    assert _texts("custom_gin") == [("a", "b")]

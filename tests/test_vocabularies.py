"""Local SentencePiece vocabularies chosen in gin (Flan-T5's ``spiece.model`` folder layout or
the file itself), the missing-file error, and the check that a task vocabulary fits the model.
The tiny SentencePiece model is trained here; the ``sentencepiece`` library is the oracle."""

from __future__ import annotations

import io
import json

import gin
import pytest
import sentencepiece as spm
import seqio

import tasks.demo
from t5x_instruct import data
from t5x_instruct.data import custom
from t5x_instruct.errors import UserInputError
from tasks.flan.registration import flan_vocabulary
from tasks.p3 import p3_vocabulary

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "summarize the following article in one sentence",
    "translate english to german: the house is small",
    "answer the question: where is the cat? on the mat",
] * 20
SIZE = 48
TEXT = "the cat jumps over the small house"


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A folder laid out like a downloaded Flan-T5 checkpoint: ``spiece.model`` inside."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=SIZE,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("flan-t5-tiny")
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


def _oracle(path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def test_a_checkpoint_folder_or_its_file_is_the_task_vocabulary_in_gin(checkpoint_dir):
    model_file = checkpoint_dir / "spiece.model"
    gin.parse_config(
        ["flan_vocabulary.kind = 'sentencepiece'", f"flan_vocabulary.path = '{checkpoint_dir}'"]
    )
    vocab = flan_vocabulary()
    assert isinstance(vocab, seqio.SentencePieceVocabulary)
    assert vocab.sentencepiece_model_file == str(model_file)
    assert vocab.vocab_size == SIZE == _oracle(model_file).get_piece_size()
    assert list(vocab.encode(TEXT)) == _oracle(model_file).encode(TEXT)
    assert vocab.decode(vocab.encode(TEXT)) == TEXT
    gin.parse_config(["flan_vocabulary.extra_ids = 100"])  # T5's sentinels
    assert flan_vocabulary().vocab_size == SIZE + 100
    assert p3_vocabulary(path=str(model_file)).vocab_size == SIZE  # the .model file itself


def test_a_task_registered_under_the_gin_vocabulary_tokenises_with_it(checkpoint_dir, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"inputs": TEXT, "targets": "on the mat"}) + "\n")
    gin.parse_config(
        ["get_vocabulary.kind = 'sentencepiece'", f"get_vocabulary.path = '{checkpoint_dir}'"]
    )
    name = "vocabularies_test_task"
    custom.register_jsonl_task(name, paths=[str(path)], format="inputs_targets")
    try:
        ds = seqio.get_mixture_or_task(name).get_dataset(
            sequence_length=None, split="train", shuffle=False
        )
        (ex,) = list(ds.as_numpy_iterator())
        oracle = _oracle(checkpoint_dir / "spiece.model")
        assert ex["inputs"].tolist() == oracle.encode(TEXT) + [1]
        assert ex["targets"].tolist() == oracle.encode("on the mat") + [1]
        data.check_vocabulary_fits(name, SIZE)  # exactly fits
        with pytest.raises(data.VocabularySizeError) as err:
            data.check_vocabulary_fits(name, SIZE - 1)
        message = str(err.value)
        assert (
            name in message and f"{SIZE} ids" in message and f"vocab_size is {SIZE - 1}" in message
        )
        assert str(checkpoint_dir / "spiece.model") in message
    finally:
        seqio.TaskRegistry.remove(name)


def test_bindings_after_the_task_import_still_choose_the_vocabulary(checkpoint_dir, tmp_path):
    """A gin file imports the task module (registering its tasks) before it binds the path,
    and --gin. flags come later still: the tasks use the vocabulary bound in the end."""
    gin.parse_config(["import tasks.flan", "flan_vocabulary.kind = 'sentencepiece'"])
    gin.parse_config([f"flan_vocabulary.path = '{checkpoint_dir}'"])  # as a --gin. flag
    task = seqio.get_mixture_or_task("flan_rte_zero_shot")
    vocab = task.output_features["inputs"].vocabulary
    oracle = _oracle(checkpoint_dir / "spiece.model")
    assert vocab.vocab_size == SIZE and list(vocab.encode(TEXT)) == oracle.encode(TEXT)
    assert vocab.decode(oracle.encode(TEXT)) == TEXT
    data.check_vocabulary_fits("flan_rte_zero_shot", SIZE)
    gin.clear_config()
    assert vocab.vocab_size == 259  # unbound again: Flan's default byte vocabulary
    gin.parse_config(
        ["flan_vocabulary.kind = 'sentencepiece'", f"flan_vocabulary.path = '{tmp_path}/x'"]
    )
    with pytest.raises(data.VocabularyNotFoundError, match=r"flan_vocabulary\.path"):
        data.check_vocabulary_fits("flan_rte_zero_shot", 32128)  # the check at start reports it


def test_a_missing_vocabulary_is_one_error_naming_the_path_and_binding(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    gin.parse_config(
        ["flan_vocabulary.kind = 'sentencepiece'", f"flan_vocabulary.path = '{missing}'"]
    )
    with pytest.raises(data.VocabularyNotFoundError) as err:
        flan_vocabulary()
    assert isinstance(err.value, UserInputError) and isinstance(err.value, FileNotFoundError)
    assert str(missing) in str(err.value) and "flan_vocabulary.path" in str(err.value)
    empty = tmp_path / "empty-checkpoint"
    empty.mkdir()
    with pytest.raises(data.VocabularyNotFoundError, match=r"spiece\.model") as err:
        p3_vocabulary(path=str(empty))
    assert str(empty) in str(err.value) and "p3_vocabulary.path" in str(err.value)
    with pytest.raises(UserInputError, match=r"get_vocabulary\.kind = 'wordpiece'"):
        data.get_vocabulary(kind="wordpiece")


def test_vocabulary_size_check_over_a_mixture(tmp_path):
    demo_size = 600  # tasks/demo/vocab/demo.model
    data.check_vocabulary_fits(tasks.demo.EVAL_MIXTURE, 640)  # the quickstart model: fits
    with pytest.raises(data.VocabularySizeError) as err:
        data.check_vocabulary_fits(tasks.demo.EVAL_MIXTURE, 512)
    message = str(err.value)
    n_tasks = len(data.leaf_tasks(tasks.demo.EVAL_MIXTURE))
    assert f"{demo_size} ids" in message and "vocab_size is 512" in message
    assert f"({2 * n_tasks} in all)" in message  # inputs and targets of every task
    assert "T5Config.vocab_size" in message
    # UTF-8 bytes after pad/eos/unk: 259 ids, the byte 0xff being id 258.
    path = tmp_path / "bytes.jsonl"
    path.write_text(json.dumps({"inputs": "\u00ff", "targets": "x"}) + "\n")
    gin.parse_config(["get_vocabulary.kind = 'byte'"])
    name = "vocabularies_test_bytes"
    custom.register_jsonl_task(name, paths=[str(path)], format="inputs_targets")
    try:
        (ex,) = seqio.get_mixture_or_task(name).get_dataset(None, split="train").as_numpy_iterator()
        assert ex["inputs"].tolist() == [0xC3 + 3, 0xBF + 3, 1]  # "\u00ff" is C3 BF in UTF-8
        data.check_vocabulary_fits(name, 259)
        with pytest.raises(data.VocabularySizeError) as err:
            data.check_vocabulary_fits(name, 258, features=["targets"])
        assert "byte vocabulary has 259 ids" in str(err.value)
    finally:
        seqio.TaskRegistry.remove(name)

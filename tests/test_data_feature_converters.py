"""Feature converters: packing for every model type, and loss exactly on the target tokens."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks.demo
from t5x_instruct import data
from tasks.demo.generate import generate

LENGTHS = tasks.demo.TASK_FEATURE_LENGTHS
TASK = "demo_reverse_list"  # multi-token targets make loss-weight mistakes visible
LM_TASK = "test_data_demo_targets_only"


@functools.cache
def _vocab() -> seqio.Vocabulary:
    return seqio.SentencePieceVocabulary(tasks.demo.VOCAB_PATH)


def _expected(split: str = "validation") -> list[tuple[list[int], list[int]]]:
    """(inputs + EOS, targets + EOS) ids of the task's examples in data order."""
    v = _vocab()
    examples = generate("reverse_list", split)
    return [([*v.encode(e.inputs), 1], [*v.encode(e.targets), 1]) for e in examples]


def _segments(batches, key: str, seg_key: str) -> list[tuple[int, ...]]:
    """Per packed segment, the positions (within its row) of the values of ``key``."""
    out = []
    for b in batches:
        for row in range(b[key].shape[0]):
            seg = b[seg_key][row]
            for s in range(1, int(seg.max()) + 1):
                out.append(tuple(b[key][row][seg == s]))
    return out


def _packed(model_type: str, task: str = TASK) -> list[dict[str, np.ndarray]]:
    ds = data.get_dataset(
        task, task_feature_lengths=LENGTHS, split="validation", batch_size=1,
        model_type=model_type, pack=True, shuffle=False, num_epochs=1,
    )  # fmt: skip
    return list(ds.as_numpy_iterator())


def test_encoder_decoder_packing_and_loss_on_targets():
    batches = _packed("encoder_decoder")
    assert "encoder_segment_ids" in batches[0] and "decoder_positions" in batches[0]
    expected = _expected()
    enc = _segments(batches, "encoder_input_tokens", "encoder_segment_ids")
    dec = _segments(batches, "decoder_target_tokens", "decoder_segment_ids")
    weights = _segments(batches, "decoder_loss_weights", "decoder_segment_ids")
    assert len(enc) == len(expected) > len(batches)  # several examples per packed row
    for (inputs, targets), e, d, w in zip(expected, enc, dec, weights, strict=True):
        assert list(e) == inputs and list(d) == targets
        assert all(x == 1 for x in w)  # every target token (and EOS) carries loss
    for b in batches:  # padding carries none
        assert not b["decoder_loss_weights"][b["decoder_segment_ids"] == 0].any()


def test_prefix_lm_packing_loss_only_on_targets_and_causal_attention_marks_prefix():
    batches = _packed("prefix_lm")
    expected = _expected()
    tokens = _segments(batches, "decoder_target_tokens", "decoder_segment_ids")
    inputs_read = _segments(batches, "decoder_input_tokens", "decoder_segment_ids")
    weights = _segments(batches, "decoder_loss_weights", "decoder_segment_ids")
    prefix = _segments(batches, "decoder_causal_attention", "decoder_segment_ids")
    assert len(tokens) == len(expected)
    rows = zip(expected, tokens, inputs_read, weights, prefix, strict=True)
    for (inputs, targets), t, r, w, p in rows:
        assert list(t) == inputs + targets
        n = len(inputs)
        assert list(w) == [0] * n + [1] * len(targets)  # no loss on the prompt
        # decoder_causal_attention is aligned with decoder_input_tokens: BOS + the prompt.
        assert list(p) == [1] * (n + 1) + [0] * (len(targets) - 1)
        assert list(r[: n + 1]) == [0, *inputs]
    for b in batches:
        pad = b["decoder_segment_ids"] == 0
        assert not b["decoder_loss_weights"][pad].any()
        assert not b["decoder_causal_attention"][pad].any()


def test_prefix_lm_unpacked_matches_documented_example():
    converter = data.get_feature_converter("prefix_lm", pack=False)
    ds = tf.data.Dataset.from_tensors({"inputs": [9, 4, 6, 1], "targets": [3, 9, 1]})
    out = next(converter(ds, {"inputs": 5, "targets": 3}).as_numpy_iterator())
    np.testing.assert_array_equal(out["decoder_target_tokens"], [9, 4, 6, 1, 3, 9, 1, 0])
    np.testing.assert_array_equal(out["decoder_input_tokens"], [0, 9, 4, 6, 1, 3, 9, 1])
    np.testing.assert_array_equal(out["decoder_causal_attention"], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0])
    lengths = data.get_model_feature_lengths("prefix_lm", {"inputs": 5, "targets": 3}, False)
    assert lengths["decoder_causal_attention"] == 8


@pytest.fixture(scope="module")
def lm_task() -> str:
    """A targets-only variant of the demo task: what the plain LM converter is for."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {"targets": [e.targets for e in generate("reverse_list", split)]}
        )

    seqio.TaskRegistry.remove(LM_TASK)
    seqio.TaskRegistry.add(
        LM_TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
        output_features={"targets": seqio.Feature(_vocab(), add_eos=True)},
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    )
    yield LM_TASK
    seqio.TaskRegistry.remove(LM_TASK)


def test_decoder_lm_packing_and_loss_on_all_target_tokens(lm_task):
    batches = _packed("decoder", lm_task)
    assert "decoder_causal_attention" not in batches[0]
    targets = [t for _, t in _expected()]
    tokens = _segments(batches, "decoder_target_tokens", "decoder_segment_ids")
    weights = _segments(batches, "decoder_loss_weights", "decoder_segment_ids")
    assert [list(t) for t in tokens] == targets
    assert all(all(x == 1 for x in w) for w in weights)
    for b in batches:
        assert not b["decoder_loss_weights"][b["decoder_segment_ids"] == 0].any()

"""Task features -> model features, by SeqIO's own feature converters.

``model_type`` picks the converter; we only choose and document, SeqIO does the work.

Model features (all int32, ``[batch, length]``):

* ``encoder_decoder`` (:class:`seqio.EncDecFeatureConverter`): ``encoder_input_tokens``,
  ``decoder_target_tokens``, ``decoder_input_tokens`` (targets shifted right, 0 = BOS),
  ``decoder_loss_weights`` (1 on every non-padding target token, i.e. only targets; the
  inputs live in the encoder and carry no loss); packed adds ``encoder_segment_ids``,
  ``encoder_positions``, ``decoder_segment_ids``, ``decoder_positions``.
* ``decoder`` (:class:`seqio.LMFeatureConverter`): plain language modelling on ``targets``
  only. ``decoder_loss_weights`` is 1 on every non-padding token. A task with ``inputs`` is
  rejected by :func:`t5x_instruct.data.get_dataset` because this converter would silently drop
  them; use ``prefix_lm`` for instruction data on a decoder-only model.
* ``prefix_lm`` (:class:`seqio.PrefixLMFeatureConverter`, ``loss_on_targets_only=True``):
  ``inputs + targets`` concatenated into one decoder sequence; ``decoder_loss_weights`` is 1
  only on the target tokens (and their EOS), 0 on the inputs and padding;
  ``decoder_causal_attention`` as below; packed adds ``decoder_segment_ids`` and
  ``decoder_positions``.

``decoder_causal_attention`` (prefix-LM only). Despite its name it marks the *non*-causal,
bidirectional prefix: 1 means "this position belongs to the prompt". It is aligned with
``decoder_input_tokens`` (the sequence the model reads), not with ``decoder_target_tokens``.
Because the inputs are shifted right by one (BOS first), the 1s cover the BOS slot plus every
input token, i.e. ``len(inputs) + 1`` positions, which in target coordinates is one position
past the inputs: the position that reads the last input token (its EOS) and predicts the
first target token. Example with inputs ``[9, 4, 6, 1]`` and targets ``[3, 9, 1]``::

    decoder_target_tokens    = [9, 4, 6, 1, 3, 9, 1, 0]
    decoder_input_tokens     = [0, 9, 4, 6, 1, 3, 9, 1]
    decoder_causal_attention = [1, 1, 1, 1, 1, 0, 0, 0]
    decoder_loss_weights     = [0, 0, 0, 0, 1, 1, 1, 0]

Our Decoder model reads 1 as "bidirectional prefix token": positions with 1 attend to every
other prefix position of the same segment, and all positions attend causally to the rest.
With packing the mask restarts per segment (1s at the start of every packed example).
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import seqio

MODEL_TYPES = ("encoder_decoder", "decoder", "prefix_lm")


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model_type {model_type!r}; expected one of {MODEL_TYPES}.")


@gin.configurable
def get_feature_converter(model_type: str, pack: bool) -> seqio.FeatureConverter:
    """Returns the SeqIO feature converter for ``model_type`` (see the module docstring)."""
    _check_model_type(model_type)
    if model_type == "encoder_decoder":
        return seqio.EncDecFeatureConverter(pack=pack)
    if model_type == "decoder":
        return seqio.LMFeatureConverter(pack=pack)
    return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)


def required_task_features(model_type: str) -> tuple[str, ...]:
    """Task features the converter consumes (``decoder`` reads ``targets`` only)."""
    _check_model_type(model_type)
    return ("targets",) if model_type == "decoder" else ("inputs", "targets")


def get_model_feature_lengths(
    model_type: str, task_feature_lengths: Mapping[str, int], pack: bool
) -> dict[str, int]:
    """Length of every model feature, e.g. to build dummy batches for model initialisation."""
    converter = get_feature_converter(model_type, pack)
    task_lengths = {k: task_feature_lengths[k] for k in required_task_features(model_type)}
    return dict(converter.get_model_feature_lengths(task_lengths))

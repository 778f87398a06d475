"""Batch surgery for distillation, inside the jitted step: both model families' layouts.

Batches are SeqIO's model features (see :mod:`t5x_instruct.data.feature_converters`):

* encoder-decoder: ``encoder_input_tokens [b, Li]``, ``decoder_target_tokens [b, Lt]``,
  ``decoder_input_tokens`` (targets shifted right), ``decoder_loss_weights``;
* prefix-LM: one row ``inputs + targets`` (``[b, Li + Lt]``), ``decoder_causal_attention``
  marking the prompt (``len(inputs) + 1`` leading ones: BOS slot plus inputs), loss weights
  on the targets only.

:func:`encdec_to_prefix_lm` / :func:`prefix_lm_to_encdec` let a teacher of the *other*
family read the student's batch (unpacked rows only), each with the index that maps the
teacher's logits back onto the student's target positions. :func:`on_policy_batch` replaces
the targets with the student's own samples and rebuilds every target feature consistently.
Packed rows (``*_segment_ids``) are left to the same-family path: re-packing generated
sequences of new lengths inside the step would change which examples share a row.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from t5x_instruct.decoding import temperature_sample

Batch = Mapping[str, jax.Array]


def is_packed(batch: Batch) -> bool:
    return any(name.endswith("_segment_ids") for name in batch)


def shift_right(tokens: jax.Array) -> jax.Array:
    """Decoder inputs from targets: a 0 (BOS) first, the last target dropped."""
    return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


def _gather_rows(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[b, index[b, t]]`` for ``[b, n]`` values and ``[b, t]`` indices (clipped)."""
    index = jnp.clip(index, 0, values.shape[1] - 1)
    return jnp.take_along_axis(values, index, axis=1)


def encdec_to_prefix_lm(batch: Batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """An unpacked encoder-decoder batch as a prefix-LM batch, and where its targets went.

    Returns:
      ``(lm_batch, index)``: ``lm_batch`` rows of length ``Li + Lt`` (inputs without their
      padding, then the targets); ``index [b, Lt]`` is the prefix-LM position whose logits
      predict target ``t`` (``len(inputs) + t``).
    """
    inputs = batch["encoder_input_tokens"]
    targets = batch["decoder_target_tokens"]
    b, li = inputs.shape
    lt = targets.shape[1]
    n_in = jnp.sum(inputs != 0, axis=1, dtype=jnp.int32)[:, None]
    pos = jnp.arange(li + lt, dtype=jnp.int32)[None]
    after = pos - n_in
    tokens = jnp.where(
        pos < n_in,
        _gather_rows(inputs, jnp.broadcast_to(pos, (b, li + lt))),
        jnp.where(after < lt, _gather_rows(targets, after), 0),
    )
    lm = {
        "decoder_target_tokens": tokens,
        "decoder_input_tokens": shift_right(tokens),
        "decoder_causal_attention": (pos < n_in + 1).astype(jnp.int32),
        "decoder_loss_weights": ((pos >= n_in) & (tokens != 0)).astype(jnp.float32),
    }
    return lm, n_in + jnp.arange(lt, dtype=jnp.int32)[None]


def prefix_lm_to_encdec(batch: Batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """An unpacked prefix-LM batch as an encoder-decoder batch, and where its targets went.

    Both new features keep the row length ``T`` (padding is masked by the model).

    Returns:
      ``(encdec_batch, index)``; ``index [b, T]`` is, for each student position, the decoder
      position of the encoder-decoder batch that predicts the same token (meaningful on the
      target positions, clipped elsewhere; those carry no loss weight).
    """
    tokens = batch["decoder_target_tokens"]
    b, t = tokens.shape
    n_in = (jnp.sum(batch["decoder_causal_attention"], axis=1, dtype=jnp.int32) - 1)[:, None]
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    targets = jnp.where(pos + n_in < t, _gather_rows(tokens, pos + n_in), 0)
    encdec = {
        "encoder_input_tokens": jnp.where(pos < n_in, tokens, 0),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": shift_right(targets),
        "decoder_loss_weights": (targets != 0).astype(jnp.float32),
    }
    return encdec, jnp.clip(pos - n_in, 0, t - 1) * jnp.ones((b, 1), jnp.int32)


def on_policy_batch(
    model: object,
    batch: Batch,
    rng: jax.Array,
    *,
    encoder_decoder: bool,
    max_length: int | None,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int = 1,
) -> dict[str, jax.Array]:
    """``batch`` with its targets replaced by samples of ``model`` (no gradient flows).

    Encoder-decoder: up to ``max_length or Lt`` tokens from the encoder inputs. Prefix-LM:
    the prompt is the ``decoder_causal_attention`` part of the row; the samples follow it,
    cut at the row's end (``max_length`` bounds the decode loop; default the row length).
    Every target feature (tokens, decoder inputs, loss weights) is rebuilt from the sample,
    its EOS included; tokens after EOS are padding with zero weight.
    """
    weights_dtype = batch["decoder_loss_weights"].dtype
    out = dict(batch)
    if encoder_decoder:
        lt = batch["decoder_target_tokens"].shape[1]
        length = min(max_length or lt, lt)
        sample = temperature_sample(
            model, {"encoder_input_tokens": batch["encoder_input_tokens"]},
            max_decode_length=length, eos_id=eos_id, rng=rng, num_decodes=1,
            temperature=temperature, top_k=top_k, top_p=top_p,
        )  # fmt: skip
        tokens = jnp.pad(sample.tokens[:, 0], ((0, 0), (0, lt - length)))
        pos = jnp.arange(lt, dtype=jnp.int32)[None]
        valid = pos < sample.lengths[:, :1]
        tokens = jnp.where(valid, tokens, 0)
    else:
        tokens0 = batch["decoder_target_tokens"]
        t = tokens0.shape[1]
        causal = batch["decoder_causal_attention"]
        prompt_len = jnp.sum(causal, axis=1, dtype=jnp.int32)
        pos = jnp.arange(t, dtype=jnp.int32)[None]
        prompt = jnp.where(pos < prompt_len[:, None], batch["decoder_input_tokens"], 0)
        sample = temperature_sample(
            model,
            {"decoder_input_tokens": prompt, "prompt_lengths": prompt_len,
             "decoder_causal_attention": causal},
            max_decode_length=max_length or t, eos_id=eos_id, rng=rng, num_decodes=1,
            temperature=temperature, top_k=top_k, top_p=top_p,
        )  # fmt: skip
        after = pos - (prompt_len[:, None] - 1)  # index into the sample at each position
        valid = (after >= 0) & (after < sample.lengths[:, :1])
        generated = _gather_rows(sample.tokens[:, 0], after)
        tokens = jnp.where(after < 0, tokens0, jnp.where(valid, generated, 0))
    tokens = jax.lax.stop_gradient(tokens)
    out["decoder_target_tokens"] = tokens
    out["decoder_input_tokens"] = shift_right(tokens)
    out["decoder_loss_weights"] = valid.astype(weights_dtype)
    return out

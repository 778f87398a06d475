"""Beam search: exhaustive search on a tiny vocabulary, greedy at beam 1, Hugging Face's beams.

Conventions under test (see ``t5x_instruct/decoding/beam_search.py``): a sequence is finished
by ``eos_id`` or by reaching ``max_decode_length``; its length counts generated tokens with the
EOS; its score is its summed log-probability divided by ``((5 + length) / 6) ** alpha``.
"""

from __future__ import annotations

import dataclasses
import itertools

import gin
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.models import build, forward, greedy, tiny_decoder_config, tiny_t5_config

from t5x_instruct.decoding import beam_search
from t5x_instruct.errors import UserInputError

# Scores are fp32 sums of <= 6 log-probabilities from the cached decode path, compared with
# float64 sums from teacher-forced logits (ours or Hugging Face's): ~1e-6 per token.
SCORE_TOL = 1e-5


@nnx.jit(static_argnames=("max_decode_length", "eos_id", "num_decodes", "alpha"))
def _beam(model, batch, **kwargs):
    return beam_search(model, batch, **kwargs)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _right_padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# ----------------------------------------------------------------------------- exhaustive

VOCAB, LENGTH, EOS = 6, 3, 1
# With k >= vocab**(LENGTH-1) every live prefix is kept and every finishing continuation ranks
# in the top k at its step, so the beams are exactly the k best sequences overall.
EXACT_BEAMS = VOCAB ** (LENGTH - 1)


def _teacher_forced_logprobs(model, family: str, context: np.ndarray) -> np.ndarray:
    """``[V**L, L, V]`` log-probabilities of every continuation of one input (no cache)."""
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=LENGTH)), np.int32)
    n = len(seqs)
    if family == "t5":
        dec = np.concatenate([np.zeros((n, 1), np.int32), seqs[:, :-1]], axis=1)
        enc = np.repeat(context[None], n, axis=0)
        logits = forward(model, jnp.asarray(enc), jnp.asarray(dec))
    else:
        tokens = np.concatenate([np.repeat(context[None], n, axis=0), seqs[:, :-1]], axis=1)
        logits = forward(model, jnp.asarray(tokens))[:, len(context) - 1 :]
    return seqs, _log_softmax(np.asarray(logits))


def _exhaustive_best(model, family: str, context: np.ndarray, alpha: float, k: int):
    """The k best (sequence, score) pairs by enumerating every sequence of length <= L."""
    seqs, logprobs = _teacher_forced_logprobs(model, family, context)
    token_lp = np.take_along_axis(logprobs, seqs[..., None], axis=-1)[..., 0]
    candidates: dict[tuple[int, ...], float] = {}
    for seq, lps in zip(seqs, token_lp, strict=True):
        eos_at = np.flatnonzero(seq == EOS)
        n = int(eos_at[0]) + 1 if len(eos_at) else LENGTH  # EOS ends it, else the length limit
        candidates[tuple(int(t) for t in seq[:n])] = lps[:n].sum() / ((5.0 + n) / 6.0) ** alpha
    return sorted(candidates.items(), key=lambda item: -item[1])[:k]


@pytest.mark.parametrize(
    ("family", "scan", "alpha"),
    [("t5", True, 0.6), ("decoder", False, 2.0)],
    ids=["t5-scan-alpha0.6", "decoder-loop-alpha2"],
)
def test_beam_search_equals_exhaustive_search(family: str, scan: bool, alpha: float) -> None:
    base = tiny_t5_config(scan=scan) if family == "t5" else tiny_decoder_config(scan=scan)
    model = build(dataclasses.replace(base, vocab_size=VOCAB), seed=7)
    contexts = [np.array([3, 4, 5, 2, 3], np.int32), np.array([5, 2], np.int32)]
    key = "encoder_input_tokens" if family == "t5" else "decoder_input_tokens"
    out = _beam(
        model,
        {key: jnp.asarray(_right_padded(contexts))},
        max_decode_length=LENGTH,
        eos_id=EOS,
        num_decodes=EXACT_BEAMS,
        alpha=alpha,
    )
    tokens, lengths, scores = map(np.asarray, (out.tokens, out.lengths, out.scores))
    for row, context in enumerate(contexts):
        want = _exhaustive_best(model, family, context, alpha, EXACT_BEAMS)
        got = [tuple(tokens[row, j, : lengths[row, j]].tolist()) for j in range(EXACT_BEAMS)]
        assert got == [seq for seq, _ in want]
        np.testing.assert_allclose(scores[row], [s for _, s in want], atol=SCORE_TOL, rtol=0)
        assert np.all(tokens[row][np.arange(LENGTH)[None] >= lengths[row][:, None]] == 0)


# ----------------------------------------------------------------------------- vs greedy


def _eos_that_occurs(model, key: str, inputs: np.ndarray) -> int:
    """A token the greedy path emits at step 3 of row 0, so that EOS really ends sequences."""
    free = greedy(model, {key: jnp.asarray(inputs)}, max_decode_length=4, eos_id=-1)
    return int(np.asarray(free.tokens)[0, 2])


def test_beam_of_one_without_length_penalty_is_greedy() -> None:
    """alpha = 0 and k = 1: only the argmax continuation can finish or stay live."""
    model = build(tiny_decoder_config())
    key = "decoder_input_tokens"
    rng = np.random.RandomState(11)
    inputs = _right_padded([rng.randint(2, 64, n) for n in (7, 3, 5)])
    eos = _eos_that_occurs(model, key, inputs)
    want = greedy(model, {key: jnp.asarray(inputs)}, max_decode_length=5, eos_id=eos)
    assert (np.asarray(want.lengths) < 5).any()
    got = _beam(
        model, {key: jnp.asarray(inputs)}, max_decode_length=5, eos_id=eos, num_decodes=1, alpha=0.0
    )
    np.testing.assert_array_equal(np.asarray(got.tokens)[:, 0], np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths)[:, 0], np.asarray(want.lengths))
    np.testing.assert_allclose(got.scores[:, 0], want.scores, atol=SCORE_TOL, rtol=0)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("prefix_lm", [True], ids=["prefix_lm"])
def test_decoder_mixed_prompt_lengths_beam_like_each_alone(prefix_lm: bool) -> None:
    """Scanned layers: the stacked cache is reordered on its batch axis (1)."""
    model = build(tiny_decoder_config(scan=True))
    rng = np.random.RandomState(4)
    prompts = [rng.randint(2, 64, n).astype(np.int32) for n in (3, 8)]

    def batch_of(rows: list[np.ndarray]) -> dict[str, jnp.ndarray]:
        tokens = _right_padded(rows)
        batch = {"decoder_input_tokens": jnp.asarray(tokens)}
        batch["prompt_lengths"] = jnp.asarray([len(r) for r in rows], jnp.int32)
        if prefix_lm:
            batch["decoder_causal_attention"] = jnp.asarray((tokens != 0).astype(np.int32))
        return batch

    kwargs = dict(max_decode_length=5, eos_id=_eos_that_occurs(model, "decoder_input_tokens",
                  _right_padded(prompts)), num_decodes=3, alpha=0.6)  # fmt: skip
    together = _beam(model, batch_of(prompts), **kwargs)
    for row, prompt in enumerate(prompts):
        alone = _beam(model, batch_of([prompt]), **kwargs)
        np.testing.assert_array_equal(np.asarray(together.tokens[row]), np.asarray(alone.tokens[0]))
        np.testing.assert_array_equal(
            np.asarray(together.lengths[row]), np.asarray(alone.lengths[0])
        )
        np.testing.assert_allclose(together.scores[row], alone.scores[0], atol=SCORE_TOL, rtol=0)


# ----------------------------------------------------------------------------- Hugging Face


# torch / transformers are imported where used: the second test environment (`make test-next`)
# has neither and skips just the Hugging Face comparisons.
def _hf_beams(hf, enc: np.ndarray, *, beams: int, steps: int, **kwargs) -> tuple:
    import torch
    from helpers.hf_models import torch_ints

    with torch.no_grad():
        out = hf.generate(
            input_ids=torch_ints(enc),
            attention_mask=torch_ints(enc != 0),
            max_new_tokens=steps,
            do_sample=False,
            num_beams=beams,
            num_return_sequences=beams,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            decoder_start_token_id=0,
            **kwargs,
        )
    seqs = out.sequences.numpy()[:, 1:]  # drop the start token
    seqs = np.pad(seqs, ((0, 0), (0, steps - seqs.shape[1])))
    eos = kwargs.get("eos_token_id")
    if eos is not None:  # HF fills after EOS with EOS when pad_token_id is 0; we write 0
        after_eos = np.cumsum(seqs == eos, axis=1) - (seqs == eos) > 0
        seqs = np.where(after_eos, 0, seqs)
    return seqs.reshape(len(enc), beams, steps), out.sequences_scores.numpy().reshape(len(enc), -1)


def _hf_t5_case(seed: int) -> tuple:
    from helpers.hf_models import convert, tiny_hf_t5

    # HF generate sizes its KV cache by the encoder depth, so keep both stacks equally deep.
    hf = tiny_hf_t5(tie_word_embeddings=False, seed=seed, num_decoder_layers=2)
    rng = np.random.RandomState(seed)
    enc = _right_padded([rng.randint(2, 64, n) for n in (9, 4, 6)])
    return hf, convert(hf), enc


def test_beams_match_hf_without_length_penalty() -> None:
    """alpha = 0 here and length_penalty = 0 in HF: both rank by summed log-probability.

    HF's default ``early_stopping=False`` heuristic is exact when the length penalty is 0, and
    both admit a finished sequence only from the top ``num_beams`` continuations of its step,
    so the two searches must return the same beams. EOS is a token the model does emit, so some
    beams end early.
    """
    hf, ours, enc = _hf_t5_case(seed=21)
    steps, beams = 6, 4
    eos = _eos_that_occurs(ours, "encoder_input_tokens", enc)
    want_seqs, want_scores = _hf_beams(
        hf, enc, beams=beams, steps=steps, eos_token_id=eos, length_penalty=0.0
    )
    out = _beam(
        ours,
        {"encoder_input_tokens": jnp.asarray(enc)},
        max_decode_length=steps,
        eos_id=eos,
        num_decodes=beams,
        alpha=0.0,
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert (lengths < steps).any(), "EOS never ended a beam: the test would not cover it"
    np.testing.assert_array_equal(tokens, want_seqs)
    np.testing.assert_allclose(out.scores, want_scores, atol=SCORE_TOL, rtol=0)


def test_beams_match_hf_length_penalty_when_lengths_coincide() -> None:
    """T5X's ((5+n)/6)**alpha and HF's n**length_penalty rank alike when every length is equal.

    With no EOS (HF: ``eos_token_id=None``; ours: an id outside the vocabulary) every beam has
    ``max_decode_length`` tokens, so both divide all candidates by one constant: the same beams
    come back, and the scores differ exactly by the ratio of the two penalties.
    """
    hf, ours, enc = _hf_t5_case(seed=22)
    hf.generation_config.eos_token_id = None
    steps, beams, alpha, length_penalty = 5, 3, 0.6, 1.0
    want_seqs, want_scores = _hf_beams(
        hf, enc, beams=beams, steps=steps, eos_token_id=None, length_penalty=length_penalty
    )
    out = _beam(
        ours,
        {"encoder_input_tokens": jnp.asarray(enc)},
        max_decode_length=steps,
        eos_id=-1,
        num_decodes=beams,
        alpha=alpha,
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want_seqs)
    logprob_sums = want_scores * steps**length_penalty
    np.testing.assert_allclose(
        out.scores, logprob_sums / ((5.0 + steps) / 6.0) ** alpha, atol=SCORE_TOL, rtol=0
    )


# ----------------------------------------------------------------------------- config, errors


def test_beam_size_zero_is_a_user_error() -> None:
    model = build(tiny_t5_config())
    batch = {"encoder_input_tokens": jnp.ones((1, 3), jnp.int32)}
    with pytest.raises(UserInputError, match=r"num_decodes \(the beam size\)=0"):
        beam_search(model, batch, max_decode_length=2, num_decodes=0)


def test_evaluator_takes_its_decode_function_from_gin() -> None:
    """``GreedyEvaluator.decode_fn = @decoding.beam_search``: the best beam is the prediction."""
    from t5x_instruct.gin_utils import parse_gin
    from t5x_instruct.training.evaluation import GreedyEvaluator
    from t5x_instruct.training.train_state import ModelSpec

    model = build(tiny_t5_config())
    spec = ModelSpec.create(lambda: model)
    params = nnx.to_pure_dict(nnx.state(model))
    inputs = _right_padded([np.random.RandomState(n).randint(2, 64, 3 + n) for n in range(3)])

    class Source:  # the part of EvalSource that predict() reads
        def inputs_array(self, length: int) -> np.ndarray:
            return inputs[:, :length]

    def predictions(**gin_kwargs) -> np.ndarray:
        evaluator = GreedyEvaluator(spec, encoder_decoder=True, prefix_lm=False, batch_size=2,
                                    input_length=inputs.shape[1], max_decode_length=5, eos_id=-1,
                                    **gin_kwargs)  # fmt: skip
        return np.stack(evaluator.predict(params, Source()))

    greedy_tokens = greedy(model, {"encoder_input_tokens": jnp.asarray(inputs)},
                           max_decode_length=5, eos_id=-1).tokens  # fmt: skip
    np.testing.assert_array_equal(predictions(), np.asarray(greedy_tokens))  # the default

    parse_gin(
        bindings=[
            "GreedyEvaluator.decode_fn = @decoding.beam_search",
            "GreedyEvaluator.num_decodes = 3",
            "decoding.beam_search.alpha = 0.0",
        ],
        clear=True,
    )
    got = predictions()
    want = _beam(model, {"encoder_input_tokens": jnp.asarray(inputs)}, max_decode_length=5,
                 eos_id=-1, num_decodes=3, alpha=0.0)  # fmt: skip
    np.testing.assert_array_equal(got, np.asarray(want.tokens)[:, 0])

    gin.clear_config()
    parse_gin(bindings=["GreedyEvaluator.num_decodes = 0"], clear=True)
    with pytest.raises(UserInputError, match=r"GreedyEvaluator\.num_decodes=0"):
        predictions()

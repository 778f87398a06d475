"""Temperature sampling: its greedy limits, and sample frequencies against the softmax.

The reference distributions come from teacher-forced logits (no cache) and a numpy
implementation of temperature, top-k and top-p written from their definitions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.models import build, forward, greedy, tiny_decoder_config, tiny_t5_config
from scipy import stats

from t5x_instruct.decoding import temperature_sample
from t5x_instruct.errors import UserInputError

SAMPLE_ARGS = ("max_decode_length", "eos_id", "num_decodes", "temperature", "top_k", "top_p",
               "rescale_log_probs")  # fmt: skip


@nnx.jit(static_argnames=SAMPLE_ARGS)
def _sample(model, batch, rng, **kwargs):
    return temperature_sample(model, batch, rng=rng, **kwargs)


# ----------------------------------------------------------------------------- greedy limits


@pytest.mark.parametrize(
    ("family", "settings"),
    [
        ("t5", dict(temperature=0.0, rescale_log_probs=True)),
        ("decoder", dict(temperature=1.0, top_k=1, rescale_log_probs=False)),
    ],
    ids=["t5-temperature0", "decoder-top_k1"],
)
def test_top_k_one_and_temperature_zero_sample_the_greedy_path(family: str, settings) -> None:
    model = build(tiny_t5_config() if family == "t5" else tiny_decoder_config())
    key = "encoder_input_tokens" if family == "t5" else "decoder_input_tokens"
    rng = np.random.RandomState(2)
    inputs = np.zeros((2, 7), np.int32)
    inputs[0], inputs[1, :4] = rng.randint(2, 64, 7), rng.randint(2, 64, 4)
    batch = {key: jnp.asarray(inputs)}
    want = greedy(model, batch, max_decode_length=5, eos_id=1)
    got = _sample(model, batch, jax.random.PRNGKey(0), max_decode_length=5, eos_id=1,
                  num_decodes=3, **settings)  # fmt: skip
    for j in range(3):
        np.testing.assert_array_equal(np.asarray(got.tokens[:, j]), np.asarray(want.tokens))
        np.testing.assert_array_equal(np.asarray(got.lengths[:, j]), np.asarray(want.lengths))
    if settings["rescale_log_probs"]:  # all mass on the argmax: log 1 = 0
        np.testing.assert_array_equal(np.asarray(got.scores), 0.0)
    else:  # the model's own log-probabilities of the greedy path
        np.testing.assert_allclose(got.scores, np.repeat(want.scores[:, None], 3, 1), atol=1e-5)


# ----------------------------------------------------------------------------- frequencies

VOCAB, STEPS, SAMPLES = 6, 2, 6000
P_VALUE_FLOOR = 1e-3  # the seed is fixed; this only has to hold for a correct sampler


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _reference(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution sampled from, by definition: tempered, top-k, then nucleus."""
    probs = _softmax(logits.astype(np.float64) / temperature)
    order = np.argsort(-probs)
    if top_k:
        probs[order[top_k:]] = 0.0
        probs /= probs.sum()
    if top_p < 1.0:
        cumulative = np.cumsum(probs[order])
        # Exact ties with top_p would make the nucleus ambiguous in float32.
        assert np.min(np.abs(cumulative - top_p)) > 1e-4, "choose another top_p for this model"
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # first prefix reaching top_p
        probs[order[keep:]] = 0.0
        probs /= probs.sum()
    return probs


def _pair_distribution(model, enc: np.ndarray, temperature: float, top_k: int, top_p: float):
    """``[V, V]`` probabilities of the first two tokens, from teacher-forced logits."""
    dec = np.stack([np.zeros(VOCAB, np.int32), np.arange(VOCAB, dtype=np.int32)], axis=1)
    logits = np.asarray(forward(model, jnp.asarray(np.repeat(enc, VOCAB, 0)), jnp.asarray(dec)))
    first = _reference(logits[0, 0], temperature, top_k, top_p)
    second = np.stack([_reference(logits[t, 1], temperature, top_k, top_p) for t in range(VOCAB)])
    return first[:, None] * second


def _chi_square_p_value(counts: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's test; cells expecting fewer than 5 samples are pooled into one."""
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.75), (1.0, 4, 0.8)],
    ids=["plain", "top_k3", "top_p0.75", "top_k4+top_p0.8"],
)
def test_sample_frequencies_match_the_truncated_softmax(temperature, top_k, top_p) -> None:
    model = build(dataclasses.replace(tiny_t5_config(), vocab_size=VOCAB), seed=3)
    enc = np.array([[3, 5, 2, 4]], np.int32)
    want = _pair_distribution(model, enc, temperature, top_k, top_p)
    out = _sample(model, {"encoder_input_tokens": jnp.asarray(enc)}, jax.random.PRNGKey(42),
                  max_decode_length=STEPS, eos_id=-1, num_decodes=SAMPLES,
                  temperature=temperature, top_k=top_k, top_p=top_p,
                  rescale_log_probs=True)  # fmt: skip
    tokens, scores = np.asarray(out.tokens[0]), np.asarray(out.scores[0])
    counts = np.zeros((VOCAB, VOCAB))
    np.add.at(counts, (tokens[:, 0], tokens[:, 1]), 1)

    assert counts[want == 0].sum() == 0, "sampled a token outside the top-k / top-p set"
    allowed = want > 0
    assert _chi_square_p_value(counts[allowed], SAMPLES * want[allowed]) > P_VALUE_FLOOR
    # Scores: log-probabilities under the sampled (renormalised) distribution, best first.
    np.testing.assert_allclose(scores, np.log(want[tokens[:, 0], tokens[:, 1]]), atol=1e-5)
    assert np.all(np.diff(scores) <= 0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "binding"),
    [
        (dict(temperature=-0.5), "temperature_sample.temperature"),
        (dict(top_p=0.0), "temperature_sample.top_p"),
        (dict(top_p=1.5), "temperature_sample.top_p"),
        (dict(top_k=-1), "temperature_sample.top_k"),
        (dict(num_decodes=0), "GreedyEvaluator.num_decodes"),
    ],
)
def test_bad_sampling_settings_are_user_errors(kwargs, binding: str) -> None:
    model = build(tiny_t5_config())
    batch = {"encoder_input_tokens": jnp.ones((1, 3), jnp.int32)}
    with pytest.raises(UserInputError, match=binding.replace(".", r"\.")):
        temperature_sample(model, batch, max_decode_length=2, **kwargs)

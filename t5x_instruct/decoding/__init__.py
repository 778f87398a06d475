"""Decoding and scoring on top of a model's ``prefill`` / ``decode_step`` (KV cache).

Decode functions (:class:`DecodeFn`, gin-configurable as ``decoding.<name>``):
:func:`greedy`, :func:`temperature_sample` (top-k / top-p), :func:`beam_search` (T5X length
penalty). :func:`greedy_decode` is the flat single-sequence form; :func:`score_batch` gives the
log-likelihood of given targets.
"""

from t5x_instruct.decoding.base import Decodable, DecodeFn, DecodeOutput, first_token_index
from t5x_instruct.decoding.beam_search import beam_search, brevity_penalty
from t5x_instruct.decoding.greedy import greedy, greedy_decode
from t5x_instruct.decoding.sampling import temperature_sample, truncate_logits
from t5x_instruct.decoding.scoring import ScoreOutput, score_batch, token_log_likelihoods

__all__ = [
    "Decodable",
    "DecodeFn",
    "DecodeOutput",
    "ScoreOutput",
    "beam_search",
    "brevity_penalty",
    "first_token_index",
    "greedy",
    "greedy_decode",
    "score_batch",
    "temperature_sample",
    "token_log_likelihoods",
    "truncate_logits",
]

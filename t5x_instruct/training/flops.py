"""Analytic model FLOPs of a training step, per model family, for MFU.

Only matrix multiplications are counted, at 2 FLOPs per multiply-add (what XLA's cost
analysis reports for a dot: ``2*M*N*K``). Norms, activations, softmax, masking, the loss
and the optimizer are left out (they are a few percent at realistic widths), and the token
embedding is a gather, so it costs nothing. Every sequence position is counted, padding
included: the step computes on the whole ``[batch, length]`` block.

Forward FLOPs of one sequence, with ``d = emb_dim``, ``f = mlp_dim``, ``h`` query heads,
``g`` key/value heads, ``k = head_dim``, ``V = vocab_size``, ``E``/``D`` the encoder/decoder
lengths and ``S`` a decoder-only model's length::

    proj(L)   = 2*L*d*k*(2*h + 2*g)         Q and O over h heads, K and V over g heads
    mlp(L)    = 2*L*3*d*f                   gated MLP: wi_0, wi_1, wo
    scores(q, kv) = 4*q*kv*h*k              Q K^T and weights @ V, the full q x kv square

    T5 (h = g)  encoder          = enc_layers * (proj(E) + mlp(E))
                decoder          = dec_layers * (proj(D) + mlp(D))          self-attn + MLP
                cross_attention  = dec_layers * (2*D*d*h*k*2 + 2*E*d*h*k*2)  Q,O per decoder
                                   token; K,V of the encoder output, per encoder token
                attention_scores = enc_layers*scores(E, E)
                                   + dec_layers*(scores(D, D) + scores(D, E))
                logits           = 2*D*d*V
    decoder     decoder          = layers * (proj(S) + mlp(S))
                attention_scores = layers * scores(S, S)
                logits           = 2*S*d*V

A training step costs ``3 x forward`` (the backward pass takes two matmuls per forward
matmul: gradients of the input and of the weight). Causal attention is *not* halved: the
whole square is counted, as PaLM's MFU definition does (Chowdhery et al. 2022, appendix B)
and as the XLA attention computes it. Recomputation under rematerialisation is not model
FLOPs (MFU ignores it); :attr:`StepFlops.remat_recompute` estimates it for a
hardware-FLOPs (HFU) figure.

The old estimate ``6 * params * (encoder + decoder tokens)`` is about 2x too high for an
encoder-decoder model: it runs every token through both stacks and the output projection,
and counts the embedding table as matmul weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from t5x_instruct.models import DecoderConfig, T5Config

COMPONENTS = ("encoder", "decoder", "cross_attention", "attention_scores", "logits")

# Remat policies (layers/stack.py) -> forward components recomputed in the backward pass.
# 'full' saves nothing inside a layer; the 'dots' policy saves every matmul output; the
# no-batch-dims policies save weight matmuls but not the batched attention einsums.
_RECOMPUTED: dict[str, tuple[str, ...]] = {
    "none": (),
    "full": ("encoder", "decoder", "cross_attention", "attention_scores"),
    "dots": (),
    "dots_no_batch": ("attention_scores",),
    "offload_dots": ("attention_scores",),
}


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one training step; ``forward`` maps :data:`COMPONENTS` to FLOPs."""

    forward: Mapping[str, float]
    remat_policy: str = "none"

    @property
    def forward_total(self) -> float:
        return float(sum(self.forward.values()))

    @property
    def train(self) -> float:
        """Model FLOPs per step (the MFU numerator): forward + backward = 3 x forward."""
        return 3.0 * self.forward_total

    @property
    def remat_recompute(self) -> float:
        """Forward FLOPs recomputed by the layers' remat policy (unknown policy: 0)."""
        return float(sum(self.forward[c] for c in _RECOMPUTED.get(self.remat_policy, ())))

    @property
    def hardware(self) -> float:
        """Model FLOPs plus remat recomputation (the HFU numerator)."""
        return self.train + self.remat_recompute

    def breakdown(self) -> dict[str, float]:
        """Training FLOPs per component, plus ``total``."""
        out = {name: 3.0 * float(self.forward[name]) for name in COMPONENTS}
        out["total"] = self.train
        return out


def _projections(length: int, d: int, heads: int, kv_heads: int, head_dim: int) -> float:
    return 2.0 * length * d * head_dim * (2 * heads + 2 * kv_heads)


def _gated_mlp(length: int, d: int, mlp_dim: int) -> float:
    return 2.0 * length * 3 * d * mlp_dim


def _scores(q_len: int, kv_len: int, heads: int, head_dim: int) -> float:
    return 4.0 * q_len * kv_len * heads * head_dim


def t5_forward_flops(
    cfg: T5Config, batch: int, encoder_length: int, decoder_length: int
) -> dict[str, float]:
    """Forward FLOPs of a T5 v1.1 model on ``batch`` rows, per component."""
    d, h, k = cfg.emb_dim, cfg.num_heads, cfg.head_dim
    enc, dec = encoder_length, decoder_length
    n_enc, n_dec = cfg.num_encoder_layers, cfg.num_decoder_layers
    per_row = {
        "encoder": n_enc * (_projections(enc, d, h, h, k) + _gated_mlp(enc, d, cfg.mlp_dim)),
        "decoder": n_dec * (_projections(dec, d, h, h, k) + _gated_mlp(dec, d, cfg.mlp_dim)),
        # Q and O act on decoder tokens, K and V on every encoder output, in every layer.
        "cross_attention": n_dec * 2.0 * d * h * k * 2 * (dec + enc),
        "attention_scores": n_enc * _scores(enc, enc, h, k)
        + n_dec * (_scores(dec, dec, h, k) + _scores(dec, enc, h, k)),
        "logits": 2.0 * dec * d * cfg.vocab_size,  # tied or untied: the same matmul
    }
    return {name: batch * value for name, value in per_row.items()}


def decoder_forward_flops(cfg: DecoderConfig, batch: int, length: int) -> dict[str, float]:
    """Forward FLOPs of a decoder-only model on ``batch`` rows of ``length``, per component."""
    d, k = cfg.emb_dim, cfg.head_dim
    per_layer = _projections(length, d, cfg.num_heads, cfg.num_kv_heads, k) + _gated_mlp(
        length, d, cfg.mlp_dim
    )
    per_row = {
        "encoder": 0.0,
        "decoder": cfg.num_layers * per_layer,
        "cross_attention": 0.0,
        "attention_scores": cfg.num_layers * _scores(length, length, cfg.num_heads, k),
        "logits": 2.0 * length * d * cfg.vocab_size,
    }
    return {name: batch * value for name, value in per_row.items()}


def step_flops(
    config: Any, *, batch: int, decoder_length: int, encoder_length: int = 0
) -> StepFlops:
    """Training-step FLOPs for a :class:`T5Config` or :class:`DecoderConfig`.

    A decoder-only model reads one sequence: pass its whole length (inputs + targets) as
    ``decoder_length`` and no ``encoder_length``.
    """
    if isinstance(config, T5Config):
        if encoder_length <= 0:
            raise ValueError("an encoder-decoder model needs encoder_length > 0")
        forward = t5_forward_flops(config, batch, encoder_length, decoder_length)
    elif isinstance(config, DecoderConfig):
        if encoder_length:
            raise ValueError(
                "a decoder-only model has one sequence: pass inputs + targets as "
                f"decoder_length, not encoder_length={encoder_length}"
            )
        forward = decoder_forward_flops(config, batch, decoder_length)
    else:
        raise TypeError(f"no FLOP formula for {type(config).__name__}")
    return StepFlops(forward=forward, remat_policy=getattr(config, "remat_policy", "none"))

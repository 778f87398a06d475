"""Token-level divergences between a teacher and a student distribution, as weighted sums.

Every divergence takes *log*-probabilities over the same categories (the whole vocabulary,
or the ``k + 1`` buckets of an offline top-k teacher) and returns one value per position;
:func:`kd_sum` weights and sums them like the core loss, so the step divides once by the
batch's target-token count and gradient accumulation stays exact.

Notation: ``P`` = teacher, ``Q`` = student (the model being trained).

* forward KL ``KL(P || Q)`` (word-level KD, Hinton et al. 2015): mode-covering;
* reverse KL ``KL(Q || P)``: mode-seeking;
* generalized Jensen-Shannon (Agarwal et al. 2024, GKD) with ``M = beta P + (1-beta) Q``:
  ``JSD_beta = beta KL(P || M) + (1-beta) KL(Q || M)``. ``JSD_beta / beta -> KL(P || Q)`` as
  ``beta -> 0`` and ``JSD_beta / (1-beta) -> KL(Q || P)`` as ``beta -> 1`` (Huszar 2015), so
  small ``beta`` behaves like forward KL and large ``beta`` like reverse KL, at a smaller scale;
* skew KL ``KL(P || alpha P + (1-alpha) Q)`` and skew reverse KL
  ``KL(Q || alpha Q + (1-alpha) P)`` (Ko et al. 2024, DistiLLM): ``alpha = 0`` gives the plain
  KLs; a positive ``alpha`` bounds the log-ratio by ``-log(alpha)`` and steadies gradients.

Temperature ``tau`` softens both distributions (``log_softmax(logits / tau)``); the sum is
multiplied by ``tau**2`` so gradient magnitudes do not shrink as ``tau`` grows (Hinton et al.).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from t5x_instruct.errors import UserInputError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")
LogProbs = jax.Array


def _kl(log_p: LogProbs, log_q: LogProbs) -> jax.Array:
    """``KL(p || q)`` over the last axis; ``0 * log 0 = 0`` (categories with ``p = 0``).

    Both logs are replaced by 0 where ``p = 0`` *before* the product, so the untaken branch
    holds no ``inf - inf`` whose NaN would leak into the gradient through ``where``.
    """
    support = log_p > -jnp.inf
    safe_p = jnp.where(support, log_p, 0.0)
    safe_q = jnp.where(support, log_q, 0.0)
    return jnp.sum(jnp.where(support, jnp.exp(safe_p) * (safe_p - safe_q), 0.0), axis=-1)


def _log_mix(log_a: LogProbs, log_b: LogProbs, weight_a: float) -> LogProbs:
    """``log(weight_a * a + (1 - weight_a) * b)``, stable for ``0 < weight_a < 1``."""
    return jnp.logaddexp(jnp.log(weight_a) + log_a, jnp.log1p(-weight_a) + log_b)


def forward_kl(student: LogProbs, teacher: LogProbs) -> jax.Array:
    return _kl(teacher, student)


def reverse_kl(student: LogProbs, teacher: LogProbs) -> jax.Array:
    return _kl(student, teacher)


def generalized_jsd(student: LogProbs, teacher: LogProbs, beta: float) -> jax.Array:
    """GKD's ``JSD(beta)`` with ``M = beta * teacher + (1 - beta) * student``; ``0 < beta < 1``."""
    mix = _log_mix(teacher, student, beta)
    return beta * _kl(teacher, mix) + (1.0 - beta) * _kl(student, mix)


def skew_kl(student: LogProbs, teacher: LogProbs, alpha: float) -> jax.Array:
    """``KL(teacher || alpha * teacher + (1 - alpha) * student)``; ``0 <= alpha < 1``."""
    if alpha == 0.0:
        return forward_kl(student, teacher)
    return _kl(teacher, _log_mix(teacher, student, alpha))


def skew_reverse_kl(student: LogProbs, teacher: LogProbs, alpha: float) -> jax.Array:
    """``KL(student || alpha * student + (1 - alpha) * teacher)``; ``0 <= alpha < 1``."""
    if alpha == 0.0:
        return reverse_kl(student, teacher)
    return _kl(student, _log_mix(student, teacher, alpha))


def divergence_fn(
    name: str, *, beta: float = 0.5, alpha: float = 0.1, where: str = "Distillation"
) -> Callable[[LogProbs, LogProbs], jax.Array]:
    """``(student_log_probs, teacher_log_probs) -> per-position divergence`` for ``name``.

    Raises:
      UserInputError: an unknown name or a parameter outside its range, naming the binding.
    """
    if name == "forward_kl":
        return forward_kl
    if name == "reverse_kl":
        return reverse_kl
    if name == "jsd":
        if not 0.0 < beta < 1.0:
            raise UserInputError(
                f"{where}.beta={beta} must be in (0, 1) for divergence='jsd'; use "
                "divergence='forward_kl' (the beta -> 0 limit) or 'reverse_kl' (beta -> 1)."
            )
        return lambda s, t: generalized_jsd(s, t, beta)
    if name in ("skew_kl", "skew_reverse_kl"):
        if not 0.0 <= alpha < 1.0:
            raise UserInputError(f"{where}.alpha={alpha} must be in [0, 1) for {name!r}.")
        fn = skew_kl if name == "skew_kl" else skew_reverse_kl
        return lambda s, t: fn(s, t, alpha)
    raise UserInputError(f"{where}.divergence={name!r}: expected one of {list(DIVERGENCES)}.")


def tempered_log_probs(logits: jax.Array, temperature: float) -> LogProbs:
    """``log_softmax(logits / temperature)`` in float32."""
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def kd_sum(
    divergence: Callable[[LogProbs, LogProbs], jax.Array],
    student: LogProbs,
    teacher: LogProbs,
    weights: jax.Array,
    temperature: float,
) -> jax.Array:
    """``tau**2 * sum(weights * divergence)``: a sum over tokens, like the core loss."""
    per_token = divergence(student, teacher)
    return temperature**2 * jnp.sum(per_token * weights.astype(jnp.float32))


# ----------------------------------------------------------------------------- top-k teachers


def topk_bucket_log_probs(
    student: LogProbs, ids: jax.Array, teacher_topk: LogProbs, teacher_rest: jax.Array
) -> tuple[LogProbs, LogProbs]:
    """Student and teacher over ``k + 1`` buckets: the teacher's top-k tokens and "the rest".

    The teacher's rest mass is stored exactly (``log(1 - sum of its top-k)``); the student's
    is ``logsumexp`` of its log-probabilities outside those ``k`` ids. A divergence of these
    coarsened distributions never exceeds the full-vocabulary one (data processing).

    Args:
      student: ``[..., vocab]`` full student log-probabilities.
      ids: ``[..., k]`` the teacher's top-k token ids (distinct per position).
      teacher_topk: ``[..., k]`` the teacher's log-probabilities of ``ids``.
      teacher_rest: ``[...]`` the teacher's log-probability of every other token together.
    """
    picked = jnp.take_along_axis(student, ids, axis=-1)
    in_topk = jnp.sum(jax.nn.one_hot(ids, student.shape[-1], dtype=jnp.bool_), axis=-2) > 0
    student_rest = jax.nn.logsumexp(jnp.where(in_topk, -jnp.inf, student), axis=-1)
    s = jnp.concatenate([picked, student_rest[..., None]], axis=-1)
    t = jnp.concatenate([teacher_topk, teacher_rest[..., None]], axis=-1)
    return s, t


def topk_renormalized_log_probs(
    student: LogProbs, ids: jax.Array, teacher_topk: LogProbs
) -> tuple[LogProbs, LogProbs]:
    """Both distributions restricted to the teacher's top-k ids and renormalised there.

    Biased: the student's mass outside the top-k is not penalised, and the teacher's
    probabilities are inflated by ``1 / (its top-k mass)``.
    """
    picked = jnp.take_along_axis(student, ids, axis=-1)
    s = picked - jax.nn.logsumexp(picked, axis=-1, keepdims=True)
    t = teacher_topk - jax.nn.logsumexp(teacher_topk, axis=-1, keepdims=True)
    return s, t

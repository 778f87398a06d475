"""The distillation plug-in: what gin binds as ``train.plugins = [@Distillation()]``.

Objective per batch, every term a sum over target tokens (weights ``decoder_loss_weights``):
``(1 - kd_weight) * CE + kd_weight * tau**2 * sum D(teacher || student)``, ``D`` one of
:mod:`losses`. The teacher is either *online* (a frozen model in the train state, run in the
same jitted step under ``stop_gradient``) or *offline* (top-k log-probabilities read from a
store written by ``tools/teacher_topk.py``). Online, a fraction ``on_policy_fraction`` of the
batches has its targets replaced by the student's own samples first (GKD).
"""

from __future__ import annotations

import logging
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5x_instruct.errors import UserInputError
from t5x_instruct.models import model_family
from t5x_instruct.plugins.base import AuxState, Plugin, SetupContext, StepContext
from t5x_instruct.plugins.distillation import features, losses
from t5x_instruct.plugins.distillation.teacher import Teacher, check_vocabulary
from t5x_instruct.plugins.distillation.topk_store import TopKStore
from t5x_instruct.training.losses import cross_entropy_sums
from t5x_instruct.training.step import LossConfig

log = logging.getLogger(__name__)

REMAINDERS = ("bucket", "renormalize")
_TOPK_FEATURES = ("topk_ids", "topk_logprobs", "topk_rest", "topk_found")


@gin.configurable
class Distillation(Plugin):
    """Knowledge distillation from a frozen teacher into the student being trained.

    Args:
      teacher_config: the teacher's model config, any registered family (gin:
        ``@teacher/T5Config()`` with scoped sizes). Online mode.
      teacher_checkpoint: a t5x_instruct checkpoint (MODEL_DIR, ``checkpoints`` folder or a
        step folder) holding the teacher's parameters. Online mode.
      teacher_step: which step of ``teacher_checkpoint`` (default: the latest).
      teacher_dtype: ``'float32'`` or ``'bfloat16'`` (parameters and compute of the teacher).
      topk_dir: a store of the teacher's top-k log-probabilities (``tools/teacher_topk.py``);
        offline mode, instead of ``teacher_config`` / ``teacher_checkpoint``.
      topk_remainder: offline: ``'bucket'`` compares the ``k + 1`` buckets (top-k tokens and
        "all other tokens", whose teacher mass the store keeps exactly); ``'renormalize'``
        compares both distributions restricted to the top-k and renormalised there.
      divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'`` (with ``beta``),
        ``'skew_kl'`` or ``'skew_reverse_kl'`` (with ``alpha``); see :mod:`losses`.
      beta: generalized JSD's mixture weight of the teacher, in (0, 1).
      alpha: skew KL's mixture weight, in [0, 1).
      temperature: tau; both distributions are ``softmax(logits / tau)`` and the term is
        scaled by ``tau**2``. Offline, it must equal the store's temperature.
      kd_weight: w in (0, 1]: the distillation term gets w, the cross-entropy 1 - w.
      on_policy_fraction: lambda in [0, 1]: per batch, the probability that its targets are
        replaced by samples of the current student (online mode, unpacked batches). Those
        rows get no cross-entropy (it would train the student on its own samples).
      on_policy_temperature, on_policy_top_k, on_policy_top_p: how the student samples.
      on_policy_max_length: longest sample (default: the batch's target length; for
        decoder-only students the row length, so set TASK_FEATURE_LENGTHS['targets']).
      name: the plug-in's name (metrics ``<name>/kd``, its auxiliary state).
    """

    def __init__(
        self,
        teacher_config: Any = None,
        teacher_checkpoint: str | None = None,
        teacher_step: int | None = None,
        teacher_dtype: str = "float32",
        topk_dir: str | None = None,
        topk_remainder: str = "bucket",
        divergence: str = "forward_kl",
        beta: float = 0.5,
        alpha: float = 0.1,
        temperature: float = 1.0,
        kd_weight: float = 0.5,
        on_policy_fraction: float = 0.0,
        on_policy_temperature: float = 1.0,
        on_policy_top_k: int = 0,
        on_policy_top_p: float = 1.0,
        on_policy_max_length: int | None = None,
        name: str = "distillation",
    ) -> None:
        where = "Distillation"
        self.name = name
        self.divergence = losses.divergence_fn(divergence, beta=beta, alpha=alpha, where=where)
        self.divergence_name = divergence
        if not temperature > 0:
            raise UserInputError(f"{where}.temperature={temperature} must be > 0.")
        if not 0.0 < kd_weight <= 1.0:
            raise UserInputError(
                f"{where}.kd_weight={kd_weight} must be in (0, 1] (1 - kd_weight weighs the "
                "cross-entropy; without distillation remove the plug-in)."
            )
        if not 0.0 <= on_policy_fraction <= 1.0:
            raise UserInputError(
                f"{where}.on_policy_fraction={on_policy_fraction} must be in [0, 1]."
            )
        if topk_remainder not in REMAINDERS:
            raise UserInputError(
                f"{where}.topk_remainder={topk_remainder!r}: expected one of {REMAINDERS}."
            )
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.on_policy_fraction = float(on_policy_fraction)
        self.sampling = dict(
            temperature=float(on_policy_temperature),
            top_k=int(on_policy_top_k),
            top_p=float(on_policy_top_p),
            max_length=on_policy_max_length,
        )
        self.topk_dir = topk_dir
        self.topk_remainder = topk_remainder
        self.teacher_checkpoint = teacher_checkpoint
        self.teacher_step = teacher_step
        self._store: TopKStore | None = None
        self.teacher: Teacher | None = None
        if topk_dir is not None:
            if teacher_config is not None or teacher_checkpoint is not None:
                raise UserInputError(
                    f"{where}: set either topk_dir (offline teacher) or teacher_config + "
                    "teacher_checkpoint (online teacher), not both."
                )
            if on_policy_fraction > 0:
                raise UserInputError(
                    f"{where}.on_policy_fraction={on_policy_fraction} needs an online teacher "
                    "to score the student's samples; an offline top-k store only covers the "
                    "data set's targets. Set teacher_config and teacher_checkpoint instead."
                )
        else:
            self.teacher = Teacher.create(teacher_config, teacher_dtype, where)
            if teacher_checkpoint is None:
                raise UserInputError(
                    f"{where}.teacher_checkpoint is not set: give the teacher's MODEL_DIR or "
                    "checkpoint (convert Hugging Face weights with tools/convert_checkpoint.py)."
                )

    @property
    def online(self) -> bool:
        return self.teacher is not None

    # ---------------------------------------------------------------- state

    def aux_state(self, setup: SetupContext) -> AuxState | None:
        student_vocab = setup.model_spec.config.vocab_size
        if not self.online:
            store = self.store()
            check_vocabulary(student_vocab, store.vocab_size, f"the top-k store {self.topk_dir}")
            return None
        assert self.teacher is not None
        teacher = self.teacher
        check_vocabulary(
            student_vocab,
            teacher.vocab_size,
            f"the teacher (Distillation.teacher_config, {type(teacher.config).__name__})",
        )
        target = teacher.abstract(setup.mesh, setup.rules)
        return AuxState(
            abstract=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target),
            shardings=jax.tree.map(lambda x: x.sharding, target),
            init=lambda: teacher.restore(
                self.teacher_checkpoint, setup.mesh, setup.rules, self.teacher_step
            ),
            checkpointed=False,  # rebuilt from the teacher's own checkpoint at every start
        )

    def store(self) -> TopKStore:
        if self._store is None:
            assert self.topk_dir is not None
            store = TopKStore(self.topk_dir)
            if abs(store.temperature - self.temperature) > 1e-6:
                raise UserInputError(
                    f"Distillation.temperature={self.temperature} but the top-k store "
                    f"{self.topk_dir} holds the teacher at temperature {store.temperature}; "
                    "set them equal (or rerun tools/teacher_topk.py --temperature=...)."
                )
            log.info(
                "Top-k teacher store %s: %d examples, k=%d", self.topk_dir, len(store), store.k
            )
            self._store = store
        return self._store

    # ---------------------------------------------------------------- loss

    def cross_entropy_scale(self) -> float:
        return 1.0 - self.kd_weight

    def _feature(self, name: str) -> str:
        return f"{self.name}_{name}"

    def prepare_batch(self, ctx: StepContext):
        batch = dict(ctx.batch)
        if not self.online:
            batch.update(self._lookup(batch, strict=True))
            return batch
        if self.on_policy_fraction == 0.0:
            return batch
        encoder_decoder = model_family(ctx.model).encoder_decoder
        if features.is_packed(batch):
            raise UserInputError(
                "Distillation.on_policy_fraction > 0 replaces each row's targets with a sample "
                "of new length, which packed rows cannot take: set `train.pack = False`."
            )
        if not encoder_decoder and "decoder_causal_attention" not in batch:
            raise UserInputError(
                "Distillation.on_policy_fraction > 0 samples from the inputs, and a decoder-only "
                "student trained with train.decoder_objective='lm' has none; use 'prefix_lm'."
            )
        rng = jax.random.PRNGKey(0) if ctx.rng is None else ctx.rng
        coin_key, sample_key = jax.random.split(rng)
        flag = self._feature("on_policy")
        rows = batch["decoder_target_tokens"].shape[0]

        def sampled(b: dict) -> dict:
            out = features.on_policy_batch(
                ctx.model, b, sample_key, encoder_decoder=encoder_decoder, **self.sampling
            )
            return {**out, flag: jnp.ones((rows,), jnp.float32)}

        def kept(b: dict) -> dict:
            return {**b, flag: jnp.zeros((rows,), jnp.float32)}

        if self.on_policy_fraction == 1.0:
            return sampled(batch)
        coin = jax.random.uniform(coin_key) < self.on_policy_fraction
        return jax.lax.cond(coin, sampled, kept, batch)

    def loss_terms(self, ctx: StepContext) -> dict[str, jax.Array]:
        if ctx.logits is None:
            return {}
        batch = ctx.batch
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        student = losses.tempered_log_probs(ctx.logits, self.temperature)
        if self.online:
            assert self.teacher is not None
            if ctx.aux is None:
                raise UserInputError(
                    f"plug-in {self.name!r}: no teacher parameters in the train state "
                    "(aux_state was not set up); run it through train() or make_layout()."
                )
            encoder_decoder = model_family(ctx.model).encoder_decoder
            teacher_logits = self.teacher.logits(ctx.aux, batch, encoder_decoder)
            teacher = losses.tempered_log_probs(teacher_logits, self.temperature)
        else:
            topk = {n: batch.get(self._feature(n)) for n in _TOPK_FEATURES}
            if any(v is None for v in topk.values()):  # validation batches: no prepare_batch
                looked_up = self._lookup(dict(batch), strict=False)
                topk = {n: looked_up[self._feature(n)] for n in _TOPK_FEATURES}
            if self.topk_remainder == "bucket":
                student, teacher = losses.topk_bucket_log_probs(
                    student, topk["topk_ids"], topk["topk_logprobs"], topk["topk_rest"]
                )
            else:
                student, teacher = losses.topk_renormalized_log_probs(
                    student, topk["topk_ids"], topk["topk_logprobs"]
                )
            weights = weights * topk["topk_found"]
        kd = losses.kd_sum(self.divergence, student, teacher, weights, self.temperature)
        terms = {"kd": self.kd_weight * kd}
        flag = batch.get(self._feature("on_policy"))
        if flag is not None and self.kd_weight < 1.0:
            # Cancel the core cross-entropy on sampled rows: GKD trains on them by the
            # divergence alone. Same label smoothing as the core term, so it cancels exactly.
            own = cross_entropy_sums(
                ctx.logits,
                batch["decoder_target_tokens"],
                batch["decoder_loss_weights"] * flag[:, None],
                label_smoothing=LossConfig().label_smoothing,
            )["cross_entropy"]
            terms["on_policy_ce_removed"] = -(1.0 - self.kd_weight) * own
        return terms

    def _lookup(self, batch: dict, strict: bool) -> dict[str, jax.Array]:
        """The store's top-k for every target position (host join, once per call)."""
        store = self.store()
        keys = [
            k
            for k in ("decoder_target_tokens", "decoder_loss_weights", "encoder_input_tokens",
                      "encoder_segment_ids", "decoder_segment_ids")
            if k in batch
        ]  # fmt: skip
        b, t = batch["decoder_target_tokens"].shape
        k = store.k
        shapes = (
            jax.ShapeDtypeStruct((b, t, k), jnp.int32),
            jax.ShapeDtypeStruct((b, t, k), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.float32),
        )

        def host(*arrays: np.ndarray):
            return store.lookup(dict(zip(keys, map(np.asarray, arrays))), strict=strict)

        out = jax.pure_callback(host, shapes, *[batch[k] for k in keys])
        return {self._feature(n): v for n, v in zip(_TOPK_FEATURES, out)}

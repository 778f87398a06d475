"""The frozen teacher held beside the student: built, restored, sharded and run.

The teacher is any registered model config (``T5Config`` or ``DecoderConfig``, from gin as
``@teacher/T5Config()``) restored from a t5x_instruct checkpoint (a MODEL_DIR, its
``checkpoints`` folder or one step folder; Hugging Face weights go through
``tools/convert_checkpoint.py`` first). Its parameters are sharded by the same logical-axis
rules as the student's and live in the train state as plug-in auxiliary state, so they are
never differentiated and never reach the optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import build_model, model_family
from t5x_instruct.plugins.distillation import features
from t5x_instruct.training.checkpoints import CheckpointShapeError
from t5x_instruct.training.param_checkpoints import (
    abstract_params,
    restore_model_params,
    restore_params,
)
from t5x_instruct.training.train_state import ModelSpec, Params

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class Teacher:
    """A teacher model: its spec, family and the dtype its parameters are kept in."""

    config: Any
    spec: ModelSpec
    encoder_decoder: bool
    dtype: str

    @classmethod
    def create(cls, config: Any, dtype: str | None = None, where: str = "Distillation") -> Teacher:
        """``dtype='bfloat16'`` stores the parameters and computes in bf16 (half the memory)."""
        if config is None:
            raise UserInputError(
                f"{where}.teacher_config is not set: bind it to the teacher's model config, "
                "e.g. `Distillation.teacher_config = @teacher/T5Config()` with its sizes as "
                "`teacher/T5Config.emb_dim = 128` (see gin/plugins/distillation.gin)."
            )
        family = model_family(config)  # a clear error for anything but a model config
        dtype = dtype or "float32"
        if dtype not in DTYPES:
            raise UserInputError(f"{where}.teacher_dtype={dtype!r}: expected one of {DTYPES}.")
        if dtype != "float32":
            config = dataclasses.replace(config, dtype=dtype)
        spec = ModelSpec.create(lambda: build_model(config))
        return cls(config, spec, family.encoder_decoder, dtype)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def abstract(self, mesh: Any, rules: partitioning.AxisRules) -> Params:
        """ShapeDtypeStructs (in the teacher's dtype) carrying their shardings."""
        target = abstract_params(self.spec, mesh, rules)
        if self.dtype == "float32":
            return target
        dtype = jnp.dtype(self.dtype)
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
                sharding=x.sharding,
            ),
            target,
        )  # fmt: skip

    def restore(
        self,
        path: str,
        mesh: Any,
        rules: partitioning.AxisRules,
        step: int | None = None,
        setting: str = "Distillation.teacher_checkpoint",
    ) -> Params:
        """The teacher's parameters from ``path``, straight into their shardings."""
        try:
            if self.dtype == "float32":
                return restore_model_params(path, self.spec, mesh, rules, step=step)
            return restore_params(path, self.abstract(mesh, rules), step=step)
        except CheckpointShapeError as err:
            raise UserInputError(
                f"{setting}={path!r} does not hold a model of the teacher's config "
                f"({type(self.config).__name__}; gin `teacher/...` bindings): {err}"
            ) from err
        except UserInputError as err:
            raise UserInputError(f"{setting}={path!r}: {err}") from err

    def logits(self, params: Params, batch: Mapping[str, jax.Array], student_enc_dec: bool):
        """Teacher logits ``[b, t, vocab]`` (fp32) aligned with the student's target positions.

        Same family: the student's batch as it is (packed or not). Other family: the batch is
        converted (:mod:`features`; unpacked rows only) and the logits gathered back.
        Deterministic (no dropout) and under ``stop_gradient``.
        """
        model = self.spec.module(params)
        if student_enc_dec == self.encoder_decoder:
            logits = model.logits_from_batch(dict(batch), deterministic=True)
        else:
            if features.is_packed(batch):
                raise UserInputError(
                    "Distillation between model families (a "
                    f"{'T5' if student_enc_dec else 'decoder-only'} student and a "
                    f"{type(self.config).__name__} teacher) needs unpacked batches: set "
                    "`train.pack = False` (or use a teacher of the student's family)."
                )
            if student_enc_dec:
                converted, index = features.encdec_to_prefix_lm(batch)
            else:
                if "decoder_causal_attention" not in batch:
                    raise UserInputError(
                        "An encoder-decoder teacher needs the student's inputs, but a "
                        "decoder-only student trained with train.decoder_objective='lm' has "
                        "none; use 'prefix_lm' or a decoder-only teacher."
                    )
                converted, index = features.prefix_lm_to_encdec(batch)
            full = model.logits_from_batch(converted, deterministic=True)
            logits = jnp.take_along_axis(full, index[..., None], axis=1)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))


def check_vocabulary(student_vocab: int, teacher_vocab: int, what: str) -> None:
    """Teacher and student distributions must be over the same token ids."""
    if int(student_vocab) != int(teacher_vocab):
        raise UserInputError(
            f"Distillation needs one vocabulary: the student's vocab_size is {student_vocab} "
            f"but {what} has vocab_size {teacher_vocab}. Use a teacher trained with the "
            "student's vocabulary (and the same vocab_size padding)."
        )

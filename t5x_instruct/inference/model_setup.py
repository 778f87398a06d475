"""The model of a checkpoint, built as its training run built it, with params restored sharded.

Eval and infer read the same gin files as training: the model preset, the run file and any
plug-in file (or the run's ``MODEL_DIR/config.gin``). A run with ``train.plugins`` bound
trained a transformed model (prompt tuning, LoRA, ...), so the model here goes through the
same plug-ins; its checkpoint then holds the plug-ins' parameters too.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.models import build_model, model_family
from t5x_instruct.plugins.plugin_set import PluginSet
from t5x_instruct.runtime import paths
from t5x_instruct.training import param_checkpoints
from t5x_instruct.training.evaluation import GreedyEvaluator
from t5x_instruct.training.train_state import ModelSpec, Params

log = logging.getLogger(__name__)

_OBJECTIVES = {"prefix_lm": "prefix_lm", "lm": "decoder"}


def train_binding(name: str, default: Any) -> Any:
    """What the gin config binds to ``train.<name>`` (references such as ``@LoRA()``
    evaluated, as gin would when calling ``train``), or ``default`` when unbound."""
    try:
        value = gin.query_parameter(f"train.{name}")
    except ValueError:  # unbound, or `train` is not even registered
        return default
    return copy.deepcopy(value)  # deep-copying a gin reference calls it


@dataclasses.dataclass
class InferenceModel:
    """A model ready for decoding and scoring on a mesh."""

    spec: ModelSpec
    plugins: PluginSet
    mesh: Any
    rules: partitioning.AxisRules
    model_type: str  # SeqIO feature converter: encoder_decoder, prefix_lm or decoder

    @property
    def config(self) -> Any:
        return self.spec.config

    @property
    def encoder_decoder(self) -> bool:
        return self.model_type == "encoder_decoder"

    def restore(self, path: str, step: int | None = None) -> Params:
        """The checkpoint's parameters, read straight into this model's shardings."""
        return param_checkpoints.restore_model_params(
            path, self.spec, self.mesh, self.rules, step=step
        )

    def evaluator(
        self,
        *,
        batch_size: int,
        task_feature_lengths: Mapping[str, int],
        max_decode_length: int | None = None,
        num_samples: int = 3,
    ) -> GreedyEvaluator:
        """The training loop's evaluator (decode function and beam size from gin)."""
        return GreedyEvaluator(
            self.spec,
            encoder_decoder=self.encoder_decoder,
            prefix_lm=self.model_type == "prefix_lm",
            batch_size=batch_size,
            input_length=int(task_feature_lengths["inputs"]),
            max_decode_length=int(max_decode_length or task_feature_lengths["targets"]),
            target_length=int(task_feature_lengths["targets"]),
            num_samples=num_samples,
            mesh=self.mesh,
            rules=self.rules,
        )


def load_inference_model(
    *,
    decoder_objective: str | None = None,
    mesh_config: partitioning.MeshConfig | None = None,
    logical_axis_rules: partitioning.AxisRules | None = None,
    binding_prefix: str = "evaluate",
) -> InferenceModel:
    """The model gin describes (``build_model``), transformed by ``train.plugins`` if bound.

    ``decoder_objective`` (decoder-only models) defaults to the run's
    ``train.decoder_objective``, else ``'prefix_lm'``.
    """
    plugins = PluginSet(train_binding("plugins", ()))
    spec = ModelSpec.create(plugins.build(build_model, train_binding("seed", 0)))
    objective = decoder_objective or train_binding("decoder_objective", "prefix_lm")
    if objective not in _OBJECTIVES:
        raise UserInputError(
            f"{binding_prefix}.decoder_objective={objective!r}: expected 'prefix_lm' or 'lm'."
        )
    encoder_decoder = model_family(spec.config).encoder_decoder
    model_type = "encoder_decoder" if encoder_decoder else _OBJECTIVES[objective]
    mesh = partitioning.create_mesh(mesh_config or partitioning.MeshConfig())
    rules = plugins.axis_rules(
        list(logical_axis_rules or partitioning.standard_logical_axis_rules())
    )
    log.info(
        "Model: %s (%.2fM parameters)%s",
        type(spec.config).__name__,
        spec.num_params() / 1e6,
        f", plug-ins: {', '.join(plugins.names)}" if plugins else "",
    )
    return InferenceModel(spec, plugins, mesh, rules, model_type)


def model_dir_of(checkpoint_path: str) -> str:
    """The MODEL_DIR a checkpoint path belongs to (a step folder's grandparent)."""
    path = paths.resolve(checkpoint_path, what="checkpoint path", for_checkpoints=True)
    if (path / "state").is_dir():
        path = path.parent
    if path.name == "checkpoints":
        path = path.parent
    return os.fspath(path)


def select_steps(
    checkpoint_path: str, checkpoints: str | int | Sequence[int], binding: str
) -> list[int | None]:
    """Which steps of ``checkpoint_path`` to use: ``'all'``, ``'latest'``, a step or steps.

    A step folder is itself one checkpoint (``[None]``: use it as it is).
    """
    if (paths.resolve(checkpoint_path, what="checkpoint path") / "state").is_dir():
        return [None]
    available = param_checkpoints.checkpoint_steps(checkpoint_path)
    if not available:
        # resolve_checkpoint names the path and what was expected there.
        param_checkpoints.resolve_checkpoint(checkpoint_path)
    if checkpoints == "all":
        return list(available)
    if checkpoints == "latest":
        return [available[-1]]
    wanted = [checkpoints] if isinstance(checkpoints, int) else list(checkpoints)
    if not wanted or not all(isinstance(s, int) and not isinstance(s, bool) for s in wanted):
        raise UserInputError(
            f"{binding}={checkpoints!r}: expected 'all', 'latest', a step or a list of steps."
        )
    missing = [s for s in wanted if s not in available]
    if missing:
        raise UserInputError(
            f"{binding}={checkpoints!r}: {checkpoint_path} has no checkpoint at step(s) "
            f"{missing}; it has {available}."
        )
    return sorted(set(wanted))


def is_writer() -> bool:
    """Only process 0 writes result files (every process computes)."""
    return jax.process_index() == 0

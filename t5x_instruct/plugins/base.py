"""The plug-in interface: one base class whose hooks the core calls at one place each.

Every hook is optional (the defaults do nothing), so a plug-in overrides only what it needs.
Where each hook is called:

==========================  ==============================================================
hook                        called by
==========================  ==============================================================
``logical_axis_rules``      the loop, before the mesh rules are used (prepended)
``transform_model``         model construction (``ModelSpec``), after ``build_model``:
                            NNX surgery, ``model.add_sequence_hook(name, module)``
``owns`` / ``freeze_base``  the optimizer split: trainable = owned by a plug-in, or any
/ ``trainable``             parameter when no plug-in freezes the base; frozen
                            parameters get no gradient and no optimizer state
``assignment_map``          warm starts (prepended to ``train.assignment_map``)
``init_from_base``          warm starts, after INITIAL_CHECKPOINT_PATH is loaded (jit-traced)
``aux_state``               train-state creation and restore (``TrainState.aux[name]``)
``prepare_batch``           the train step, before the forward pass (jit-traced)
``loss_terms``              the train and validation steps, after the forward pass: *sums*
                            over target tokens, divided once by the batch's token count
``cross_entropy_scale``     the train and validation steps: weight of the core CE term
``update_aux``              the train step, after the optimizer update (jit-traced)
``eval_metrics``            each periodic and the final eval (host side)
``after_eval``              after each periodic eval: continue, save, or stop
``on_checkpoint``           after each checkpoint save (exports, e.g. a prompt ``.npy``)
==========================  ==============================================================

The core never names a plug-in; it only calls :class:`~t5x_instruct.plugins.PluginSet`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx

AssignmentMap = Sequence[tuple[str, str | None]]
AxisRules = Sequence[tuple[str, Any]]


class Action(enum.Enum):
    """What a plug-in asks of the loop after an eval."""

    CONTINUE = "continue"
    SAVE = "save"  # checkpoint now
    STOP = "stop"  # checkpoint now and end training (the summary records the step)


@dataclasses.dataclass(frozen=True)
class AuxState:
    """State a plug-in carries in the train state: sharded, never differentiated.

    Attributes:
      abstract: pytree of ``jax.ShapeDtypeStruct`` (shapes and dtypes).
      shardings: matching pytree of ``NamedSharding`` (see ``partitioning``).
      init: returns the initial values (placed in ``shardings``); called once at a fresh
        start, and at every start when ``checkpointed`` is False.
      checkpointed: False for state that is rebuilt rather than saved (a frozen teacher
        loaded from its own checkpoint should not be re-written with every save).
    """

    abstract: Any
    shardings: Any
    init: Callable[[], Any]
    checkpointed: bool = True


@dataclasses.dataclass(frozen=True)
class SetupContext:
    """What ``aux_state`` may use: the (plug-in-transformed) model spec, mesh and rules."""

    model_spec: Any  # training.train_state.ModelSpec
    mesh: Any
    rules: AxisRules
    model_dir: str


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Inside the jitted step: the student module and everything a loss term may read.

    ``logits`` is ``None`` in ``prepare_batch`` (before the forward pass). ``aux`` is this
    plug-in's own entry of ``TrainState.aux`` (``None`` if it has none).
    """

    model: nnx.Module
    params: Any
    batch: Mapping[str, jax.Array]
    logits: jax.Array | None
    aux: Any
    step: jax.Array
    rng: jax.Array | None
    deterministic: bool


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Host side, at an eval: current state plus an evaluator that decodes with it."""

    step: int
    params: Any
    aux: Any
    model_spec: Any
    evaluator: Any  # training.evaluation.GreedyEvaluator
    mesh: Any
    rules: AxisRules
    model_dir: str
    metrics: Mapping[str, float]  # what the core measured at this eval


@dataclasses.dataclass(frozen=True)
class CheckpointContext:
    """After a checkpoint save. Called on every process (``fetch`` is collective)."""

    step: int
    params: Any
    aux: Any
    model_dir: str
    fetch: Callable[[Any], Any]  # device arrays -> host numpy (gathers across hosts)
    is_writer: bool  # only process 0 writes files


class Plugin:
    """Base class for plug-ins. Subclass, set ``name``, override the hooks you need.

    ``name`` keys the plug-in's metrics (``<name>/...``), its auxiliary state and its
    sequence hooks; two plug-ins in one run must have different names.
    """

    name: str = "plugin"

    # ---------------------------------------------------------------- model
    def logical_axis_rules(self) -> AxisRules:
        """Extra logical-axis rules for the parameters this plug-in adds."""
        return ()

    def transform_model(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
        """Module surgery after ``build_model`` (also traced shape-only by ``eval_shape``)."""
        del rngs
        return model

    # ---------------------------------------------------------------- parameters
    freeze_base: bool = False

    def owns(self, path: str) -> bool:
        """True for parameters this plug-in added (``'/'``-joined path)."""
        del path
        return False

    def trainable(self, path: str) -> bool | None:
        """Override the default rule for one parameter: True/False, or None (no opinion)."""
        del path
        return None

    def assignment_map(self) -> AssignmentMap:
        """Warm-start rules (``(regex, replacement or None)``), before the user's."""
        return ()

    def init_from_base(self, params: Any) -> Any:
        """Re-derive this plug-in's initial parameters from the loaded base parameters.

        Build-time initialisers see the base model's *random* weights; after a warm start
        this lets one that reads base weights (a prompt from vocabulary embeddings) use the
        loaded ones. Takes and returns the full params dict.
        """
        return params

    # ---------------------------------------------------------------- state
    def aux_state(self, setup: SetupContext) -> AuxState | None:
        return None

    def update_aux(self, aux: Any, params: Any, step: jax.Array) -> Any:
        del params, step
        return aux

    # ---------------------------------------------------------------- loss
    def prepare_batch(self, ctx: StepContext) -> Mapping[str, jax.Array]:
        """Replace or extend the batch before the forward pass (e.g. on-policy targets)."""
        return ctx.batch

    def loss_terms(self, ctx: StepContext) -> dict[str, jax.Array]:
        """Extra loss terms as scalar *sums* over target tokens (added to the objective)."""
        del ctx
        return {}

    def cross_entropy_scale(self) -> float:
        """Weight of the core cross-entropy term (plug-ins' scales multiply)."""
        return 1.0

    # ---------------------------------------------------------------- loop
    def eval_metrics(self, ctx: EvalContext) -> dict[str, float]:
        del ctx
        return {}

    def after_eval(self, step: int, metrics: Mapping[str, float]) -> Action:
        del step, metrics
        return Action.CONTINUE

    def on_checkpoint(self, ctx: CheckpointContext) -> None:
        del ctx


def path_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """``re.fullmatch`` against any of ``patterns`` (compiled once)."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path: any(p.fullmatch(path) for p in compiled)

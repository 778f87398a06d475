"""Where a run's train state comes from: MODEL_DIR's latest checkpoint, a warm start, or init.

Plug-ins shape it: which parameters are trainable (only those carry optimizer state) and
which auxiliary state rides along (``TrainState.aux``). Auxiliary state that is not
checkpointed (a frozen teacher) is rebuilt from its plug-in at every start.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import optax

from t5x_instruct import partitioning
from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.base import AuxState, SetupContext
from t5x_instruct.plugins.plugin_set import PluginSet
from t5x_instruct.training import checkpoints as ckpt_lib
from t5x_instruct.training import param_checkpoints
from t5x_instruct.training.train_state import (
    IsTrainable,
    ModelSpec,
    TrainState,
    init_train_state,
    split_params,
    train_state_shardings,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StateLayout:
    """Everything needed to build, shard, save and restore one run's train state."""

    spec: ModelSpec
    optimizer: optax.GradientTransformation
    mesh: Any
    rules: partitioning.AxisRules
    plugins: PluginSet
    aux: dict[str, AuxState]

    @property
    def is_trainable(self) -> IsTrainable | None:
        return self.plugins.is_trainable if self.plugins else None

    @functools.cached_property
    def shardings(self) -> TrainState:
        return train_state_shardings(
            self.spec,
            self.optimizer,
            self.mesh,
            self.rules,
            self.is_trainable,
            {name: aux.shardings for name, aux in self.aux.items()},
        )

    def trainable_count(self) -> int:
        trainable, _ = split_params(self.spec.abstract_params(), self.is_trainable)
        return sum(int(x.size) for x in jax.tree.leaves(trainable))

    def for_checkpoint(self, state: TrainState) -> TrainState:
        """The state as saved: without auxiliary state that is rebuilt at start."""
        saved_aux = {k: v for k, v in state.aux.items() if self._checkpointed(k)}
        return state.replace(aux=saved_aux)

    def _checkpointed(self, name: str) -> bool:
        return name not in self.aux or self.aux[name].checkpointed

    def abstract_checkpoint(self) -> TrainState:
        """ShapeDtypeStructs (with shardings) of what :meth:`for_checkpoint` saves."""
        shardings = self.shardings
        abstract = jax.eval_shape(
            lambda: init_train_state(
                self.spec.abstract_params(),
                self.optimizer,
                self.is_trainable,
                {name: aux.abstract for name, aux in self.aux.items()},
            )
        )
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
        return self.for_checkpoint(abstract)

    def rebuilt_aux(self, only_uncheckpointed: bool) -> dict[str, Any]:
        return {
            name: aux.init()
            for name, aux in self.aux.items()
            if not (only_uncheckpointed and aux.checkpointed)
        }


def make_layout(
    spec: ModelSpec,
    optimizer: optax.GradientTransformation,
    mesh: Any,
    rules: partitioning.AxisRules,
    plugins: PluginSet,
    model_dir: str,
) -> StateLayout:
    aux = plugins.aux_states(SetupContext(spec, mesh, rules, model_dir)) if plugins else {}
    return StateLayout(spec, optimizer, mesh, rules, plugins, aux)


def _restore_newest_intact(
    layout: StateLayout, checkpointer: ckpt_lib.Checkpointer
) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest training checkpoint of MODEL_DIR that restores, or ``None`` if it has none.

    A damaged one (a data file missing, truncated or overwritten, ``state/`` or its metadata
    missing, an empty folder: anything that fails to read) is skipped for the one before it;
    once an intact one restored, each damaged newer one is renamed aside (never deleted)
    with one warning. When every training checkpoint is damaged nothing is renamed and the
    run stops with :class:`~t5x_instruct.training.checkpoints.NoIntactCheckpointError`:
    starting over is the user's call. Another model's checkpoint (a ``UserInputError``) is
    not damage and stops the run as before. Parameters-only checkpoints are not resumable
    and are left to the warm start.
    """
    damaged: list[tuple[int, str]] = []
    for step in sorted(checkpointer.manager.all_steps(), reverse=True):
        restored = None
        problem = checkpointer.structural_problem(step)
        # A failure is described inside the context: the abandoned reads its traceback keeps
        # alive are collected there, with their reports dropped, not later at random.
        with ckpt_lib.read_failures_reported_once():
            try:
                if problem is None:
                    if param_checkpoints.is_params_only(checkpointer.directory, step):
                        continue  # a conversion's parameters: a warm start, not a resume
                    problem = checkpointer.missing_items(step)
                if problem is None:
                    restored = _restore_step(layout, checkpointer, step)
            except UserInputError:
                raise
            except Exception as exc:
                problem = ckpt_lib.describe_failure(exc, checkpointer.step_dir(step))
        if ckpt_lib.any_process(problem is not None):  # every process falls back together
            damaged.append((step, problem or "unreadable on another process"))
            continue
        assert restored is not None
        for bad, why in damaged:
            moved = checkpointer.set_aside(bad)
            log.warning(
                "Checkpoint %s is damaged (%s): moved it to %s and resuming from step %d.",
                checkpointer.step_dir(bad), why, moved, step,
            )  # fmt: skip
        log.info("Resumed from %s at step %d", checkpointer.directory, step)
        return restored
    if damaged:
        listed = "; ".join(f"{checkpointer.step_dir(s)}: {why}" for s, why in damaged)
        raise ckpt_lib.NoIntactCheckpointError(
            f"MODEL_DIR has no intact checkpoint to resume from ({listed}). Nothing was "
            f"changed; to start over, move those folders out of {checkpointer.directory} "
            "(or use a new MODEL_DIR)."
        )
    return None


def _restore_step(
    layout: StateLayout, checkpointer: ckpt_lib.Checkpointer, step: int
) -> tuple[TrainState, dict[str, Any]]:
    missing = checkpointer.missing_params(step, layout.spec.abstract_params())
    layout.plugins.check_params_present(
        missing, f"MODEL_DIR checkpoint {checkpointer.step_dir(step)}"
    )
    state, data_state = checkpointer.restore(step, layout.abstract_checkpoint())
    state = state.replace(aux={**state.aux, **layout.rebuilt_aux(only_uncheckpointed=True)})
    return state, data_state


def restore_or_initialise(
    layout: StateLayout,
    checkpointer: ckpt_lib.Checkpointer,
    initial_checkpoint_path: str | None,
    assignment_map: Sequence[tuple[str, str | None]],
    fallback_to_scratch: bool,
) -> tuple[TrainState, dict[str, Any]]:
    """Resume from MODEL_DIR if it has a checkpoint, else initialise (optionally warm-start).

    Resuming falls back past damaged checkpoints (:func:`_restore_newest_intact`). A
    MODEL_DIR holding only parameters-only checkpoints (a conversion, ``save_params``) has
    no optimizer state to resume: its latest one is the warm start instead.
    """
    restored = _restore_newest_intact(layout, checkpointer)
    if restored is not None:
        return restored
    params_only = checkpointer.latest_step()
    if params_only is not None:
        if initial_checkpoint_path:
            log.warning(
                "MODEL_DIR holds a parameters-only checkpoint; warm-starting from it, not from "
                "INITIAL_CHECKPOINT_PATH=%s", initial_checkpoint_path,
            )  # fmt: skip
        initial_checkpoint_path = os.fspath(checkpointer.directory / str(params_only))
        log.info("Warm start from the parameters-only checkpoint %s", initial_checkpoint_path)
    params = layout.spec.init_params(layout.mesh, layout.rules)
    if initial_checkpoint_path:
        params = ckpt_lib.load_params_for_warm_start(
            initial_checkpoint_path,
            layout.spec.abstract_params(),
            params,
            assignment_map=layout.plugins.assignment_map(assignment_map),
            fallback_to_scratch=fallback_to_scratch,
        )
        if layout.plugins:  # plug-in parameters derived from base weights see the loaded ones
            param_shardings = layout.shardings.params
            params = jax.jit(layout.plugins.init_from_base, out_shardings=param_shardings)(params)
    aux = layout.rebuilt_aux(only_uncheckpointed=False)
    shardings = layout.shardings
    init = jax.jit(
        lambda p, a: init_train_state(p, layout.optimizer, layout.is_trainable, a),
        out_shardings=shardings,
    )
    return init(params, aux), {}

"""The plug-ins of one run, composed: the only plug-in object the core talks to."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.base import (
    Action,
    AssignmentMap,
    AuxState,
    AxisRules,
    CheckpointContext,
    EvalContext,
    Plugin,
    SetupContext,
    StepContext,
)


class PluginSet:
    """Plug-ins in the order given (``train.plugins = [@PromptTuning(), @LoRA()]``).

    Composition rules: model transforms and batch preparation run in order; loss terms,
    metrics and axis rules are collected from all; trainability is decided per parameter
    (an explicit ``trainable`` answer wins, True over False; otherwise a parameter is
    trainable if a plug-in owns it or no plug-in freezes the base); after an eval the
    strongest action wins (STOP > SAVE > CONTINUE).
    """

    def __init__(self, plugins: Sequence[Plugin] = ()) -> None:
        self.plugins = tuple(plugins)
        for plugin in self.plugins:
            if not isinstance(plugin, Plugin):
                raise UserInputError(
                    f"train.plugins holds {plugin!r}, which is not a t5x_instruct Plugin "
                    "(bind plug-ins as `train.plugins = [@PromptTuning(), ...]`)."
                )
        names = [p.name for p in self.plugins]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserInputError(
                f"train.plugins has several plug-ins named {dupes}; give each a distinct name."
            )

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def __iter__(self):
        return iter(self.plugins)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.plugins)

    # ---------------------------------------------------------------- model
    def axis_rules(self, rules: AxisRules) -> list[tuple[str, Any]]:
        extra = [rule for p in self.plugins for rule in p.logical_axis_rules()]
        return [*extra, *rules]

    def transform_model(self, model: nnx.Module, seed: int = 0) -> nnx.Module:
        for plugin in self.plugins:
            # Each plug-in draws from its own stream: adding one never changes another's init.
            key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(plugin.name.encode()))
            model = plugin.transform_model(model, nnx.Rngs(params=key))
        return model

    def build(self, build_model: Callable[[], nnx.Module], seed: int = 0) -> Callable:
        """A zero-argument builder of the transformed model (what ``ModelSpec`` takes)."""
        if not self.plugins:
            return build_model
        return lambda: self.transform_model(build_model(), seed)

    # ---------------------------------------------------------------- parameters
    def is_trainable(self, path: str) -> bool:
        answers = [p.trainable(path) for p in self.plugins]
        if True in answers:
            return True
        if False in answers:
            return False
        if any(p.owns(path) for p in self.plugins):
            return True
        return not any(p.freeze_base for p in self.plugins)

    def owner_of(self, path: str) -> str | None:
        for plugin in self.plugins:
            if plugin.owns(path):
                return plugin.name
        return None

    def assignment_map(self, user_map: AssignmentMap) -> list[tuple[str, str | None]]:
        extra = [rule for p in self.plugins for rule in p.assignment_map()]
        return [*extra, *user_map]

    def init_from_base(self, params: Any) -> Any:
        for plugin in self.plugins:
            params = plugin.init_from_base(params)
        return params

    def check_params_present(self, missing: Sequence[str], where: str) -> None:
        """One error naming the plug-in whose parameters a checkpoint at ``where`` lacks."""
        for name in missing:
            owner = self.owner_of(name)
            if owner is not None:
                raise UserInputError(
                    f"{where} lacks parameter {name} of plug-in {owner!r}: it was saved "
                    f"without that plug-in. Start a new MODEL_DIR and load this one as "
                    f"INITIAL_CHECKPOINT_PATH (plug-in parameters then start fresh), or remove "
                    f"{owner!r} from train.plugins."
                )

    # ---------------------------------------------------------------- state
    def aux_states(self, setup: SetupContext) -> dict[str, AuxState]:
        out = {}
        for plugin in self.plugins:
            aux = plugin.aux_state(setup)
            if aux is not None:
                out[plugin.name] = aux
        return out

    def update_aux(self, aux: Mapping[str, Any], params: Any, step: jax.Array) -> dict:
        out = dict(aux)
        for plugin in self.plugins:
            if plugin.name in out:
                out[plugin.name] = plugin.update_aux(out[plugin.name], params, step)
        return out

    # ---------------------------------------------------------------- loss
    def prepare_batch(self, ctx: StepContext) -> Mapping[str, jax.Array]:
        batch = ctx.batch
        for i, plugin in enumerate(self.plugins):
            rng = None if ctx.rng is None else jax.random.fold_in(ctx.rng, i)
            batch = plugin.prepare_batch(
                _with(ctx, batch=batch, aux=_aux_of(ctx.aux, plugin), rng=rng)
            )
        return batch

    def loss_terms(self, ctx: StepContext) -> dict[str, jax.Array]:
        """``{'<plugin>/<term>': sum}`` from every plug-in."""
        out: dict[str, jax.Array] = {}
        for i, plugin in enumerate(self.plugins):
            rng = None if ctx.rng is None else jax.random.fold_in(ctx.rng, 1000 + i)
            terms = plugin.loss_terms(_with(ctx, aux=_aux_of(ctx.aux, plugin), rng=rng))
            for term, value in terms.items():
                out[f"{plugin.name}/{term}"] = value
        return out

    def cross_entropy_scale(self) -> float:
        scale = 1.0
        for plugin in self.plugins:
            scale *= float(plugin.cross_entropy_scale())
        return scale

    # ---------------------------------------------------------------- loop
    def eval_metrics(self, ctx: EvalContext) -> dict[str, float]:
        out: dict[str, float] = {}
        for plugin in self.plugins:
            own = _with(ctx, aux=_aux_of(ctx.aux, plugin))
            for metric, value in plugin.eval_metrics(own).items():
                out[f"{plugin.name}/{metric}"] = float(value)
        return out

    def after_eval(self, step: int, metrics: Mapping[str, float]) -> tuple[Action, list[str]]:
        """The strongest action asked for, and which plug-ins asked for it."""
        order = [Action.CONTINUE, Action.SAVE, Action.STOP]
        best, who = Action.CONTINUE, []
        for plugin in self.plugins:
            action = plugin.after_eval(step, metrics)
            if order.index(action) > order.index(best):
                best, who = action, [plugin.name]
            elif action == best and action != Action.CONTINUE:
                who.append(plugin.name)
        return best, who

    def on_checkpoint(self, ctx: CheckpointContext) -> None:
        for plugin in self.plugins:
            plugin.on_checkpoint(_with(ctx, aux=_aux_of(ctx.aux, plugin)))


def _aux_of(aux: Any, plugin: Plugin) -> Any:
    return aux.get(plugin.name) if isinstance(aux, Mapping) else None


def _with(ctx: Any, **changes: Any) -> Any:
    return dataclasses.replace(ctx, **changes)

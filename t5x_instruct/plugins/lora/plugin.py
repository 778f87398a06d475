"""The LoRA plug-in (Hu et al. 2021): what gin binds as ``train.plugins = [@LoRA()]``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import gin
import numpy as np
from etils import epath
from flax import nnx

from t5x_instruct.errors import UserInputError
from t5x_instruct.plugins.base import AssignmentMap, CheckpointContext, Plugin
from t5x_instruct.plugins.lora import adapters as adapters_lib
from t5x_instruct.plugins.lora.layer import (
    ADAPTER_NAMES,
    LoRADenseGeneral,
    adapter_shapes,
    dense_layers,
    dropout_salt,
    example_paths,
    replace_module,
    stacked_layers,
)

# Every attention projection (self, cross; q, k, v, o) and every MLP matrix, in both model
# families; the output projection (logits_dense) and embeddings stay untouched. Adapting
# all linear layers rather than q/v only is what matched full fine-tuning in QLoRA.
DEFAULT_TARGETS = (
    r".*attention/(query|key|value|out)/kernel",
    r".*mlp/(wi_0|wi_1|wo)/kernel",
)


@gin.configurable
class LoRA(Plugin):
    """Low-rank adapters on the ``DenseGeneral`` kernels whose paths match ``targets``.

    Args:
      targets: regexes, full-matched against ``'/'``-joined kernel paths such as
        ``encoder/blocks/0/attention/query/kernel`` (``encoder/block/...`` under
        ``scan_layers``; ``layers/blocks/0/mlp/wi_0/kernel`` in a decoder-only model). Each
        must match at least one kernel.
      rank: r, the inner size of ``A [in..., r]`` and ``B [r, out...]``.
      alpha: the update is scaled by ``alpha / rank``.
      dropout: dropout rate on the adapter's input (training steps only; the base path is
        not affected). Applies to targets inside the layer stacks.
      freeze_base: train only the adapters (the base gets no gradient, no optimizer state).
      init_from: an adapter file (``<MODEL_DIR>/<name>/adapters_<step>.safetensors``) to
        start the adapters from instead of a fresh init, over any compatible base model.
      export: write the adapters alone at every checkpoint (a small file next to it).
      name: the plug-in's name (metrics, export folder); distinct per plug-in in a run.
    """

    def __init__(
        self,
        targets: Sequence[str] = DEFAULT_TARGETS,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        freeze_base: bool = True,
        init_from: str | None = None,
        export: bool = True,
        name: str = "lora",
    ) -> None:
        if isinstance(targets, str):
            targets = (targets,)
        if not targets:
            raise UserInputError(f"plug-in {name!r}: LoRA.targets is empty; give regexes.")
        self.patterns = []
        for pattern in targets:
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as err:
                raise UserInputError(
                    f"plug-in {name!r}: LoRA.targets entry {pattern!r} is not a regex ({err})."
                ) from err
        if not (isinstance(rank, int) and rank > 0):
            raise UserInputError(f"plug-in {name!r}: LoRA.rank={rank!r} must be a positive int.")
        if not 0.0 <= dropout < 1.0:
            raise UserInputError(f"plug-in {name!r}: LoRA.dropout={dropout} must be in [0, 1).")
        self.name = name
        self.targets = tuple(targets)
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.freeze_base = freeze_base
        self.init_from = init_from
        self.export = export
        self._file: tuple[dict[str, np.ndarray], dict] | None = None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _targeted(self, kernel_path: str) -> bool:
        return any(p.fullmatch(kernel_path) for p in self.patterns)

    # ---------------------------------------------------------------- model

    def transform_model(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
        layers = dense_layers(model)
        for pattern in self.patterns:
            if not any(pattern.fullmatch(path) for path in layers):
                raise UserInputError(
                    f"plug-in {self.name!r}: LoRA.targets entry {pattern.pattern!r} matches no "
                    f"DenseGeneral kernel of this {type(model).__name__}. Entries are "
                    f"full-matched against kernel paths (layer 0 of each stack shown): "
                    f"{', '.join(example_paths(sorted(layers)))}."
                )
        chosen = {path: v for path, v in layers.items() if self._targeted(path)}
        taken = [p for p, (_, layer) in chosen.items() if isinstance(layer, LoRADenseGeneral)]
        if taken:
            raise UserInputError(
                f"plug-in {self.name!r}: LoRA.targets matches {taken[0]}, which another LoRA "
                "plug-in already adapts; give each LoRA plug-in disjoint targets."
            )
        initial = self._initial_values(chosen)
        for kernel_path, (path, layer) in chosen.items():
            wrapper = LoRADenseGeneral(
                layer,
                rank=self.rank,
                scale=self.scale,
                dropout_rate=self.dropout,
                salt=dropout_salt(kernel_path),
                rngs=rngs,
                initial=initial.get(kernel_path),
            )
            replace_module(model, path, wrapper)
        return model

    def _initial_values(self, chosen: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """Adapter values from ``init_from`` for every chosen kernel (checked), or ``{}``."""
        if self.init_from is None:
            return {}
        setting = f"plug-in {self.name!r}: LoRA.init_from"
        if self._file is None:
            self._file = adapters_lib.read_adapters(self.init_from, setting)
        arrays, metadata = self._file
        where = f"{setting}={self.init_from!r}"
        if metadata.get("rank", self.rank) != self.rank:
            raise UserInputError(
                f"{where} holds rank-{metadata['rank']} adapters; set LoRA.rank = "
                f"{metadata['rank']} (now {self.rank})."
            )
        if float(metadata.get("alpha", self.alpha)) != self.alpha:
            raise UserInputError(
                f"{where} was trained with alpha={metadata['alpha']}; set LoRA.alpha = "
                f"{metadata['alpha']} (now {self.alpha}) so the adapters compute what they learnt."
            )
        out, used = {}, set()
        for kernel_path, (_, layer) in chosen.items():
            module_path = kernel_path.rsplit("/", 1)[0]
            shapes = adapter_shapes(layer, self.rank)
            lead = stacked_layers(layer)
            values = adapters_lib.layer_arrays(arrays, module_path, lead)
            if values is None:
                raise UserInputError(
                    f"{where} has no adapters for {module_path} (LoRA.targets adapts it); "
                    f"the file holds e.g. {sorted(arrays)[:3]}. Use the targets it was "
                    "trained with."
                )
            for name in ADAPTER_NAMES:
                if tuple(values[name].shape) != shapes[name]:
                    raise UserInputError(
                        f"{where}: {module_path}/{name} has shape {list(values[name].shape)} "
                        f"in the file but this model needs {list(shapes[name])}: the adapters "
                        "were trained for a model of another shape."
                    )
            for name in ADAPTER_NAMES:
                used.update(adapters_lib.file_keys(module_path, name, lead))
            out[kernel_path] = values
        unused = sorted(set(arrays) - used)
        if unused:
            raise UserInputError(
                f"{where} holds adapters this model's LoRA.targets do not adapt (e.g. "
                f"{unused[:3]}); use the targets it was trained with."
            )
        return out

    # ---------------------------------------------------------------- parameters

    def owns(self, path: str) -> bool:
        module_path, _, leaf = path.rpartition("/")
        return leaf in ADAPTER_NAMES and self._targeted(f"{module_path}/kernel")

    def assignment_map(self) -> AssignmentMap:
        """A base checkpoint (INITIAL_CHECKPOINT_PATH) never holds adapters: keep their init."""
        return [(rf".*/({'|'.join(ADAPTER_NAMES)})", None)]

    # ---------------------------------------------------------------- export

    def adapter_file(self, model_dir: str, step: int) -> epath.Path:
        return epath.Path(model_dir) / self.name / f"adapters_{step}{adapters_lib.SUFFIX}"

    def metadata(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    def adapters(self, params: dict[str, Any]) -> dict[str, Any]:
        """This plug-in's adapter leaves of ``params`` (a nested dict)."""
        tree = adapters_lib.adapter_tree(params)
        return _filter_tree(tree, self.owns)

    def save(self, path: str | epath.Path, params: dict[str, Any]) -> None:
        """Write this plug-in's adapters in ``params`` (host arrays) to ``path``."""
        adapters_lib.save_adapters(path, self.adapters(params), self.metadata())

    def merge(self, params: dict[str, Any]) -> dict[str, Any]:
        """Params for the model built without this plug-in, adapters folded into kernels."""
        return adapters_lib.merge_adapters(params, self.scale, self.owns)

    def on_checkpoint(self, ctx: CheckpointContext) -> None:
        if not self.export:
            return
        host = ctx.fetch(self.adapters(ctx.params))  # collective: every process calls it
        if ctx.is_writer:
            adapters_lib.save_adapters(
                self.adapter_file(ctx.model_dir, ctx.step), host, self.metadata()
            )


def _filter_tree(tree: dict[str, Any], keep: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            sub = _filter_tree(value, keep, name)
            if sub:
                out[key] = sub
        elif keep(name):
            out[key] = value
    return out

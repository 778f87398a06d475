"""The sweep file: a base run, a base mixture and the axes to vary (YAML, validated).

Example (``gin/ablations/tasks_and_templates.yaml`` is a complete one)::

    name: my_sweep
    task_modules: [tasks.demo, tasks.demo.ablation]
    run:      {gin_files: [gin/runs/quickstart.gin], steps: 300, bindings: {BATCH_SIZE: 32}}
    mixture:  {sources: {demo: [demo_instructions]}, rate: equal}
    eval:     {mixture: demo_eval, per_template: true, max_examples: 100}
    clusters: {lists: [demo_first_item, demo_last_item]}
    axes:
      exclude: {none: [], lists: [lists]}      # leave-one-cluster-out
      templates_per_task: [1, all]
      seed: [0, 1]

Every error names the file and the key at fault (``axes.include[one]``), before anything
is registered or trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from t5x_instruct.ablation.naming import sanitize_label, value_label
from t5x_instruct.errors import UserInputError

TOP_KEYS = (
    "name",
    "description",
    "task_modules",
    "run",
    "mixture",
    "eval",
    "clusters",
    "axes",
    "mode",
    "base",
    "launcher",
    "format_suffixes",
    "sizes",
)
RUN_KEYS = ("gin_files", "bindings", "model", "steps", "seed")
MIXTURE_KEYS = (
    "sources",
    "rate",
    "cap",
    "task_caps",
    "rates",
    "include",
    "exclude",
    "templates_per_task",
    "formats",
)
EVAL_KEYS = ("mixture", "tasks", "per_template", "max_examples", "batch_size")
AXIS_KEYS = (*MIXTURE_KEYS, "model", "steps", "seed", "bindings")
MODES = ("grid", "one_at_a_time")
# Flan's task-name suffixes of each format (override with ``format_suffixes``).
DEFAULT_FORMAT_SUFFIXES = {
    "zero_shot": "_zero_shot",
    "few_shot": "_x_shot",
    "no_opt": "_no_opt",
    "cot": "_cot",
    "cot_few_shot": "_cot_x_shot",
}
MIXTURE_DEFAULTS: dict[str, Any] = {
    "sources": None,
    "rate": "examples",
    "cap": None,
    "task_caps": {},
    "rates": {},
    "include": None,
    "exclude": [],
    "templates_per_task": None,
    "formats": None,
}
RUN_DEFAULTS: dict[str, Any] = {
    "gin_files": [],
    "bindings": {},
    "model": None,
    "steps": None,
    "seed": 0,
}


class SweepError(UserInputError):
    """A sweep file is malformed; the message names the file and key."""


def sweep_error(path: str, key: str, message: str) -> SweepError:
    return SweepError(f"{path}: {key}: {message}")


@dataclasses.dataclass(frozen=True)
class Axis:
    setting: str
    values: tuple[tuple[str, Any], ...]  # (label, value) in file order

    def labels(self) -> list[str]:
        return [label for label, _ in self.values]


@dataclasses.dataclass(frozen=True)
class VariantPoint:
    """One point of the sweep before resolution: the settings and where each came from."""

    labels: dict[str, str]  # axis setting -> label, axis order
    settings: dict[str, Any]  # every mixture and run setting, normalised
    origins: dict[str, str]  # setting -> key path in the sweep file
    is_base: bool


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    path: str
    name: str
    description: str
    task_modules: tuple[str, ...]
    run: dict[str, Any]
    mixture: dict[str, Any]
    eval: dict[str, Any] | None
    clusters: dict[str, tuple[str, ...]]
    axes: tuple[Axis, ...]
    mode: str
    base: dict[str, str]
    launcher: str
    format_suffixes: dict[str, str]
    sizes: dict[str, int]

    def where(self, key: str, message: str) -> SweepError:
        return sweep_error(self.path, key, message)


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Reads and validates a sweep file (structure and value types; names are checked when
    variants are resolved against the registered tasks)."""
    import yaml  # lazy: only the sweep tool needs it

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise SweepError(f"{path}: no such sweep file.") from exc
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from exc
    return parse_sweep(raw, path)


def parse_sweep(raw: Any, path: str = "<sweep>") -> SweepSpec:
    """A :class:`SweepSpec` from the parsed YAML (a mapping)."""
    if not isinstance(raw, Mapping):
        raise sweep_error(path, "<top level>", "expected a mapping of keys (name, run, axes, ...).")
    _check_keys(raw, TOP_KEYS, path, "")
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(name, str):
        raise sweep_error(path, "name", f"expected a string, got {name!r}.")
    modules = _str_list(raw.get("task_modules", ["tasks.demo"]), path, "task_modules")
    run = _section(raw, "run", RUN_KEYS, path)
    mixture = _section(raw, "mixture", MIXTURE_KEYS, path)
    evaluation = raw.get("eval")
    if evaluation is not None:
        evaluation = _section(raw, "eval", EVAL_KEYS, path)
        if ("mixture" in evaluation) == ("tasks" in evaluation):
            raise sweep_error(path, "eval", "give exactly one of 'mixture' or 'tasks'.")
        evaluation = _normalise_eval(evaluation, path)
    clusters = {}
    for cname, members in (_mapping(raw.get("clusters", {}), path, "clusters")).items():
        clusters[str(cname)] = tuple(_str_list(members, path, f"clusters.{cname}"))
    suffixes = dict(DEFAULT_FORMAT_SUFFIXES)
    suffixes.update(
        {
            str(k): str(v)
            for k, v in _mapping(raw.get("format_suffixes", {}), path, "format_suffixes").items()
        }
    )
    sizes = {}
    for task, n in _mapping(raw.get("sizes", {}), path, "sizes").items():
        sizes[str(task)] = _positive_int(n, path, f"sizes.{task}")
    mode = raw.get("mode", "grid")
    if mode not in MODES:
        raise sweep_error(path, "mode", f"expected one of {MODES}, got {mode!r}.")
    axes = _parse_axes(raw.get("axes", {}), path)
    base = {str(k): str(v) for k, v in _mapping(raw.get("base", {}), path, "base").items()}
    for axis_name, label in base.items():
        axis = next((a for a in axes if a.setting == axis_name), None)
        if axis is None:
            raise sweep_error(
                path, f"base.{axis_name}", _unknown("axis", axis_name, [a.setting for a in axes])
            )
        if sanitize_label(label) not in axis.labels():
            raise sweep_error(path, f"base.{axis_name}", _unknown("label", label, axis.labels()))
        base[axis_name] = sanitize_label(label)
    launcher = raw.get("launcher", "local")
    if not isinstance(launcher, str):
        raise sweep_error(path, "launcher", f"expected a launcher name, got {launcher!r}.")
    spec = SweepSpec(
        path=path,
        name=sanitize_label(name),
        description=str(raw.get("description", "")),
        task_modules=tuple(modules),
        run=run,
        mixture=mixture,
        eval=evaluation,
        clusters=clusters,
        axes=tuple(axes),
        mode=mode,
        base=base,
        launcher=launcher,
        format_suffixes=suffixes,
        sizes=sizes,
    )
    # Type-check the base settings now, so that a bad base value names its own key (those
    # every variant overrides are checked with the axis values).
    first = {a.setting: a.values[0][1] for a in spec.axes}
    settings_for(spec, first, {a.setting: f"axes.{a.setting}[{a.values[0][0]}]" for a in spec.axes})
    return spec


def _unknown(what: str, name: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Known: {', '.join(map(str, known)) or '(none)'}."


def _check_keys(raw: Mapping[str, Any], allowed: Sequence[str], path: str, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise sweep_error(path, f"{prefix}{key}", _unknown("key", key, allowed))


def _mapping(value: Any, path: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise sweep_error(path, key, f"expected a mapping, got {value!r}.")
    return dict(value)


def _section(raw: Mapping[str, Any], name: str, keys: Sequence[str], path: str) -> dict:
    section = _mapping(raw.get(name, {}), path, name)
    _check_keys(section, keys, path, f"{name}.")
    return section


def _str_list(value: Any, path: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise sweep_error(path, key, f"expected a name or a list of names, got {value!r}.")
    return list(value)


def _positive_int(value: Any, path: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise sweep_error(path, key, f"expected a positive integer, got {value!r}.")
    return value


def _number(value: Any, path: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise sweep_error(path, key, f"expected a non-negative number, got {value!r}.")
    return float(value)


def _normalise_eval(evaluation: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"per_template": bool(evaluation.get("per_template", False))}
    if "mixture" in evaluation:
        out["names"] = [_str_list(evaluation["mixture"], path, "eval.mixture")[0]]
        out["key"] = "eval.mixture"
    else:
        out["names"] = _str_list(evaluation["tasks"], path, "eval.tasks")
        out["key"] = "eval.tasks"
    for key in ("max_examples", "batch_size"):
        if evaluation.get(key) is not None:
            out[key] = _positive_int(evaluation[key], path, f"eval.{key}")
    return out


def _parse_axes(raw: Any, path: str) -> list[Axis]:
    axes = []
    for setting, values in _mapping(raw, path, "axes").items():
        key = f"axes.{setting}"
        if setting not in AXIS_KEYS:
            raise sweep_error(path, key, _unknown("axis setting", setting, AXIS_KEYS))
        if isinstance(values, Mapping):
            pairs = [(sanitize_label(label), value) for label, value in values.items()]
        elif isinstance(values, (list, tuple)):
            pairs = [(value_label(v), v) for v in values]
        else:
            raise sweep_error(path, key, "expected a list of values or a mapping label: value.")
        if not pairs:
            raise sweep_error(path, key, "an axis needs at least one value.")
        labels = [label for label, _ in pairs]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise sweep_error(
                path,
                key,
                f"values share the label(s) {dupes}; give them distinct labels "
                "(write the axis as a mapping label: value).",
            )
        axes.append(Axis(setting, tuple(pairs)))
    return axes


def settings_for(
    spec: SweepSpec, overrides: Mapping[str, Any], origins: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The normalised settings of one point: base values with ``overrides`` (axis values)."""
    settings: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, default in {**MIXTURE_DEFAULTS, **RUN_DEFAULTS}.items():
        section = "mixture" if key in MIXTURE_DEFAULTS else "run"
        base = getattr(spec, section).get(key, default)
        where[key] = f"{section}.{key}"
        value = base
        if key in overrides:
            where[key] = origins[key]
            value = overrides[key]
            if key == "bindings":  # axis bindings add to (and override) the base ones
                value = {
                    **_bindings(base, spec.path, f"{section}.{key}"),
                    **_bindings(value, spec.path, where[key]),
                }
        settings[key] = _normalise(key, value, spec.path, where[key])
    if settings["sources"] is None:
        raise sweep_error(
            spec.path,
            "mixture.sources",
            "name the tasks to mix, e.g. sources: {demo: [demo_instructions]}.",
        )
    return settings, where


def _bindings(value: Any, path: str, key: str) -> dict[str, Any]:
    if isinstance(value, (list, tuple)):
        out = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise sweep_error(path, key, f"expected 'KEY = VALUE' strings, got {item!r}.")
            k, v = item.split("=", 1)
            out[k.strip()] = _RawGin(v.strip())
        return out
    return {str(k): v for k, v in _mapping(value, path, key).items()}


@dataclasses.dataclass(frozen=True)
class _RawGin:
    """A binding value written as gin text (``'KEY = VALUE'`` form): passed through."""

    text: str


def gin_literal(value: Any) -> str:
    """A YAML value as gin text: strings quoted unless they are gin references."""
    if isinstance(value, _RawGin):
        return value.text
    if isinstance(value, str):
        return value if value.startswith(("@", "%")) else repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(gin_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"Cannot write {value!r} as a gin value.")


def _normalise(key: str, value: Any, path: str, where: str) -> Any:
    """Type-checks one setting and returns it in canonical (JSON-able) form."""
    if key in ("include",):
        if value is None or value == "all":
            return None
        return _str_list(value, path, where)
    if key == "exclude":
        return [] if value is None else _str_list(value, path, where)
    if key == "templates_per_task":
        return None if value is None or value == "all" else _positive_int(value, path, where)
    if key == "rate":
        if value not in ("equal", "examples"):
            raise sweep_error(path, where, f"expected 'equal' or 'examples', got {value!r}.")
        return value
    if key in ("cap", "steps"):
        return None if value is None else _positive_int(value, path, where)
    if key == "task_caps":
        return {
            str(k): _positive_int(v, path, f"{where}.{k}")
            for k, v in _mapping(value, path, where).items()
        }
    if key == "rates":
        return {
            str(k): _number(v, path, f"{where}.{k}")
            for k, v in _mapping(value, path, where).items()
        }
    if key == "formats":
        if value is None:
            return None
        return {
            str(k): _number(v, path, f"{where}.{k}")
            for k, v in _mapping(value, path, where).items()
        }
    if key == "sources":
        return None if value is None else _sources(value, path, where)
    if key in ("gin_files",):
        return _str_list(value, path, where)
    if key == "model":
        return [] if value is None else _str_list(value, path, where)
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise sweep_error(path, where, f"expected an integer seed, got {value!r}.")
        return value
    if key == "bindings":
        bindings = _bindings(value, path, where)
        try:
            return {k: gin_literal(v) for k, v in bindings.items()}
        except TypeError as exc:
            raise sweep_error(path, where, str(exc)) from exc
    raise AssertionError(key)


def _sources(value: Any, path: str, where: str) -> dict[str, dict[str, Any]]:
    if isinstance(value, (list, tuple, str)):  # a bare list: one unweighted source
        return {"all": {"tasks": _str_list(value, path, where), "weight": None}}
    out = {}
    for name, source in _mapping(value, path, where).items():
        key = f"{where}.{name}"
        if isinstance(source, Mapping):
            _check_keys(source, ("tasks", "weight"), path, key + ".")
            tasks = _str_list(source.get("tasks", []), path, key + ".tasks")
            weight = source.get("weight")
            weight = None if weight is None else _number(weight, path, key + ".weight")
        else:
            tasks, weight = _str_list(source, path, key), None
        out[str(name)] = {"tasks": tasks, "weight": weight}
    if not out:
        raise sweep_error(path, where, "no sources given.")
    return out


def expand_points(spec: SweepSpec) -> list[VariantPoint]:
    """Every point of the sweep in a stable order (base first in ``one_at_a_time`` mode).

    ``grid``: the product of all axes. ``one_at_a_time``: the base point, then each axis
    varied alone from it; a ``seed`` axis is crossed with every point in both modes.
    """
    axes = list(spec.axes)
    base = {a.setting: spec.base.get(a.setting, a.values[0][0]) for a in axes}
    seed_axis = next((a for a in axes if a.setting == "seed"), None)
    others = [a for a in axes if a.setting != "seed"]
    combos: list[dict[str, str]] = []
    if spec.mode == "grid":
        for labels in itertools.product(*(a.labels() for a in others)):
            combos.append(dict(zip([a.setting for a in others], labels)))
    else:
        combos.append({a.setting: base[a.setting] for a in others})
        for axis in others:
            for label in axis.labels():
                if label != base[axis.setting]:
                    combos.append({**combos[0], axis.setting: label})
    seeds = seed_axis.labels() if seed_axis else [None]
    points = []
    for combo in combos:
        for seed in seeds:
            labels = dict(combo)
            if seed is not None:
                labels["seed"] = seed
            labels = {a.setting: labels[a.setting] for a in axes}  # file order
            overrides, origins = {}, {}
            for axis in axes:
                label = labels[axis.setting]
                overrides[axis.setting] = dict(axis.values)[label]
                origins[axis.setting] = f"axes.{axis.setting}[{label}]"
            settings, where = settings_for(spec, overrides, origins)
            is_base = all(labels[s] == base[s] for s in labels if s != "seed")
            points.append(VariantPoint(labels, settings, where, is_base))
    return points

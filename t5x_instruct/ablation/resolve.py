"""From sweep points to concrete runs: tasks, proportions, template variants, eval set, gin.

Everything that can be wrong with a sweep is found here, for every variant, before any
training starts: unknown task or cluster names (with close names suggested), rates that sum to
zero, templates asked of tasks no provider can re-render, and variants that would collide.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from t5x_instruct.ablation import naming
from t5x_instruct.ablation.catalog import Catalog
from t5x_instruct.ablation.proportions import (
    SourceTasks,
    ZeroRateError,
    effective_proportions,
)
from t5x_instruct.ablation.providers import template_provider
from t5x_instruct.ablation.spec import SweepSpec, VariantPoint, expand_points

VARIANT_GIN = "gin/ablations/variant.gin"
PER_TEMPLATE_GROUPS = ("heldout_templates", "heldout_task")


@dataclasses.dataclass(frozen=True)
class ResolvedVariant:
    name: str
    labels: dict[str, str]
    is_base: bool
    settings: dict[str, Any]
    mixture_name: str
    components: list[dict[str, Any]]  # proportions.Component fields + train_task, templates
    universe: list[str]  # every base task the sweep's sources name (before include/exclude)
    eval_name: str | None
    eval_tasks: list[dict[str, Any]]  # task, parent, template, group, base
    gin_files: list[str]
    bindings: dict[str, str]  # gin key -> gin value text
    task_modules: list[str]

    @property
    def trained(self) -> list[str]:
        return [c["base"] for c in self.components]

    def record(self) -> dict[str, Any]:
        """JSON for ``variant.json`` / ``sweep.json`` (what the report reads)."""
        return dataclasses.asdict(self)


class _Resolver:
    def __init__(self, spec: SweepSpec, catalog: Catalog) -> None:
        self.spec = spec
        self.catalog = catalog
        self._known = sorted({*catalog.names(), *spec.clusters})

    def error(self, key: str, message: str, point: VariantPoint | None = None) -> Exception:
        if point is not None and point.labels:
            variant = ", ".join(f"{k}={v}" for k, v in point.labels.items())
            message = f"(variant {variant}) {message}"
        return self.spec.where(key, message)

    def expand(self, name: str, key: str, point: VariantPoint | None, _seen=()) -> list[str]:
        """Leaf tasks of a sweep cluster, registered mixture or task name."""
        if name in self.spec.clusters:
            if name in _seen:
                raise self.error(f"clusters.{name}", "a cluster cannot contain itself.")
            out: list[str] = []
            for member in self.spec.clusters[name]:
                for t in self.expand(member, f"clusters.{name}", point, (*_seen, name)):
                    if t not in out:
                        out.append(t)
            return out
        if self.catalog.is_mixture(name) or self.catalog.is_task(name):
            return self.catalog.leaf_tasks(name)
        close = difflib.get_close_matches(name, self._known, n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise self.error(key, f"unknown task or cluster {name!r}.{hint}", point)

    def to_bases(self, tasks: list[str]) -> list[str]:
        """With formats set, ``flan_rte_zero_shot`` and ``flan_rte_x_shot`` are ``flan_rte``."""
        suffixes = sorted(self.spec.format_suffixes.values(), key=len, reverse=True)
        out: list[str] = []
        for t in tasks:
            base = next((t[: -len(s)] for s in suffixes if s and t.endswith(s)), t)
            if base not in out:
                out.append(base)
        return out

    def names_to_bases(
        self, names: Sequence[str], key: str, point: VariantPoint, formats: bool
    ) -> list[str]:
        tasks: list[str] = []
        for i, name in enumerate(names):
            for t in self.expand(name, f"{key}[{i}]" if len(names) > 1 else key, point):
                if t not in tasks:
                    tasks.append(t)
        return self.to_bases(tasks) if formats else tasks

    def resolve(self, point: VariantPoint) -> ResolvedVariant:
        s, where = point.settings, point.origins
        formats = s["formats"]
        # Sources -> base tasks.
        sources: list[SourceTasks] = []
        owner: dict[str, str] = {}
        for src, entry in s["sources"].items():
            key = f"{where['sources']}.{src}"
            bases = self.names_to_bases(entry["tasks"], key, point, formats is not None)
            for b in bases:
                if b in owner:
                    raise self.error(
                        key,
                        f"task {b!r} is in sources {owner[b]!r} and {src!r}; "
                        "a task may belong to one source only.",
                        point,
                    )
                owner[b] = src
            sources.append(SourceTasks(src, tuple(bases), entry["weight"]))
        universe = [b for src in sources for b in src.tasks]
        # Include / exclude.
        for setting in ("include", "exclude"):
            names = s[setting]
            if names is None:
                continue
            chosen = set(self.names_to_bases(names, where[setting], point, formats is not None))
            for i, name in enumerate(names):
                k = f"{where[setting]}[{i}]" if len(names) > 1 else where[setting]
                hit = self.names_to_bases([name], k, point, formats is not None)
                if not set(hit) & set(universe):
                    raise self.error(
                        k,
                        f"{name!r} names no task of the mixture's sources "
                        f"({', '.join(src.name for src in sources)}).",
                        point,
                    )
            wanted = setting == "include"
            sources = [
                dataclasses.replace(
                    src, tasks=tuple(b for b in src.tasks if (b in chosen) == wanted)
                )
                for src in sources
            ]
        # Multipliers and caps per base task (names may be sources, clusters or tasks).
        source_names = {src.name for src in sources}

        def per_base(setting: str) -> dict[str, list[float]]:
            out: dict[str, list[float]] = {}
            for name, value in s[setting].items():
                k = f"{where[setting]}.{name}"
                if name in source_names:
                    bases = list(next(x for x in sources if x.name == name).tasks)
                else:
                    bases = self.names_to_bases([name], k, point, formats is not None)
                for b in bases:
                    out.setdefault(b, []).append(value)
            return out

        multipliers = {b: _product(v) for b, v in per_base("rates").items()}
        task_caps = {b: int(min(v)) for b, v in per_base("task_caps").items()}
        if s["rate"] == "equal" and (s["cap"] is not None or task_caps):
            key = where["cap"] if s["cap"] is not None else where["task_caps"]
            raise self.error(
                key,
                "caps only apply with rate: examples (rate: equal gives every task the same rate).",
                point,
            )
        # Formats.
        format_task = None
        if formats is not None:
            for fmt in formats:
                if fmt not in self.spec.format_suffixes:
                    raise self.error(
                        f"{where['formats']}.{fmt}",
                        f"unknown format {fmt!r}; known: {sorted(self.spec.format_suffixes)} "
                        "(add yours under format_suffixes).",
                        point,
                    )

            def format_task(base: str, fmt: str) -> str:
                task = base + self.spec.format_suffixes[fmt]
                if not self.catalog.is_task(task):
                    close = difflib.get_close_matches(task, self._known, n=3, cutoff=0.6)
                    hint = f" Did you mean: {', '.join(close)}?" if close else ""
                    raise self.error(
                        f"{where['formats']}.{fmt}",
                        f"task {base!r} has no {fmt} variant {task!r} registered.{hint}",
                        point,
                    )
                return task

        sizes: dict[str, int] = {}
        if s["rate"] == "examples":
            for src in sources:
                for b in src.tasks:
                    size_task = b
                    if formats is not None and not self.catalog.is_task(b):
                        size_task = format_task(b, next(iter(formats)))  # type: ignore[misc]
                    sizes[b] = self.spec.sizes.get(b) or self.catalog.num_examples(size_task)
        try:
            components = effective_proportions(
                sources,
                rate=s["rate"],
                sizes=sizes,
                cap=s["cap"],
                task_caps=task_caps,
                multipliers=multipliers,
                formats=formats,
                format_task=format_task,
            )
        except ZeroRateError as exc:
            keys = [
                where[k]
                for k in ("sources", "include", "exclude", "rates", "formats")
                if where[k].startswith("axes.")
            ] or ["mixture.rates"]
            raise self.error(
                ", ".join(keys),
                f"{exc} Check the rates, weights and the include/exclude lists of this variant.",
                point,
            ) from exc
        except ValueError as exc:
            raise self.error(where["sources"], str(exc), point) from exc
        rows = [dataclasses.asdict(c) for c in components if c.proportion > 0]
        self._apply_templates(rows, s["templates_per_task"], where["templates_per_task"], point)
        parts = [f"{len({r['base'] for r in rows})}tasks", "eq" if s["rate"] == "equal" else "ex"]
        if s["templates_per_task"]:
            parts.append(f"tpl{s['templates_per_task']}")
        if s["cap"]:
            parts.append(f"cap{s['cap']}")
        if formats:
            parts.append("fmt")
        mixture = naming.mixture_name(parts, [(r["train_task"], r["proportion"]) for r in rows])
        eval_name, eval_tasks = self._eval(universe, point)
        gin_files, bindings = self._gin(s, mixture, rows, eval_name, eval_tasks)
        return ResolvedVariant(
            name=naming.variant_name(
                point.labels, _run_content(rows, eval_name, gin_files, bindings)
            ),
            labels=dict(point.labels),
            is_base=point.is_base,
            settings=_jsonable(s),
            mixture_name=mixture,
            components=rows,
            universe=universe,
            eval_name=eval_name,
            eval_tasks=eval_tasks,
            gin_files=gin_files,
            bindings=bindings,
            task_modules=list(self.spec.task_modules),
        )

    def _apply_templates(
        self, rows: list[dict[str, Any]], k: int | None, key: str, point: VariantPoint
    ) -> None:
        for row in rows:
            row["train_task"], row["templates"] = row["task"], None
            if k is None:
                continue
            provider = template_provider(row["task"])
            if provider is None:
                raise self.error(
                    key,
                    f"task {row['task']!r} has no template provider, so its templates "
                    "cannot be varied; import a task module that registers one (the demo "
                    "tasks: tasks.demo.ablation).",
                    point,
                )
            if k < provider.num_templates(row["task"]):
                row["train_task"] = provider.subset_task(row["task"], k)
                row["templates"] = k

    def _eval(
        self, universe: list[str], point: VariantPoint
    ) -> tuple[str | None, list[dict[str, Any]]]:
        ev = self.spec.eval
        if ev is None:
            return None, []
        parents = self.names_to_bases(ev["names"], ev["key"], point, formats=False)
        entries: list[dict[str, Any]] = []
        for parent in parents:
            group = self.catalog.group(parent)
            base = match_base(parent, universe)
            per = []
            if ev["per_template"] and group in PER_TEMPLATE_GROUPS:
                provider = template_provider(parent)
                per = provider.per_template_tasks(parent) if provider else []
            if per:
                entries += [
                    dict(task=t, parent=parent, template=j, group=group, base=base)
                    for j, t in enumerate(per)
                ]
            else:
                entries.append(
                    dict(task=parent, parent=parent, template=None, group=group, base=base)
                )
        name = naming.mixture_name(
            ["eval", f"{len(parents)}tasks"] + (["pertemplate"] if ev["per_template"] else []),
            [e["task"] for e in entries],
        )
        return name, entries

    def _gin(
        self,
        s: dict[str, Any],
        mixture: str,
        rows: list[dict[str, Any]],
        eval_name: str | None,
        eval_tasks: list[dict[str, Any]],
    ) -> tuple[list[str], dict[str, str]]:
        gin_files = [*s["gin_files"], *s["model"], VARIANT_GIN]
        bindings = dict(s["bindings"])
        if s["steps"] is not None:
            bindings["TRAIN_STEPS"] = repr(s["steps"])
        bindings["train.seed"] = repr(s["seed"])
        modules = repr(list(self.spec.task_modules))
        components = [(r["task"], float(f"{r['proportion']:.12g}"), r["templates"]) for r in rows]
        bindings["ablation_train_mixture.name"] = repr(mixture)
        bindings["ablation_train_mixture.components"] = repr(components)
        bindings["ablation_train_mixture.task_modules"] = modules
        if eval_name is not None:
            ev = self.spec.eval or {}
            parents = list(dict.fromkeys(e["parent"] for e in eval_tasks))
            split = {
                p: any(e["template"] is not None for e in eval_tasks if e["parent"] == p)
                for p in parents
            }
            bindings["train.eval_mixture_or_task_name"] = "@ablation_eval_mixture()"
            bindings["ablation_eval_mixture.name"] = repr(eval_name)
            bindings["ablation_eval_mixture.tasks"] = repr([(p, split[p]) for p in parents])
            bindings["ablation_eval_mixture.task_modules"] = modules
            if "max_examples" in ev:
                bindings["train.max_eval_examples"] = repr(ev["max_examples"])
            if "batch_size" in ev:
                bindings["train.eval_batch_size"] = repr(ev["batch_size"])
        return gin_files, bindings


def _run_content(
    rows: list[dict[str, Any]], eval_name: str | None, gin_files: list[str], bindings: dict
) -> dict[str, Any]:
    """What makes two runs the same run: the data sampled (tasks and proportions, not the
    mixture's readable name), the eval set, the gin files and every other binding."""
    return {
        "components": [(r["train_task"], r["proportion"]) for r in rows],
        "eval": eval_name,
        "gin_files": gin_files,
        "bindings": {k: v for k, v in bindings.items() if k != "ablation_train_mixture.name"},
    }


def _product(values: Sequence[float]) -> float:
    out = 1.0
    for v in values:
        out *= v
    return out


def match_base(task: str, bases: Sequence[str]) -> str | None:
    """The base task an eval task measures: equal name, else the longest ``base_`` prefix."""
    if task in bases:
        return task
    hits = [b for b in bases if task.startswith(b + "_")]
    return max(hits, key=len) if hits else None


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items()}


def resolve_sweep(spec: SweepSpec, catalog: Catalog) -> list[ResolvedVariant]:
    """Every variant of ``spec`` resolved; raises one clear error for the first problem."""
    resolver = _Resolver(spec, catalog)
    points = expand_points(spec)
    variants = [resolver.resolve(p) for p in points]
    seen: dict[str, tuple[ResolvedVariant, VariantPoint]] = {}
    for variant, point in zip(variants, points):
        content = naming.stable_hash(
            _run_content(
                variant.components, variant.eval_name, variant.gin_files, variant.bindings
            ),
            16,
        )
        if content in seen:
            other, other_point = seen[content]
            differing = [k for k in point.labels if point.labels[k] != other_point.labels[k]]
            keys = ", ".join(point.origins[k] for k in differing) or "axes"
            raise spec.where(
                keys,
                f"variants {other.labels} and {variant.labels} resolve to the same run (the same "
                "tasks and proportions, eval set, gin files and bindings), so they would "
                "collide; drop one of these axis values or make them differ.",
            )
        seen[content] = (variant, point)
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:  # distinct content with one name: only a hash collision could do it
        raise spec.where("axes", f"variant names collide: {dupes}; relabel the axis values.")
    return variants

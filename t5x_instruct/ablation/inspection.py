"""What each variant will train on, shown before anything runs.

One matrix of effective sampling proportions per task and per source (and per sweep cluster)
with a column per distinct mixture, so the difference an ablation makes is visible at a
glance; ``details`` adds each variant's rate arithmetic (size, cap, multiplier, rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from t5x_instruct.ablation.resolve import ResolvedVariant


def distinct_mixtures(variants: Sequence[ResolvedVariant]) -> list[ResolvedVariant]:
    """The first variant of each distinct training mixture (seeds share one), in order."""
    seen: dict[str, ResolvedVariant] = {}
    for v in variants:
        seen.setdefault(v.mixture_name, v)
    return list(seen.values())


def _column(v: ResolvedVariant) -> str:
    labels = {k: x for k, x in v.labels.items() if k != "seed"}
    return ",".join(f"{k}={x}" for k, x in labels.items()) or "base"


def _matrix(
    title: str, keys: Sequence[str], columns: Sequence[dict[str, float]], names: Sequence[str]
) -> list[str]:
    width = max([len(k) for k in keys] + [len(title)])
    col = max([len(n) for n in names] + [8])
    lines = [f"{title:<{width}}  " + "  ".join(f"{n:>{col}}" for n in names)]
    for key in keys:
        cells = []
        for values in columns:
            p = values.get(key, 0.0)
            cells.append(f"{p:>{col}.4f}" if p else f"{'-':>{col}}")
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    return lines


def format_inspection(
    variants: Sequence[ResolvedVariant],
    clusters: Mapping[str, Sequence[str]] | None = None,
    *,
    details: bool = False,
) -> str:
    """Proportion matrices (task, source, cluster) over the distinct mixtures, the variant
    list, and optionally each mixture's rate arithmetic."""
    mixes = distinct_mixtures(variants)
    names = [f"[{i}]" for i in range(len(mixes))]
    out = [f"{len(variants)} variant(s), {len(mixes)} distinct training mixture(s):"]
    for name, v in zip(names, mixes):
        out.append(f"  {name} {_column(v)}: {v.mixture_name}" + ("  (base)" if v.is_base else ""))
    tasks = list(dict.fromkeys(c["base"] for v in mixes for c in v.components))
    per_task = [{} for _ in mixes]
    per_source = [{} for _ in mixes]
    for values, src_values, v in zip(per_task, per_source, mixes):
        for c in v.components:
            values[c["base"]] = values.get(c["base"], 0.0) + c["proportion"]
            src_values[c["source"]] = src_values.get(c["source"], 0.0) + c["proportion"]
    out += ["", "Effective sampling proportion per task:"]
    out += _matrix("task", tasks, per_task, names)
    sources = list(dict.fromkeys(c["source"] for v in mixes for c in v.components))
    out += ["", "Per source:"]
    out += _matrix("source", sources, per_source, names)
    if clusters:
        per_cluster = [
            {
                cl: sum(p for t, p in values.items() if t in members)
                for cl, members in clusters.items()
            }
            for values in per_task
        ]
        out += ["", "Per cluster (sweep clusters; a task may be in several):"]
        out += _matrix("cluster", list(clusters), per_cluster, names)
    templates = {
        v.mixture_name: sorted({c["templates"] for c in v.components if c["templates"]})
        for v in mixes
    }
    if any(templates.values()):
        out += [
            "",
            "Templates per task: "
            + ", ".join(
                f"{n} {','.join(map(str, templates[v.mixture_name])) or 'all'}"
                for n, v in zip(names, mixes)
            ),
        ]
    out += ["", "Variants (one training run each):"]
    for i, v in enumerate(variants, 1):
        column = names[[m.mixture_name for m in mixes].index(v.mixture_name)]
        out.append(f"  {i:>3}. {v.name}  mixture {column}" + ("  (base)" if v.is_base else ""))
    ev = variants[0] if variants else None
    if ev is not None and ev.eval_name:
        groups: dict[str, int] = {}
        for e in ev.eval_tasks:
            groups[e["group"]] = groups.get(e["group"], 0) + 1
        split = any(e["template"] is not None for e in ev.eval_tasks)
        out += [
            "",
            f"Eval mixture {ev.eval_name}: {len(ev.eval_tasks)} task(s) ("
            + ", ".join(f"{g} {n}" for g, n in groups.items())
            + ("; held-out ones split per template" if split else "")
            + ")",
        ]
    if details:
        for name, v in zip(names, mixes):
            out += ["", f"{name} {v.mixture_name}: rate arithmetic"]
            out.append(
                f"  {'source':<10} {'task':<34} {'n':>7} {'cap':>6} {'x':>5} "
                f"{'rate':>9} {'proportion':>10}  trained as"
            )
            for c in v.components:
                n = "-" if c["num_examples"] is None else str(c["num_examples"])
                cap = "-" if c["cap"] is None else str(c["cap"])
                out.append(
                    f"  {c['source']:<10} {c['task']:<34} {n:>7} {cap:>6} {c['multiplier']:>5g} "
                    f"{c['rate']:>9.4g} {c['proportion']:>10.4f}  {c['train_task']}"
                )
    return "\n".join(out)

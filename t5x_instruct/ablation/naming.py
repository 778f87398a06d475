"""Deterministic, readable names for sweep variants and their SeqIO mixtures.

A name is a readable part (what a person scans in a table) plus a short hash of the
*resolved* settings (what guarantees that equal settings share a name and different ones
never do). Hashes are SHA-256 of canonical JSON, so they are the same in every process, on
every host and in every Python version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

HASH_CHARS = 8
MAX_LABEL_CHARS = 24
MAX_READABLE_CHARS = 72
# SeqIO names allow letters, digits, '_', '.', ':'; run folders also allow '-' and '+'.
_UNSAFE_LABEL = re.compile(r"[^A-Za-z0-9._+]+")
_UNSAFE_SEQIO = re.compile(r"[^a-z0-9_]+")

# Short readable prefixes of the settings an axis may sweep.
AXIS_ABBREVIATIONS: Mapping[str, str] = {
    "include": "tasks",
    "exclude": "minus",
    "templates_per_task": "tpl",
    "rates": "rates",
    "rate": "rate",
    "cap": "cap",
    "task_caps": "caps",
    "sources": "src",
    "formats": "fmt",
    "model": "model",
    "steps": "steps",
    "seed": "seed",
    "bindings": "gin",
}


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and floats written exactly (repr), for hashing."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)  # 1.0 and 1 are the same setting
        return repr(value)
    return value


def stable_hash(value: Any, chars: int = HASH_CHARS) -> str:
    """The first ``chars`` hex digits of SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:chars]


def value_label(value: Any) -> str:
    """A short readable label for an axis value given without one.

    Scalars as written (``all`` for ``None``); a list of task names joined by ``+`` after
    dropping their common ``prefix_``; anything long or structured falls back to a hash.
    """
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        label = str(value).rsplit("/", 1)[-1].removesuffix(".gin")  # gin files: the preset
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        label = "+".join(_strip_common_prefix(list(value))) if value else "none"
    else:
        return "h" + stable_hash(value, 6)
    label = _UNSAFE_LABEL.sub("-", label).strip("-") or "h" + stable_hash(value, 6)
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 7] + "~" + stable_hash(value, 6)
    return label


def _strip_common_prefix(names: Sequence[str]) -> list[str]:
    if len(names) < 2:
        return [n.split("_", 1)[-1] if "_" in n else n for n in names]
    first = names[0]
    cut = 0
    for i, ch in enumerate(first):
        if ch == "_" and all(n.startswith(first[: i + 1]) for n in names):
            cut = i + 1
    return [n[cut:] or n for n in names]


def sanitize_label(label: Any) -> str:
    """A user-given label made safe for folder names."""
    text = _UNSAFE_LABEL.sub("-", str(label)).strip("-")
    return text or "h" + stable_hash(label, 6)


def variant_name(labels: Mapping[str, str], resolved: Any) -> str:
    """``tasks-3_tpl-1_seed-0-1a2b3c4d``: each axis' label in axis order, then the hash of
    the resolved run (mixture, eval set, gin files and bindings)."""
    parts = [f"{AXIS_ABBREVIATIONS.get(axis, axis)}-{label}" for axis, label in labels.items()]
    readable = "_".join(parts) or "base"
    if len(readable) > MAX_READABLE_CHARS:
        readable = readable[:MAX_READABLE_CHARS].rstrip("_-")
    return f"{readable}-{stable_hash(resolved)}"


def mixture_name(parts: Sequence[str], components: Any, prefix: str = "abl") -> str:
    """A SeqIO-safe mixture name: ``abl_<parts>_<hash of components>``."""
    readable = "_".join(_UNSAFE_SEQIO.sub("_", p.lower()).strip("_") for p in parts if p)
    readable = readable[:MAX_READABLE_CHARS].strip("_")
    return "_".join(x for x in (prefix, readable, stable_hash(components)) if x)

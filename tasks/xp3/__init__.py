"""xP3 and xP3mt (Muennighoff et al. 2022, "Crosslingual Generalization through Multitask
Finetuning"); ``import tasks.xp3`` registers them.

xP3 is prompted data in 46 languages with English prompts; xP3mt is the same data with the
prompts machine-translated into the data's language. Both are released as per-language
folders of JSONL files of ``{"inputs", "targets"}`` (``{root}/{language}/*.jsonl``).

Registered: a task ``{variant}_{language}`` per language (split ``train``) and mixtures
``xp3`` and ``xp3mt`` over them, mixed with ``rate_l ∝ n_l ** (1/T)``
(:func:`t5x_instruct.data.multilingual.temperature_rates`). Roots default to the Hugging Face
hub copies and can point at a local or ``gs://`` mirror (``tasks.xp3.register.roots``, bound
anywhere after ``import tasks.xp3``: the next task lookup re-registers); nothing is read at
registration, and the mixtures' rates count the files only when the mixture is first read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
import seqio

from t5x_instruct.data.multilingual import (
    TemperatureRate,
    add_jsonl_task,
    add_language_mixture,
    temperature_rates,
)
from t5x_instruct.data.registry import track_gin_bindings
from t5x_instruct.data.vocabularies import ConfiguredVocabulary, make_vocabulary

# Folder names of the released data: 45 natural languages plus programming code.
XP3_LANGUAGES: tuple[str, ...] = (
    "ak", "ar", "as", "bm", "bn", "ca", "code", "en", "es", "eu", "fon", "fr", "gu", "hi",
    "id", "ig", "ki", "kn", "lg", "ln", "ml", "mr", "ne", "nso", "ny", "or", "pa", "pt", "rn",
    "rw", "sn", "st", "sw", "ta", "te", "tn", "ts", "tum", "tw", "ur", "vi", "wo", "xh", "yo",
    "zh", "zu",
)  # fmt: skip

DEFAULT_ROOTS: dict[str, str] = {
    "xp3": "hf://datasets/bigscience/xP3",  # English prompts
    "xp3mt": "hf://datasets/bigscience/xP3mt",  # machine-translated prompts
}
FILE_PATTERN = "{root}/{language}/*.jsonl"

# variant -> the mixture's rate fn (its sizes/rates can be inspected after registration).
MIXTURE_RATES: dict[str, TemperatureRate] = {}


@gin.configurable
def xp3_vocabulary(path: str | None = None, extra_ids: int = 0) -> seqio.Vocabulary:
    """SentencePiece at ``path`` (a ``.model`` file or a directory holding ``spiece.model``;
    mT0 used mT5's), else UTF-8 bytes; the file must exist and is read lazily."""
    kind = "sentencepiece" if path else "byte"
    return make_vocabulary(kind, path, extra_ids, binding="xp3_vocabulary")


def xp3_task_name(variant: str, language: str) -> str:
    return f"{variant}_{language}"


def _local_copy_hint(variant: str) -> str:
    """How to point a variant at local files (shown when its files cannot be listed)."""
    repo = DEFAULT_ROOTS[variant].removeprefix("hf://datasets/")
    local = f"/data/{repo.rsplit('/', 1)[-1]}"
    return (
        f"Point it at a local or gs:// copy: bind tasks.xp3.register.roots = "
        f"{{'{variant}': '{local}'}} after `import tasks.xp3` in your gin file (folders "
        f"<root>/<language>/*.jsonl, e.g. from `huggingface-cli download {repo} "
        f"--repo-type dataset --local-dir {local}`)."
    )


@gin.configurable
def register(
    roots: Mapping[str, str] | None = None,
    languages: Sequence[str] = XP3_LANGUAGES,
    temperature: float = 1.0,
    sizes: Mapping[str, Mapping[str, int]] | None = None,
    file_pattern: str = FILE_PATTERN,
    vocabulary: seqio.Vocabulary | None = None,
) -> dict[str, list[str]]:
    """Registers the per-language tasks and one mixture per variant (safe to call again).

    Args:
      roots: variant (``'xp3'``, ``'xp3mt'``) -> data root; defaults to :data:`DEFAULT_ROOTS`.
      languages: language folders to use.
      temperature: ``T`` of the language mixing (1 = proportional to size).
      sizes: per variant, language -> number of examples, to skip counting the files.
      file_pattern: where a language's files are, with ``{root}`` and ``{language}``.
      vocabulary: defaults to :func:`xp3_vocabulary`.

    Returns:
      Mixture name -> its task names.
    """
    roots = dict(roots or DEFAULT_ROOTS)
    if unknown := sorted(set(roots) - set(DEFAULT_ROOTS)):
        raise ValueError(f"Unknown xP3 variants {unknown}; known: {sorted(DEFAULT_ROOTS)}.")
    vocabulary = vocabulary or ConfiguredVocabulary(xp3_vocabulary)
    mixtures = {}
    for variant, root in roots.items():
        task_languages = {}
        for language in languages:
            name = xp3_task_name(variant, language)
            pattern = file_pattern.format(root=root.rstrip("/"), language=language)
            add_jsonl_task(name, {"train": [pattern]}, vocabulary, hint=_local_copy_hint(variant))
            task_languages[name] = language
        variant_sizes = (sizes or {}).get(variant)
        MIXTURE_RATES[variant] = add_language_mixture(
            variant, task_languages, temperature, sizes=variant_sizes
        )
        mixtures[variant] = list(task_languages)
    track_gin_bindings(register)  # bindings parsed after `import tasks.xp3` re-register
    return mixtures


register()

__all__ = [
    "DEFAULT_ROOTS",
    "MIXTURE_RATES",
    "XP3_LANGUAGES",
    "register",
    "temperature_rates",
    "xp3_task_name",
    "xp3_vocabulary",
]

"""xP3 / xP3mt: per-language JSONL tasks, temperature mixing, and errors naming file and line."""

from __future__ import annotations

import json
import math

import pytest
import seqio

import tasks.xp3 as xp3
from t5x_instruct import data
from t5x_instruct.data import multilingual

SIZES = {"en": 8, "fr": 2, "sw": 1}


def _write_lang(root, lang: str, n: int, files: int = 1) -> None:
    folder = root / lang
    folder.mkdir(parents=True)
    rows = [{"inputs": f"{lang} question {i}", "targets": f"{lang} answer {i}"} for i in range(n)]
    for f in range(files):
        chunk = rows[f::files]
        text = "\n".join(json.dumps(r | {"extra": 1}) for r in chunk) + "\n\n"
        (folder / f"part{f}.jsonl").write_text(text, encoding="utf-8")


@pytest.fixture
def local_xp3(tmp_path):
    roots = {}
    for variant in ("xp3", "xp3mt"):
        root = tmp_path / variant
        for lang, n in SIZES.items():
            _write_lang(root, lang, n, files=2 if lang == "en" else 1)
        roots[variant] = str(root)
    mixtures = xp3.register(roots=roots, languages=tuple(SIZES), temperature=2.0)
    yield roots, mixtures
    xp3.register()  # back to the default (hub) roots and all languages


def test_temperature_rates_arithmetic():
    sizes = {"a": 100, "b": 400, "c": 0}
    assert multilingual.temperature_rates(sizes, 1.0) == pytest.approx(
        {"a": 0.2, "b": 0.8, "c": 0.0}
    )
    assert multilingual.temperature_rates(sizes, 2.0) == pytest.approx(
        {"a": 10 / 30, "b": 20 / 30, "c": 0.0}
    )
    flat = multilingual.temperature_rates({"a": 1, "b": 10_000}, 1e6)
    assert flat["a"] == pytest.approx(0.5, abs=1e-4)
    assert sum(multilingual.temperature_rates({"x": 3, "y": 5, "z": 7}, 3.3).values()) == (
        pytest.approx(1.0)
    )
    for bad_t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be positive"):
            multilingual.temperature_rates(sizes, bad_t)
    with pytest.raises(ValueError, match="No examples"):
        multilingual.temperature_rates({"a": 0}, 1.0)
    with pytest.raises(ValueError, match="Negative"):
        multilingual.temperature_rates({"a": -1}, 1.0)


def test_default_registration_is_lazy_and_covers_both_variants():
    names = set(seqio.TaskRegistry.names())
    assert len(xp3.XP3_LANGUAGES) == 46
    for variant in ("xp3", "xp3mt"):
        mixture = seqio.get_mixture_or_task(variant)
        assert len(mixture.tasks) == 46
        assert {xp3.xp3_task_name(variant, lang) for lang in xp3.XP3_LANGUAGES} <= names
    assert xp3.DEFAULT_ROOTS["xp3mt"] != xp3.DEFAULT_ROOTS["xp3"]


def test_local_languages_mixed_with_temperature(local_xp3):
    _, mixtures = local_xp3
    assert mixtures == {v: [f"{v}_{lang}" for lang in SIZES] for v in ("xp3", "xp3mt")}
    mixture = seqio.get_mixture_or_task("xp3mt")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    weights = {lang: math.sqrt(n) for lang, n in SIZES.items()}  # T = 2
    total = sum(weights.values())
    assert rates == pytest.approx({f"xp3mt_{lang}": w / total for lang, w in weights.items()})
    assert xp3.MIXTURE_RATES["xp3mt"].sizes() == SIZES  # counted from the files

    task = seqio.get_mixture_or_task("xp3_en")
    rows = list(task.source.rows("train"))
    assert len(rows) == 8 and set(rows[0]) == {"inputs", "targets"}
    assert sorted(r["inputs"] for r in rows) == sorted(f"en question {i}" for i in range(8))
    shard0 = list(task.source.rows("train", 0, 2))
    shard1 = list(task.source.rows("train", 1, 2))
    assert len(shard0) + len(shard1) == 8 and not {r["inputs"] for r in shard0} & {
        r["inputs"] for r in shard1
    }

    batches = data.get_dataset(
        "xp3",
        task_feature_lengths={"inputs": 32, "targets": 16},
        batch_size=4,
        shuffle=True,
        seed=0,
        num_epochs=1,  # a repeated 1-row language restarts its reader per row: slow
    )
    batch = next(batches.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (4, 32)
    (fr,) = data.get_eval_examples("xp3_fr", "train")
    assert sorted(fr.targets_text) == ["fr answer 0", "fr answer 1"]


def test_given_sizes_skip_counting(tmp_path):
    mixtures = xp3.register(
        roots={"xp3": str(tmp_path / "nowhere")},
        languages=("en", "zu"),
        temperature=1.0,
        sizes={"xp3": {"en": 30, "zu": 10}},
    )
    try:
        mixture = seqio.get_mixture_or_task("xp3")
        assert [t.name for t in mixture.tasks] == mixtures["xp3"]
        assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == pytest.approx(
            {"xp3_en": 0.75, "xp3_zu": 0.25}
        )
        with pytest.raises(FileNotFoundError, match="nowhere"):
            list(seqio.get_mixture_or_task("xp3_en").source.rows("train"))
    finally:
        xp3.register()


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"inputs": "q"}', r"\['targets'\] missing or not a string"),
        ('{"inputs": 3, "targets": "a"}', r"\['inputs'\] missing or not a string"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"inputs": "q", "targets": "a"})
    path.write_text(f"{good}\n\n{good}\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:4: .*{message}"):
        list(multilingual.read_jsonl(str(path)))


def test_bad_row_surfaces_through_the_seqio_pipeline(tmp_path):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "a.jsonl").write_text('{"inputs": "q", "targets": "a"}\n{oops\n')
    multilingual.add_jsonl_task(
        "xp3_bad_row_test", {"train": [str(tmp_path / "sw" / "*.jsonl")]}, seqio.ByteVocabulary()
    )
    try:
        task = seqio.get_mixture_or_task("xp3_bad_row_test")
        with pytest.raises(Exception, match=r"a\.jsonl:2: invalid JSON"):
            list(task.get_dataset(sequence_length=None, split="train").as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove("xp3_bad_row_test")

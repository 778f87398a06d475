"""Mixture ablations (tools/ablate.py): naming, proportions, bad input, an end-to-end sweep.

The proportion tests compare with numbers worked out by hand from the rate/cap rules in
docs/ablations.md; the end-to-end test recomputes the report's scores from the runs'
summary.json files with numpy.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import textwrap
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from t5x_instruct.ablation import StaticCatalog, load_sweep, resolve_sweep
from t5x_instruct.ablation.inspection import format_inspection
from t5x_instruct.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import ablate  # noqa: E402  (tools/ablate.py)

# Train sizes: t_b is larger than the cap used below, t_c smaller than every cap.
SIZES = {
    "t_a": 1000,
    "t_b": 5000,
    "t_c": 200,
    "u_a_zero_shot": 400,
    "u_a_x_shot": 400,
    "u_b_zero_shot": 100,
    "u_b_x_shot": 100,
}
MIXTURES = {
    "mix_t": ["t_a", "t_b", "t_c"],
    "mix_u": ["u_a_zero_shot", "u_b_zero_shot"],
    "only_a": ["t_a"],
}


def _catalog() -> StaticCatalog:
    return StaticCatalog(SIZES, MIXTURES)


def _write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _resolve(tmp_path: Path, text: str, name: str = "sweep.yaml"):
    return resolve_sweep(load_sweep(_write(tmp_path, text, name)), _catalog())


def _proportions(variant) -> dict[str, float]:
    return {c["task"]: c["proportion"] for c in variant.components}


# ---------------------------------------------------------------------------- naming


def test_names_are_deterministic_readable_and_collision_free(tmp_path) -> None:
    text = """
        mixture: {sources: {all: [mix_t]}, rate: examples}
        run: {steps: 10, bindings: {BATCH_SIZE: 8, train.log_period: 5}}
        axes:
          cap: [300, 3000, null]
          rates: {flat: {}, a17: {t_a: 1.7}, b037: {t_b: 0.37}}
          exclude: {none: [], no_c: [t_c]}
          seed: [0, 1]
    """
    first = _resolve(tmp_path, text)
    # The same settings written differently (key order, 1.7 vs 1.70): the same names, from a
    # fresh resolution of another file.
    reordered = """
        run: {bindings: {train.log_period: 5, BATCH_SIZE: 8}, steps: 10}
        mixture: {rate: examples, sources: {all: [mix_t]}}
        axes:
          cap: [300, 3000, null]
          rates: {flat: {}, a17: {t_a: 1.70}, b037: {t_b: 0.370}}
          exclude: {none: [], no_c: [t_c]}
          seed: [0, 1]
    """
    second = _resolve(tmp_path, reordered, "other.yaml")
    assert [v.name for v in first] == [v.name for v in second]
    assert [v.mixture_name for v in first] == [v.mixture_name for v in second]

    assert len(first) == 3 * 3 * 2 * 2
    names = [v.name for v in first]
    assert len(set(names)) == len(names)
    # Seeds share the data (one mixture), every other difference gives another mixture.
    by_mixture: dict[str, set] = {}
    for v in first:
        key = tuple(sorted((k, x) for k, x in v.labels.items() if k != "seed"))
        by_mixture.setdefault(v.mixture_name, set()).add(key)
    assert all(len(keys) == 1 for keys in by_mixture.values())
    assert len(by_mixture) == 3 * 3 * 2
    for v in first:
        assert re.fullmatch(r"[a-z0-9_]+", v.mixture_name), v.mixture_name  # SeqIO-safe
        assert len(v.mixture_name) <= 96 and len(v.name) <= 96
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", v.name), v.name  # folder-safe
        assert v.name.startswith(f"cap-{v.labels['cap']}_rates-{v.labels['rates']}_")
        assert f"seed-{v.labels['seed']}-" in v.name
    assert first[0].mixture_name.startswith("abl_3tasks_ex_cap300_")


# ---------------------------------------------------------------------------- proportions


def test_examples_proportional_with_cap_and_per_task_caps(tmp_path) -> None:
    (capped, per_task) = _resolve(
        tmp_path,
        """
        mixture: {sources: {all: [mix_t]}, rate: examples, cap: 3000}
        axes: {task_caps: {none: {}, b500: {t_b: 500}}}
        """,
    )
    # min(n, 3000): 1000, 3000, 200 -> total 4200.
    assert _proportions(capped) == pytest.approx(
        {"t_a": 1000 / 4200, "t_b": 3000 / 4200, "t_c": 200 / 4200}, abs=1e-12
    )
    assert _proportions(capped)["t_a"] == pytest.approx(0.238095238095, abs=1e-12)
    # t_b capped at 500: 1000, 500, 200 -> total 1700.
    assert _proportions(per_task) == pytest.approx(
        {"t_a": 0.588235294118, "t_b": 0.294117647059, "t_c": 0.117647058824}, abs=1e-11
    )
    assert [c["cap"] for c in per_task.components] == [3000, 500, 3000]


def test_weighted_sources_multipliers_and_leave_one_cluster_out(tmp_path) -> None:
    weighted, flat, multiplied, left_out = _resolve(
        tmp_path,
        """
        clusters: {small: [t_c], big_pair: [t_a, t_b]}
        mixture: {rate: examples, cap: 3000}
        mode: one_at_a_time
        axes:
          sources:
            weighted: {s1: {tasks: [big_pair], weight: 0.4}, s2: {tasks: [small], weight: 0.6}}
            flat: {all: [mix_t]}
          rates: {none: {}, double_a: {t_a: 2}}
          exclude: {none: [], small: [small]}
        """,
    )
    assert [v.is_base for v in (weighted, flat, multiplied, left_out)] == [True] + [False] * 3
    # s1 gets 0.4, shared 1000 : 3000 by t_a, t_b; s2 (t_c alone) gets 0.6.
    assert _proportions(weighted) == pytest.approx({"t_a": 0.1, "t_b": 0.3, "t_c": 0.6})
    text = format_inspection([weighted], {"big_pair": ["t_a", "t_b"]})
    assert re.search(r"s1\s+0\.4000", text) and re.search(r"s2\s+0\.6000", text)
    assert re.search(r"big_pair\s+0\.4000", text)
    # No weights: every task by its capped rate, 1000 : 3000 : 200.
    assert flat.labels["sources"] == "flat"
    assert _proportions(flat) == pytest.approx(
        {"t_a": 1000 / 4200, "t_b": 3000 / 4200, "t_c": 200 / 4200}
    )
    # rates x2 on t_a inside the weighted sources: s1 shares 2000 : 3000.
    assert multiplied.labels["rates"] == "double_a"
    assert _proportions(multiplied) == pytest.approx({"t_a": 0.16, "t_b": 0.24, "t_c": 0.6})
    # Leaving out cluster 'small' empties s2: s1 then takes every sample.
    assert left_out.labels["exclude"] == "small"
    assert _proportions(left_out) == pytest.approx({"t_a": 0.25, "t_b": 0.75})


def test_formats_split_each_task_rate(tmp_path) -> None:
    (variant,) = _resolve(
        tmp_path,
        """
        mixture: {sources: {u: [mix_u]}, rate: examples, formats: {zero_shot: 3, few_shot: 1}}
        """,
    )
    # Bases u_a (n=400), u_b (n=100): rates 400, 100 split 3:1 -> 300, 100, 75, 25 of 500.
    assert _proportions(variant) == pytest.approx(
        {"u_a_zero_shot": 0.6, "u_a_x_shot": 0.2, "u_b_zero_shot": 0.15, "u_b_x_shot": 0.05}
    )
    text = format_inspection([variant], {"u_all": ["u_a", "u_b"]}, details=True)
    assert "u_a" in text and "0.8000" in text and "0.2000" in text  # per task (base)
    assert "u_all" in text and "1.0000" in text  # per cluster


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "key", "needles"),
    [
        (
            "mixture: {sources: {all: [mix_t]}}\naxes: {include: {one: [t_bb], two: [t_a]}}\n",
            "axes.include[one]",
            ["unknown task or cluster 't_bb'", "Did you mean", "t_b"],
        ),
        (
            "clusters: {smalls: [t_c]}\nmixture: {sources: {all: [mix_t]}}\n"
            "axes: {exclude: {none: [], x: [small]}}\n",
            "axes.exclude[x]",
            ["unknown task or cluster 'small'", "smalls"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}, rate: equal}\n"
            "axes: {rates: {ok: {}, zero: {all: 0}}}\n",
            "axes.rates[zero]",
            ["sum to zero"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}}\naxes: {include: {a: [t_a], b: [only_a]}}\n",
            "axes.include[b]",
            ["resolve to the same run", "collide"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}, cap: 5000}\naxes: {cap: [5000, null]}\n",
            "axes.cap[all]",
            ["collide"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}, rates: {t_a: 1}}\naxess: {}\n",
            "axess",
            ["unknown key", "Did you mean axes"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}}\naxes: {templates_per_task: [1, all]}\n",
            "axes.templates_per_task[1]",
            ["no template provider"],
        ),
        (
            "mixture: {sources: {a: [t_a], b: [mix_t]}}\n",
            "mixture.sources.b",
            ["'t_a' is in sources 'a' and 'b'"],
        ),
        (
            "mixture: {sources: {all: [t_a, t_b]}}\naxes: {include: {x: [t_c]}}\n",
            "axes.include[x]",
            ["'t_c' names no task of the mixture's sources"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}, rate: equal, cap: 10}\n",
            "mixture.cap",
            ["caps only apply with rate: examples"],
        ),
        (
            "mixture: {sources: {all: [mix_t]}, formats: {zero_shot: 1}}\n",
            "mixture.formats.zero_shot",
            ["'t_a' has no zero_shot variant 't_a_zero_shot'"],
        ),
    ],
    ids=[
        "unknown_task",
        "unknown_cluster",
        "zero_rates",
        "same_tasks",
        "same_caps",
        "unknown_key",
        "no_templates",
        "two_sources",
        "include_outside",
        "caps_with_equal",
        "missing_format",
    ],
)
def test_bad_sweeps_fail_with_one_clear_error(tmp_path, body, key, needles) -> None:
    path = _write(tmp_path, body, "bad_sweep.yaml")
    with pytest.raises(UserInputError) as info:
        resolve_sweep(load_sweep(path), _catalog())
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    for needle in needles:
        assert needle in message, message


# ---------------------------------------------------------------------------- demo provider


def test_demo_template_variants_keep_problems_and_splits() -> None:
    from tasks.demo.ablation import subset_examples, template_examples
    from tasks.demo.generate import generate
    from tasks.demo.task_types import TRAINING_TASK_TYPES

    types = {t.name: t for t in TRAINING_TASK_TYPES}
    original = generate("first_item", "train")
    one = subset_examples("first_item", "train", 1)
    # Same problems in the same order, every input in the first template's wording.
    assert [e.targets for e in one] == [e.targets for e in original]
    assert {e.template_id for e in one} == {0} and {e.template_id for e in original} == set(
        range(5)
    )
    assert all(e.inputs.startswith("What is the first item in this list: ") for e in one)
    two = subset_examples("first_item", "train", 2)
    assert {e.template_id for e in two} == {0, 1}
    # arithmetic's splits are disjoint by rendered input: the 1-template training data
    # must still share no input with its evaluation splits.
    evaluation = {e.inputs for s in ("validation", "test") for e in generate("arithmetic", s)}
    arithmetic = subset_examples("arithmetic", "train", 1)
    assert arithmetic and not {e.inputs for e in arithmetic} & evaluation
    # One eval task per held-out template: the same test problems, one wording each.
    heldout = generate("sentiment", "test", heldout_templates=True)
    for j, template in enumerate(types["sentiment"].heldout_templates):
        rendered = template_examples("sentiment", "test", j, True)
        assert [e.targets for e in rendered] == [e.targets for e in heldout]
        assert all(e.template_id == j for e in rendered)
        assert template.split("{")[0] in rendered[0].inputs


# ---------------------------------------------------------------------------- end to end

E2E_SWEEP = """
    name: e2e
    task_modules: [tasks.demo, tasks.demo.ablation]
    run:
      gin_files: [gin/runs/quickstart.gin]
      steps: 2
      bindings:
        BATCH_SIZE: 8
        train.log_period: 1
        train.eval_period: 0
        train.checkpoint_period: 100
        train.async_checkpointing: false
        T5Config.num_encoder_layers: 1  # half the quickstart model: less to compile
        T5Config.num_decoder_layers: 1
    mixture: {sources: {demo: [demo_instructions]}, rate: equal}
    eval:
      tasks: [demo_first_item, demo_sentiment, demo_first_item_heldout_templates,
              demo_heldout_extract_day]
      per_template: true
      max_examples: 8
      batch_size: 8
    axes:
      include: {one: [demo_first_item], two: [demo_first_item, demo_sentiment]}
"""


def _main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        rc = ablate.main(argv)
    return rc, err.getvalue()


def test_sweep_runs_end_to_end_reports_and_resumes(tmp_path, capsys) -> None:
    sweep = _write(tmp_path, E2E_SWEEP)
    out = tmp_path / "out"
    rc, err = _main(["commands", str(sweep), f"--out_dir={out}"])
    commands = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(commands) == 2
    for line in commands:
        assert line.startswith("python -m t5x_instruct.train --gin_file=gin/runs/quickstart.gin")
        assert "--gin_file=gin/ablations/variant.gin" in line and "--gin.MODEL_DIR=" in line

    rc, err = _main(["run", str(sweep), f"--out_dir={out}", "--in_process"])
    assert rc == 0, err
    assert "1/2" in err and "2/2" in err and "ETA" in err
    manifest = json.loads((out / "sweep.json").read_text())
    names = [v["name"] for v in manifest["variants"]]
    assert [v["labels"] for v in manifest["variants"]] == [{"include": "one"}, {"include": "two"}]

    # The report, recomputed from each run's summary.json.
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["include"] for r in rows] == ["one", "two"]
    assert [r["is_base"] for r in rows] == ["True", "False"]
    for row, name, trained in zip(rows, names, (["first_item"], ["first_item", "sentiment"])):
        per_task = json.loads((out / name / "summary.json").read_text())["eval"]["per_task"]
        em = {t: v["exact_match"] for t, v in per_task.items()}
        assert em.keys() == {
            "demo_first_item",
            "demo_sentiment",
            *(f"demo_first_item_heldout_templates_t{j}" for j in range(2)),
            *(f"demo_heldout_extract_day_t{j}" for j in range(5)),
        }
        held_in = np.mean([em[f"demo_{t}"] for t in trained])
        assert float(row["held_in_mean"]) == pytest.approx(held_in, abs=1e-5)
        if trained == ["first_item"]:  # sentiment is a type this variant never trained on
            assert float(row["unseen_tasks_mean"]) == pytest.approx(em["demo_sentiment"], 1e-5)
        else:
            assert row["unseen_tasks_mean"] == ""
        templates = np.mean([em[f"demo_first_item_heldout_templates_t{j}"] for j in range(2)])
        assert float(row["heldout_templates_mean"]) == pytest.approx(templates, abs=1e-5)
        day = [em[f"demo_heldout_extract_day_t{j}"] for j in range(5)]
        assert float(row["heldout_task_mean"]) == pytest.approx(np.mean(day), abs=1e-5)
        ordered = sorted(day)  # 5 values: median = 3rd, quartiles = 2nd and 4th
        assert float(row["demo_heldout_extract_day_template_median"]) == pytest.approx(
            ordered[2], abs=1e-5
        )
        assert float(row["demo_heldout_extract_day_template_iqr"]) == pytest.approx(
            ordered[3] - ordered[1], abs=1e-5
        )
    markdown = (out / "results.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| include=")]
    assert len(table) == 2 and "(base)" in table[0]
    assert (out / "score_vs_include.png").stat().st_size > 0
    assert (out / "per_task.png").stat().st_size > 0

    # Running the sweep again trains nothing.
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    rc, err = _main(["run", str(sweep), f"--out_dir={out}", "--in_process", "--no_plots"])
    assert rc == 0 and err.count("finished earlier, skipped") == 2, err
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    for n in names:
        assert len(json.loads((out / n / "run.json").read_text())["attempts"]) == 1


def test_bad_sweep_stops_before_any_training(tmp_path) -> None:
    sweep = _write(tmp_path, E2E_SWEEP.replace("demo_sentiment]}", "demo_sentimnt]}"))
    rc, err = _main(["run", str(sweep), f"--out_dir={tmp_path / 'out'}", "--in_process"])
    assert rc == 2
    assert str(sweep) in err and "axes.include[two]" in err and "demo_sentiment" in err
    assert not (tmp_path / "out").exists()

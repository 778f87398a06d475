"""PromptSource templates read from the installed package's real files and rendered by our code.

PromptSource's own implementation (imported only here, at test time) is the reference for the
rendered text of templates that do not draw random numbers; no template text is copied here.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import textwrap
import warnings

import jinja2.meta
import pytest

from t5x_instruct.data import promptsource as ps

RTE = [
    {"premise": "A cat sat on the warm mat.", "hypothesis": "An animal sat.", "label": 0, "idx": 0},
    {"premise": "It rained all day.", "hypothesis": "The street stayed dry.", "label": 1, "idx": 1},
]
COPA = [
    {"premise": "The glass fell.", "choice1": "It broke.", "choice2": "It sang.",
     "question": "effect", "label": 0, "idx": 0},
    {"premise": "The man sneezed.", "choice1": "He ate bread.", "choice2": "He had a cold.",
     "question": "cause", "label": 1, "idx": 1},
]  # fmt: skip
AG_NEWS = [
    {"text": "The striker scored twice in the cup final.", "label": 1},
    {"text": "Shares of the chip maker rose after earnings.", "label": 2},
]
IMDB = [
    {"text": "A warm, funny film with a great cast.", "label": 1},
    {"text": "Two hours I will never get back.", "label": 0},
]
MRPC = [
    {"sentence1": "The firm hired ten staff.", "sentence2": "Ten people joined the firm.",
     "label": 1, "idx": 0},
    {"sentence1": "The bridge opened in May.", "sentence2": "The bridge is painted red.",
     "label": 0, "idx": 1},
]  # fmt: skip
HELLASWAG = [
    {"ind": 4, "activity_label": "Baking", "ctx_a": "A woman mixes flour and eggs.",
     "ctx_b": "she", "ctx": "A woman mixes flour and eggs. she",
     "endings": ["pours the batter into a pan.", "climbs a tree.", "reads a map.",
                 "paints the wall."],
     "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 9, "activity_label": "Skiing", "ctx_a": "A skier stands at the top.",
     "ctx_b": "he", "ctx": "A skier stands at the top. he",
     "endings": ["bakes a cake.", "pushes off down the slope.", "sings loudly.",
                 "sleeps."],
     "source_id": "y", "split": "val", "split_type": "indomain", "label": "1"},
]  # fmt: skip

SQUAD_V2 = [
    {"id": "q1", "title": "Rivers",
     "context": "The river flows north. " * 120,  # ~2,800 characters: truncated
     "question": "Which way does the river flow?",
     "answers": {"text": ["north"], "answer_start": [16]}},
    {"id": "q2", "title": "Rivers", "context": "The lake is cold.",
     "question": "How deep is the lake?", "answers": {"text": [], "answer_start": []}},
]  # fmt: skip
XSUM = [
    {"document": "Heavy rain closed three roads on Monday. " * 80, "summary": "Rain shut roads.",
     "id": "1"},
    {"document": "The council approved the new park.", "summary": "Park approved.", "id": "2"},
]  # fmt: skip
COS_E = [
    {"id": "c1", "question": "Where do you keep milk?",
     "choices": ["fridge", "oven", "garden", "car", "roof"], "answer": "fridge",
     "abstractive_explanation": "Milk stays cold in a fridge.",
     "extractive_explanation": "keep milk"},
]  # fmt: skip

CASES = {
    ("super_glue", "rte"): RTE,
    ("super_glue", "copa"): COPA,
    ("ag_news", None): AG_NEWS,
    ("imdb", None): IMDB,
    ("glue", "mrpc"): MRPC,
    ("hellaswag", None): HELLASWAG,
    ("squad_v2", None): SQUAD_V2,
    ("xsum", None): XSUM,
    ("cos_e", "v1.11"): COS_E,
}
SEED = 1234


@pytest.fixture(scope="module")
def library() -> ps.TemplateLibrary:
    return ps.TemplateLibrary()


@pytest.fixture(scope="module")
def reference():
    """PromptSource's own template collection (the reference implementation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import promptsource.templates as reference_templates
    return reference_templates


def _uses_randomness(template: ps.PromptTemplate) -> bool:
    text = template.jinja + (template.answer_choices or "")
    return re.search(r"\|\s*(choice|random)\b", text) is not None


def test_library_finds_the_installed_files_and_parses_tags_into_dataclasses(library):
    assert library.root.endswith(os.path.join("promptsource", "templates"))
    keys = library.keys()
    assert len(keys) > 200
    for key in CASES:
        assert key in keys
    rte = library.get("super_glue", "rte")
    assert (rte.dataset, rte.subset, len(rte)) == ("super_glue", "rte", 10)
    for template in rte:
        assert isinstance(template, ps.PromptTemplate)
        assert isinstance(template.metadata, ps.TemplateMetadata)
        assert template.metadata.original_task is True
        assert template.metadata.metrics == ("Accuracy",)
        assert len(template.id) == 36 and template.name
        assert template.source.startswith(library.path("super_glue", "rte") + ":")
        assert rte.by_name(template.name) is template and rte.by_id(template.id) is template
    assert len(library.get("ag_news")) == 7
    with pytest.raises(KeyError, match="no template named 'nope'"):
        rte.by_name("nope")
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        library.get("no_such_dataset")


def _outcome(fn):
    """("ok", value) or ("error", None): PromptSource's result, or that it raised."""
    try:
        return "ok", fn()
    except Exception:
        return "error", None


@pytest.fixture
def same_draws(monkeypatch):
    """Our per-example seed fixed to SEED; the reference is seeded with ``random.seed(SEED)``
    before each call, so ``choice``/``random`` filters draw the same items in both."""
    monkeypatch.setattr(ps, "_example_seed", lambda *args: SEED)


def _reference_apply(ref, example: dict) -> list[str]:
    random.seed(SEED)
    return ref.apply(dict(example))  # a new user's call: truncate=True by default


def _reference_choices(ref, example: dict):
    random.seed(SEED)
    return ref.get_answer_choices_list(dict(example))


@pytest.mark.parametrize("key", list(CASES), ids=lambda k: "/".join(filter(None, k)))
def test_rendering_matches_promptsource_on_real_templates(library, reference, same_draws, key):
    ours = library.get(*key)
    theirs = reference.DatasetTemplates(*key)
    compared = 0
    for template in ours:
        ref = theirs[template.name]
        for example in CASES[key]:
            parts = _reference_apply(ref, example)
            assert template.apply(example) == parts, (template.name, example)
            if len(parts) <= 2:
                got = template.render(example)
                assert got.inputs == parts[0], (template.name, example)
                assert got.targets == (parts[1] if len(parts) > 1 else ""), template.name
                ref_choices = _reference_choices(ref, example)
                assert got.answer_choices == tuple(ref_choices or ()), template.name
            compared += 1
        assert template.fixed_answer_choices() == (
            tuple(ref.get_fixed_answer_choices_list())
            if ref.get_fixed_answer_choices_list()
            else None
        )
    assert compared >= 2 * 4


def _variables(template: ps.PromptTemplate) -> list[str]:
    names = set(jinja2.meta.find_undeclared_variables(ps._ENV.parse(template.jinja)))
    if template.answer_choices:
        names |= jinja2.meta.find_undeclared_variables(ps._ENV.parse(template.answer_choices))
    return sorted(names - {"answer_choices"})


# Values every variable of a template gets at once: long text (truncation, '|||' past the
# cut), an integer (labels, indexing) and a list (choices, nested '|||', which is not
# protected). Each is what some real field looks like; where it does not fit the template,
# both implementations must fail.
LONG_TEXT = " ".join(f"w{i}" for i in range(700)) + " tail ||| end"  # ~3,400 characters
FILL_VALUES = {"long": LONG_TEXT, "int": 1, "list": ["x y", "p ||| q", "z"]}


def test_every_real_template_matches_promptsource_apply(
    library, reference, same_draws, monkeypatch
):
    """The templates of every data set P3 registers, and every fifth template of the other
    files, each applied to three synthetic examples by both implementations.

    The reference side is PromptSource's own ``Template`` built from the file's strings (its
    YAML loading is slow and is covered by the tests above)."""
    from tasks.p3.t0_datasets import all_datasets

    # Compiling is PromptSource's cost per call; a compiled Jinja template is immutable.
    monkeypatch.setattr(reference.env, "from_string", functools.cache(reference.env.from_string))
    registered = {(d.name, d.subset) for d in all_datasets()}
    outcomes = collections.Counter()
    keys = library.keys()
    for key in keys:
        for i, template in enumerate(library.get(*key)):
            if key not in registered and i % 5:
                continue
            ref = reference.Template(
                template.name, template.jinja, "", answer_choices=template.answer_choices
            )
            names = _variables(template)
            for kind, value in FILL_VALUES.items():
                example = dict.fromkeys(names, value)
                expected = _outcome(lambda: _reference_apply(ref, example))  # noqa: B023
                got = _outcome(lambda: template.apply(example))  # noqa: B023
                assert got == expected, (template.where(), kind)
                outcomes[expected[0]] += 1
    assert outcomes["ok"] > 1600 and outcomes["error"] > 300, outcomes


def test_long_fields_are_truncated_as_promptsource_does(library, reference):
    template = library.get("imdb").templates[0]  # prints the review text whole
    ref = reference.DatasetTemplates("imdb")[template.name]
    words = [f"word{i:04d}" for i in range(400)]  # 9 characters each
    for n_chars in (2053, 2054, 2100, 4000):  # 2048 + Jinja's leeway of 5 is the cut-off
        text = (" ".join(words * 2))[:n_chars]
        parts = template.apply({"text": text, "label": 0})
        assert parts == ref.apply({"text": text, "label": 0})
        if n_chars <= 2053:
            assert text in parts[0]
        else:  # whole words up to 2045 characters, then "..." (2048 in all)
            kept = text[:2045].rsplit(" ", 1)[0]
            assert kept + "..." in parts[0] and text[len(kept) :] not in parts[0]
    long = " ".join(words)
    full = template.render({"text": long, "label": 1}, truncate=None)
    untruncated = ref.apply({"text": long, "label": 1}, truncate=False)
    assert long in full.inputs and full.inputs == untruncated[0]


def test_separator_in_answer_choices_is_handled_as_promptsource_does(library, reference):
    """A choice containing '|||' stays one choice, but a target printing it splits: PromptSource
    returns three parts (P3 dropped the example); render raises SeparatorError."""
    copa = library.get("super_glue", "copa")
    theirs = reference.DatasetTemplates("super_glue", "copa")
    example = dict(COPA[0], choice1="It broke ||| badly.")
    split = 0
    for template in copa:
        ref = theirs[template.name]
        parts = ref.apply(dict(example))
        assert template.apply(example) == parts, template.name
        ref_choices = ref.get_answer_choices_list(dict(example))
        assert ref_choices[0] == "It broke ||| badly."
        if len(parts) > 2:
            split += 1
            with pytest.raises(ps.SeparatorError, match=template.id):
                template.render(example)
        elif parts[0]:
            assert template.render(example).answer_choices == tuple(ref_choices)
    assert split >= 4
    # Nested fields are not protected: a '|||' inside a list element splits the choices.
    ending = next(t for t in library.get("hellaswag") if "endings" in (t.answer_choices or ""))
    ref = reference.DatasetTemplates("hellaswag")[ending.name]
    example = dict(HELLASWAG[0], endings=["a ||| b", "c", "d", "e"])
    assert ref.get_answer_choices_list(dict(example))[:2] == ["a", "b"]
    assert ending.apply(example) == ref.apply(dict(example))


def test_missing_fields_behave_as_in_promptsource(library, reference, same_draws):
    compared = 0
    for key, examples in CASES.items():
        theirs = reference.DatasetTemplates(*key)
        for template in library.get(*key):
            ref = theirs[template.name]
            for field in _variables(template):
                example = {k: v for k, v in examples[0].items() if k != field}
                got = _outcome(lambda: template.apply(example))  # noqa: B023
                assert got == _outcome(lambda: _reference_apply(ref, example)), field  # noqa: B023
                compared += 1
    assert compared > 100


def test_classification_templates_put_the_labelled_choice_in_targets(library):
    for key in [("super_glue", "rte"), ("ag_news", None), ("imdb", None)]:
        for template in library.get(*key):
            if not template.metadata.original_task:
                continue
            choices = template.fixed_answer_choices()
            assert choices, template.where()
            for example in CASES[key]:
                got = template.render(example)
                assert got.targets == choices[example["label"]], template.where()
                assert got.answer_choices == choices
                assert example.get("text", example.get("premise")) in got.inputs
    assert len(library.get("ag_news").templates[0].fixed_answer_choices()) == 4


def test_example_dependent_choices_copa_and_hellaswag(library):
    copa_counts = 0
    for template in library.get("super_glue", "copa"):
        assert template.fixed_answer_choices() is None  # the choices are example fields
        for ex in COPA:
            got = template.render(ex)
            assert got.answer_choices == (ex["choice1"], ex["choice2"])
            if got.is_complete:  # some templates only cover one question type
                assert got.targets == got.answer_choices[ex["label"]]
                assert ex["premise"] in got.inputs
                copa_counts += 1
    assert copa_counts >= 12
    ending_templates = [
        t for t in library.get("hellaswag") if t.answer_choices and "endings" in t.answer_choices
    ]
    assert len(ending_templates) >= 3
    for template in ending_templates:
        for ex in HELLASWAG:
            got = template.render(ex)
            assert got.answer_choices == tuple(ex["endings"])
            assert got.targets == ex["endings"][int(ex["label"])]


def test_choice_filter_is_seeded_per_example(library):
    randomized = [t for t in library.get("hellaswag") if _uses_randomness(t)]
    assert len(randomized) >= 2
    for template in randomized:
        for base in HELLASWAG:
            renderings = set()
            for i in range(30):
                ex = dict(base, ind=i)
                first = template.render(ex)
                assert template.render(ex) == first  # same example and seed: same text
                assert first.targets
                renderings.add(first.inputs)
            assert len(renderings) >= 3, template.where()  # the pick varies per example
        ex = HELLASWAG[0]
        seeds = {template.render(ex, seed=s).inputs for s in range(30)}
        assert len(seeds) >= 3, template.where()


def test_separator_inside_example_text_does_not_split(library):
    template = library.get("imdb").templates[0]
    got = template.render({"text": "left ||| right", "label": 1})
    assert "left ||| right" in got.inputs
    assert got.targets == template.fixed_answer_choices()[1]


def _write(tmp_path, body: str, dataset: str = "toy") -> ps.TemplateLibrary:
    folder = tmp_path / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "templates.yaml").write_text(textwrap.dedent(body), encoding="utf-8")
    return ps.TemplateLibrary(str(tmp_path))


def _toy(jinja: str, answer_choices: str = "null", tid: str = "t-1", name: str = "broken") -> str:
    return f"""\
    dataset: toy
    templates:
      {tid}: !Template
        answer_choices: {answer_choices}
        id: {tid}
        jinja: '{jinja}'
        metadata: !TemplateMetadata
          choices_in_prompt: false
          languages:
          - en
          metrics:
          - Accuracy
          original_task: true
        name: {name}
        reference: ''
    """


def test_jinja_syntax_error_names_file_line_template_id_and_name(tmp_path):
    library = _write(tmp_path, _toy("{{ text ||| x"))
    template = library.get("toy").templates[0]
    assert template.metadata.languages == ("en",)
    path = library.path("toy")
    with pytest.raises(ps.TemplateError) as err:
        template.render({"text": "a"})
    message = str(err.value)
    assert f"{path}:3" in message and "'t-1'" in message and "'broken'" in message
    assert "syntax error" in message
    with pytest.raises(ps.TemplateError, match="t-1"):
        template.validate()


def test_runtime_errors_and_sandbox_name_the_template(tmp_path):
    # Parenthesised: PromptSource's truncation filter would bind to ``zero`` alone.
    lib = _write(tmp_path, _toy("{{ text }} ||| {{ (1 // zero) }}", tid="t-2", name="div"))
    template = lib.get("toy").templates[0]
    with pytest.raises(ps.TemplateError, match=r"'t-2'.*'div'.*ZeroDivisionError") as err:
        template.render({"text": "a", "zero": 0})
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    unsafe = _toy("{{ text.__class__.__mro__ }} ||| x", tid="t-3", name="escape")
    template = _write(tmp_path / "other", unsafe).get("toy").templates[0]
    with pytest.raises(ps.TemplateError, match="t-3"):
        template.render({"text": "a"})


def test_safe_loader_rejects_unknown_tags_and_malformed_entries(tmp_path):
    body = """\
    dataset: toy
    templates:
      x: !!python/object/apply:os.system ["echo hi"]
    """
    with pytest.raises(ps.TemplateError, match="invalid templates YAML"):
        _write(tmp_path, body).get("toy")
    ps.load_templates_file.cache_clear()
    with pytest.raises(ps.TemplateError, match="listed under the different key"):
        ps.parse_templates(textwrap.dedent(_toy("a ||| b")).replace("  t-1: !T", "  t-9: !T"))


def test_hyphenated_fields_and_unlabelled_examples(tmp_path):
    lib = _write(tmp_path, _toy("{{ my_field }} ||| {% if label != -1 %}{{ label }}"
                                "{% endif %}"))  # fmt: skip
    template = lib.get("toy").templates[0]
    got = template.render({"my-field": "value", "label": 3})
    assert (got.inputs, got.targets, got.is_complete) == ("value", "3", True)
    unlabelled = template.render({"my-field": "value", "label": -1})
    assert unlabelled.targets == "" and not unlabelled.is_complete

"""PromptSource templates read from the installed package's real files and rendered by our code.

PromptSource's own implementation (imported only here, at test time) is the reference for the
rendered text of templates that do not draw random numbers; no template text is copied here.
"""

from __future__ import annotations

import os
import re
import textwrap
import warnings

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

CASES = {
    ("super_glue", "rte"): RTE,
    ("super_glue", "copa"): COPA,
    ("ag_news", None): AG_NEWS,
    ("imdb", None): IMDB,
    ("glue", "mrpc"): MRPC,
    ("hellaswag", None): HELLASWAG,
}


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


@pytest.mark.parametrize("key", list(CASES), ids=lambda k: "/".join(filter(None, k)))
def test_rendering_matches_promptsource_on_real_templates(library, reference, key):
    ours = library.get(*key)
    theirs = reference.DatasetTemplates(*key)
    compared = 0
    for template in ours:
        if _uses_randomness(template):
            continue
        ref = theirs[template.name]
        for example in CASES[key]:
            got = template.render(example)
            parts = ref.apply(dict(example), truncate=False)
            assert got.inputs == parts[0], (template.name, example)
            assert got.targets == (parts[1] if len(parts) > 1 else ""), (template.name, example)
            ref_choices = ref.get_answer_choices_list(example)
            assert got.answer_choices == tuple(ref_choices or ()), template.name
            compared += 1
        assert template.fixed_answer_choices() == (
            tuple(ref.get_fixed_answer_choices_list())
            if ref.get_fixed_answer_choices_list()
            else None
        )
    assert compared >= 2 * 4


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
    lib = _write(tmp_path, _toy("{{ text }} ||| {{ 1 // zero }}", tid="t-2", name="div"))
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

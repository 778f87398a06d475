"""The Flan 2021 data sets: TFDS source, cluster, template family and field mapping.

Each :class:`DatasetSpec` maps a raw TFDS example (real TFDS names, configs, splits and field
names) to the flat string *fields* its template family reads, with TF ops only (so it runs
inside tf.data). Classification sets add ``options`` (all answer strings) and ``answer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import tensorflow as tf

from tasks.flan import templates_classification as tc
from tasks.flan import templates_generation as tg

Fields = dict[str, tf.Tensor]
TemplatePairs = tuple[tuple[str, ...], ...]

CLUSTERS = (
    "nli", "commonsense", "sentiment", "paraphrase", "closed_book_qa", "reading_comprehension",
    "coreference", "summarization", "translation", "struct_to_text", "misc",
)  # fmt: skip
TRAIN_VAL = {"train": "train", "validation": "validation"}
TRAIN_TEST = {"train": "train", "validation": "test"}
ALL3 = {"train": "train", "validation": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set of the collection.

    Attributes:
      name: base of the task names (``{name}_zero_shot`` ...).
      tfds_name: ``'dataset/config'`` as TFDS names it.
      cluster: one of :data:`CLUSTERS`.
      templates: the family's (inputs, targets[, kind]) tuples.
      fields: the fields :attr:`normalize` returns.
      normalize: raw TFDS example -> fields (TF ops).
      splits: canonical split -> TFDS split.
      cot_templates: chain-of-thought family (needs a ``rationale`` field), if any.
    """

    name: str
    tfds_name: str
    cluster: str
    templates: TemplatePairs
    fields: tuple[str, ...]
    normalize: Callable[[Mapping[str, tf.Tensor]], Fields]
    splits: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(TRAIN_VAL))
    cot_templates: TemplatePairs = ()

    @property
    def classification(self) -> bool:
        return "options" in self.fields


def _pick(options: list[str], label: tf.Tensor) -> tf.Tensor:
    return tf.gather(tf.constant(options), tf.cast(label, tf.int32))


def _labelled(options: list[str], label_key: str = "label", **renames: str):
    """Fields ``renames`` (new name -> raw key), fixed ``options`` and the label's option."""

    def fn(ex: Mapping[str, tf.Tensor]) -> Fields:
        out = {new: ex[old] for new, old in renames.items()}
        out["options"] = tf.constant(options)
        out["answer"] = _pick(options, ex[label_key])
        return out

    return fn


def _renamed(**renames: str):
    return lambda ex: {new: ex[old] for new, old in renames.items()}


def _choices(ex, keys: list[str]) -> tf.Tensor:
    return tf.stack([ex[k] for k in keys])


def _mc(context_key: str | None, option_keys: list[str], label_key: str = "label", **extra):
    def fn(ex):
        options = _choices(ex, option_keys)
        out = {new: ex[old] for new, old in extra.items()}
        if context_key:
            out["context"] = ex[context_key]
        out["options"] = options
        out["answer"] = tf.gather(options, tf.cast(ex[label_key], tf.int32))
        return out

    return fn


def _copa(ex):
    connector = tf.where(ex["question"] == "cause", " This happened because", " As a result,")
    options = _choices(ex, ["choice1", "choice2"])
    return {"context": tf.strings.join([ex["premise"], connector]), "options": options,
            "answer": tf.gather(options, tf.cast(ex["label"], tf.int32))}  # fmt: skip


def _hellaswag(ex):
    options = ex["endings"]
    # label is a plain int (-1 on the unlabelled test split): wrap rather than fail
    index = tf.math.floormod(tf.cast(ex["label"], tf.int32), tf.maximum(tf.size(options), 1))
    return {"context": ex["context"], "options": options, "answer": tf.gather(options, index)}


def _first(values: tf.Tensor) -> tf.Tensor:
    """First string of a 1-D tensor, or '' when it is empty."""
    return tf.cond(tf.size(values) > 0, lambda: values[0], lambda: tf.constant(""))


def _arc(ex):
    options = ex["choices"]["text"]
    return {"question": ex["question"], "options": options,
            "answer": tf.gather(options, tf.cast(ex["answerKey"], tf.int32))}  # fmt: skip


def _openbookqa(ex):
    q = ex["question"]
    options = _choices(q, ["choice_A", "choice_B", "choice_C", "choice_D"])
    return {"question": q["stem"], "options": options,
            "answer": tf.gather(options, tf.cast(ex["answerKey"], tf.int32))}  # fmt: skip


def _table_text(table: Mapping[str, tf.Tensor]) -> tf.Tensor:
    n = tf.minimum(tf.size(table["column_header"]), tf.size(table["content"]))
    pairs = tf.strings.join([table["column_header"][:n], table["content"][:n]], separator=": ")
    return tf.strings.reduce_join(pairs, separator="; ")


def _struct(ex):
    return {"data": _table_text(ex["input_text"]["table"]), "text": ex["target_text"]}


def _translation(src: str, tgt: str, src_name: str, tgt_name: str):
    def fn(ex):
        return {"source": ex[src], "target": ex[tgt], "source_lang": tf.constant(src_name),
                "target_lang": tf.constant(tgt_name)}  # fmt: skip

    return fn


def _esnli(ex):
    out = _labelled(["yes", "it is not possible to tell", "no"], premise="premise",
                    hypothesis="hypothesis")(ex)  # fmt: skip
    out["rationale"] = ex["explanation_1"]
    return out


def _cos_e(ex):
    return {"question": ex["question"], "options": ex["choices"], "answer": ex["answer"],
            "rationale": ex["abstractive_explanation"]}  # fmt: skip


def _gsm8k(ex):
    steps = tf.strings.regex_replace(ex["answer"], r"\s*####[^\n]*$", "")
    steps = tf.strings.regex_replace(steps, r"<<[^>]*>>", "")  # calculator annotations
    return {"question": ex["question"], "rationale": steps, "answer": ex["short_answer"]}


def _sentiment140(ex):
    # polarity is 0 (negative) or 4 (positive); the test split also has 2 (neutral)
    positive = tf.cast(ex["polarity"], tf.int32) > 2
    return {"text": ex["text"], "options": tf.constant(["negative", "positive"]),
            "answer": tf.where(positive, "positive", "negative")}  # fmt: skip


def _winogrande(ex):
    options = _choices(ex, ["option1", "option2"])
    index = tf.cast(ex["label"], tf.int32)  # a 2-class ClassLabel in TFDS
    return {"sentence": ex["sentence"], "options": options, "answer": tf.gather(options, index)}


def _dpr(ex):
    options = ex["candidates"]
    return {"sentence": ex["sentence"], "pronoun": ex["pronoun"], "options": options,
            "answer": tf.gather(options, tf.cast(ex["label"], tf.int32))}  # fmt: skip


NLI3 = ["yes", "it is not possible to tell", "no"]
YES_NO = ["yes", "no"]
NO_YES = ["no", "yes"]
F_NLI = ("premise", "hypothesis", "options", "answer")

_LANGS = {"de": "German", "ro": "Romanian", "cs": "Czech", "fi": "Finnish", "ru": "Russian",
          "tr": "Turkish", "fr": "French", "en": "English"}  # fmt: skip
_WMT = [("wmt16_translate", p) for p in ("de", "ro", "cs", "fi", "ru", "tr")]
_WMT.append(("wmt14_translate", "fr"))


def _translation_specs() -> list[DatasetSpec]:
    specs = []
    for builder, lang in _WMT:
        for src, tgt in ((lang, "en"), ("en", lang)):
            specs.append(DatasetSpec(
                f"{builder.split('_')[0]}_translate_{src}{tgt}", f"{builder}/{lang}-en",
                "translation", tg.TRANSLATION, ("source", "target", "source_lang", "target_lang"),
                _translation(src, tgt, _LANGS[src], _LANGS[tgt]), ALL3,
            ))  # fmt: skip
    return specs


def all_specs() -> list[DatasetSpec]:
    """Every data set, in a fixed order (task registration order)."""
    S = DatasetSpec
    specs = [
        # natural language inference
        S("rte", "glue/rte", "nli", tc.NLI, F_NLI,
          _labelled(YES_NO, premise="sentence1", hypothesis="sentence2")),
        S("mnli", "glue/mnli", "nli", tc.NLI, F_NLI,
          _labelled(NLI3, premise="premise", hypothesis="hypothesis"),
          {"train": "train", "validation": "validation_matched"}),
        S("wnli", "glue/wnli", "nli", tc.NLI, F_NLI,
          _labelled(NO_YES, premise="sentence1", hypothesis="sentence2")),
        *[S(f"anli_{r}", f"anli/{r}", "nli", tc.NLI, F_NLI,
            _labelled(NLI3, premise="context", hypothesis="hypothesis"), ALL3)
          for r in ("r1", "r2", "r3")],
        S("snli", "snli", "nli", tc.NLI, F_NLI,
          _labelled(NLI3, premise="premise", hypothesis="hypothesis"), ALL3),
        S("cb", "super_glue/cb", "nli", tc.NLI, F_NLI,
          _labelled(["yes", "no", "it is not possible to tell"], premise="premise",
                    hypothesis="hypothesis")),
        # commonsense
        S("copa", "super_glue/copa", "commonsense", tc.COMMONSENSE,
          ("context", "options", "answer"), _copa),
        S("hellaswag", "hellaswag", "commonsense", tc.COMMONSENSE,
          ("context", "options", "answer"), _hellaswag),
        S("piqa", "piqa", "commonsense", tc.COMMONSENSE, ("context", "options", "answer"),
          _mc("goal", ["sol1", "sol2"])),
        # sentiment
        S("imdb_reviews", "imdb_reviews/plain_text", "sentiment", tc.SENTIMENT,
          ("text", "options", "answer"), _labelled(["negative", "positive"], text="text"),
          TRAIN_TEST),
        S("sst2", "glue/sst2", "sentiment", tc.SENTIMENT, ("text", "options", "answer"),
          _labelled(["negative", "positive"], text="sentence")),
        S("yelp_polarity_reviews", "yelp_polarity_reviews", "sentiment", tc.SENTIMENT,
          ("text", "options", "answer"), _labelled(["negative", "positive"], text="text"),
          TRAIN_TEST),
        S("sentiment140", "sentiment140", "sentiment", tc.SENTIMENT,
          ("text", "options", "answer"), _sentiment140, TRAIN_TEST),
        # paraphrase
        S("mrpc", "glue/mrpc", "paraphrase", tc.PARAPHRASE,
          ("sentence1", "sentence2", "options", "answer"),
          _labelled(NO_YES, sentence1="sentence1", sentence2="sentence2")),
        S("qqp", "glue/qqp", "paraphrase", tc.PARAPHRASE,
          ("sentence1", "sentence2", "options", "answer"),
          _labelled(NO_YES, sentence1="question1", sentence2="question2")),
        S("paws_wiki", "paws_wiki", "paraphrase", tc.PARAPHRASE,
          ("sentence1", "sentence2", "options", "answer"),
          _labelled(NO_YES, sentence1="sentence1", sentence2="sentence2"), ALL3),
        # closed-book QA
        S("trivia_qa", "trivia_qa/rc.nocontext", "closed_book_qa", tg.CLOSED_QA,
          ("question", "answer"),
          lambda ex: {"question": ex["question"], "answer": ex["answer"]["value"]}),
        S("natural_questions", "natural_questions_open", "closed_book_qa", tg.CLOSED_QA,
          ("question", "answer"),
          lambda ex: {"question": ex["question"], "answer": _first(ex["answer"])}),
        S("arc_easy", "ai2_arc/ARC-Easy", "closed_book_qa", tg.MC_QA,
          ("question", "options", "answer"), _arc, ALL3),
        S("arc_challenge", "ai2_arc/ARC-Challenge", "closed_book_qa", tg.MC_QA,
          ("question", "options", "answer"), _arc, ALL3),
        S("openbookqa", "openbookqa", "closed_book_qa", tg.MC_QA,
          ("question", "options", "answer"), _openbookqa, ALL3),
        # reading comprehension
        S("squad_v1", "squad/v1.1", "reading_comprehension", tg.EXTRACTIVE_RC,
          ("context", "question", "answer"),
          lambda ex: {"context": ex["context"], "question": ex["question"],
                      "answer": _first(ex["answers"]["text"])}),
        S("drop", "drop", "reading_comprehension", tg.EXTRACTIVE_RC,
          ("context", "question", "answer"),
          _renamed(context="passage", question="question", answer="answer"),
          {"train": "train", "validation": "dev"}),
        S("bool_q", "super_glue/boolq", "reading_comprehension", tc.BOOLQ,
          ("passage", "question", "options", "answer"),
          _labelled(NO_YES, passage="passage", question="question")),
        S("cosmos_qa", "cosmos_qa", "reading_comprehension", tg.RC_MC,
          ("context", "question", "options", "answer"),
          _mc("context", ["answer0", "answer1", "answer2", "answer3"], question="question"),
          ALL3),
        # coreference
        S("winogrande", "winogrande", "coreference", tc.BLANK,
          ("sentence", "options", "answer"), _winogrande,
          {"train": "train_xl", "validation": "validation"}),
        S("definite_pronoun_resolution", "definite_pronoun_resolution", "coreference",
          tc.PRONOUN, ("sentence", "pronoun", "options", "answer"), _dpr, TRAIN_TEST),
        # summarisation
        S("cnn_dailymail", "cnn_dailymail", "summarization", tg.SUMMARIZE,
          ("document", "summary"), _renamed(document="article", summary="highlights"), ALL3),
        S("gigaword", "gigaword", "summarization", tg.SUMMARIZE, ("document", "summary"),
          _renamed(document="document", summary="summary"), ALL3),
        S("xsum", "xsum", "summarization", tg.SUMMARIZE, ("document", "summary"),
          _renamed(document="document", summary="summary"), ALL3),
        S("multi_news", "multi_news", "summarization", tg.SUMMARIZE, ("document", "summary"),
          _renamed(document="document", summary="summary"), ALL3),
        S("aeslc", "aeslc", "summarization", tg.EMAIL_SUBJECT, ("document", "summary"),
          _renamed(document="email_body", summary="subject_line"), ALL3),
        S("ag_news_subset", "ag_news_subset", "summarization", tc.TOPIC,
          ("title", "text", "options", "answer"),
          _labelled(["world", "sports", "business", "science and technology"],
                    title="title", text="description"), TRAIN_TEST),
        # translation
        *_translation_specs(),
        # struct to text
        S("web_nlg", "web_nlg", "struct_to_text", tg.STRUCT_TO_TEXT, ("data", "text"),
          _struct),
        S("e2e_nlg", "e2e_cleaned", "struct_to_text", tg.STRUCT_TO_TEXT, ("data", "text"),
          _struct, ALL3),
        S("dart", "dart", "struct_to_text", tg.STRUCT_TO_TEXT, ("data", "text"), _struct,
          ALL3),
        # misc
        S("cola", "glue/cola", "misc", tc.ACCEPTABILITY, ("sentence", "options", "answer"),
          _labelled(NO_YES, sentence="sentence")),
        S("trec", "trec", "misc", tc.QUESTION_TYPE, ("question", "options", "answer"),
          _labelled(["description", "entity", "abbreviation", "person", "number",
                     "location"], label_key="label-coarse", question="text"), TRAIN_TEST),
        # with rationales: answer-only templates plus chain-of-thought variants
        S("esnli", "esnli", "nli", tc.NLI, (*F_NLI, "rationale"), _esnli, ALL3,
          cot_templates=tg.COT_NLI),
        S("cos_e", "cos_e", "commonsense", tg.MC_QA,
          ("question", "options", "answer", "rationale"), _cos_e, cot_templates=tg.COT_MC),
        S("gsm8k", "gsm8k", "closed_book_qa", tg.CLOSED_QA, ("question", "answer", "rationale"),
          _gsm8k, TRAIN_TEST, cot_templates=tg.COT_MATH),
    ]  # fmt: skip
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), "duplicate Flan data set names"
    return specs

"""Task types of the demo instruction mixture: a problem sampler plus instruction templates.

Each task type draws a *problem* (template fields, the answer, and a content key that says
when two problems are "the same example") from a ``random.Random`` and renders it through one
of its natural-language templates. Training templates are used for the train split and for the
in-distribution validation/test splits; ``heldout_templates`` only ever appear in evaluation.
All templates below were written for this project.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable

from tasks.demo import lexicon


@dataclasses.dataclass(frozen=True)
class Problem:
    fields: dict[str, str]
    answer: str
    key: Hashable  # equal keys = the same underlying example (used to keep splits disjoint)


@dataclasses.dataclass(frozen=True)
class TaskType:
    """One kind of instruction.

    ``key_includes_template`` is for small fact spaces (arithmetic, comparing numbers up to 20):
    there, splits are disjoint by rendered input rather than by the underlying problem, so an
    evaluation fact may have been seen in training under another template. That tests
    following a new phrasing of a known fact, not generalising arithmetic, which a model of a
    few million parameters cannot learn in minutes on a CPU.
    """

    name: str
    sample: Callable[[random.Random], Problem]
    templates: tuple[str, ...]
    heldout_templates: tuple[str, ...] = ()
    key_includes_template: bool = False


def _items(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(lexicon.ITEMS, rng.randint(lo, hi))


def _listed(items: list[str]) -> str:
    return ", ".join(items)


def _arithmetic(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 9), rng.randint(0, 9)  # single digits: learnable by a tiny model
    if rng.random() < 0.5:
        op, answer = "plus", a + b
    else:
        a, b = max(a, b), min(a, b)  # keep results non-negative
        op, answer = "minus", a - b
    return Problem({"a": str(a), "b": str(b), "op": op}, str(answer), (a, op, b))


def _compare(rng: random.Random) -> Problem:
    a, b = rng.sample(range(21), 2)
    fields = {"a": str(a), "b": str(b), "options": f"{a} or {b}"}
    return Problem(fields, str(max(a, b)), (a, b))


def _list_problem(answer_fn: Callable[[list[str]], str], lo: int, hi: int):
    def sample(rng: random.Random) -> Problem:
        items = _items(rng, lo, hi)
        return Problem({"items": _listed(items)}, answer_fn(items), tuple(items))

    return sample


def _contains(rng: random.Random) -> Problem:
    items = _items(rng, 3, 5)
    if rng.random() < 0.5:
        word, answer = rng.choice(items), "yes"
    else:
        word, answer = rng.choice([w for w in lexicon.ITEMS if w not in items]), "no"
    fields = {"items": _listed(items), "word": word, "options": "yes or no"}
    return Problem(fields, answer, (tuple(items), word))


def _remove(rng: random.Random) -> Problem:
    items = _items(rng, 3, 3)
    word = rng.choice(items)
    rest = " ".join(w for w in items if w != word)
    return Problem({"items": _listed(items), "word": word}, rest, (tuple(items), word))


_REVIEW_FRAMES = (
    "The {s1} was {a1}.",
    "I thought the {s1} was {a1}.",
    "The {s1} was {a1} and the {s2} was {a2}.",
    "Honestly, the {s1} felt {a1}, and the {s2} was {a2}.",
    "We found the {s1} {a1} and the {s2} {a2}.",
)


def _sentiment(rng: random.Random) -> Problem:
    positive = rng.random() < 0.5
    adjectives = lexicon.POSITIVE_ADJECTIVES if positive else lexicon.NEGATIVE_ADJECTIVES
    s1, s2 = rng.sample(lexicon.REVIEW_SUBJECTS, 2)
    a1, a2 = rng.sample(adjectives, 2)
    review = rng.choice(_REVIEW_FRAMES).format(s1=s1, s2=s2, a1=a1, a2=a2)
    fields = {"review": review, "options": "positive or negative"}
    return Problem(fields, "positive" if positive else "negative", review)


_TRAVEL_FRAMES = (
    "{name} visited {city} on {day}.",
    "On {day}, {name} drove to {city}.",
    "{name} will fly to {city} on {day}.",
    "In {city}, {name} met a friend on {day}.",
    "Last {day} {name} took a train to {city}.",
)


def _travel_problem(answer_field: str):
    def sample(rng: random.Random) -> Problem:
        f = {
            "name": rng.choice(lexicon.NAMES),
            "city": rng.choice(lexicon.CITIES),
            "day": rng.choice(lexicon.DAYS),
        }
        sentence = rng.choice(_TRAVEL_FRAMES).format(**f)
        return Problem({"sentence": sentence}, f[answer_field], sentence)

    return sample


TRAINING_TASK_TYPES: tuple[TaskType, ...] = (
    TaskType(
        "arithmetic",
        _arithmetic,
        templates=(
            "What is {a} {op} {b}?",
            "Compute {a} {op} {b}.",
            "Work out {a} {op} {b} and give the number.",
            "{a} {op} {b} equals what?",
            "Tell me the result of {a} {op} {b}.",
        ),
        heldout_templates=("Find the value of {a} {op} {b}.", "Solve this: {a} {op} {b} ="),
        key_includes_template=True,
    ),
    TaskType(
        "compare_numbers",
        _compare,
        templates=(
            "Which number is larger, {a} or {b}?",
            "Pick the bigger number. Options: {options}.",
            "Of {a} and {b}, which is greater?",
            "Tell me the larger of these two numbers: {a}, {b}.",
            "Choose the greater value ({options}).",
        ),
        heldout_templates=(
            "Here are two numbers: {a} and {b}. Which one is higher?",
            "Answer with the largest number among {a} and {b}.",
        ),
        key_includes_template=True,
    ),
    TaskType(
        "count_items",
        _list_problem(lambda items: str(len(items)), 2, 5),
        templates=(
            "How many items are in this list: {items}?",
            "Count the words in the list {items}.",
            "List: {items}. How many things are listed?",
            "Give the number of items in: {items}.",
            "Tell me how many entries this list has: {items}.",
        ),
        heldout_templates=(
            "What is the length of the list {items}?",
            "Here is a list: {items}. Say how many items it contains.",
        ),
    ),
    TaskType(
        "first_item",
        _list_problem(lambda items: items[0], 2, 5),
        templates=(
            "What is the first item in this list: {items}?",
            "Give the first word of the list {items}.",
            "List: {items}. Which item comes first?",
            "Return the item at the start of: {items}.",
            "Tell me the opening entry of this list: {items}.",
        ),
        heldout_templates=(
            "Which word is at the front of the list {items}?",
            "Here is a list: {items}. Name its first element.",
        ),
    ),
    TaskType(
        "last_item",
        _list_problem(lambda items: items[-1], 2, 5),
        templates=(
            "What is the last item in this list: {items}?",
            "Give the final word of the list {items}.",
            "List: {items}. Which item comes last?",
            "Return the item at the end of: {items}.",
            "Tell me the closing entry of this list: {items}.",
        ),
        heldout_templates=(
            "Which word is at the back of the list {items}?",
            "Here is a list: {items}. Name its last element.",
        ),
    ),
    TaskType(
        "reverse_list",
        _list_problem(lambda items: " ".join(reversed(items)), 2, 3),
        templates=(
            "Reverse the list: {items}.",
            "Write these words in the opposite order: {items}.",
            "List: {items}. Give it back to front.",
            "Put the items of {items} in reverse order.",
            "Turn this list around: {items}.",
        ),
        heldout_templates=(
            "Read the list {items} from the end to the start.",
            "Here is a list: {items}. Flip its order.",
        ),
    ),
    TaskType(
        "contains",
        _contains,
        templates=(
            "Is {word} in the list {items}? Answer {options}.",
            "List: {items}. Does it contain {word}? Options: {options}.",
            "Does the word {word} appear in: {items}? Reply {options}.",
            "Check whether {word} is one of these: {items}. Say {options}.",
            "Tell me if the list {items} includes {word} ({options}).",
        ),
        heldout_templates=(
            "Can {word} be found in the list {items}? Choose {options}.",
            "Here is a list: {items}. Is {word} part of it? Options: {options}.",
        ),
    ),
    TaskType(
        "remove_item",
        _remove,
        templates=(
            "Remove {word} from the list: {items}.",
            "Delete the word {word} from {items}.",
            "List: {items}. Leave out {word} and give the rest.",
            "Write the list {items} without {word}.",
            "Drop {word} from this list: {items}.",
        ),
        heldout_templates=(
            "Take {word} out of the list {items}.",
            "Here is a list: {items}. Give every item except {word}.",
        ),
    ),
    TaskType(
        "sentiment",
        _sentiment,
        templates=(
            "Review: {review} Is this review positive or negative?",
            "What is the sentiment of this review? {review} Options: {options}.",
            "{review} Did the writer like it? Answer {options}.",
            "Classify the review as {options}: {review}",
            "Read the review and give its tone ({options}). {review}",
        ),
        heldout_templates=(
            "Here is a review: {review} Is the opinion positive or negative?",
            "Decide whether this review is {options}. {review}",
        ),
    ),
    TaskType(
        "extract_name",
        _travel_problem("name"),
        templates=(
            "Who is the person in this sentence? {sentence}",
            "Pick the name from the sentence: {sentence}",
            "Sentence: {sentence} Which person is mentioned?",
            "Give the name of the traveller. {sentence}",
            "{sentence} Who travelled?",
        ),
        heldout_templates=(
            "Read the sentence and return the person: {sentence}",
            "Here is a sentence: {sentence} Name the person in it.",
        ),
    ),
    TaskType(
        "extract_city",
        _travel_problem("city"),
        templates=(
            "Which city is in this sentence? {sentence}",
            "Pick the city from the sentence: {sentence}",
            "Sentence: {sentence} Which place is mentioned?",
            "Give the name of the city. {sentence}",
            "{sentence} Where did it happen?",
        ),
        heldout_templates=(
            "Read the sentence and return the city: {sentence}",
            "Here is a sentence: {sentence} Name the town in it.",
        ),
    ),
)

# Never trained on: the extraction skill applied to a field no training task asks for.
HELDOUT_TASK_TYPE = TaskType(
    "extract_day",
    _travel_problem("day"),
    templates=(
        "Which day is in this sentence? {sentence}",
        "Pick the day from the sentence: {sentence}",
        "Sentence: {sentence} Which day is mentioned?",
        "Give the day of the week. {sentence}",
        "{sentence} On which day did it happen?",
    ),
)

ALL_TASK_TYPES: tuple[TaskType, ...] = (*TRAINING_TASK_TYPES, HELDOUT_TASK_TYPE)

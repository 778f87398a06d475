"""Closed word lists of the demo instruction data set.

Every word the generator can emit comes from these lists, the number range below, or the
instruction templates, so a tiny SentencePiece model trained on the generated text covers
all of it (see ``tools/build_demo_vocab.py`` and ``tests/test_data_demo_vocab.py``).
Words are short, lower-case and single-word so that they tend to become single pieces.
"""

from __future__ import annotations

# Things that go into lists (list manipulation, counting, membership).
ITEMS: tuple[str, ...] = (
    "cat", "dog", "fox", "owl", "cow", "pig", "hen", "bee", "ant", "bat",
    "frog", "duck", "goat", "lion", "bear", "wolf", "fish", "crab", "deer", "seal",
    "apple", "pear", "plum", "lemon", "grape", "melon", "peach", "mango", "lime", "kiwi",
    "cup", "pen", "box", "hat", "key", "lamp", "book", "ball", "coin", "bell",
    "kite", "drum", "ring", "sock", "spoon", "chair", "clock", "brush",
)  # fmt: skip

NAMES: tuple[str, ...] = (
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara",
    "Umar", "Vera", "Wei", "Yusuf",
)  # fmt: skip

CITIES: tuple[str, ...] = (
    "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Oslo", "Lisbon",
    "Athens", "Cairo", "Lagos", "Nairobi", "Delhi", "Tokyo", "Seoul", "Lima", "Quito",
    "Boston", "Denver", "Sydney", "Toronto", "Warsaw", "Zurich",
)  # fmt: skip

DAYS: tuple[str, ...] = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)  # fmt: skip

# Made-up reviews: a subject and an adjective whose polarity decides the label.
REVIEW_SUBJECTS: tuple[str, ...] = (
    "food", "staff", "room", "movie", "book", "service", "music", "coffee", "hotel",
    "trip", "show", "game",
)  # fmt: skip

POSITIVE_ADJECTIVES: tuple[str, ...] = (
    "great", "lovely", "excellent", "wonderful", "pleasant", "superb", "fantastic",
    "charming", "brilliant", "delightful", "perfect", "enjoyable",
)  # fmt: skip

NEGATIVE_ADJECTIVES: tuple[str, ...] = (
    "awful", "terrible", "boring", "dreadful", "poor", "horrible", "dull",
    "disappointing", "bland", "miserable", "nasty", "mediocre",
)  # fmt: skip

# Numbers are written as digits; 0..99 covers every number any task emits.
MAX_NUMBER = 99


def all_words() -> list[str]:
    """Every lexicon word and number the generator may place in an example (for vocab tests)."""
    words: list[str] = []
    for group in (
        ITEMS,
        NAMES,
        CITIES,
        DAYS,
        REVIEW_SUBJECTS,
        POSITIVE_ADJECTIVES,
        NEGATIVE_ADJECTIVES,
    ):
        words.extend(group)
    words.extend(str(n) for n in range(MAX_NUMBER + 1))
    return words

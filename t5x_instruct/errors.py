"""Errors caused by the user's input (config, task names, MODEL_DIR), not by a bug.

The CLI prints these as one readable line and exits with status 2; anything else keeps its
traceback. Each also subclasses the builtin type callers would expect (``ValueError``).
"""


class UserInputError(ValueError):
    """Bad configuration or input; the message says what is at fault and how to fix it."""

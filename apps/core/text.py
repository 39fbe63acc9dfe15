"""Small checks on text from outside (headers, query strings)."""

import uuid
from typing import Any


def ascii_digits(value: str, *, max_length: int | None = None) -> bool:
    """Whether `value` is a non-empty run of ASCII digits, at most `max_length` long.

    str.isdigit() alone is also true of "²" (which int() refuses) and of other scripts' digits
    (which int() reads: a fullwidth "1" is 1); int() also takes " 5", "+5" and "5_0".
    """
    if max_length is not None and len(value) > max_length:
        return False
    return value.isascii() and value.isdigit()


def are_uuids(*values: Any) -> bool:
    """Whether every value is the text of a UUID (a message's ids, say)."""
    try:
        for value in values:
            uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):  # AttributeError: not text at all
        return False
    return True

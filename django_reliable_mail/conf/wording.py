"""How a setting's value and its alternatives are written in a problem message.

Invariant: nothing here raises, whatever the value (a huge integer, a self-referencing list,
an object whose ``__repr__`` fails), and nothing returned is longer than a line or two.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class _Shown(reprlib.Repr):
    """reprlib, but a value whose repr fails is named by its type (not by its address)."""

    def repr_instance(self, x: object, level: int) -> str:
        try:
            repr(x)
        except Exception:
            return f"a {type_name(x)}"
        return super().repr_instance(x, level)


#: Values are shown cut to this size: a message names a value, it does not dump it.
_REPR = _Shown()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 3
#: Integers longer than this are described, not printed (Python refuses to print an
#: integer of more than 4300 digits, and nobody reads 40).
_LONGEST_INTEGER = 10**40
#: difflib compares every pair of characters: a megabyte-long key gets no suggestion.
_LONGEST_GUESSED = 100


def shown(value: object) -> str:
    """A short ``repr`` of any value, for a message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _LONGEST_INTEGER:
        return f"an integer of {value.bit_length()} bits"
    try:
        return _REPR.repr(value)
    except Exception:  # a value whose own repr fails must not hide the real problem
        return f"a {type_name(value)}"


def type_name(value: object) -> str:
    """The name of a value's type, for values that must not be shown (secrets)."""
    return type(value).__name__


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """``"Did you mean 'X'?"`` for the closest of ``choices`` (case-insensitive), else ``""``."""
    if not isinstance(value, str) or len(value) > _LONGEST_GUESSED:
        return ""
    by_upper = {choice.upper(): choice for choice in choices if isinstance(choice, str)}
    match = difflib.get_close_matches(value.upper(), list(by_upper), n=1)
    return f"Did you mean {by_upper[match[0]]!r}?" if match else ""


def one_of(choices: Iterable[str]) -> str:
    """``'a', 'b', 'c'``."""
    return ", ".join(map(repr, choices))

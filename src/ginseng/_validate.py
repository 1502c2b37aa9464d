"""Argument checks shared by every public function: one wording, one behaviour.

Each validator returns the value as a plain Python ``int``/``float``/``str`` (numpy
scalars included) or raises :class:`~ginseng.InputError` naming the parameter and the
value it got, e.g. ``batch_size must be a positive integer, got 0.``. ``bool`` is never
taken for a number. Options that ``None`` switches off are checked by the caller only
when they are not ``None``.

Examples
--------
>>> from ginseng._validate import fraction, positive_int
>>> positive_int("epochs", np.int64(3))
3
>>> fraction("holdout_fraction", 0.2, "(0, 1)")
0.2
>>> positive_int("epochs", 0)
Traceback (most recent call last):
...
ginseng._errors.InputError: epochs must be a positive integer, got 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Literal, NoReturn, TypeVar

import numpy as np

from ._errors import InputError

T = TypeVar("T")
Interval = Literal["[0, 1]", "[0, 1)", "(0, 1)", "(0, 1]"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number (Python or numpy), not a bool."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(value)
    )


def _fail(name: str, value: Any, expected: str) -> NoReturn:
    raise InputError(f"{name} must be {expected}, got {value!r}.")


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1."""
    if not is_int(value) or value < 1:
        _fail(name, value, "a positive integer")
    return int(value)


def nonnegative_int(name: str, value: Any) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 0."""
    if not is_int(value) or value < 0:
        _fail(name, value, "an integer >= 0")
    return int(value)


def positive_number(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number > 0."""
    if not is_real(value) or value <= 0:
        _fail(name, value, "a positive number")
    return float(value)


def nonnegative_number(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a finite number >= 0."""
    if not is_real(value) or value < 0:
        _fail(name, value, "a number >= 0")
    return float(value)


def fraction(name: str, value: Any, interval: Interval = "[0, 1]") -> float:
    """Return ``value`` as a ``float`` if it lies in ``interval`` (a sub-interval of [0, 1])."""
    low_open, high_open = interval[0] == "(", interval[-1] == ")"
    ok = is_real(value) and (0 < value if low_open else 0 <= value)
    ok = ok and (value < 1 if high_open else value <= 1)
    if not ok:
        _fail(name, value, f"a number in {interval}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (numpy bools included)."""
    if not isinstance(value, bool | np.bool_):
        _fail(name, value, "True or False")
    return bool(value)


def one_of(name: str, value: T, choices: Collection[Any]) -> T:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        _fail(name, value, f"one of {list(choices)}")
    return value


def nonempty_str(name: str, value: Any) -> str:
    """Return ``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        _fail(name, value, "a non-empty string")
    return value

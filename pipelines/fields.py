"""Checks of request fields: each failure is a ``FieldError`` (a ValueError) naming the field, the
bad value and what is allowed, e.g. ``seed=1.5 is not allowed: an integer in [0, 4294967295].``

Plain Python, no gradio: ``pipelines/request.py`` and ``pipelines/lora/settings.py`` validate with
these, and the app turns a FieldError into the message its clients see (labapp/validation.py).
Nothing is coerced: a value of the wrong JSON type is refused with the field named (bool and
numeric strings are not numbers, 2.5 is not an integer), and bounds print as written
(4294967295, not 4.29e+09).
"""
from __future__ import annotations

import json
import math
import re

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_LIST_ITEMS = 8
MAX_LORA_CHARS = 4000
MAX_NUMBER_CHARS = 32  # characters per number of a number list, separators included ("-1.2345678901234e-10, ")


def shown(value) -> str:
    """``repr(value)``, shortened past 80 characters (a 200 kB prompt is named, not echoed)."""
    if isinstance(value, str) and len(value) > 80:  # no repr of the whole text (a 20 MB one is a 20 MB copy)
        return repr(value[:60])[:-1] + f"... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict)) and len(value) > 20:
        return f"<a {type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (sys.set_int_max_str_digits)
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if len(text) > 80:
        text = text[:60] + f"... ({len(value) if isinstance(value, str) else len(text)} characters)"
    return text


class FieldError(ValueError):
    """``{field}={value!r} is not allowed: {allowed}.`` (the field, the value, what is allowed)."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={shown(value)} is not allowed: {allowed}.")


def bound(x: float) -> str:
    """A range bound as written: 4294967295 (not 4.29497e+09), 7.5, -2."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def text(field: str, value, max_chars: int = MAX_PROMPT_CHARS, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise FieldError(field, value, f"text (a JSON string), not {type(value).__name__}")
    if len(value) > max_chars:
        raise FieldError(field, value, f"at most {max_chars} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone UTF-16 surrogate ("\ud800"), sent as JSON
        raise FieldError(field, value, f"valid Unicode text (a lone surrogate at character {error.start})") from None
    if required and not value.strip():
        raise FieldError(field, value, "must not be empty")
    return value


def boolean(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise FieldError(field, value, "true or false")
    return value


def number(field: str, value, lo: float, hi: float) -> float:
    """A JSON number (bool and numeric strings are refused, not converted) in [lo, hi]."""
    allowed = f"a finite number in [{bound(lo)}, {bound(hi)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, value, allowed)
    if isinstance(value, int) and not lo <= value <= hi:  # compared as int: 10**400 has no float
        raise FieldError(field, value, allowed)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise FieldError(field, value, allowed)
    return float(value)


def integer(field: str, value, lo: int, hi: int, multiple_of: int = 1) -> int:
    """A whole JSON number in [lo, hi] (2.0 is 2; 2.5 is refused, never rounded)."""
    allowed = f"an integer in [{bound(lo)}, {bound(hi)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, value, allowed)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise FieldError(field, value, allowed)
    if not lo <= value <= hi:
        raise FieldError(field, value, allowed)
    value = int(value)
    if value % multiple_of:
        raise FieldError(field, value, f"a multiple of {multiple_of} in [{lo}, {hi}]")
    return value


def choice(field: str, value, allowed) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise FieldError(field, value, f"one of {allowed}")
    return value


def choices(field: str, values, allowed, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[str]:
    """A JSON list of names (a string is refused: Gradio would iterate it per character)."""
    if not isinstance(values, (list, tuple)):
        raise FieldError(field, values, f"a list of names from {list(allowed)}")
    for v in values:
        choice(field, v, allowed)
    if not at_least <= len(values) <= at_most:
        raise FieldError(field, values, f"between {at_least} and {at_most} names from {list(allowed)}")
    return list(dict.fromkeys(values))


def number_list(field: str, values, lo: float, hi: float, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[float]:
    """'1, 3, 7.5' or [1, 3, 7.5] -> floats, each finite and in range. The text's length is checked
    before it is split (issue 30: "1," * 10**7 cost +540 MB in the split alone)."""
    if isinstance(values, str) and len(values) > MAX_NUMBER_CHARS * at_most:
        raise FieldError(field, values, f"{at_least} to {at_most} numbers in [{bound(lo)}, {bound(hi)}] separated by "
                                        f"commas, at most {MAX_NUMBER_CHARS * at_most} characters")
    if isinstance(values, (list, tuple)) and len(values) > at_most:
        raise FieldError(field, f"<a list of {len(values)} items>", f"{at_least} to {at_most} numbers in "
                                                                   f"[{bound(lo)}, {bound(hi)}]")
    if isinstance(values, str):
        parts = [p for p in re.split(r"[,\s;]+", values.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise FieldError(field, values, f"numbers in [{bound(lo)}, {bound(hi)}] separated by commas") from None
    if not isinstance(values, (list, tuple)) or not at_least <= len(values) <= at_most:
        raise FieldError(field, values, f"{at_least} to {at_most} numbers in [{bound(lo)}, {bound(hi)}]")
    return [number(field, v, lo, hi) for v in values]


def json_value(field: str, value, allowed: str):
    if isinstance(value, (list, dict)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise FieldError(field, value, allowed) from None

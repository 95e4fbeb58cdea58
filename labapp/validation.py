"""Input checks for every handler: each failure is a ``gr.Error`` naming the field, the bad
value and what is allowed, so API clients and the browser get the same clear message.

Gradio already rejects out-of-range Slider/Number values and unknown Dropdown choices on the
server, but with its own wording and only for components; these checks run inside the handlers
too, so a direct Python call (tests, bench) gets the same guarantees, and they cover what Gradio
does not check: NaN, slider ``step``, text length, and free-form lists ("1, 3, 7.5").
"""
from __future__ import annotations

import json
import math
import re

import gradio as gr

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_LIST_ITEMS = 8
MAX_LORA_CHARS = 4000


def fail(field: str, value, allowed: str) -> gr.Error:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:60] + f"... ({len(str(value))} characters)"
    return gr.Error(f"{field}={shown} is not allowed: {allowed}.", title="Invalid input")


def text(field: str, value, max_chars: int = MAX_PROMPT_CHARS, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise fail(field, value, "must be text")
    if len(value) > max_chars:
        raise fail(field, value, f"at most {max_chars} characters (got {len(value)})")
    if required and not value.strip():
        raise fail(field, value, "must not be empty")
    return value


def number(field: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise fail(field, value, f"a number in [{lo:g}, {hi:g}]") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise fail(field, value, f"a finite number in [{lo:g}, {hi:g}]")
    return float(value)


def integer(field: str, value, lo: int, hi: int, multiple_of: int = 1) -> int:
    number(field, value, lo, hi)
    if float(value) != int(float(value)):
        raise fail(field, value, f"an integer in [{lo}, {hi}]")
    value = int(float(value))
    if value % multiple_of:
        raise fail(field, value, f"a multiple of {multiple_of} in [{lo}, {hi}]")
    return value


def choice(field: str, value, allowed) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise fail(field, value, f"one of {allowed}")
    return value


def choices(field: str, values, allowed, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[str]:
    """A list of names, or a comma-separated string of them (what API users type)."""
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    if not isinstance(values, (list, tuple)):
        raise fail(field, values, f"a list of names from {list(allowed)}")
    for v in values:
        choice(field, v, allowed)
    if not at_least <= len(values) <= at_most:
        raise fail(field, values, f"between {at_least} and {at_most} names from {list(allowed)}")
    return list(dict.fromkeys(values))


def number_list(field: str, values, lo: float, hi: float, at_least: int = 1, at_most: int = MAX_LIST_ITEMS) -> list[float]:
    """'1, 3, 7.5' or [1, 3, 7.5] -> floats, each finite and in range."""
    if isinstance(values, str):
        parts = [p for p in re.split(r"[,\s;]+", values.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise fail(field, values, f"numbers in [{lo:g}, {hi:g}] separated by commas") from None
    if not isinstance(values, (list, tuple)) or not at_least <= len(values) <= at_most:
        raise fail(field, values, f"{at_least} to {at_most} numbers in [{lo:g}, {hi:g}]")
    return [number(field, v, lo, hi) for v in values]


def json_value(field: str, value, allowed: str):
    if isinstance(value, (list, dict)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise fail(field, value, allowed) from None

"""The options of the measurement commands, each with the one rule its value must meet.

``sharpdiv sharpness --n-batches 0``, ``measure_sharpness(..., n_batches=0)`` and a sweep file's
``[[measure.sharpness]] n_batches = 0`` are refused by the same rule before any work: a sweep
when it is read (``sweep plan``), not after hours of training. A :class:`Rule` is a check and
what a value must be; :func:`check_options` names the option as its caller spelled it (the
command line's flag, or the sweep file's key and line). Rules need no data: what depends on the
data (a split's size, the corruptions a ``-C`` folder holds) is checked when the data is at hand.

    >>> check_options({"n_batches": whole(1)}, {"n_batches": 0}, flag)
    Traceback (most recent call last):
    ...
    landscape.errors.InputError: --n-batches must be an integer >= 1, got 0
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from landscape.errors import InputError

__all__ = ["Rule", "boolean", "check_options", "choice", "flag", "integer", "names", "patterns", "radii", "whole"]


@dataclass(frozen=True)
class Rule:
    """``check(value)`` is True for a value the option accepts; ``wanted`` says what it must be."""

    check: Callable[[object], bool]
    wanted: str

    def optional(self) -> "Rule":
        """The same rule, also accepting None (the option's "not given")."""
        return Rule(lambda value: value is None or self.check(value), f"{self.wanted}, or none")


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer() -> Rule:
    return Rule(_integer, "an integer")


def whole(minimum: int) -> Rule:
    return Rule(lambda value: _integer(value) and value >= minimum, f"an integer >= {minimum}")


def boolean() -> Rule:
    return Rule(lambda value: isinstance(value, bool), "true or false")


def choice(choices: Sequence[str]) -> Rule:
    return Rule(lambda value: isinstance(value, str) and value in choices, f"one of {', '.join(choices)}")


def radii() -> Rule:
    """One radius or a non-empty list of them, each finite and > 0."""
    def radius(value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    return Rule(lambda value: radius(value) or (isinstance(value, (list, tuple)) and bool(value)
                                                and all(radius(v) for v in value)),
                "finite and > 0 (one radius or a list of radii)")


def names(what: str, choices: Sequence[str] | None = None, *, comma_text: bool = True) -> Rule:
    """A list of names (or, with ``comma_text``, one text of comma-separated names), each one of
    ``choices`` when given."""
    def check(value) -> bool:
        if isinstance(value, str) and comma_text:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            return False
        return choices is None or all(v in choices for v in value)

    listed = f" of {', '.join(choices)}" if choices is not None else ""
    return Rule(check, f"a list of {what}{listed}" + (" (or one comma-separated text)" if comma_text else ""))


def patterns() -> Rule:
    """One parameter-name pattern (a glob or regular expression, which may hold commas) or a list."""
    def check(value) -> bool:
        return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))

    return Rule(check, "a parameter-name pattern or a list of them")


def check_options(rules: Mapping[str, Rule], options: Mapping, name: Callable[[str], str],
                  show: Callable[[object], str] = repr) -> None:
    """An :class:`InputError` naming the first option (by ``name(option)``) whose value breaks its
    rule, or that has no rule at all; ``show`` spells the value as the caller wrote it."""
    for option, value in options.items():
        if option not in rules:
            raise InputError(f"{name(option)} is not an option; choose from {', '.join(rules)}")
        rule = rules[option]
        if not rule.check(value):
            raise InputError(f"{name(option)} must be {rule.wanted}, got {show(value)}")


def flag(option: str, renamed: Mapping[str, str] | None = None) -> str:
    """The command line's flag of a Python option: ``n_batches`` -> ``--n-batches`` (``renamed``
    for options whose flag says it otherwise, e.g. ``m`` -> ``--batch-size``)."""
    return (renamed or {}).get(option, "--" + option.replace("_", "-"))

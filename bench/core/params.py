"""Typed, bounded fields for hyper-parameter classes (pydantic dataclasses).

A suite's numbers reach the trainers and attacks through these types: ``1e-3`` written as a string
is the number, ``two`` or ``nan`` is one error naming the field, what was expected and what was
given. Numbers keep the type they were given (an ``eps`` of ``1`` stays the int 1), because
hyper-parameters are hashed into training-job keys exactly as given: coercing 1 to 1.0 would
re-key every stored run that wrote one."""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable

from pydantic import ConfigDict, PlainValidator, ValidationError

#: Every hyper-parameter class: no unknown fields, no NaN or infinity.
PARAMS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)


def _number(value: Any, integer: bool) -> int | float:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {kind}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if not integer else (int(value) if value.strip().lstrip("+-").isdigit()
                                                      else float(value))
        except ValueError:
            raise ValueError(f"expected {kind}, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        value = int(value)
    return value


def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = [f"> {gt:g}" if gt is not None else f">= {ge:g}" if ge is not None else "",
             f"< {lt:g}" if lt is not None else f"<= {le:g}" if le is not None else ""]
    return " and ".join(p for p in parts if p)


def number(*, integer: bool = False, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None) -> Callable[[Any], int | float]:
    """The validator of a number field with optional bounds."""
    def validate(value: Any) -> int | float:
        value = _number(value, integer)
        if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
                or (lt is not None and not value < lt) or (le is not None and not value <= le)):
            raise ValueError(f"expected {'an integer' if integer else 'a number'} "
                             f"{_bounds_text(gt, ge, lt, le)}, got {value!r}")
        return value

    return validate


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


Real = Annotated[float, PlainValidator(number())]
PositiveReal = Annotated[float, PlainValidator(number(gt=0))]
NonNegativeReal = Annotated[float, PlainValidator(number(ge=0))]
UnitReal = Annotated[float, PlainValidator(number(ge=0, le=1))]
PositiveInt = Annotated[int, PlainValidator(number(integer=True, ge=1))]
NonNegativeInt = Annotated[int, PlainValidator(number(integer=True, ge=0))]
Flag = Annotated[bool, PlainValidator(_flag)]


def _field_name(part: Any) -> str:
    """A path element as written, quoted when it would not read as a plain name (empty, spaces,
    control characters)."""
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text else repr(part)


def printable(message: str) -> str:
    """``message`` on one line: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def one_line(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: ``field: what was expected, got what``; several problems
    joined by "; "."""
    problems = []
    for problem in err.errors():
        path = ".".join(_field_name(p) for p in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if "got" not in message and problem.get("type") not in ("missing", "extra_forbidden"):
            message += f", got {problem.get('input')!r}"
        if problem.get("type") == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{prefix}{path}: {message}")
    return "; ".join(problems)

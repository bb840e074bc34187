"""A backend's own job fields: each backend declares them as a frozen dataclass of BackendOptions.

The worker's job schema knows only the fields every backend shares (the sources, `resolution`,
`seed`, `prompt`, `mode`, the output); it hands every other field of the job to the backend's
options class, which validates them for the job's mode and refuses what it does not take, so a
field is never silently ignored. Refusals are InvalidOptionError: the field, and one sentence
that names it and says the fix (the contract's INVALID_INPUT).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Self

MAX_TEXT_LENGTH = 2000


class InvalidOptionError(Exception):
    """A job field this backend (or the job's mode) cannot honour.

    `field` is the job field; the message is one sentence that names it and says the fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Options of a backend that takes no fields of its own."""

    @classmethod
    def parse(cls, fields: Mapping[str, Any], mode: str, backend: str) -> Self:
        """The options in `fields` (the job's fields the shared schema does not take) for `mode`.

        Subclasses validate their own fields with the `take_*` helpers, then call
        `reject_unknown`; `backend` names the endpoint's backend in messages.
        """
        reject_unknown(fields, cls, backend)
        return cls()

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's value type (`int` for `int | None`): how a form's text becomes the JSON value."""
        kinds = {}
        for name, hint in typing.get_type_hints(cls).items():
            members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            kinds[name] = next(member for member in members if member is not type(None))
        return kinds


def reject_unknown(fields: Mapping[str, Any], options: type[BackendOptions], backend: str) -> None:
    known = {field.name for field in dataclasses.fields(options)}
    unknown = sorted(name for name in fields if name not in known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))} besides the shared fields" if known else "it takes no others"
        raise InvalidOptionError(
            unknown[0],
            f"{unknown[0]} is not a field of this endpoint's backend ({backend}): {takes} "
            "(docs/CONTRACT.md); leave it out.",
        )


def take_int(fields: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(name, f"{name} must be a whole number from {low} to {high}, not {value!r}.")
    return value


def take_float(fields: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidOptionError(name, f"{name} must be a number from {low:g} to {high:g}, not {value!r}.")
    return float(value)


def take_choice(fields: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = fields.get(name)
    if value is not None and value not in choices:
        raise InvalidOptionError(name, f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def take_text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidOptionError(name, f"{name} must be a string, not {json_type(value)}.")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidOptionError(name, f"{name} is {len(value)} characters long; keep it under {MAX_TEXT_LENGTH}.")
    return value


def json_type(value: Any) -> str:
    """How a JSON client would name the type of `value`, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)

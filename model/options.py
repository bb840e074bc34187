"""Job fields, each declared once: its type, bounds, choices, default and a one-line description.

A declaration is an Option. The fields every backend shares are declared in handler/schema.py; a
backend's own fields are the fields of its options class, a frozen dataclass of BackendOptions
whose every field is an `option(...)`. The job schema hands a backend every field it does not
share; `BackendOptions.parse` checks them against the declarations for the job's mode and refuses
a field the backend does not take, so a field is never silently ignored. A rule a declaration
cannot state (a mode's own bound, say) is the backend's `check_mode`. Refusals are
InvalidOptionError: the field, and one sentence that names it and says the fix (the contract's
INVALID_INPUT). docs/CONTRACT.md's field tables are checked against these declarations
(tests/test_option_declarations.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

#: the most characters a text field (prompt, negative_prompt) takes
MAX_TEXT_LENGTH = 2000
# where a dataclass field of an options class keeps its Option
_OPTION_KEY = "option"
_KINDS = (str, int, float, bool)


class InvalidOptionError(Exception):
    """A job field this backend (or the job's mode) cannot honour.

    `field` is the job field; the message is one sentence that names it and says the fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Option:
    """One job field as the contract states it.

    `kind` is str, int, float or bool (the JSON value it takes). `default` is the value of an
    absent (or null) field; None leaves the choice to the code that reads it (for a backend's
    option: the model's own value). `low`/`high` bound a number, both inclusive; `choices` are
    the strings it takes; `max_length` bounds a string. `modes` are the generation modes in which
    it has meaning (empty: all of them): in another mode it is refused rather than ignored.
    """

    kind: type
    description: str
    default: Any = None
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    modes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise TypeError(f"an Option's kind is one of str, int, float, bool, not {self.kind!r}")
        if (self.low is None) != (self.high is None):
            raise TypeError("an Option bounds a number with both low and high, or with neither")
        if "\n" in self.description or not self.description:
            raise TypeError("an Option's description is one line")

    def take(self, fields: Mapping[str, Any], name: str) -> Any:
        """`fields[name]` checked against this declaration, or `default` when it is absent or null.

        Raises InvalidOptionError naming `name`.
        """
        value = fields.get(name)
        if value is None:
            return self.default
        if self.choices:
            if value not in self.choices:
                raise InvalidOptionError(name, f"{name} must be one of {', '.join(self.choices)}, not {value!r}.")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise InvalidOptionError(name, f"{name} must be true or false, not {value!r}.")
            return value
        if self.kind is int:
            return self._whole_number(name, value)
        if self.kind is float:
            return self._number(name, value)
        return self._text(name, value)

    def _whole_number(self, name: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not self._within(value):
            raise InvalidOptionError(
                name, f"{name} must be a whole number from {self.low} to {self.high}, not {value!r}."
            )
        return value

    def _number(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self._within(value):
            raise InvalidOptionError(
                name, f"{name} must be a number from {self.low:g} to {self.high:g}, not {value!r}."
            )
        return float(value)

    def _text(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidOptionError(name, f"{name} must be a string, not {json_type(value)}.")
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidOptionError(
                name, f"{name} is {len(value)} characters long; keep it under {self.max_length}."
            )
        return value

    def _within(self, value: float) -> bool:
        # NaN compares false both ways, so it is refused with the other values out of range
        return self.low is None or self.high is None or self.low <= value <= self.high


def option(
    kind: type,
    description: str,
    *,
    default: Any = None,
    low: int | float | None = None,
    high: int | float | None = None,
    choices: tuple[str, ...] = (),
    max_length: int | None = None,
    modes: tuple[str, ...] = (),
) -> Any:
    """A field of a BackendOptions dataclass, declared as an Option (its arguments)."""
    declared = Option(kind, description, default, low, high, choices, max_length, modes)
    return dataclasses.field(default=default, metadata={_OPTION_KEY: declared})


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Options of a backend that takes no fields of its own; a subclass declares each of its own."""

    #: per mode, why a field without meaning there is refused (the end of its sentence)
    mode_notes: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def declarations(cls) -> dict[str, Option]:
        """Each field's Option, in the order the class declares them."""
        declared = {}
        for field in dataclasses.fields(cls):
            if _OPTION_KEY not in field.metadata:
                raise TypeError(f"{cls.__name__}.{field.name} is not declared with model.options.option(...)")
            declared[field.name] = field.metadata[_OPTION_KEY]
        return declared

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's value type: how a form's text becomes the JSON value."""
        return {name: declared.kind for name, declared in cls.declarations().items()}

    @classmethod
    def parse(cls, fields: Mapping[str, Any], mode: str, backend: str) -> Self:
        """The options in `fields` (the job's fields the shared schema does not take) for `mode`.

        `backend` names the endpoint's backend in messages. Raises InvalidOptionError.
        """
        declared = cls.declarations()
        values = {name: field.take(fields, name) for name, field in declared.items()}
        reject_unknown(fields, cls, backend)
        for name, field in declared.items():
            if field.modes and mode not in field.modes and fields.get(name) is not None:
                note = cls.mode_notes.get(mode)
                raise InvalidOptionError(
                    name,
                    f"{name} has no meaning in mode {mode!r}{', ' + note if note else ''}; leave it out, "
                    f"or use mode {field.modes[0]!r}.",
                )
        options = cls(**values)
        options.check_mode(mode)
        return options

    def check_mode(self, mode: str) -> None:
        """Refuse, with InvalidOptionError, what `mode` cannot take beyond the declarations; nothing here."""


def reject_unknown(fields: Mapping[str, Any], options: type[BackendOptions], backend: str) -> None:
    known = options.declarations()
    unknown = sorted(name for name in fields if name not in known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))} besides the shared fields" if known else "it takes no others"
        raise InvalidOptionError(
            unknown[0],
            f"{unknown[0]} is not a field of this endpoint's backend ({backend}): {takes} "
            "(docs/CONTRACT.md); leave it out.",
        )


def json_type(value: Any) -> str:
    """How a JSON client would name the type of `value`, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)

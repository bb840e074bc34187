"""What a client sent (a field name, a value, a path, a header), as it may appear in a message or a log line.

A client's text is data, never layout. Every character that is not printable (a newline, a
carriage return, an ANSI escape, a Unicode line separator, a bidirectional override, a lone
surrogate, which no UTF-8 encoder writes) is shown as its Python escape (`\\n`, `\\x1b`,
`\\u2028`, `\\ud800`), and so is a backslash (`\\\\`), so that no client forges a log line,
recolours an operator's terminal or makes an answer unencodable; and what is shown is cut to
SHOWN_CHARACTERS, with an ellipsis and the whole length, so that a megabyte-long name makes no
megabyte-long answer. Every message that repeats a client's name or value goes through `shown`
(unquoted, for names in a sentence) or `shown_value` (quoted as repr quotes it, for values).
"""

from __future__ import annotations

from typing import Any

#: the most characters of a client's text that a message repeats
SHOWN_CHARACTERS = 80
ELLIPSIS = "…"


def shown(text: Any, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` escaped and cut to at most `limit` characters (then `…` and its length); anything
    but a string is shown as `shown_value` shows it."""
    if not isinstance(text, str):
        return shown_value(text, limit)
    pieces: list[str] = []
    used = 0
    # at most `limit` characters are looked at, whatever the text's length
    for index, char in enumerate(text[:limit]):
        piece = char if char.isprintable() and char != "\\" else repr(char)[1:-1]
        if used + len(piece) > limit:
            return "".join(pieces) + _cut_mark(text, index)
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + (_cut_mark(text, limit) if len(text) > limit else "")


def shown_value(value: Any, limit: int = SHOWN_CHARACTERS) -> str:
    """`value` as repr writes it (a string in quotes), escaped and cut as `shown` cuts.

    A list or an object is summarized by its type and length, never walked: a client's value
    can be nested far deeper than repr can follow.
    """
    if isinstance(value, str):
        return f"'{shown(value, limit)}'"
    if isinstance(value, (list, tuple, dict)):
        kind = "an object" if isinstance(value, dict) else "a list"
        return f"{kind} of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"a whole number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)  # a number, a boolean, None: printable already
    return text if len(text) <= limit else text[:limit] + _cut_mark(text, limit)


def _cut_mark(text: str, shown_characters: int) -> str:
    return f"{ELLIPSIS} ({len(text)} characters)" if shown_characters < len(text) else ""

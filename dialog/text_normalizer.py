"""Caller text clean-up before it reaches Rasa: spoken digit sequences become digit strings.

Whisper writes an order number read aloud in many ways ("four eight two one three",
"4, 8, 2, 1, 3", "4-8-2-1-3", "48,213", "4.8.2.1.3"). Rasa's order-number regex needs
"48213", so the pipeline passes every caller transcript through :func:`normalize_caller_text`.

Only runs of at least :data:`MIN_RUN_DIGITS` digits (or runs containing "double"/"triple")
are joined, so "one moment" or "I have two questions" stay as they are. "oh" counts as
zero only between other digits. Compound number words ("forty eight") are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_RUN_DIGITS = 3

DIGIT_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
ZERO_LETTERS = frozenset({"oh", "o"})
REPEATERS = {"double": 2, "triple": 3}

_TOKEN = re.compile(
    r"(?P<num>(?<!\w)\d+(?!\w))"
    r"|(?P<word>[A-Za-z]+(?:'[A-Za-z]+)?)"
    r"|(?P<sep>(?:[ \t,;\-\u2013]|\.(?=\s)|(?<=(?<!\d)\d)\.(?=\d(?!\d)))+)"
    r"|(?P<other>.)",
    re.DOTALL,
)
_FINAL_PUNCTUATION = re.compile(r"[.,!?]+\s*$")


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class _Unit:
    digits: str
    start: int
    end: int
    zero_letter: bool = False
    repeated: bool = False


def normalize_caller_text(text: str) -> str:
    """Join spoken digit sequences into digit strings; leave everything else unchanged.

    >>> normalize_caller_text("my order number is four eight two one three")
    'my order number is 48213'
    """
    if text.startswith("/"):
        return text  # an intent trigger from the app, e.g. /inform{"order_number":"48213"}
    tokens = [
        _Token(match.lastgroup or "other", match.group(), match.start(), match.end())
        for match in _TOKEN.finditer(text)
    ]
    pieces: list[str] = []
    copied_up_to = 0
    index = 0
    while index < len(tokens):
        units, next_index = _read_run(tokens, index)
        units = _trim_zero_letters(units)
        if units and _is_number(units):
            end = units[-1].end
            trailing = _FINAL_PUNCTUATION.match(text, end)
            pieces.append(text[copied_up_to : units[0].start])
            pieces.append("".join(unit.digits for unit in units))
            copied_up_to = trailing.end() if trailing else end
        index = max(next_index, index + 1)
    pieces.append(text[copied_up_to:])
    return "".join(pieces)


def _read_unit(tokens: list[_Token], index: int) -> tuple[_Unit | None, int]:
    """The digit unit starting at ``tokens[index]`` and the index after it."""
    token = tokens[index]
    if token.kind == "num":
        return _Unit(token.text, token.start, token.end), index + 1
    if token.kind != "word":
        return None, index
    word = token.text.lower()
    if word in DIGIT_WORDS:
        return _Unit(DIGIT_WORDS[word], token.start, token.end), index + 1
    if word in ZERO_LETTERS:
        return _Unit("0", token.start, token.end, zero_letter=True), index + 1
    if word in REPEATERS and index + 2 < len(tokens) and tokens[index + 1].text.isspace():
        repeated, after = _read_unit(tokens, index + 2)
        if repeated is not None and len(repeated.digits) == 1 and not repeated.zero_letter:
            digits = repeated.digits * REPEATERS[word]
            return _Unit(digits, token.start, repeated.end, repeated=True), after
    return None, index


def _read_run(tokens: list[_Token], index: int) -> tuple[list[_Unit], int]:
    """Digit units separated only by spaces, commas or dashes, starting at ``index``."""
    units: list[_Unit] = []
    unit, index = _read_unit(tokens, index)
    while unit is not None:
        units.append(unit)
        if index + 1 >= len(tokens) or tokens[index].kind != "sep":
            break
        unit, after = _read_unit(tokens, index + 1)
        if unit is not None:
            index = after
    return units, index


def _trim_zero_letters(units: list[_Unit]) -> list[_Unit]:
    """ "oh" is a zero only between other digits ("oh, four eight..." is an interjection)."""
    start, end = 0, len(units)
    while start < end and units[start].zero_letter:
        start += 1
    while end > start and units[end - 1].zero_letter:
        end -= 1
    return units[start:end]


def _is_number(units: list[_Unit]) -> bool:
    digit_count = sum(len(unit.digits) for unit in units)
    return digit_count >= MIN_RUN_DIGITS or any(unit.repeated for unit in units)

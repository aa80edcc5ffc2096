"""Spoken digit sequences become digit strings; everything else is left alone."""

from __future__ import annotations

import pytest

from dialog.text_normalizer import normalize_caller_text


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("four eight two one three", "48213"),
        ("Four, eight, two, one, three.", "48213"),
        ("4, 8, 2, 1, 3", "48213"),
        ("4-8-2-1-3", "48213"),
        ("48,213", "48213"),
        ("4 8 2 1 3.", "48213"),
        ("4. 8. 2. 1. 3.", "48213"),
        ("4.8.2.1.3", "48213"),  # seen from Whisper on an 8 kHz call
        ("4 8 two 1 three", "48213"),
        ("48213", "48213"),
    ],
)
def test_a_spoken_order_number_becomes_one_digit_string(spoken: str, expected: str) -> None:
    assert normalize_caller_text(spoken) == expected


def test_digits_inside_a_sentence_are_joined_and_the_words_kept() -> None:
    assert (
        normalize_caller_text("my order number is four eight two one three")
        == "my order number is 48213"
    )
    assert normalize_caller_text("it's four eight two, one three please") == "it's 48213 please"


def test_oh_is_zero_between_digits() -> None:
    assert normalize_caller_text("five one oh oh seven") == "51007"
    assert normalize_caller_text("five one O O seven") == "51007"


def test_oh_at_the_edges_of_a_run_is_an_interjection() -> None:
    assert normalize_caller_text("oh, four eight two one three") == "oh, 48213"
    assert normalize_caller_text("oh okay") == "oh okay"


def test_double_and_triple_repeat_the_next_digit() -> None:
    assert normalize_caller_text("double four") == "44"
    assert normalize_caller_text("four double four one three") == "44413"
    assert normalize_caller_text("triple five one two") == "55512"


@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to someone",
        "one moment",
        "I have two questions",
        "give me one second",
        "double check my order",
        "the 24th of May",
        "in 2024, I ordered two lamps",
        "it costs 12.50",
        "it costs 4.50",
        "version 2.5",
        "",
    ],
)
def test_other_text_is_left_unchanged(text: str) -> None:
    assert normalize_caller_text(text) == text


def test_intent_triggers_from_the_app_are_left_unchanged() -> None:
    trigger = '/inform{"order_number":"48213"}'
    assert normalize_caller_text(trigger) == trigger
    assert normalize_caller_text("/call_start") == "/call_start"

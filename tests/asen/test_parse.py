"""Numbers parsed one way (ASCII digits only), bounded reprs and the depth/size check on
loaded structures: each answers at once, whatever the input expands to."""

from __future__ import annotations

import time

import pytest

from asen import AsenError
from asen.parse import MAX_DIGITS, check_structure, short_repr, whole_number


def _shared(levels: int) -> list:
    """A list whose full repr has 2**levels leaves, built in `levels` steps."""
    value: list = []
    for _ in range(levels):
        value = [value, value]
    return value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("9" * MAX_DIGITS, int("9" * MAX_DIGITS)),
        ("²", None),  # isdigit() is true, int() raises
        ("³", None),
        ("٣", None),  # an Arabic-Indic digit: int() would take it, asen does not
        ("1²", None),
        ("", None),
        ("-1", None),
        (" 1", None),
        ("1.5", None),
        ("9" * (MAX_DIGITS + 1), None),
        ("9" * 5000, None),  # past int()'s own digit limit: no ValueError
    ],
)
def test_whole_number_takes_ascii_digits_only(text: str, expected: int | None) -> None:
    assert whole_number(text) == expected


def test_short_repr_of_a_shared_reference_structure_is_short_and_quick() -> None:
    began = time.monotonic()
    text = short_repr(_shared(100))  # repr() would never finish
    assert time.monotonic() - began < 1
    assert len(text) < 200 and "..." in text
    assert short_repr("x" * 10_000).count("x") < 100


@pytest.mark.parametrize(
    ("value", "depth", "words"),
    [
        (_shared(60), 100, "too large"),  # 2**60 leaves through shared references
        ([[[[[[[[[[1]]]]]]]]]], 8, "nested more than 8 levels"),
        ({"a": list(range(50))}, 100, "too large"),
    ],
)
def test_check_structure_refuses_deep_or_large_data_quickly(value, depth: int, words) -> None:
    began = time.monotonic()
    with pytest.raises(AsenError, match=words) as info:
        check_structure(value, "somewhere", max_depth=depth, max_nodes=40)
    assert str(info.value).startswith("somewhere: ")
    assert time.monotonic() - began < 1


def test_check_structure_accepts_a_config() -> None:
    check_structure({"train": {"lr": 1e-4, "names": ["a", "b"]}, "model": {}}, "config")

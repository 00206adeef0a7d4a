"""Sizes and durations as people write them in models.yaml, and as the logs print them."""

from __future__ import annotations

import pytest

from registry.units import (
    format_bytes,
    format_duration,
    parse_duration,
    parse_size,
    total_memory,
)

SIZE_EXAMPLE = "expected a size such as 512MiB, 2GiB, 10MB or 60%"
DURATION_EXAMPLE = "expected a duration such as 30s, 10m or 1h"


def error_of(parse: object, value: object) -> str:
    assert callable(parse)
    with pytest.raises(ValueError) as info:
        parse(value)
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (123, 123),
        (1.9, 1),
        ("0", 0),
        ("100", 100),
        ("100b", 100),
        ("512MiB", 512 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("4KiB", 4096),
        ("10MB", 10_000_000),
        ("1.5GB", 1_500_000_000),
        ("3kB", 3000),
        ("1TB", 10**12),
        ("64k", 64 * 1024),
        ("256M", 256 * 1024**2),
        ("1g", 1024**3),
        ("  1.5 GiB  ", int(1.5 * 1024**3)),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("percent", [1, 60, 100, 12.5])
def test_parse_size_percent_is_of_physical_memory(percent: float) -> None:
    total = total_memory()
    assert total > 0
    assert parse_size(f"{percent}%") == int(total * percent / 100)


def test_parse_size_percent_allows_spaces() -> None:
    assert parse_size(" 60 % ") == parse_size("60%")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12XB", "'12XB' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("lots", "'lots' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("", "'' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("MiB", "'MiB' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("1e9", "'1e9' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("-5MiB", "'-5MiB' is not a size; write e.g. 512MiB, 2GiB, 10MB or 60%"),
        ("abc%", "'abc%' is not a percentage such as 60%"),
        ("0%", "'0%': a percentage of memory must be in (0, 100]"),
        ("101%", "'101%': a percentage of memory must be in (0, 100]"),
        ("-5%", "'-5%': a percentage of memory must be in (0, 100]"),
        (-1, "expected a finite, non-negative size such as 512MiB, 2GiB, 10MB or 60%"),
        (-0.5, "expected a finite, non-negative size such as 512MiB, 2GiB, 10MB or 60%"),
        (True, SIZE_EXAMPLE),
        (False, SIZE_EXAMPLE),
        (None, SIZE_EXAMPLE),
        ([512], SIZE_EXAMPLE),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    assert error_of(parse_size, value) == message


def test_parse_size_rejects_infinity_with_value_error() -> None:
    with pytest.raises(ValueError):
        parse_size(float("inf"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2d", 172_800.0),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("2.5", 2.5),
        (" 30S ", 30.0),
        (0, 0.0),
        (45, 45.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration(value: object, expected: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["10 minutes", "abc", "", "30x", "-5s", "1h 30m", "m", "1m30", "30sec"]
)
def test_parse_duration_rejects_bad_strings(value: str) -> None:
    assert error_of(parse_duration, value) == (
        f"{value!r} is not a duration; write e.g. 500ms, 30s, 10m or 1h"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "expected a finite, non-negative duration such as 30s, 10m or 1h"),
        (-0.25, "expected a finite, non-negative duration such as 30s, 10m or 1h"),
        (True, DURATION_EXAMPLE),
        (None, DURATION_EXAMPLE),
        ({"s": 1}, DURATION_EXAMPLE),
    ],
)
def test_parse_duration_rejects_other_values(value: object, message: str) -> None:
    assert error_of(parse_duration, value) == message


def test_parse_duration_rejects_nan() -> None:
    with pytest.raises(ValueError):
        parse_duration(float("nan"))


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (21_900, "21.9 kB"),
        (254_100_000, "254.1 MB"),
        (2 * 10**9, "2.0 GB"),
        (5 * 10**12, "5000.0 GB"),
        (1536.0, "1.5 kB"),
    ],
)
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 ms"),
        (0.041, "41 ms"),
        (2.3, "2.3 s"),
        (59.9, "59.9 s"),
        (60, "1m"),
        (180, "3m"),
        (3599, "59m"),
        (3600, "1h00m"),
        (3900, "1h05m"),
        (90_000, "25h00m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("format_", "value", "text"),
    [
        (format_bytes, 999_999, "1.0 MB"),
        (format_duration, 0.9996, "1.0 s"),
        (format_duration, 59.96, "1m"),
    ],
)
def test_formats_round_up_across_a_unit_boundary(format_: object, value: float, text: str) -> None:
    assert callable(format_)
    assert format_(value) == text

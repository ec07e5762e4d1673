"""planner.units: the one parser and formatter of sizes, rates and token counts."""

import pytest

from planner.errors import KvplanError
from planner.units import escape_name, format_bytes, format_seconds, parse_bytes, parse_gbps, parse_tokens


@pytest.mark.parametrize("text,expected", [("24GB", 24 * 10**9), ("24", 24 * 10**9), ("24GiB", 24 * 2**30),
                                           ("512MB", 512 * 10**6), ("1.5TB", 1_500_000_000_000), ("0", 0)])
def test_sizes_are_decimal_unless_binary_is_spelled_out(text, expected):
    assert parse_bytes(text, "--gpu-mem") == expected


@pytest.mark.parametrize("text", ["", "GB", "24XB", "-1GB", "1e30", "nan", "inf GB", "2 4GB"])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(KvplanError, match="--gpu-mem"):
        parse_bytes(text, "--gpu-mem")


@pytest.mark.parametrize("text,expected", [("25", 25.0), ("25GB/s", 25.0), ("800MB/s", 0.8), ("1.2TB/s", 1200.0)])
def test_rates_in_gb_per_s(text, expected):
    assert parse_gbps(text, "--disk-read") == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0", "-3", "1e9", "fast", "3 parsecs"])
def test_bad_rates_refused(text):
    with pytest.raises(KvplanError, match="--disk-read"):
        parse_gbps(text, "--disk-read")


@pytest.mark.parametrize("text,expected", [("4096", 4096), ("4k", 4096), ("1m", 1 << 20), ("1.5k", 1536)])
def test_token_counts_use_1024(text, expected):
    assert parse_tokens(text, "--seqs") == expected


@pytest.mark.parametrize("text", ["1e23", "0", "1.3", "4q", "", "nan"])
def test_bad_token_counts_refused(text):
    with pytest.raises(KvplanError, match="--seqs"):
        parse_tokens(text, "--seqs")


@pytest.mark.parametrize("seconds,expected", [(3360.0, "56 min"), (3.36, "3.36 s"), (0.0372, "37.2 ms"),
                                              (8.4e-5, "84 µs"), (None, "-"), (float("nan"), "-")])
def test_seconds_read_naturally(seconds, expected):
    assert format_seconds(seconds) == expected


def test_bytes_print_in_the_units_they_parse_in():
    assert format_bytes(parse_bytes("12.9GB", "x")) == "12.9 GB"
    assert format_bytes(512e6) == "512 MB"


def test_control_characters_are_escaped():
    assert escape_name("llama\nError: fake") == "llama\\nError: fake"
    assert "\n" not in escape_name("a\r\n\x1b[31m")

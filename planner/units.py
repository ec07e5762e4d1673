"""Units, written once: every size, rate and token count a user types is parsed here, and every
number a person reads (console, Markdown, HTML) is formatted here.

One system for memory and rates, in and out: SI decimal units (GB = 10^9 bytes, GB/s = 10^9 bytes
per second, as GPU and drive datasheets state them); binary units are accepted when spelled out
(GiB = 2^30). Token counts are the exception people expect: "8k" tokens of context is 8,192.
"""

from __future__ import annotations

import math
import re

from planner.errors import KvplanError

SIZE_HELP = "sizes in GB = 10^9 bytes (24GB, 512MB, 1.5TB; binary spelled out: 24GiB; a bare number is GB)"
RATE_HELP = "GB/s = 10^9 bytes per second (e.g. 25, 25GB/s, 800MB/s)"

_BYTE_UNITS = {
    "": 1e9, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}
_RATE_UNITS = {"": 1e9, "gb/s": 1e9, "g": 1e9, "gb": 1e9, "mb/s": 1e6, "mb": 1e6, "m": 1e6, "tb/s": 1e12,
               "tb": 1e12, "gib/s": 2**30, "mib/s": 2**20}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z/]*)\s*$")
_TOKEN_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
MAX_BYTES = 1e16  # 10 PB: anything larger is a typo
MAX_GBPS = 1e5  # 100 TB/s: faster than any memory system built


def _split(text: object, option: str, example: str) -> tuple[float, str]:
    m = _NUMBER_UNIT.match(str(text)) if isinstance(text, (str, int, float)) and not isinstance(text, bool) else None
    if not m:
        raise KvplanError(f"{option} must be {example}, got {text!r}")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise KvplanError(f"{option} must be a finite number, got {text!r}")
    return value, m.group(2).lower()


def parse_bytes(text: str | None, option: str) -> int | None:
    """'24GB' / '24G' / '24' (10^9 each), '24GiB' (2^30), '512MB' -> bytes; None stays None."""
    if text is None:
        return None
    value, unit = _split(text, option, "a size like 24GB, 24GiB or 512MB")
    if unit not in _BYTE_UNITS:
        raise KvplanError(f"{option}: unknown unit {unit!r} in {text!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    nbytes = value * _BYTE_UNITS[unit]
    if nbytes > MAX_BYTES:
        raise KvplanError(f"{option} {text!r} is absurdly large (over {MAX_BYTES / 1e15:.0f} PB)")
    return int(nbytes)


def parse_gbps(text: str | None, option: str) -> float | None:
    """A transfer rate in GB/s: '25', '25GB/s', '800MB/s' -> 25.0, 25.0, 0.8; must be > 0."""
    if text is None:
        return None
    value, unit = _split(text, option, "a rate like 25GB/s or 800MB/s")
    if unit not in _RATE_UNITS:
        raise KvplanError(f"{option}: unknown unit {unit!r} in {text!r} (use GB/s or MB/s)")
    gbps = value * _RATE_UNITS[unit] / 1e9
    if not 0 < gbps <= MAX_GBPS:
        raise KvplanError(f"{option} must be above 0 and at most {MAX_GBPS:,.0f} GB/s, got {text!r}")
    return gbps


def parse_positive(text: str | None, option: str, upper: float) -> float | None:
    """A plain positive number up to `upper` (TFLOP/s, cores, ...)."""
    if text is None:
        return None
    value, unit = _split(text, option, "a positive number")
    if unit or not 0 < value <= upper:
        raise KvplanError(f"{option} must be a number above 0 and at most {upper:g}, got {text!r}")
    return value


def parse_tokens(text: str, option: str, upper: int = 10_000_000) -> int:
    """A token count: '4096', '4k' (4,096), '1m' (1,048,576); whole and positive, at most `upper`."""
    value, unit = _split(text, option, "a whole number of tokens like 4096 or 4k")
    if unit not in _TOKEN_UNITS:
        raise KvplanError(f"{option}: '{text}' is not a token count (suffixes k = 1024, m = 1024*1024)")
    n = value * _TOKEN_UNITS[unit]
    if n != int(n) or not 1 <= n <= upper:
        raise KvplanError(f"{option}: '{text}' must be a whole number of tokens in [1, {upper:,}]")
    return int(n)


def format_seconds(seconds: float | None) -> str:
    """One style for times everywhere: '0.84 ms', '37.2 ms', '3.36 s', '56.0 min', '-' when unknown."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120.0:
        return f"{seconds:.3g} s"
    if seconds < 7200.0:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def format_bytes(nbytes: float | None) -> str:
    """Decimal units, as parsed: '12.9 GB', '512 MB', '3.1 KB'."""
    if nbytes is None or not math.isfinite(nbytes):
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def format_gbps(gbps: float | None) -> str:
    if gbps is None or not math.isfinite(gbps):
        return "-"
    return f"{gbps:.3g} GB/s"


def escape_name(text: object) -> str:
    """A user-supplied name made safe for a one-line message: control characters escaped."""
    s = str(text)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)

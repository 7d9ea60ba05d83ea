"""Sizes: parse what people type ("10GiB", "10G", "512Mi", "1000") and print bytes for people.

Binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei with or without a trailing B) are powers
of 1024; decimal ones (K, M, G, T, P, E with or without B, k accepted) are powers
of 1000; a plain number is bytes. Pure: no OS imports.
"""

from __future__ import annotations

import re
from typing import Union

from .errors import InvalidArgument

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

# Largest size we accept: what fits an unsigned 64-bit byte count (CSI's int64 and
# the kernel's u64 sizes agree well below it).
MAX_SIZE = 2**63 - 1

_BINARY = {"": 1, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4, "pi": 1024**5, "ei": 1024**6}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}

_SIZE_RE = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*$")

_HINT = 'write a whole number of bytes or a number with a unit, e.g. "512Mi", "10GiB", "10G", "1000"'


def _multiplier(unit: str) -> int:
    u = unit.lower()
    if u == "" or u == "b":
        return 1
    if u.endswith("b"):
        u = u[:-1]
    if u in _BINARY:
        return _BINARY[u]
    if u in _DECIMAL:
        return _DECIMAL[u]
    raise KeyError(unit)


def parse_size(value: Union[str, int]) -> int:
    """Bytes in ``value``: an int, or a string such as "10GiB", "10G", "512Mi", "1.5Gi", "1000".

    Fractions are allowed with a unit and rounded down to whole bytes. Raises
    InvalidArgument for garbage, negative numbers, and sizes above 2**63-1.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"size {value!r} is not a size", _HINT)
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"size {value} is negative", "sizes are zero or more bytes")
        if value > MAX_SIZE:
            raise InvalidArgument(f"size {value} is too large", f"the largest size is {MAX_SIZE} bytes")
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"size {value!r} is not a size", _HINT)
    text = value.strip()
    if text.startswith("-"):
        raise InvalidArgument(f"size {value!r} is negative", "sizes are zero or more bytes")
    m = _SIZE_RE.match(text)
    if not m:
        raise InvalidArgument(f"size {value!r} is not a size", _HINT)
    num, unit = m.group("num"), m.group("unit")
    try:
        mult = _multiplier(unit)
    except KeyError:
        raise InvalidArgument(
            f"size {value!r} has an unknown unit {unit!r}",
            "use Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024, optionally followed by B) "
            "or K, M, G, T, P, E (powers of 1000)",
        ) from None
    if "." in num:
        if mult == 1:
            raise InvalidArgument(f"size {value!r} is a fraction of a byte", "write whole bytes or use a unit")
        whole, frac = num.split(".", 1)
        # Exact rational arithmetic: no float rounding surprises on large sizes.
        result = (int(whole + frac) * mult) // (10 ** len(frac))  # type: int
    else:
        result = int(num) * mult
    if result > MAX_SIZE:
        raise InvalidArgument(f"size {value!r} is too large", f"the largest size is {MAX_SIZE} bytes (8 EiB)")
    return result


_FORMAT_UNITS = (
    ("EiB", 1024**6),
    ("PiB", 1024**5),
    ("TiB", 1024**4),
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
)


def format_size(size: int) -> str:
    """Human binary size: 0 -> "0 B", 1536 -> "1.5 KiB", 10*2**30 -> "10 GiB" (one decimal, trailing .0 dropped)."""
    if size < 0:
        return "-" + format_size(-size)
    for i, (name, mult) in enumerate(_FORMAT_UNITS):
        if size >= mult:
            text = f"{size / mult:.1f}"
            if text == "1024.0" and i > 0:  # 1023.96 GiB rounds up to the next unit, not to "1024 GiB"
                name, text = _FORMAT_UNITS[i - 1][0], "1.0"
            if text.endswith(".0"):
                text = text[:-2]
            return f"{text} {name}"
    return f"{size} B"

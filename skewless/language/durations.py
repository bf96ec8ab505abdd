"""Parse human durations (`"7d"`, `"1h"`, `"30m"`) used for TTLs and windows."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")

# `"lifetime"` as a window: every event up to the query time. A finite span (about 274
# years) rather than a sentinel, so window arithmetic stays plain timestamp arithmetic.
LIFETIME = timedelta(days=100_000)


def parse_duration(value: str | timedelta | None, *, what: str) -> timedelta | None:
    """Return a positive timedelta, or None; `what` names the field in error messages."""
    from skewless.errors import DefinitionError

    if value is None:
        return None
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise DefinitionError(f"{what}: duration must be positive, got {value}")
        return value
    if isinstance(value, str):
        if value.strip() == "lifetime" and what.endswith("window"):
            return LIFETIME
        match = _PATTERN.match(value)
        if match:
            amount, unit = int(match.group(1)), match.group(2)
            if amount > 0:
                return timedelta(**{_UNITS[unit]: amount})
    raise DefinitionError(
        f"{what}: expected a positive duration such as '7d', '12h', '30m' or a timedelta, got {value!r}"
    )


def format_duration(value: timedelta | None) -> str | None:
    """The shortest exact `<n><unit>` spelling, for metadata and the registry."""
    if value is None:
        return None
    if value == LIFETIME:
        return "lifetime"
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

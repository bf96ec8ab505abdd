"""Which day partitions a read needs, and which of them were never materialized.

Without this, a training set over label days whose partitions were never materialized is
silently built from older values (the point-in-time join finds the last *stored* row), and an
online write for such days writes nothing. Both readers ask `missing_days` first.

The rule: a day partition is **required** when

1. it lies in the lookback of some label day `L`: `[L - lookback, L]`, where the lookback is
   the group's TTL (row groups) or its longest window (window groups), rounded up to whole
   days; with no TTL, or a lifetime window, every day up to `L` can hold the latest value;
2. it is on or after the source's `start_date` (no partition exists before it), on or
   after the caller's `since` (a caller that knows older days cannot matter), and not past
   the group's `retention=` (those days are deleted on purpose, and never rewritten);
3. and the source has at least one event on that UTC day (if the source cannot be read,
   instead: the day lies between the group's first and last stored partitions).

A required day with no stored partition (nor stream piece) is **missing**. Rule 3 is what
keeps days before a source's first event, after its last event, or gaps in it from counting:
their partitions would be empty, so not having them changes no value. The source is read
(only its event-time column, only over the span of days not stored) only when some needed
day is not stored, so a fully materialized store pays nothing beyond listing folders.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

import polars as pl

from skewless.errors import MissingPartitionsError, MissingPartitionsWarning, SkewlessError
from skewless.language.durations import LIFETIME
from skewless.language.feature_group import FeatureGroup


def lookback(group: FeatureGroup) -> timedelta | None:
    """How far before a label time a stored row can still give its value (None: unbounded)."""
    span = group.max_window if group.is_windowed else group.time_to_live
    return None if span is None or span >= LIFETIME else span


def required_days(group: FeatureGroup, label_days: Iterable[date], since: date | None = None) -> set[date]:
    """Rules 1 and 2 of the module docstring: the days whose partitions can hold a value."""
    label_days = set(label_days)
    if not label_days:
        return set()
    first = max(group.source.start, since) if since is not None else group.source.start
    span = lookback(group)
    if span is None:
        last = max(label_days)
        return {first + timedelta(days=k) for k in range((last - first).days + 1)} if last >= first else set()
    whole_days = math.ceil(span / timedelta(days=1))
    wanted = {d - timedelta(days=k) for d in label_days for k in range(whole_days + 1)}
    return {d for d in wanted if d >= first}


def source_days(group: FeatureGroup, start: date, end: date) -> set[date] | None:
    """UTC days in `[start, end]` on which the group's source has events; None if unreadable."""
    ts = group.source.timestamp_field
    lo = datetime.combine(start, time(), tzinfo=UTC)
    hi = datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC)
    try:
        found = group.source.scan(lo, hi).select(pl.col(ts).dt.date().unique()).collect()
    except (SkewlessError, pl.exceptions.PolarsError, OSError):
        return None
    return set(found.to_series().to_list())


class StoredDays(Protocol):
    """The offline store as coverage sees it (compute sits below the stores)."""

    def partitions(self, group: FeatureGroup) -> list[date]:
        """The days with a stored partition or piece, oldest first."""
        ...


def missing_days(offline: StoredDays, group: FeatureGroup, required: set[date]) -> tuple[list[date], bool]:
    """Required days (rule 3 applied) that have no stored partition or piece, oldest first,
    and whether the source could be read to apply rule 3.

    A source that cannot be read here (a training machine with a copy of the offline store
    but not the raw events, a moved folder) cannot tell which days have events; then only
    gaps between the first and the last stored partition count, which are missing whatever
    the source holds."""
    retained = group.first_retained_day(datetime.now(UTC))
    if retained is not None:  # rule 2's retention: deleted on purpose, never required
        required = {d for d in required if d >= retained}
    stored = offline.partitions(group)
    unstored = required - set(stored)
    if not unstored:
        return [], True
    with_events = source_days(group, min(unstored), max(unstored))
    if with_events is None:
        return sorted(d for d in unstored if stored and stored[0] < d < stored[-1]), False
    return sorted(unstored & with_events), True


def day_ranges(days: list[date]) -> str:
    """`2026-03-02..2026-03-04, 2026-03-07`: consecutive days compressed into ranges."""
    parts: list[str] = []
    days = sorted(days)
    i = 0
    while i < len(days):
        j = i
        while j + 1 < len(days) and days[j + 1] - days[j] == timedelta(days=1):
            j += 1
        parts.append(days[i].isoformat() if i == j else f"{days[i].isoformat()}..{days[j].isoformat()}")
        i = j + 1
    return ", ".join(parts)


def missing_message(
    group: FeatureGroup, days: list[date], asset: str, needed_by: str, remedy: str, source_read: bool = True
) -> str:
    """The text of both the error and the warning: group, days (as ranges), what to do."""
    plural = "s" if len(days) != 1 else ""
    them = "them" if plural else "it"
    why = (
        f"though source '{group.source.name}' has events on {them}"
        if source_read
        else f"between stored partitions (source '{group.source.name}' could not be read to check)"
    )
    return (
        f"feature group '{group.ref}': {len(days)} day partition{plural} {needed_by} "
        f"{'are' if plural else 'is'} not materialized, {why}: {day_ranges(days)}. Materialize the asset "
        f"{asset} for {'those days' if plural else 'that day'}, or {remedy}"
    )


def enforce(message: str, allow_missing: bool, stacklevel: int = 3) -> None:
    """Raise `MissingPartitionsError`, or warn with the same text when the caller allowed it."""
    if not allow_missing:
        raise MissingPartitionsError(message)
    warnings.warn(message, MissingPartitionsWarning, stacklevel=stacklevel)

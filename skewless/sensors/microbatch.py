"""The micro-batch: apply a source's new stream entries to both stores, idempotently.

Runs the same group definitions as the batch path (`transform_rows`) on the rows pushed since
the last batch; updates the online state (window events, latest values through the write
guard) and adds one immutable piece per day to the offline store (never rewriting a day's
partition, so concurrent batches cannot lose each other's rows, and the cost is the batch's,
not the days'). A crash half-way leaves at worst some updates applied; re-running the same
range applies them again with no effect (events are unique by id, the guard keeps the newer
value, the pieces are named by the range so a re-run rewrites the same files, and readers
deduplicate), and only then is the range marked applied. The sensor requests ranges from
that marker, so a range whose run died is requested again (sensors/streams.py).

`SKEWLESS_CRASH_AT=<point>` is a test hook: the process SIGKILLs itself at that point
(`after_read`, `after_pushed_file`, `after_online`, `mid_offline`, `before_mark`) so the
kill -9 drill (tests/test_stream_faults.py) can crash a batch exactly there.
"""

from __future__ import annotations

import hashlib
import os
import signal
from datetime import UTC, datetime

import polars as pl

from skewless.checks.schema import declared_violations
from skewless.compute.rows import latest_per_entity, transform_rows
from skewless.errors import SourceDataError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.source import FileSource, ingested_values
from skewless.repository import FeatureRepository
from skewless.storage import streams
from skewless.storage.offline import OfflineStore, atomic_write, dedupe_and_sort
from skewless.storage.offline_layout import pushed_file_name
from skewless.storage.online import OnlineStore

_FAR = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


CRASH_POINTS = ("after_read", "after_pushed_file", "after_online", "mid_offline", "before_mark")


def _crash_point(name: str) -> None:
    """Test hook: `SKEWLESS_CRASH_AT=<name>` kills this process here, like `kill -9` would."""
    if os.environ.get("SKEWLESS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _padded(entry: str) -> str:
    """A stream id as a fixed-width name part, so piece names sort in stream order."""
    ms, _, seq = ("0-0" if entry in ("", "0") else entry).partition("-")
    return f"{int(ms):015d}-{int(seq or 0):06d}"


def range_piece(after: str, until: str) -> str:
    """The piece name of a stream range: a retried range rewrites the same pieces."""
    return f"s{_padded(after)}_{_padded(until)}"


def rows_piece(rows: pl.DataFrame) -> str:
    """The piece name of rows with no stream range (landed files): derived from the rows."""
    digest = hashlib.sha1(rows.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:20]
    return f"r{rows.height}-{digest}"


def append_offline(offline: OfflineStore, group: FeatureGroup, rows: pl.DataFrame, piece: str) -> int:
    """Store rows as one new piece per day they fall on (atomic, immutable); returns days.

    No day partition is read or rewritten: the cost is the batch's size, and two batches
    running at once write different files, so neither can drop the other's rows. Each piece
    is itself deduplicated and sorted like a partition; readers merge it with the day.
    """
    days = 0
    for (day,), part in rows.group_by(pl.col(EVENT_TIMESTAMP).dt.date(), maintain_order=True):
        frame = dedupe_and_sort(group, part.select(list(group.offline_schema())).lazy()).collect()
        offline.write_piece(group, day, piece, frame)
        days += 1
        _crash_point("mid_offline")
    return days


def without_erased_rows(
    offline: OfflineStore, groups: list[FeatureGroup], rows: pl.DataFrame
) -> pl.DataFrame:
    """Source rows without those of erased entities of the groups' entities (where the rows
    carry the entity's key columns), before they are kept with the source's files."""
    seen: set[str] = set()
    for group in groups:
        entity = group.entity
        if entity.name in seen:
            continue
        seen.add(entity.name)
        erased = offline.erased(entity.name, dict(entity.key_schema))
        if erased is not None:
            rows = streams.without_keys(rows, erased)
    return rows


def apply_stream_batch(
    repo: FeatureRepository,
    offline: OfflineStore,
    online: OnlineStore,
    source: str,
    after: str,
    until: str,
    at: datetime | None = None,
) -> dict[str, int]:
    """Apply the entries `after < id <= until` of a source's stream to both stores.

    `at` replaces "now" for which events are too old to keep online (replays and tests).
    """
    rows, entries = streams.read(online, source, after, until)
    _crash_point("after_read")
    groups = [g for g in repo.groups if g.source.name == source]
    if rows is not None:
        rows = without_erased_rows(offline, groups, rows)
    # no dedupe here: identity is per group (its entity keys + event id) and of two versions
    # the later one wins, which each group's `event_rows` decides from the arrival order
    if rows is not None and groups and isinstance(groups[0].source, FileSource):
        # keep the pushed rows with the source's data, so a day re-materialized from the
        # source still has them (the file name is the range: a re-run rewrites the same file)
        target = groups[0].source.pushed_dir / pushed_file_name(after, until)
        # must be durable before any piece: compaction deletes pieces whose rows the source
        # already holds, and these rows are how it holds them (the one atomic write, fsynced)
        atomic_write(target, rows)
        _crash_point("after_pushed_file")
    if rows is not None:
        # the arrival order the batch path reads from the pushed file: same rows, same values
        rows = rows.with_columns(ingested_values(until, rows.height))
    applied = _apply(repo, offline, online, source, rows, at, range_piece(after, until))
    stats = {"entries": entries, **applied}
    _crash_point("before_mark")
    streams.mark_applied(online, source, until)
    return stats


def apply_rows(
    repo: FeatureRepository,
    offline: OfflineStore,
    online: OnlineStore,
    source: str,
    rows: pl.DataFrame | None,
    at: datetime | None = None,
) -> dict[str, int]:
    """Apply new source rows to both stores with every group's definition (idempotent)."""
    return _apply(repo, offline, online, source, rows, at, None if rows is None else rows_piece(rows))


def _apply(
    repo: FeatureRepository,
    offline: OfflineStore,
    online: OnlineStore,
    source: str,
    rows: pl.DataFrame | None,
    at: datetime | None,
    piece: str | None,
) -> dict[str, int]:
    """`apply_rows` with the name of the offline pieces (the stream range, or the rows')."""
    stats = {"rows": 0 if rows is None else rows.height}
    if rows is not None:
        groups = [g for g in repo.groups if g.source.name == source]
        checked = groups[0].source.checked(rows.lazy()) if groups else rows.lazy()
        # erased entities (`FeatureStore.erase`) stay erased in both stores, whatever the
        # stream still held when the batch read it
        results = [
            (group, offline.without_erased(group, transform_rows(group, checked, *_FAR))) for group in groups
        ]
        for group, result in results:
            # landed files are not checked at any door: the declared constraints hold here too
            violation = declared_violations(group, result)
            if violation is not None:
                raise SourceDataError(f"rows of source '{source}' break {violation}")
        for group, result in results:
            if group.is_windowed:
                stats[f"{group.ref} events"] = online.write_events(group, result, now=at)
            else:
                latest = latest_per_entity(group, result)
                stats[f"{group.ref} keys"] = online.write_latest(group, latest)["written"]
                if group.index is not None:
                    from skewless.vectors import updates

                    updates.append(online, group, latest)
            _crash_point("after_online")
            name = piece or rows_piece(rows)
            stats[f"{group.ref} days"] = append_offline(offline, group, result, name)
    return stats

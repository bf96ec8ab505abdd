"""The micro-batch: apply a source's new stream entries to both stores, idempotently.

Runs the same group definitions as the batch path (`transform_rows`) on the rows pushed since
the last batch; updates the online state (window events, latest values through the write
guard) and appends to the offline partitions so daily partitions and training sets see the
events. A crash half-way leaves at worst some updates applied; re-running the same range
applies them again with no effect (events are unique by id, the guard keeps the newer value,
partition appends deduplicate), and only then is the range marked applied.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from skewless.compute.rows import latest_per_entity, transform_rows
from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_ID, EVENT_TIMESTAMP, FeatureGroup
from skewless.language.source import FileSource
from skewless.repository import FeatureRepository
from skewless.storage import streams
from skewless.storage.offline import OfflineStore
from skewless.storage.online import OnlineStore

_FAR = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def append_offline(offline: OfflineStore, group: FeatureGroup, rows: pl.DataFrame) -> int:
    """Merge rows into their day partitions (atomic replace per day); returns days touched."""
    keys = group.entity.key_columns
    if group.is_windowed:
        order, unique_by = [*keys, EVENT_TIMESTAMP, EVENT_ID], [*keys, EVENT_ID]
    else:
        order = [*keys, EVENT_TIMESTAMP] + ([CREATED_TIMESTAMP] if group.has_created_timestamp else [])
        unique_by = None  # identical rows only
    days = 0
    for (day,), part in rows.group_by(pl.col(EVENT_TIMESTAMP).dt.date(), maintain_order=True):
        path = offline.partition_path(group, day)
        existing = pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=group.offline_schema())
        merged = (
            pl.concat([existing, part.select(existing.columns)])
            .unique(subset=unique_by, keep="first", maintain_order=True)
            .sort(order, maintain_order=True)
        )
        offline.write_partition(group, day, merged)
        days += 1
    return days


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
    groups = [g for g in repo.groups if g.source.name == source]
    if rows is not None and groups:
        # a re-delivered event is one event (by id when the source has ids)
        id_field = groups[0].source.id_field
        rows = rows.unique(subset=[id_field] if id_field else None, keep="first", maintain_order=True)
    if rows is not None and groups and isinstance(groups[0].source, FileSource):
        # keep the pushed rows with the source's data, so a day re-materialized from the
        # source still has them (the file name is the range: a re-run rewrites the same file)
        target = (
            groups[0].source.pushed_dir
            / f"entries-{after.replace('-', '_')}-{until.replace('-', '_')}.parquet"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_suffix(".tmp")
        rows.write_parquet(temp)
        temp.replace(target)
    stats = {"entries": entries, **apply_rows(repo, offline, online, source, rows, at)}
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
    stats = {"rows": 0 if rows is None else rows.height}
    if rows is not None:
        groups = [g for g in repo.groups if g.source.name == source]
        checked = groups[0].source.checked(rows.lazy()) if groups else rows.lazy()
        for group in groups:
            result = transform_rows(group, checked, *_FAR)
            if group.is_windowed:
                stats[f"{group.ref} events"] = online.write_events(group, result, now=at)
            else:
                stats[f"{group.ref} keys"] = online.write_latest(group, latest_per_entity(group, result))[
                    "written"
                ]
            stats[f"{group.ref} days"] = append_offline(offline, group, result)
    return stats

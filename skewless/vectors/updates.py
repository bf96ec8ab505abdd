"""Pushed embeddings for the index: a Redis Stream per indexed group version, and the
per-process handle that keeps a loaded build current.

Every push and micro-batch that writes a group version with a `VectorIndex` also appends its
latest rows (index layout, Arrow IPC) to `<prefix>:_vindex:<group>:v<N>`. Every serving
process reads the entries after its cursor before each search (one XRANGE round trip, empty
almost always) and applies them to its overlay, so a pushed embedding is searchable at once
in every process, not only the one that pushed it. A process loading a new build replays the
stream from the start; the newest-event-time rule makes entries the build already holds a
no-op. The stream is capped (MAXLEN ~) at `MAX_ENTRIES` pushes: rows older than that must be
in a build by then (the daily rebuild folds the offline store in; a non-stream source's
pushes reach the offline store only through its files).
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl

from skewless.language.feature_group import FeatureGroup
from skewless.storage import online_keys as K
from skewless.storage.offline import OfflineStore
from skewless.storage.online import OnlineStore
from skewless.vectors.engine import VectorSearcher

MAX_ENTRIES = 100_000
READ_BATCH = 1000


def updates_key(online: OnlineStore, group: FeatureGroup) -> str:
    return K.vector_updates_key(online.key_prefix, group.name, group.version)


def append(online: OnlineStore, group: FeatureGroup, latest: pl.DataFrame) -> None:
    """Record pushed latest rows (offline layout) of an indexed group for every searcher."""
    from skewless.storage.streams import _ipc
    from skewless.vectors.index_store import index_rows

    if latest.height == 0:
        return
    rows = index_rows(group, latest)
    online.client.xadd(updates_key(online, group), {"rows": _ipc(rows)}, maxlen=MAX_ENTRIES, approximate=True)


def remove(online: OnlineStore, group: FeatureGroup, keys: pl.DataFrame) -> None:
    """Record that entities have no embedding any more (a null vector, newer than anything
    known: the overlay's rule then masks the build's copy in every process)."""
    from skewless.storage.streams import _ipc
    from skewless.vectors.engine import CREATED_US, EVENT_US, VECTOR
    from skewless.vectors.index_store import scalar_features

    if keys.height == 0:
        return
    now_us = time.time_ns() // 1000
    dim = group.feature(group.index.feature).vector.dim  # type: ignore[union-attr]
    rows = keys.select(
        *[pl.col(c).cast(t) for c, t in group.entity.key_schema.items()],
        pl.lit(now_us, pl.Int64).alias(EVENT_US),
        pl.lit(now_us, pl.Int64).alias(CREATED_US),
        *[pl.lit(None, group.feature(f).polars_dtype).alias(f) for f in scalar_features(group)],
        pl.lit(None, pl.Array(pl.Float32, dim)).alias(VECTOR),
    )
    online.client.xadd(updates_key(online, group), {"rows": _ipc(rows)}, maxlen=MAX_ENTRIES, approximate=True)


def read_after(
    online: OnlineStore, group: FeatureGroup, cursor: str | None
) -> tuple[pl.DataFrame | None, str | None]:
    """The rows of entries after `cursor` (all with None), and the new cursor."""
    key = updates_key(online, group)
    frames, start = [], "-" if cursor is None else f"({cursor}"
    while True:
        entries = online.client.xrange(key, min=start, max="+", count=READ_BATCH)
        for entry_id, fields in entries:
            cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            frames.append(pl.read_ipc(io.BytesIO(fields[b"rows"] if b"rows" in fields else fields["rows"])))
        if len(entries) < READ_BATCH:
            break
        start = f"({cursor}"
    return (pl.concat(frames, how="vertical_relaxed") if frames else None), cursor


class IndexHandle:
    """One process's view of a group version's index: the published build (memory-mapped),
    reloaded when `current.json` names another (checked at most every `recheck_s`), plus the
    pushed rows since. Thread-safe: searches and syncs of one handle are serialised."""

    def __init__(
        self,
        offline: OfflineStore,
        online: OnlineStore,
        group: FeatureGroup,
        cache_dir: Path | None,
        recheck_s: float = 5.0,
    ) -> None:
        self.offline, self.online, self.group = offline, online, group
        self.cache_dir = cache_dir
        self.recheck_s = recheck_s
        self.searcher: VectorSearcher | None = None
        self.build_id: str | None = None
        self.cursor: str | None = None
        self.checked_at = 0.0
        self.lock = threading.RLock()

    def sync(self, force: bool = False) -> VectorSearcher:
        """The searcher, current with the published build and every pushed row."""
        from skewless.errors import RequestError
        from skewless.vectors import index_store

        with self.lock:
            now = time.monotonic()
            if force or self.searcher is None or now - self.checked_at >= self.recheck_s:
                self.checked_at = now
                current = index_store.read_current(self.offline, self.group)
                if current is None:
                    raise RequestError(
                        f"feature group '{self.group.ref}' has no published vector index yet: "
                        f"materialize indexes/{self.group.name}_v{self.group.version}_index"
                    )
                if current["build"] != self.build_id:
                    self.searcher = index_store.open_searcher(
                        self.offline, self.group, current["build"], self.cache_dir
                    )
                    self.build_id, self.cursor = current["build"], None
            assert self.searcher is not None
            rows, self.cursor = read_after(self.online, self.group, self.cursor)
            if rows is not None:
                self.searcher.apply(rows)
            return self.searcher

    def info(self) -> dict[str, Any]:
        searcher = self.searcher
        return {
            "build": self.build_id,
            "entities": searcher.size if searcher else 0,
            "pushed_since_build": searcher.overlay.height if searcher else 0,
        }

"""Redis Streams as the built-in stream source: pushed events, read back by micro-batches.

Each push of a source appends one stream entry holding its rows as Arrow IPC bytes (one entry
per push keeps a big push atomic and cheap). Entry ids are Redis' own, increasing; the sensor's
cursor is the last entry id a micro-batch was requested for, and the id of the last entry a
micro-batch finished is recorded next to the stream, so a crashed batch is simply re-run:
every update it makes is idempotent (events are unique members; the latest-value guard keeps
the newer; offline appends deduplicate).
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl
import redis

from skewless.storage.online import OnlineStore

MAX_ENTRIES = 1_000_000  # approximate cap (XADD MAXLEN ~): old entries are already applied


def stream_key(store: OnlineStore, source: str) -> str:
    return f"{store.key_prefix}:stream:{source}"


def append(store: OnlineStore, source: str, rows: pl.DataFrame) -> str:
    """Append a batch of checked rows; returns the entry id."""
    buffer = io.BytesIO()
    rows.write_ipc(buffer, compression="zstd")
    try:
        entry = store.client.xadd(
            stream_key(store, source), {"rows": buffer.getvalue()}, maxlen=MAX_ENTRIES, approximate=True
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise store._unreachable(f"appending to the stream of source '{source}'", exc) from exc
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def newest_id(store: OnlineStore, source: str) -> str | None:
    found = store.client.xrevrange(stream_key(store, source), count=1)
    if not found:
        return None
    entry = found[0][0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def read(store: OnlineStore, source: str, after: str, until: str) -> tuple[pl.DataFrame | None, int]:
    """Rows of the entries with `after < id <= until`, concatenated in entry order."""
    low = "-" if after in ("", "0", "0-0") else f"({after}"
    entries: list[Any] = store.client.xrange(stream_key(store, source), min=low, max=until)
    frames = [pl.read_ipc(io.BytesIO(fields[b"rows"])) for _, fields in entries]
    if not frames:
        return None, 0
    return pl.concat(frames, how="vertical_relaxed"), len(entries)


def first_id(store: OnlineStore, source: str, after: str, until: str) -> str:
    """The id of the first entry with `after < id <= until` (names a flushed file)."""
    low = "-" if after in ("", "0", "0-0") else f"({after}"
    entry = store.client.xrange(stream_key(store, source), min=low, max=until, count=1)[0][0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def mark_applied(store: OnlineStore, source: str, until: str) -> None:
    store.client.set(f"{stream_key(store, source)}:applied", until)


def applied(store: OnlineStore, source: str) -> str | None:
    value = store.client.get(f"{stream_key(store, source)}:applied")
    return value.decode() if value is not None else None

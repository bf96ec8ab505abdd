"""Online writes from parallel workers: separate processes writing overlapping entities, each
in its own shuffled order, leave exactly the latest value by (event time, created time).

This is what several backfill runs (or Celery workers) do to Redis at once; the write guard
(`storage/lua/write_latest.lua`) is what makes their order irrelevant. The oracle is a
brute-force loop over every row, independent of the store and of Polars' sorting.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from skewless.config import StoreConfig
from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureGroup
from skewless.storage.online import open_online_store
from tests.fanout_repo import fanout_repo

WRITERS = 4
ENTITIES = 300
VERSIONS = 12  # rows per entity over all writers
CHUNK = 40


def _rows(seed: int) -> pl.DataFrame:
    """VERSIONS rows per entity: event times from a small set (many rows share one, so the
    created time decides), created times unique per entity, a value naming the row."""
    rng = random.Random(seed)
    base = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1_000_000)
    rows = []
    for user in range(1, ENTITIES + 1):
        created = rng.sample(range(1, 10_000), VERSIONS)
        for version in range(VERSIONS):
            event = base + rng.randrange(6) * 3_600_000_000
            rows.append(
                {
                    "user_id": user,
                    EVENT_TIMESTAMP: event,
                    CREATED_TIMESTAMP: event + created[version] * 1_000,
                    "amount": float(user * 1000 + version),
                    "amount_x2": float(version),
                    "online": version % 2 == 0,
                    "channel": f"row-{user}-{version}",
                }
            )
    frame = pl.DataFrame(rows)
    return frame.with_columns(
        pl.col(EVENT_TIMESTAMP).cast(pl.Datetime("us", "UTC")),
        pl.col(CREATED_TIMESTAMP).cast(pl.Datetime("us", "UTC")),
    )


def _chunks(frame: pl.DataFrame, seed: int) -> list[pl.DataFrame]:
    """The rows in a shuffled order, cut into calls holding at most one row per entity (what
    `write_latest` takes: one value per entity per call)."""
    order = list(range(frame.height))
    random.Random(seed).shuffle(order)
    calls: list[list[int]] = []
    seen: list[set[int]] = []
    users = frame["user_id"].to_list()
    for i in order:
        slot = next((j for j, s in enumerate(seen) if users[i] not in s and len(calls[j]) < CHUNK), None)
        if slot is None:
            calls.append([])
            seen.append(set())
            slot = len(calls) - 1
        calls[slot].append(i)
        seen[slot].add(users[i])
    return [frame[c] for c in calls]


def _group() -> FeatureGroup:
    (group,) = [g for g in fanout_repo(Path("/unused")).groups if g.name == "user_stats"]
    return group


def _writer(config: StoreConfig, rows_path: str, seed: int, barrier: object, out: object) -> None:
    group = _group()
    frame = pl.read_parquet(rows_path)
    calls = _chunks(frame, seed)
    store = open_online_store(config)
    try:
        store.client.ping()
        barrier.wait(timeout=60)  # type: ignore[attr-defined]
        started = time.time()
        for call in calls:
            store.write_latest(group, call)
        out.put((seed, started, time.time(), len(calls)))  # type: ignore[attr-defined]
    finally:
        store.close()


def _oracle(frame: pl.DataFrame) -> dict[int, dict[str, object]]:
    """Per entity the row with the greatest (event time, created time), by a plain loop."""
    best: dict[int, dict[str, object]] = {}
    for row in frame.iter_rows(named=True):
        user = row["user_id"]
        current = best.get(user)
        header = (row[EVENT_TIMESTAMP], row[CREATED_TIMESTAMP])
        if current is None or header > (current[EVENT_TIMESTAMP], current[CREATED_TIMESTAMP]):
            best[user] = row
    return best


def test_parallel_writers_with_overlapping_entities_keep_the_latest_by_event_time(
    store_config: StoreConfig, tmp_path: Path
) -> None:
    rows = _rows(seed=11)
    # each writer gets an overlapping share: every row goes to one or two writers, so every
    # entity is written by several processes, and some rows twice
    rng = random.Random(5)
    shares: list[list[int]] = [[] for _ in range(WRITERS)]
    for i in range(rows.height):
        for w in rng.sample(range(WRITERS), rng.choice([1, 1, 2])):
            shares[w].append(i)
    paths = []
    for w, share in enumerate(shares):
        path = tmp_path / f"writer-{w}.parquet"
        rows[share].write_parquet(path)
        paths.append(str(path))
    per_writer_entities = [set(rows[s]["user_id"].to_list()) for s in shares]
    assert all(len(e) > ENTITIES * 0.9 for e in per_writer_entities)  # overlapping entities

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    out = context.Queue()
    processes = [
        context.Process(target=_writer, args=(store_config, paths[w], 100 + w, barrier, out))
        for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        deadline = time.monotonic() + 90
        while len(reports) < WRITERS and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                reports.append(out.get(timeout=0.5))
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            assert not failed, f"a writer process failed (exit codes {failed}); see its traceback above"
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
    assert len(reports) == WRITERS and all(p.exitcode == 0 for p in processes)
    # the writers overlapped in time (each started before any other finished)
    assert max(r[1] for r in reports) < min(r[2] for r in reports), reports
    assert all(r[3] >= VERSIONS for r in reports)  # several calls each, in shuffled orders

    group = _group()
    expected = _oracle(rows)
    users = pl.DataFrame({"user_id": sorted(expected)}, schema={"user_id": pl.Int64})
    store = open_online_store(store_config)
    try:
        stored = store.read(group, users)
    finally:
        store.close()
    wrong = []
    for user, row in zip(users["user_id"].to_list(), stored.iter_rows(named=True), strict=True):
        want = expected[user]
        got_header = (row[EVENT_TIMESTAMP], row[CREATED_TIMESTAMP])
        if got_header != (want[EVENT_TIMESTAMP], want[CREATED_TIMESTAMP]) or any(
            row[f] != want[f] for f in ("amount", "amount_x2", "online", "channel")
        ):
            wrong.append((user, row, want))
    assert not wrong, f"{len(wrong)} entities differ from the latest-by-event-time oracle: {wrong[:3]}"

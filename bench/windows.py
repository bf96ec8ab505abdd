"""Window features in constant time: online reads at 100 and 100,000 events in the window.

    python bench/windows.py [--reads 400] [--labels 20000] [--redis-url URL] [--only training]

A 31-feature window group (count, sum, mean, min, max, last, filtered count and sum,
distinct count over 1h / 1d / 7d / 30d / lifetime) on a `stream=True` source. Two users: one
with 100 events in its 7-day window, one with 100,000 (spread evenly; 30 days of history
each). Measured in the same run against the same Redis, last line one JSON object:

- `read_p50_ms_<n>`: `get_online_features` of all 31 features of the user (`output="dicts"`)
  after one warm-up read (which fills the tile cache), reads interleaved between the users;
- `raw_p50_ms_<n>`: the keys a cold read fetches, read raw — the MULTI/EXEC of HMGET (tiles)
  + ZRANGEBYSCORE (edges), through a plain redis-py pipeline — and `ratio_<n>` ours/raw;
- `raw_steady_p50_ms_<n>`, `ratio_steady_<n>`: the raw cost of what a *warm* read sends (the
  entity's merged tiles are remembered by generation: HGET `_gen` + the edges' ZRANGEBYSCORE);
- `raw_zrange_p50_ms_<n>`: a raw ZRANGEBYSCORE of every event in the 7-day window (what a
  read cost before tiles: the floor of any read that aggregates raw events), measured in its
  own loop: its multi-megabyte replies evict the CPU caches, which slowed whatever ran next
  (ours, in the earlier fixed order) by ~0.4 ms;
- reads and the two raw baselines run in a shuffled order each round;
- `push_p50_ms_1`: `FeatureStore.push` of one event (validated, transformed, window state
  updated, appended to the stream); `push_events_per_s_10000`: pushes of 10,000 events;
  same-run baseline `raw_push_p50_ms_1` / `raw_push_events_per_s_10000`: the least Redis
  work a push implies, through a plain redis-py pipeline — XADD of the rows to a stream and
  ZADD of each event (as its stored bytes) to its entity's events key, no tiles, no checks —
  and `ratio_push_1` (ours/raw, time) and `ratio_push_10000` (raw/ours, rate), which say
  how far the push is from Redis' own cost on whatever machine runs the bench;
- `training_s`: a training set of `--labels` label rows over both users' offline history
  (`--only training` runs just that, to compare code versions on the same data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_redis import resolve_redis  # noqa: E402  (bench/ is the script's folder)

REPO = textwrap.dedent(
    """
    import polars as pl
    from skewless import Aggregation, Entity, FeatureGroup, FileSource, FeatureRepository

    W = ["1h", "1d", "7d", "30d"] + (["lifetime"] if {lifetime!r} else [])
    L = ["lifetime"] if {lifetime!r} else ["14d"]
    ok = pl.col("status") == "ok"
    source = FileSource("bench_txns", {path!r}, "ts", id_field="eid", stream=True, start_date={start!r})
    group = FeatureGroup(
        "bench_windows", Entity("user", {{"user_id": pl.Int64}}), source,
        aggregations=[
            Aggregation("count", windows=W),
            Aggregation("sum", "amount", W),
            Aggregation("mean", "amount", ["1d", "7d", "30d", *L]),
            Aggregation("min", "amount", ["1d", "7d", "30d"]),
            Aggregation("max", "amount", ["1d", "7d", "30d"]),
            Aggregation("last", "amount", ["7d", *L], name="last_amount"),
            Aggregation("count", windows=["1d", "7d", "30d"], where=ok, name="ok_count"),
            Aggregation("sum", "amount", ["1d", "7d", "30d"], where=ok, name="ok_amount"),
            Aggregation("distinct_count", "merchant", ["1d", "7d", "30d"], dtype=pl.Int64),
        ],
    )
    repository = FeatureRepository([group])
    """
)


def events(user: int, n: int, span: timedelta, end: datetime, seed: int, prefix: str) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, int(span.total_seconds() * 1e6), n))
    return pl.DataFrame(
        {
            "user_id": np.full(n, user),
            "ts": [end - timedelta(microseconds=int(o)) for o in offsets],
            "eid": [f"{prefix}{i}" for i in range(n)],
            "amount": np.round(rng.gamma(2.0, 30.0, n), 2),
            "status": rng.choice(["ok", "ok", "ok", "declined"], n),
            "merchant": rng.integers(0, 500, n),
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def training(args: argparse.Namespace, work: Path, now: datetime, start, url: str, prefix: str) -> dict:
    """A training set of `--labels` labels over `--train-users` users' 30 days of events."""
    from skewless import FeatureStore
    from skewless.compute.rows import transform_rows
    from skewless.config import StoreConfig
    from skewless.repository import load_repository

    rng = np.random.default_rng(3)
    users = args.train_users
    per_user = args.events_per_user
    frames = [
        events(10_000 + u, per_user, timedelta(days=30), now, int(rng.integers(0, 2**31)), f"t{u}-")
        for u in range(users)
    ]
    rows = pl.concat(frames).sort("ts")
    folder = work / "train"
    folder.mkdir()
    rows.write_parquet(folder / "txns.parquet")
    (folder / "repo.py").write_text(
        REPO.format(path=str(folder / "txns.parquet"), start=start.isoformat(), lifetime=False)
    )
    repo = load_repository(str(folder / "repo.py"))
    group = repo.groups[0]
    store = FeatureStore(repo, StoreConfig(str(folder / "offline"), url, str(folder / "state"), prefix + "t"))
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    computed = transform_rows(group, group.source.checked(rows.lazy()), *far)
    for (day,), part in computed.group_by(pl.col("event_timestamp").dt.date()):
        store.offline.write_partition(group, day, part.sort(["user_id", "event_timestamp", "event_id"]))
    label_ts = [now - timedelta(seconds=int(s)) for s in rng.integers(0, 20 * 86400, args.labels)]
    labels = pl.DataFrame(
        {"user_id": 10_000 + rng.integers(0, users, args.labels), "event_timestamp": label_ts},
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    refs = [f"{group.name}:v{group.version}:{f}" for f in group.feature_names]
    store.get_training_dataset(labels.head(100), features=refs)  # warm-up
    started = time.perf_counter()
    store.get_training_dataset(labels, features=refs)
    elapsed = round(time.perf_counter() - started, 3)
    store.online.delete_all()  # the audit records of the training sets (nothing else online)
    store.close()
    print(
        f"[windows] training set: {args.labels:,} labels x {users * per_user:,} events: {elapsed} s",
        flush=True,
    )
    return {"training_s": elapsed, "training_labels": args.labels, "training_events": users * per_user}


def p50(samples: list[float]) -> float:
    return round(float(np.percentile(samples, 50)), 3)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--labels", type=int, default=20_000)
    parser.add_argument("--train-users", type=int, default=2_000)
    parser.add_argument(
        "--events-per-user", type=int, default=60, help="training data: events per user in 30 days"
    )
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    parser.add_argument("--only", choices=["training"], default=None)
    args = parser.parse_args()

    from skewless import FeatureStore
    from skewless.compute.rows import transform_rows
    from skewless.config import StoreConfig
    from skewless.repository import load_repository

    work = Path(tempfile.mkdtemp(prefix="skewless-windows-"))
    url = resolve_redis(args.redis_url, work / "state")
    prefix = f"skbench:{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    start = (now - timedelta(days=31)).date()
    os.environ.update({"SKEWLESS_KEY_PREFIX": prefix, "SKEWLESS_HOME": str(work / "state")})
    # its own data and a group without lifetime windows, so older versions can run it too
    trained = training(args, work, now, start, url, prefix)
    if args.only == "training":
        print(json.dumps(trained))
        return 0
    sizes = {100: 1, 100_000: 2}
    frames = []
    for n, user in sizes.items():
        # n events in the last 7 days, and as dense again over the 23 days before
        frames.append(events(user, n, timedelta(days=7), now - timedelta(seconds=1), user, f"u{user}-"))
        older = events(user, n * 23 // 7, timedelta(days=23), now - timedelta(days=7), user + 10, f"o{user}-")
        frames.append(older)
    source_rows = pl.concat(frames).sort("ts")
    source_rows.write_parquet(work / "txns.parquet")
    (work / "bench_repo.py").write_text(
        REPO.format(path=str(work / "txns.parquet"), start=start.isoformat(), lifetime=True)
    )
    config = StoreConfig(str(work / "offline"), url, str(work / "state"), prefix)
    repo = load_repository(str(work / "bench_repo.py"))
    group = repo.groups[0]
    store = FeatureStore(repo, config)
    refs = [f"{group.name}:v{group.version}:{f}" for f in group.feature_names]
    result: dict[str, object] = {"features": len(refs), **trained}
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    computed = transform_rows(group, group.source.checked(source_rows.lazy()), *far)
    try:
        # ------------------------------------------------------------- online reads
        started = time.perf_counter()
        store.online.write_events(group, computed)
        print(
            f"[windows] wrote {computed.height:,} events in {time.perf_counter() - started:.1f} s", flush=True
        )
        raw_client = redis.Redis.from_url(url)
        from skewless.storage import online_keys

        users = list(sizes.values())
        keys = online_keys.entity_keys(group, prefix, pl.DataFrame({"user_id": users}))
        bases = dict(zip(users, keys, strict=True))
        ours: dict[int, list[float]] = {n: [] for n in sizes}
        raw: dict[int, list[float]] = {n: [] for n in sizes}
        zrange: dict[int, list[float]] = {n: [] for n in sizes}
        steady: dict[int, list[float]] = {n: [] for n in sizes}
        for user in sizes.values():
            store.get_online_features([{"user_id": user}], features=refs, output="dicts")  # warm the cache

        def read_ours(n: int, user: int) -> None:
            t0 = time.perf_counter()
            store.get_online_features([{"user_id": user}], features=refs, output="dicts")
            ours[n].append((time.perf_counter() - t0) * 1000)

        def read_raw(n: int, user: int, warm: bool) -> None:
            t_us = time.time_ns() // 1000
            _, raws, _, fields = store.online.windows.plan(group, t_us)
            t0 = time.perf_counter()
            pipe = raw_client.pipeline(transaction=True)
            if warm:
                pipe.hget(online_keys.tiles_key(bases[user]), "_gen")
            else:
                pipe.hmget(online_keys.tiles_key(bases[user]), fields)
            for lo, hi in raws:
                pipe.zrangebyscore(online_keys.events_key(bases[user]), f"({lo}", hi)
            pipe.execute()
            (steady if warm else raw)[n].append((time.perf_counter() - t0) * 1000)

        # ours and the two raw baselines in a shuffled order each round, so none always runs
        # right after another's work; the big ZRANGEBYSCORE probes (megabytes per reply at
        # 100k events, which evict the CPU caches) run in their own loop afterwards
        rng = np.random.default_rng(7)
        for _ in range(args.reads):
            for n, user in sizes.items():
                for k in rng.permutation(3):
                    if k == 0:
                        read_ours(n, user)
                    else:
                        read_raw(n, user, warm=k == 2)
        for _ in range(max(20, args.reads // 10)):
            for n, user in sizes.items():
                t_us = time.time_ns() // 1000
                t0 = time.perf_counter()
                raw_client.zrangebyscore(online_keys.events_key(bases[user]), t_us - 7 * 86400 * 10**6, t_us)
                zrange[n].append((time.perf_counter() - t0) * 1000)
        for n in sizes:
            result[f"read_p50_ms_{n}"] = p50(ours[n])
            result[f"read_p99_ms_{n}"] = round(float(np.percentile(ours[n], 99)), 3)
            result[f"raw_p50_ms_{n}"] = p50(raw[n])
            result[f"ratio_{n}"] = round(p50(ours[n]) / p50(raw[n]), 3)
            result[f"raw_zrange_p50_ms_{n}"] = p50(zrange[n])
            result[f"raw_steady_p50_ms_{n}"] = p50(steady[n])
            result[f"ratio_steady_{n}"] = round(p50(ours[n]) / p50(steady[n]), 3)
            print(
                f"[windows] {n:>7,} events in 7d: ours p50 {result[f'read_p50_ms_{n}']} ms, "
                f"raw same keys {result[f'raw_p50_ms_{n}']} ms (x{result[f'ratio_{n}']}), "
                f"raw ZRANGEBYSCORE of the window {result[f'raw_zrange_p50_ms_{n}']} ms",
                flush=True,
            )

        # ------------------------------------------------------------- pushes
        raw_prefix = f"{prefix}:rawpush"

        def as_events(frame: pl.DataFrame) -> pl.DataFrame:
            return transform_rows(group, group.source.checked(frame.lazy()), *far)

        samples, raw_samples = [], []
        for i in range(300):
            one = events(3 + i % 50, 1, timedelta(seconds=1), datetime.now(UTC), 1000 + i, f"p{i}-")
            t0 = time.perf_counter()
            store.push("bench_txns", one)
            samples.append((time.perf_counter() - t0) * 1000)
            # the raw baseline's encoding is made outside its timing (it is ours): Redis only
            encoded = as_events(one)
            records = store.online.windows.codec(group).encode(encoded)
            t0 = time.perf_counter()
            pipe = raw_client.pipeline(transaction=False)
            pipe.xadd(f"{raw_prefix}:stream", {"rows": b"x" * 200}, maxlen=100_000)
            pipe.zadd(f"{raw_prefix}:{3 + i % 50}", {f"p{i}-0".encode() + records[0]: i})
            pipe.execute()
            raw_samples.append((time.perf_counter() - t0) * 1000)
        result["push_p50_ms_1"] = p50(samples)
        result["push_p99_ms_1"] = round(float(np.percentile(samples, 99)), 3)
        result["raw_push_p50_ms_1"] = p50(raw_samples)
        result["ratio_push_1"] = round(p50(samples) / p50(raw_samples), 2)
        rates, raw_rates = [], []
        for i in range(5):
            batch = pl.concat(
                [
                    events(100 + u, 10, timedelta(hours=1), datetime.now(UTC), u, f"b{i}-{u}-")
                    for u in range(1000)
                ]
            )
            t0 = time.perf_counter()
            store.push("bench_txns", batch)
            rates.append(batch.height / (time.perf_counter() - t0))
            encoded = as_events(batch)
            records = store.online.windows.codec(group).encode(encoded)
            members = [
                (f"{raw_prefix}:{u}", e.encode() + r, t // 1000)
                for u, e, r, t in zip(
                    encoded.get_column("user_id").to_list(),
                    encoded.get_column("event_id").to_list(),
                    records,
                    encoded.get_column("event_timestamp").dt.epoch("us").to_list(),
                    strict=True,
                )
            ]
            body = batch.write_ipc(None).getvalue()
            t0 = time.perf_counter()
            pipe = raw_client.pipeline(transaction=False)
            pipe.xadd(f"{raw_prefix}:stream", {"rows": body}, maxlen=100_000)
            for key, member, score in members:
                pipe.zadd(key, {member: score})
            pipe.execute()
            raw_rates.append(batch.height / (time.perf_counter() - t0))
        result["push_events_per_s_10000"] = round(float(np.median(rates)))
        result["raw_push_events_per_s_10000"] = round(float(np.median(raw_rates)))
        result["ratio_push_10000"] = round(float(np.median(raw_rates)) / float(np.median(rates)), 2)
        for key in raw_client.scan_iter(f"{raw_prefix}:*"):
            raw_client.delete(key)
        print(
            f"[windows] push: 1 event p50 {result['push_p50_ms_1']} ms "
            f"(raw pipeline {result['raw_push_p50_ms_1']} ms, x{result['ratio_push_1']}); "
            f"10,000 events: {result['push_events_per_s_10000']:,} events/s "
            f"(raw pipeline {result['raw_push_events_per_s_10000']:,}/s, x{result['ratio_push_10000']})",
            flush=True,
        )
    finally:
        store.online.delete_all()
        store.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

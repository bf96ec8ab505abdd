"""Drill: Redis killed with kill -9 in the middle of an online materialization.

The drill's own redis-server runs with `--appendonly yes --appendfsync always`. A first run
materializes two days; a second run (two newer days) is killed mid-write: a watcher thread
SIGKILLs Redis as soon as the write script has started running batches. Redis is restarted on
the same port and files, and then:

- nothing the completed first run wrote is lost (every acknowledged write was fsynced), and
  nothing half-written is wrong: each entity holds its latest value of days 1-2 or of days 1-4;
- the retried run completes and every entity holds exactly the latest row of the source
  (computed here with plain Polars from the source Parquet, not with skewless code);
- re-running the old days afterwards regresses nothing (the event-time guard).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import redis

from skewless.config import StoreConfig
from skewless.storage.online import OnlineStore, open_online_store
from tests.faults.drills import RedisProcess, latest_rows
from tests.helpers import make_events, materialize_days, small_repo

DAYS = ("2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04")
USERS = 200_000
COLUMNS = ["amount", "amount_x2", "online", "channel"]


def expected(events: pl.DataFrame, last_day: str) -> pl.DataFrame:
    """Latest source row per user up to the end of `last_day`, in the online layout."""
    end = pl.lit(last_day).str.to_date().cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)
    rows = latest_rows(events.filter(pl.col("ts") < end), ["user_id"], "ts", "created")
    return rows.select(
        "user_id",
        pl.col("ts").alias("event_timestamp"),
        "amount",
        (pl.col("amount") * 2).alias("amount_x2"),
        (pl.col("channel") == "online").alias("online"),
        "channel",
    )


def stored(online: OnlineStore, group, users: pl.DataFrame) -> pl.DataFrame:
    got = online.read(group, users.select("user_id"))
    return pl.concat([users.select("user_id"), got.select("event_timestamp", *COLUMNS)], how="horizontal")


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_redis_kill_9_mid_online_write_loses_and_regresses_nothing(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    # exact ties of (user, event time, created time) have no defined winner: keep one of each
    events = make_events(n=2 * USERS, days=4, users=USERS, seed=12).unique(
        ["user_id", "ts", "created"], keep="first", maintain_order=True
    )
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    config = StoreConfig(str(tmp_path / "offline"), own_redis.url, str(tmp_path / "state"), "skfault:kill9")
    first_two, all_four = expected(events, DAYS[1]), expected(events, DAYS[3])
    online = open_online_store(config)
    try:
        with dg.instance_for_test() as instance:
            assert materialize_days(repo, config, instance, DAYS[0], DAYS[1]).success

            # the killer: as soon as the second run's write script has run a few batches
            watcher = redis.Redis.from_url(own_redis.url)
            baseline = evalsha_calls(watcher)
            killed_at: list[int] = []

            def kill_mid_write() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        calls = evalsha_calls(watcher)
                    except redis.RedisError:
                        return
                    if calls >= baseline + 3:
                        own_redis.kill()
                        killed_at.append(calls - baseline)
                        return
                    time.sleep(0.002)

            killer = threading.Thread(target=kill_mid_write, daemon=True)
            killer.start()
            crashed = materialize_days(repo, config, instance, DAYS[2], DAYS[3], raise_on_error=False)
            killer.join(timeout=60)
            watcher.close()
            assert killed_at, "the watcher never saw the write start"
            assert not crashed.success, "the run finished before Redis was killed: not a mid-write drill"
            batches = -(-all_four.height // 2000)
            assert killed_at[0] < batches, (killed_at, batches)

            own_redis.start()  # same port, same append-only file
            online.close()  # drop the dead connections (a real client would reconnect too)
            after_crash = stored(online, group, all_four)
            # nothing lost: every entity of days 1-2 still has at least its days-1-2 value
            old = after_crash.join(first_two, on="user_id", suffix="_old")
            lost = old.filter(
                pl.col("event_timestamp").is_null()
                | (pl.col("event_timestamp") < pl.col("event_timestamp_old"))
            )
            assert lost.height == 0, lost.head()
            # nothing wrong: each value is either the days-1-2 latest or the days-1-4 latest
            newest = after_crash.join(all_four, on="user_id", suffix="_new", how="left")
            new_written = newest.filter(pl.col("event_timestamp") == pl.col("event_timestamp_new"))
            assert new_written.height < all_four.height, "the whole write survived: not a mid-write kill"
            for name in COLUMNS:
                bad = new_written.filter(pl.col(name) != pl.col(f"{name}_new"))
                assert bad.height == 0, (name, bad.head(3).rows())

            # the retry completes; every entity has exactly its latest source row
            assert materialize_days(repo, config, instance, DAYS[2], DAYS[3]).success
            final = stored(online, group, all_four)
            assert final.equals(all_four), final.join(all_four, on="user_id").filter(
                pl.col("event_timestamp") != pl.col("event_timestamp_right")
            )
            # an old backfill afterwards regresses nothing
            assert materialize_days(repo, config, instance, DAYS[0], DAYS[1]).success
            assert stored(online, group, all_four).equals(all_four)
    finally:
        online.close()

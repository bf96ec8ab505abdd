"""Drill: a batch backfill of old days racing pushes of newer events.

A child process pushes (`FeatureStore.push`) events newer than anything in the source, in a
shuffled order of event times, for as long as the test's backfill of the old days runs
(offline and online assets, with their checks, twice). Whatever interleaving the two
processes get, each entity's online value is its newest event by event time (then created
time) over the source and every pushed event — computed here with plain Polars — and the
online/offline agreement check does not raise a false alarm about the pushed values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from skewless.config import StoreConfig
from skewless.repository import load_repository
from skewless.storage.online import open_online_store
from tests.faults.drills import TIMEOUT_S, latest_rows, store_env, write_repo
from tests.helpers import make_events, materialize_days

USERS = 3_000

PUSHER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
import numpy as np
import polars as pl
from skewless import FeatureStore

repo_path, log_path, stop_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
users = int(sys.argv[4])
store = FeatureStore.from_repo(repo_path)
rng = np.random.default_rng(5)
newer = int(datetime(2026, 3, 20, tzinfo=UTC).timestamp() * 1e6)  # after every source event
pushed, rounds = [], 0
# rounds sweep the first two thirds of the users slowly (the last third is never pushed), so
# while the backfill writes, some keys were pushed before it and some are pushed after it
swept = 2 * users // 3
while rounds < 3000 and (rounds < 10 or not stop_path.exists()):
    n = 100
    first = 1 + (rounds * 3) % swept
    ts = newer + rng.integers(0, 86_400_000_000, size=n)  # shuffled: older pushes arrive late too
    frame = pl.DataFrame({
        "user_id": (first + rng.integers(0, 150, size=n)).clip(1, swept).astype(np.int64),
        "ts": ts,
        "created": ts,
        "amount": np.round(rng.uniform(0, 100, size=n), 2),
        "channel": rng.choice(["pos", "online", "atm"], size=n),
    }).with_columns(pl.col("ts", "created").cast(pl.Datetime("us", "UTC")))
    store.push("events", frame)
    pushed.append(frame)
    rounds += 1
    if rounds == 1:
        print("pushing", flush=True)
    time.sleep(0.005)
pl.concat(pushed).write_parquet(log_path)
store.close()
print(f"pushed {rounds} rounds", flush=True)
"""


def test_backfill_of_old_days_racing_newer_pushes_keeps_the_newest(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    events = make_events(n=4 * USERS, days=4, users=USERS, seed=33).unique(
        ["user_id", "ts", "created"], keep="first", maintain_order=True
    )
    repo_path = write_repo(tmp_path / "repo", events)
    repo = load_repository(repo_path)
    group = repo.groups[0]
    log, stop = tmp_path / "pushed.parquet", tmp_path / "stop"
    pusher = subprocess.Popen(
        [sys.executable, "-c", PUSHER, str(repo_path), str(log), str(stop), str(USERS)],
        env=store_env(store_config, tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pusher.stdout is not None and pusher.stdout.readline().strip() == "pushing"
        with dg.instance_for_test() as instance:
            for _ in range(2):  # the backfill, and its retry, both while pushes arrive
                assert materialize_days(repo, store_config, instance, "2026-03-01", "2026-03-04").success
        stop.touch()
        out, err = pusher.communicate(timeout=TIMEOUT_S)
    finally:
        if pusher.poll() is None:
            pusher.kill()
            pusher.wait(timeout=30)
    assert pusher.returncode == 0, err[-3000:]
    pushed = pl.read_parquet(log)
    assert pushed.height >= 10 * 100, out

    newest = latest_rows(pl.concat([events, pushed]), ["user_id"], "ts", "created")
    online = open_online_store(store_config)
    try:
        got = online.read(group, newest.select("user_id"))
    finally:
        online.close()
    assert got["event_timestamp"].equals(newest["ts"], check_names=False)
    assert got["amount"].equals(newest["amount"], check_names=False)
    assert got["channel"].equals(newest["channel"], check_names=False)
    # both kinds are there: entities whose newest value was pushed, and source-only ones
    pushed_wins = newest.join(pushed, on=["user_id", "ts"], how="semi").height
    assert 0 < pushed_wins < newest.height
    print(
        f"{pushed.height} events pushed in {out.split()[-2]} rounds; {pushed_wins} entities' newest is pushed"
    )

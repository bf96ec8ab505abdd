"""Streaming under faults: concurrent micro-batches, dead runs, and a kill -9 drill.

The drill runs the real stream job in a child process against its own throwaway
`redis-server` and a sqlite Dagster instance, SIGKILLs it at a chosen point (the
`SKEWLESS_CRASH_AT` hook in sensors/microbatch.py), then lets only the sensor recover: the
next tick must re-request the dead range, and after that run every event is in both stores
exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
import redis

from skewless import FeatureStore
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.sensors.dead_runs import HOST_TAG, PID_TAG
from skewless.sensors.microbatch import CRASH_POINTS, apply_stream_batch
from skewless.sensors.streams import RANGE_TAG, Pending, run_is_live
from skewless.storage import streams
from skewless.storage.offline import PIECE_PREFIX
from tests.helpers import materialize_days

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = 12

REPO_MODULE = '''
"""The drill's repository: clicks of users, a window group and a latest-value group."""
from datetime import timedelta
from pathlib import Path

import polars as pl

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FileSource
from skewless.config import StoreConfig

HERE = Path(__file__).parent
user = Entity("user", {{"user_id": pl.Int64}})
source = FileSource(
    "clicks", HERE / "clicks.parquet", "ts", id_field="eid", stream=True, start_date="{start}"
)
windows = FeatureGroup(
    "click_windows",
    user,
    source,
    aggregations=[Aggregation("count", windows=["7d"]), Aggregation("sum", "value", ["7d"])],
)
latest = FeatureGroup("last_click", user, source, [Feature("value", pl.Float64, default=0.0)])
repo = FeatureRepository([windows, latest])
config = StoreConfig(
    offline_root=str(HERE / "offline"),
    redis_url="{redis_url}",
    state_dir=str(HERE / "state"),
    key_prefix="{prefix}",
)
'''

CHILD = """
import importlib.util, json, sys
import dagster as dg
spec = importlib.util.spec_from_file_location("drill_repo", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from skewless.feature_assets.definitions import build_definitions
request = json.loads(sys.argv[3])
job = build_definitions(module.repo, module.config).resolve_job_def("stream_clicks")
with dg.DagsterInstance.local_temp(tempdir=sys.argv[2]) as instance:
    job.execute_in_process(run_config=request["run_config"], instance=instance, tags=request["tags"])
"""


# ------------------------------------------------------------------------------ fixtures
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test only (no persistence), stopped and reaped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    port = _free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _drill_repo(folder: Path, redis_url: str) -> tuple[Path, object]:
    """Write the repository module and import it (the child process imports the same file)."""
    import importlib.util

    path = folder / "drill_repo.py"
    path.write_text(
        REPO_MODULE.format(
            start=(NOW - timedelta(days=3)).date().isoformat(),
            redis_url=redis_url,
            prefix=f"skdrill:{folder.name[-12:]}",
        )
    )
    spec = importlib.util.spec_from_file_location(f"drill_repo_{folder.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _events(first: int, count: int) -> pl.DataFrame:
    """`count` events with unique ids and times, over the last ~2.5 days (3 day partitions)."""
    ids = list(range(first, first + count))
    return pl.DataFrame(
        {
            "user_id": [i % USERS for i in ids],
            "eid": [f"e{i}" for i in ids],
            "value": [float(i % 17) + 0.25 for i in ids],
            "ts": [NOW - timedelta(minutes=1) - timedelta(seconds=97 * ((i * 7919) % 2200)) for i in ids],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def _assert_exactly_once(store: FeatureStore, events: pl.DataFrame, online: bool = True) -> None:
    """Online windows and latest values, offline rows: each event counted once."""
    unique = events.unique(subset=["eid"], keep="first")
    if online:
        _assert_online(store, unique)
    windows, latest = store.repository.group("click_windows", 1), store.repository.group("last_click", 1)
    offline = store.offline.scan(windows).collect()
    assert offline.height == unique.height
    assert offline.group_by("event_id").len()["len"].max() == 1
    assert store.offline.scan(latest).collect().height == unique.height
    assert store.sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM click_windows_v1").row(0) == (
        unique.height,
        unique.height,
    )
    assert store.sql("SELECT count(*) AS n FROM last_click_v1")["n"][0] == unique.height


def _assert_online(store: FeatureStore, unique: pl.DataFrame) -> None:
    """Window counts and sums per user equal its events; the latest value is its newest."""
    expected = (
        unique.sort("ts")
        .group_by("user_id")
        .agg(pl.len().alias("count_7d"), pl.col("value").sum().alias("sum"), pl.col("value").last())
        .sort("user_id")
    )
    got = store.get_online_features(
        {"user_id": expected["user_id"].to_list()},
        features=["click_windows:v1:count_7d", "click_windows:v1:value_sum_7d", "last_click:v1:value"],
        output="polars",
        at=NOW,
    ).sort("user_id")
    assert got["count_7d"].to_list() == expected["count_7d"].to_list()
    assert got["value_sum_7d"].to_list() == pytest.approx(expected["sum"].to_list())
    assert got["value"].to_list() == expected["value"].to_list()


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> Any:
    """One evaluation of the stream sensor (its run requests, cursor and skip message)."""
    sensor = defs.resolve_sensor_def("stream_clicks_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        return sensor.evaluate_tick(context)


# ------------------------------------------------------------------------------ defect 6
def test_concurrent_microbatches_lose_no_event(tmp_path: Path, store_config: StoreConfig) -> None:
    """Two batches over the same days at once: pieces, not read-modify-write, so none lost."""
    _, module = _drill_repo(tmp_path, store_config.redis_url)
    repo = module.repo  # type: ignore[attr-defined]
    _events(0, 1).write_parquet(tmp_path / "clicks.parquet")
    store = FeatureStore(repo, store_config)
    bounds = ["0"]
    batches = [_events(1, 400), _events(401, 400)]
    for batch in batches:
        store.push("clicks", batch, direct=False)
        bounds.append(streams.newest_id(store.online, "clicks") or "")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(after: str, until: str) -> None:
        try:
            barrier.wait(timeout=10)
            apply_stream_batch(repo, store.offline, store.online, "clicks", after, until, at=NOW)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(bounds[i], bounds[i + 1])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    windows = repo.group("click_windows", 1)
    days = store.offline.partitions(windows)
    assert len(days) >= 3
    # every day got one piece per batch; no partition file was (re)written
    for day in days:
        assert not store.offline.partition_path(windows, day).exists()
    _assert_exactly_once(store, pl.concat(batches))
    store.close()


def test_compaction_deletes_only_pieces_listed_before_the_read(
    tmp_path: Path, store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily asset folds pieces into data.parquet and removes only those it had seen."""
    _, module = _drill_repo(tmp_path, store_config.redis_url)
    repo = module.repo  # type: ignore[attr-defined]
    _events(0, 1).write_parquet(tmp_path / "clicks.parquet")
    store = FeatureStore(repo, store_config)
    batch = _events(1, 300)
    store.push("clicks", batch, direct=False)
    newest = streams.newest_id(store.online, "clicks") or ""
    apply_stream_batch(repo, store.offline, store.online, "clicks", "0", newest, at=NOW)
    windows = repo.group("click_windows", 1)
    assert store.offline.has_pieces(windows)
    # a micro-batch that stores a piece while the asset is reading the source: its piece
    # was not listed, so it must survive compaction (its pushed file may not have been read)
    import skewless.compute.rows as rows_module

    original = rows_module.compute_rows
    late_row = store.offline.scan(windows).head(1).collect().with_columns(event_id=pl.lit("late-1"))
    late_day = late_row["event_timestamp"].dt.date()[0]
    late = store.offline.piece_path(windows, late_day, "zz-late")

    def compute_then_race(group: Any, start: datetime, end: datetime) -> pl.DataFrame:
        if group.name == "click_windows" and not late.exists():
            store.offline.write_piece(windows, late_day, "zz-late", late_row)
        return original(group, start, end)

    monkeypatch.setattr(rows_module, "compute_rows", compute_then_race)
    with dg.instance_for_test() as instance:
        first, today = (NOW - timedelta(days=3)).date().isoformat(), NOW.date().isoformat()
        assert materialize_days(repo, store_config, instance, first, today).success
    assert late.exists()  # written after the listing: kept
    assert "late-1" in store.offline.scan(windows).collect()["event_id"].to_list()
    late.unlink()
    assert not store.offline.has_pieces(windows)
    # (online has the injected late event too: the online asset read it from the offline store)
    _assert_exactly_once(store, pl.concat([_events(0, 1), batch]), online=False)
    store.close()


# ------------------------------------------------------------------------------ defect 5
def test_sensor_rerequests_a_range_whose_run_died(tmp_path: Path, store_config: StoreConfig) -> None:
    _, module = _drill_repo(tmp_path, store_config.redis_url)
    repo = module.repo  # type: ignore[attr-defined]
    _events(0, 1).write_parquet(tmp_path / "clicks.parquet")
    store = FeatureStore(repo, store_config)
    store.push("clicks", _events(1, 20), direct=False)
    defs = build_definitions(repo, store_config)
    job = defs.resolve_job_def("stream_clicks")
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance, None)
        (request,) = first.run_requests
        pending = Pending.decode(first.cursor)
        assert pending is not None and pending.after == "0"

        def record(status: dg.DagsterRunStatus, extra: dict[str, str], req: dg.RunRequest) -> dg.DagsterRun:
            return instance.create_run_for_job(
                job, run_config=req.run_config, tags={**req.tags, **extra}, status=status
            )

        # not launched yet: the same key again (Dagster's run-key dedupe launches it once)
        again = _tick(defs, instance, first.cursor)
        assert [r.run_key for r in again.run_requests] == [request.run_key]
        # in progress (a live process): nothing requested, not even newer events
        live = record(
            dg.DagsterRunStatus.STARTED, {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}, request
        )
        store.push("clicks", _events(21, 5), direct=False)
        waiting = _tick(defs, instance, first.cursor)
        assert waiting.run_requests == []
        # the run failed: the same range, a new key
        instance.report_run_failed(live)
        retry = _tick(defs, instance, first.cursor)
        (retry_request,) = retry.run_requests
        assert retry_request.run_key == f"{request.run_key}:retry1"
        assert retry_request.run_config == request.run_config
        # that retry was STARTED but its process is gone (kill -9): requested once more
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        record(
            dg.DagsterRunStatus.STARTED,
            {PID_TAG: str(dead.pid), HOST_TAG: socket.gethostname()},
            retry_request,
        )
        third = _tick(defs, instance, retry.cursor)
        (third_request,) = third.run_requests
        assert third_request.run_key == f"{request.run_key}:retry2"
        assert third_request.run_config == request.run_config
        # it runs and succeeds: the marker moves, the next tick takes the newer entries
        assert job.execute_in_process(
            run_config=third_request.run_config, instance=instance, tags=third_request.tags
        ).success
        nxt = _tick(defs, instance, third.cursor)
        (next_request,) = nxt.run_requests
        config = next_request.run_config["ops"]["apply_clicks_stream"]["config"]
        assert config["after"] == pending.until
        assert config["until"] == streams.newest_id(store.online, "clicks")
    store.close()


def test_started_run_without_a_process_is_dead_once_old() -> None:
    """A STARTED run on another host (no pid to check) counts as dead after the timeout."""
    with dg.instance_for_test() as instance:

        @dg.op
        def noop() -> None:
            return None

        @dg.job
        def j() -> None:
            noop()

        run = instance.create_run_for_job(
            j, tags={PID_TAG: "1", HOST_TAG: "elsewhere"}, status=dg.DagsterRunStatus.STARTED
        )
        (rec,) = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run.run_id]))
        assert run_is_live(rec, stale_after_s=600)
        assert not run_is_live(rec, stale_after_s=600, now=time.time() + 601)
        instance.report_run_failed(run)
        (rec,) = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run.run_id]))
        assert not run_is_live(rec, stale_after_s=600)


# ------------------------------------------------------------------------------ the drill
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_kill_9_drill(tmp_path: Path, own_redis: str, crash_at: str) -> None:
    module_path, module = _drill_repo(tmp_path, own_redis)
    repo, config = module.repo, module.config  # type: ignore[attr-defined]
    _events(0, 1).write_parquet(tmp_path / "clicks.parquet")
    store = FeatureStore(repo, config)
    pushed = [_events(1, 250), _events(251, 250), _events(200, 100)]  # the last re-delivers 51
    for batch in pushed:
        store.push("clicks", batch, direct=False)
    defs = build_definitions(repo, config)
    job = defs.resolve_job_def("stream_clicks")
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
        first = _tick(defs, instance, None)
        (request,) = first.run_requests
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SKEWLESS_CRASH_AT": crash_at}
        payload = json.dumps({"run_config": request.run_config, "tags": request.tags})
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(module_path), str(home), payload],
            env=env,
            timeout=120,
            capture_output=True,
        )
        assert child.returncode == -9, child.stderr.decode()[-2000:]
        assert streams.applied(store.online, "clicks") is None  # died before the marker
        # more events arrive while the dead run still shows STARTED
        late = _events(600, 40)
        store.push("clicks", late, direct=False)
        (dead_run,) = instance.get_runs(filters=dg.RunsFilter(tags={RANGE_TAG: request.tags[RANGE_TAG]}))
        assert dead_run.status == dg.DagsterRunStatus.STARTED
        # no human action: ticks and the runs they request
        cursor = first.cursor
        for expected in ("the dead range again", "the newer entries"):
            result = _tick(defs, instance, cursor)
            assert len(result.run_requests) == 1, (expected, result.skip_message)
            (req,) = result.run_requests
            if expected == "the dead range again":
                assert req.run_config == request.run_config and req.run_key == f"{request.run_key}:retry1"
            assert job.execute_in_process(run_config=req.run_config, instance=instance, tags=req.tags).success
            cursor = result.cursor
        assert _tick(defs, instance, cursor).run_requests == []
    events = pl.concat([*pushed, late])
    _assert_exactly_once(store, events)
    # physically too: a retried range rewrote its own pieces, it did not add copies
    windows = repo.group("click_windows", 1)
    pieces = sorted(store.offline.group_dir(windows).glob(f"date=*/{PIECE_PREFIX}*.parquet"))
    raw = pl.concat([pl.read_parquet(p) for p in pieces])
    assert raw.height == events.unique(subset=["eid"]).height
    store.close()

"""Freshness benchmark: how fast a pushed event becomes an online feature value.

    python bench/freshness.py [--events 200000] [--sensor-samples 8] [--redis-url URL]

A window group with 4 windows (count 1h/1d/7d and a sum over 7d) on a `stream=True` source.
Measured against the same Redis, last line one JSON object:

- `push_p50_ms` / `push_p99_ms`: `FeatureStore.push` of one event (direct path: validated,
  transformed by the group's definition, added to the window state and appended to the stream),
  until the call returns — the value is then readable. Its floor, measured interleaved in the
  same run: `push_floor_p50_ms` / `push_floor_p99_ms`, one redis-py pipeline of a raw XADD of
  the same event (Arrow IPC bytes, serialized beforehand) to a stream and a raw ZADD of it into
  the entity's event set — the two writes a push of one event cannot avoid — and
  `ratio_floor_push_p50`;
- `microbatch_events_per_s`: events applied by one micro-batch (`apply_stream_batch`, the code
  the sensor's run executes: online window state plus the offline append), for `--events`
  events pushed with `direct=False`; `microbatch_online_events_per_s` counts the online part alone;
- `sensor_p50_s` / `sensor_p99_s`: event pushed with `direct=False` -> visible online through the
  real path: `dagster dev` running the sensor (5 s interval) which launches the micro-batch run.
  Dominated by the sensor interval and Dagster's run launch, not by the work. A sample that
  is not visible within `--sensor-timeout` seconds is counted in `sensor_timeouts` and left out
  of the percentiles (never reported as another sample's latency).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
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
    from skewless import Aggregation, Entity, FeatureGroup, FileSource, FeatureRepository, build_definitions

    source = FileSource("bench_clicks", {path!r}, "ts", id_field="eid", stream=True, start_date="2026-01-01")
    group = FeatureGroup(
        "bench_windows", Entity("user", {{"user_id": pl.Int64}}), source,
        aggregations=[Aggregation("count", windows=["1h", "1d", "7d"]), Aggregation("sum", "value", ["7d"])],
    )
    repository = FeatureRepository([group])
    defs = build_definitions(repository)
    """
)


def events(n: int, start_id: int, users: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, users, n),
            "eid": [f"e{start_id + i}" for i in range(n)],
            "value": rng.random(n),
            "ts": [now - timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, n)],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sensor-samples", type=int, default=8)
    parser.add_argument("--sensor-timeout", type=float, default=120.0)
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    args = parser.parse_args()

    from skewless import FeatureStore
    from skewless.config import StoreConfig
    from skewless.repository import load_repository
    from skewless.sensors.microbatch import apply_stream_batch
    from skewless.storage import streams

    work = Path(tempfile.mkdtemp(prefix="skewless-freshness-"))
    url = resolve_redis(args.redis_url, work / "state")
    prefix = f"skbench:{uuid.uuid4().hex[:8]}"
    events(1, 0, 10, 0).write_parquet(work / "clicks.parquet")
    (work / "bench_repo.py").write_text(REPO.format(path=str(work / "clicks.parquet")))
    config = StoreConfig(str(work / "offline"), url, str(work / "state"), prefix)
    os.environ.update(
        {"SKEWLESS_REDIS_URL": url, "SKEWLESS_KEY_PREFIX": prefix, "SKEWLESS_HOME": str(work / "state")}
    )
    repo = load_repository(str(work / "bench_repo.py"))
    store = FeatureStore(repo, config)
    result: dict[str, object] = {"events": args.events, "windows": 4}
    try:
        # ------------------------------------------------------------- direct push
        samples = []
        floor = []
        raw = redis.Redis.from_url(url)
        for i in range(300):
            one = events(1, 10_000_000 + i, 1000, i)
            started = time.perf_counter()
            store.push("bench_clicks", one)
            samples.append((time.perf_counter() - started) * 1000)
            floor.append(floor_push(raw, f"{prefix}:floor", one))
        raw.close()
        result["push_p50_ms"] = round(percentile(samples, 0.5), 2)
        result["push_p99_ms"] = round(percentile(samples, 0.99), 2)
        result["push_floor_p50_ms"] = round(percentile(floor, 0.5), 3)
        result["push_floor_p99_ms"] = round(percentile(floor, 0.99), 3)
        result["ratio_floor_push_p50"] = round(percentile(samples, 0.5) / percentile(floor, 0.5), 2)
        print(
            f"[freshness] push: p50 {result['push_p50_ms']} ms, p99 {result['push_p99_ms']} ms; floor "
            f"(raw XADD + ZADD pipeline) p50 {result['push_floor_p50_ms']} ms "
            f"-> ratio {result['ratio_floor_push_p50']}",
            flush=True,
        )

        # ------------------------------------------------------------- micro-batch throughput
        after = streams.newest_id(store.online, "bench_clicks") or "0"
        streams.mark_applied(store.online, "bench_clicks", after)
        batch = events(args.events, 0, 50_000, 1)
        for chunk in batch.iter_slices(50_000):
            store.push("bench_clicks", chunk, direct=False)
        until = streams.newest_id(store.online, "bench_clicks")
        assert until is not None
        group = repo.groups[0]
        started = time.perf_counter()
        stats = apply_stream_batch(repo, store.offline, store.online, "bench_clicks", after, until)
        elapsed = time.perf_counter() - started
        result["microbatch_events_per_s"] = round(args.events / elapsed)
        from skewless.compute.rows import transform_rows

        far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
        computed = transform_rows(group, group.source.checked(batch.lazy()), *far)
        store.online.delete_all()
        started = time.perf_counter()
        store.online.write_events(group, computed)
        result["microbatch_online_events_per_s"] = round(args.events / (time.perf_counter() - started))
        print(
            f"[freshness] micro-batch: {result['microbatch_events_per_s']:,} events/s "
            f"(online part {result['microbatch_online_events_per_s']:,}/s); {stats['entries']} entries",
            flush=True,
        )

        # ------------------------------------------------------------- sensor path
        result.update(sensor_latency(work, store, args.sensor_samples, args.sensor_timeout))
    finally:
        store.online.delete_all()
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}:*", count=10_000):
            client.unlink(key)
        store.close()
    print(json.dumps(result))
    return 0


def floor_push(client: redis.Redis, prefix: str, one: pl.DataFrame) -> float:
    """The floor of a one-event push, in ms: what any stream-backed window store must send —
    the event appended to a stream (XADD) and added to the entity's time-ordered event set
    (ZADD, score = event time) — in one pipeline, one round trip. The event is serialized
    (Arrow IPC, as the stream keeps it) before the clock starts: the floor is the Redis work
    alone, without validation, the group's definition, tiles or encoding."""
    row = one.row(0, named=True)
    packed = one.write_ipc(None).getvalue()
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    pipe.xadd(f"{prefix}:stream", {"data": packed})
    pipe.zadd(f"{prefix}:{{user:{row['user_id']}}}:events", {packed: int(row["ts"].timestamp() * 1e6)})
    pipe.execute()
    return (time.perf_counter() - started) * 1000


def sensor_latency(work: Path, store, samples: int, timeout_s: float) -> dict[str, object]:
    from skewless.storage import streams

    dagster_home = work / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (work / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: bench_repo.py\n"
        f"      attribute: defs\n      working_directory: {work}\n"
    )
    streams.mark_applied(store.online, "bench_clicks", streams.newest_id(store.online, "bench_clicks") or "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    log = open(work / "dagster.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            str(work / "workspace.yaml"),
            "-p",
            str(port),
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    latencies = []
    timeouts = 0
    try:
        time.sleep(15)  # code location load and first sensor tick
        for i in range(samples):
            user = 900_000 + i
            store.push(
                "bench_clicks",
                events(1, 20_000_000 + i, 1, i).with_columns(pl.lit(user, dtype=pl.Int64).alias("user_id")),
                direct=False,
            )
            started = time.monotonic()
            latency = None
            while time.monotonic() - started < timeout_s:
                got = store.get_online_features(
                    [{"user_id": user}], features=["bench_windows:v1:count_1d"], output="dicts"
                )[0]
                if got["count_1d"] == 1:
                    latency = time.monotonic() - started
                    break
                time.sleep(0.1)
            if latency is None:
                timeouts += 1
                shown = f"timed out after {timeout_s:g} s (excluded from the percentiles)"
            else:
                latencies.append(latency)
                shown = f"{latency:.2f} s"
            print(f"[freshness] sensor sample {i + 1}/{samples}: {shown}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    if not latencies:
        return {
            "sensor_p50_s": None,
            "sensor_p99_s": None,
            "sensor_samples": 0,
            "sensor_timeouts": timeouts,
            "sensor_error": f"no sample completed; see {work}/dagster.log",
        }
    return {
        "sensor_p50_s": round(percentile(latencies, 0.5), 2),
        "sensor_p99_s": round(percentile(latencies, 0.99), 2),
        "sensor_samples": len(latencies),
        "sensor_timeouts": timeouts,
    }


if __name__ == "__main__":
    sys.exit(main())

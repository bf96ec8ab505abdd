"""Freshness benchmark: how fast a pushed event becomes an online feature value.

    python bench/freshness.py [--events 200000] [--sensor-samples 8] [--redis-url URL]

A window group with 4 windows (count 1h/1d/7d and a sum over 7d) on a `stream=True` source.
Measured against the same Redis, last line one JSON object:

- `push_p50_ms` / `push_p99_ms`: `FeatureStore.push` of one event (direct path: validated,
  transformed by the group's definition, added to the window state and appended to the stream),
  until the call returns — the value is then readable;
- `microbatch_events_per_s`: events applied by one micro-batch (`apply_stream_batch`, the code
  the sensor's run executes: online window state plus the offline append), for `--events`
  events pushed with `direct=False`; `microbatch_online_events_per_s` counts the online part alone;
- `sensor_p50_s` / `sensor_p99_s`: event pushed with `direct=False` -> visible online through the
  real path: `dagster dev` running the sensor (5 s interval) which launches the micro-batch run.
  Dominated by the sensor interval and Dagster's run launch, not by the work.
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
        for i in range(300):
            one = events(1, 10_000_000 + i, 1000, i)
            started = time.perf_counter()
            store.push("bench_clicks", one)
            samples.append((time.perf_counter() - started) * 1000)
        result["push_p50_ms"] = round(percentile(samples, 0.5), 2)
        result["push_p99_ms"] = round(percentile(samples, 0.99), 2)
        print(f"[freshness] push: p50 {result['push_p50_ms']} ms, p99 {result['push_p99_ms']} ms", flush=True)

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
        result.update(sensor_latency(work, store, args.sensor_samples))
    finally:
        store.online.delete_all()
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}:*", count=10_000):
            client.unlink(key)
        store.close()
    print(json.dumps(result))
    return 0


def sensor_latency(work: Path, store, samples: int) -> dict[str, object]:
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
            while time.monotonic() - started < 120:
                got = store.get_online_features(
                    [{"user_id": user}], features=["bench_windows:v1:count_1d"], output="dicts"
                )[0]
                if got["count_1d"] == 1:
                    latencies.append(time.monotonic() - started)
                    break
                time.sleep(0.1)
            print(
                f"[freshness] sensor sample {i + 1}/{samples}: {latencies[-1] if latencies else None} s",
                flush=True,
            )
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
            "sensor_error": f"no sample completed; see {work}/dagster.log",
        }
    return {
        "sensor_p50_s": round(percentile(latencies, 0.5), 2),
        "sensor_p99_s": round(percentile(latencies, 0.99), 2),
        "sensor_samples": len(latencies),
    }


if __name__ == "__main__":
    sys.exit(main())

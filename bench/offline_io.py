"""Offline store I/O on object storage against the local folder: same data, same run, ratios.

    python bench/offline_io.py [--users 20000] [--days 30] [--rows-per-day 40000] [--repeat 3]

What it does
------------
1. **Server.** Starts moto's S3 server (`python -m moto.server`, a child process on a free
   loopback port, so its request handling does not compete with the measured process for
   the GIL), creates a bucket, and stops the child at the end (also on error or Ctrl-C).
   `--endpoint URL` measures an existing S3-compatible server instead (credentials from the
   usual AWS variables; `--bucket` must exist).
2. **Data** (seeded). A row group `bench_io:v1` (entity `user_id`, 8 float features and a
   string) from one local source file; `--days` daily partitions of `--rows-per-day` rows.
3. **Materialization**: what the daily offline asset does per day — compute the day's rows
   from the source (`compute_rows`) and `OfflineStore.write_partition` — for every day, then
   the online asset's read of the run's partitions (`OfflineStore.scan(...).collect()`).
4. **Training set**: `FeatureStore.get_training_dataset` of all features for label rows over
   the last 10 days, with each engine (`memory`, `partitioned`); results are compared with
   the local store's (must be equal).

Each step runs `--repeat` times per backend, round robin; the fastest counts. Object storage
here is a server on the same machine: the ratio measures the protocol and library overhead
(HTTP requests, whole-object GETs, serializing before the PUT), not a network. Against a
remote bucket, latency per request dominates small partitions. moto itself is the ceiling
here: one Python process serving GETs at ~55 MB/s (the defaults store 84 MB in 30 files,
fetched in ~1.5 s whatever the client's parallelism), so a training set that reads every
file is bound by it; MinIO or S3 serve far faster.

Measured (defaults, 1.2M rows, 200k labels, 4-core shared machine): materialize 3.84 s vs
2.06 s local (1.86x), training set in memory 1.81 s vs 0.26 s (6.9x; 1.5 s of it is the
download from moto), partitioned 2.45 s vs 0.82 s (2.97x). Results equal to local.

Reading the output
------------------
Lines start with `[offline_io]`; per step: `s3` (ours on object storage), `local` (the
baseline) and `ratio` = s3 / local. The LAST line is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource  # noqa: E402
from skewless.compute.rows import compute_rows  # noqa: E402
from skewless.config import StoreConfig  # noqa: E402
from skewless.storage.offline import OfflineStore, days_between  # noqa: E402

FIRST = date(2026, 1, 1)
FEATURES = [f"f{i}" for i in range(8)]


def say(message: str) -> None:
    print(f"[offline_io] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"moto server exited with {child.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return child, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    child.kill()
    raise SystemExit("moto server did not answer within 30 s")


def make_source(folder: Path, users: int, days: int, per_day: int) -> Path:
    rng = np.random.default_rng(7)
    n = days * per_day
    start_us = int(datetime(FIRST.year, FIRST.month, FIRST.day, tzinfo=UTC).timestamp() * 1e6)
    ts = np.sort(start_us + rng.integers(0, days * 86_400_000_000, size=n))
    frame = pl.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, size=n).astype(np.int64),
            "ts": ts,
            **{f: rng.normal(size=n) for f in FEATURES},
            "kind": rng.choice(["a", "bb", "ccc"], size=n),
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    path = folder / "events.parquet"
    frame.write_parquet(path)
    return path


def repository(source: Path) -> FeatureRepository:
    group = FeatureGroup(
        "bench_io",
        Entity("user", {"user_id": pl.Int64}),
        FileSource("events", source, "ts", start_date=FIRST.isoformat()),
        features=[*(Feature(f, pl.Float64) for f in FEATURES), Feature("kind", pl.String)],
    )
    return FeatureRepository(groups=[group])


def labels(users: int, days: int, rows: int) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    end_us = (
        int(datetime(FIRST.year, FIRST.month, FIRST.day, tzinfo=UTC).timestamp() * 1e6)
        + days * 86_400_000_000
    )
    return pl.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, size=rows).astype(np.int64),
            "label_ts": end_us - rng.integers(0, 10 * 86_400_000_000, size=rows),
        }
    ).with_columns(pl.col("label_ts").cast(pl.Datetime("us", "UTC")))


def materialize(repo: FeatureRepository, offline: OfflineStore, days: list[date]) -> float:
    group = repo.groups[0]
    began = time.perf_counter()
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        offline.write_partition(group, day, compute_rows(group, start, start + timedelta(days=1)))
    offline.scan(group, days[0], days[-1]).collect()  # the online asset's read of the run
    return time.perf_counter() - began


def training(
    repo: FeatureRepository, offline: OfflineStore, frame: pl.DataFrame, engine: str
) -> tuple[float, pl.DataFrame]:
    store = FeatureStore(repo, StoreConfig(str(offline.root), None, "", key_prefix=""), offline=offline)
    began = time.perf_counter()
    out = store.get_training_dataset(
        frame,
        features=[f"bench_io:v1:{f}" for f in [*FEATURES, "kind"]],
        timestamp_column="label_ts",
        engine=engine,
    )
    return time.perf_counter() - began, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument("--labels", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", help="an existing S3-compatible endpoint instead of a moto child")
    parser.add_argument("--bucket", default="skewless-bench")
    args = parser.parse_args()

    child = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        child, endpoint = start_moto()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    if endpoint.startswith("http://"):
        os.environ["AWS_ALLOW_HTTP"] = "true"
    try:
        if child is not None:
            import pyarrow.fs as pafs

            pafs.S3FileSystem(
                access_key="bench", secret_key="bench", region="us-east-1",
                endpoint_override=endpoint.split("://")[1], scheme="http", allow_bucket_creation=True,
            ).create_dir(args.bucket)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="skewless-offline-io-") as tmp:
            work = Path(tmp)
            say(f"server {endpoint}; data {args.days} days x {args.rows_per_day} rows, {args.users} users")
            repo = repository(make_source(work, args.users, args.days, args.rows_per_day))
            days = days_between(FIRST, FIRST + timedelta(days=args.days))
            label_rows = labels(args.users, args.days, args.labels)
            stores = {
                "local": OfflineStore(work / "offline"),
                "s3": OfflineStore(f"s3://{args.bucket}/{uuid.uuid4().hex[:10]}"),
            }
            best: dict[str, dict[str, float]] = {
                "materialize": {},
                "training_memory": {},
                "training_partitioned": {},
            }
            results: dict[str, dict[str, pl.DataFrame]] = {}
            for _ in range(args.repeat):
                for backend, offline in stores.items():
                    seconds = materialize(repo, offline, days)
                    best["materialize"][backend] = min(best["materialize"].get(backend, 1e9), seconds)
                    for engine in ("memory", "partitioned"):
                        seconds, frame = training(repo, offline, label_rows, engine)
                        step = f"training_{engine}"
                        best[step][backend] = min(best[step].get(backend, 1e9), seconds)
                        results.setdefault(backend, {})[engine] = frame
            for engine in ("memory", "partitioned"):
                if not results["s3"][engine].equals(results["local"][engine], null_equal=True):
                    raise SystemExit(f"training set ({engine}) differs between s3 and local")
            summary: dict[str, float | int | str] = {
                "days": args.days,
                "rows": args.days * args.rows_per_day,
                "labels": args.labels,
                "agreement": "equal",
            }
            for step, figures in best.items():
                ratio = figures["s3"] / figures["local"]
                say(f"{step:22s} s3 {figures['s3']:.3f}s  local {figures['local']:.3f}s  ratio {ratio:.2f}x")
                summary[f"{step}_s3_s"] = round(figures["s3"], 4)
                summary[f"{step}_local_s"] = round(figures["local"], 4)
                summary[f"{step}_ratio"] = round(ratio, 3)
            print(json.dumps(summary), flush=True)
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

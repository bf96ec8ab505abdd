"""Scale-out: a backfill and a training set spread over 1 and 2 workers, against one process.

    python bench/scale.py --size small|large [--redis-url URL] [--skip-celery] [--keep]
    python bench/scale.py --size large --reuse WORK   # training sets only, over a kept backfill

What it does
------------
1. **Data** (seeded, cached under `bench/.data/scale-<size>`): one Parquet file per day in
   `date=YYYY-MM-DD/` folders (the source prunes by day), columns `user_id`, `ts`, `created`,
   `amount`, `channel`; two row feature groups over it (`scale_stats`, `scale_channel`).

   | size  | days | rows a day | entities | label rows |
   |-------|-----:|-----------:|---------:|-----------:|
   | small |    8 |     50,000 |   20,000 |     50,000 |
   | large |   60 |  1,000,000 |  500,000 |  1,000,000 |

2. **Backfill** of every day, each configuration into its own offline root, Redis key prefix
   and Dagster instance, through `skewless.feature_assets.backfill.backfill` (the backfill cut
   into runs of `--days-per-run` days, each run a real `dagster job execute` process recorded
   in the instance):
   - `in_process`: the runs one after another, one process each (the single-process baseline);
   - `multiprocess` with 1 and 2 step processes working at once (1 and 2 runs at a time, each
     run's steps one at a time: `SKEWLESS_MAX_CONCURRENT=1`);
   - `celery` with 1 and 2 real Celery workers (`-c 1`, Redis as broker), started for the
     backfill and stopped after (skipped, with the reason printed, if Celery cannot start).
   Every configuration's offline files are hashed byte for byte and its online values read
   back for every entity; `results_identical` says whether all equal the in-process run's.
3. **Training set** of `label rows` labels against both groups: the in-process client
   (`FeatureStore.get_training_dataset`, in-memory and partitioned engines) against the
   distributed Dagster job (one step per bucket) on the multiprocess executor and on 2 Celery
   workers; results compared with `frame.equals`.

Peak RSS per process comes from `/proc/<pid>/status` `VmHWM`, sampled every 0.2 s over the
bench's descendants (run processes, step processes, Celery workers), so it is per process,
not summed. The machine has 2 cores: 2 workers can at best halve the wall time, less what
Dagster's per-run and per-step overhead adds (see ../shared/DAGSTER_NOTES.md).

The LAST line is one JSON object with at least `results_identical`, `celery_workers_used`
(distinct Celery workers that ran steps in the 2-worker backfill) and `speedup_2_workers`
(multiprocess: 1-worker wall time / 2-worker wall time), plus per configuration `<name>_s`,
`<name>_max_rss_mb` (largest single process), and the training-set figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SIZES = {
    "small": {"days": 8, "rows_per_day": 50_000, "entities": 20_000, "labels": 50_000},
    "large": {"days": 60, "rows_per_day": 1_000_000, "entities": 500_000, "labels": 1_000_000},
}
START = date(2026, 1, 1)

REPO = textwrap.dedent(
    '''
    """bench/scale.py's feature repository: a code location for run processes and workers."""
    import os
    from pathlib import Path

    import polars as pl

    from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
    from skewless.feature_assets.definitions import build_definitions

    user = Entity("user", {{"user_id": pl.Int64}})
    events = FileSource(
        "scale_events", {data!r}, "ts", created_timestamp_field="created", start_date={start!r}
    )
    stats = FeatureGroup(
        "scale_stats", user, events,
        transformation=lambda f: f.with_columns(
            (pl.col("amount") * 2).alias("amount_x2"), (pl.col("channel") == "web").alias("web")
        ),
        features=[
            Feature("amount", pl.Float64, default=0.0),
            Feature("amount_x2", pl.Float64),
            Feature("web", pl.Boolean, default=False),
        ],
    )
    channel = FeatureGroup(
        "scale_channel", user, events,
        transformation=lambda f: f.select(
            "user_id", "ts", "created", pl.col("channel").str.to_uppercase().alias("channel_upper")
        ),
        features=[Feature("channel_upper", pl.String, default="NONE")],
    )
    # the training set's labels: the distributed job builds the service's training set
    training = FeatureService(
        "scale_training",
        {features!r},
        labels=FileSource("scale_labels", {labels!r}, "label_ts", start_date={start!r}),
    )
    repository = FeatureRepository(groups=[stats, channel], services=[training])
    defs = build_definitions(repository)
    '''
)
FEATURES = [
    "scale_stats:v1:amount",
    "scale_stats:v1:amount_x2",
    "scale_stats:v1:web",
    "scale_channel:v1:channel_upper",
]


def log(message: str) -> None:
    print(f"[scale] {message}", flush=True)


# ---------------------------------------------------------------------- data
def generate(folder: Path, days: int, rows_per_day: int, entities: int, labels: int) -> None:
    """One file per day (numpy, seeded per day: the same bytes on every machine), then labels."""
    import numpy as np
    import polars as pl

    manifest = folder / "MANIFEST.json"
    wanted = {"days": days, "rows_per_day": rows_per_day, "entities": entities, "labels": labels, "v": 1}
    if manifest.exists() and json.loads(manifest.read_text()) == wanted:
        log(f"data: reusing {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    channels = np.array(["web", "pos", "app"])
    for i in range(days):
        day = START + timedelta(days=i)
        rng = np.random.default_rng(1000 + i)
        base = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1_000_000)
        ts = base + np.sort(rng.integers(0, 86_400_000_000, rows_per_day))
        frame = pl.DataFrame(
            {
                "user_id": rng.integers(0, entities, rows_per_day),
                "ts": ts,
                "created": ts + rng.integers(0, 5_000_000, rows_per_day),
                "amount": np.round(rng.gamma(2.0, 30.0, rows_per_day), 2),
                "channel": channels[rng.integers(0, 3, rows_per_day)],
            }
        ).with_columns(
            pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.col("created").cast(pl.Datetime("us", "UTC"))
        )
        out = folder / "events" / f"date={day.isoformat()}"
        out.mkdir(parents=True)
        frame.write_parquet(out / "part-0.parquet", row_group_size=256_000)
    rng = np.random.default_rng(7)
    span = days * 86_400_000_000
    base = int(datetime(START.year, START.month, START.day, tzinfo=UTC).timestamp() * 1_000_000)
    pl.DataFrame(
        {
            "user_id": rng.integers(0, entities, labels),
            "label_ts": base + span // 2 + rng.integers(0, span // 2, labels),
        }
    ).with_columns(pl.col("label_ts").cast(pl.Datetime("us", "UTC"))).write_parquet(folder / "labels.parquet")
    manifest.write_text(json.dumps(wanted))
    log(f"data: {days} days x {rows_per_day:,} rows in {time.perf_counter() - started:.1f} s")


# ---------------------------------------------------------------------- RSS per process
class PeakRSS:
    """Peak resident set size of every descendant process, by pid, sampled from /proc
    (`VmHWM` is each process's own high-water mark, so a sample just before it exits is its
    peak)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parents: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            mine = {me}
            grew = True
            while grew:
                grew = False
                for pid, parent in parents.items():
                    if parent in mine and pid not in mine:
                        mine.add(pid)
                        grew = True
            for pid in mine - {me}:
                with contextlib.suppress(OSError, ValueError, StopIteration):  # zombies: no VmHWM
                    status = Path(f"/proc/{pid}/status").read_text()
                    lines = status.splitlines()
                    hwm = next(int(line.split()[1]) for line in lines if line.startswith("VmHWM"))
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
                    if hwm > self.peaks.get(pid, ("", 0))[1]:
                        self.peaks[pid] = (cmd, hwm)
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, float]:
        """Largest single process, in MiB, by role (run process, step process, celery worker)."""
        roles: dict[str, float] = {}
        for cmd, kib in self.peaks.values():
            if "redis-server" in cmd:
                continue
            role = (
                "celery_worker"
                if "celery" in cmd and "worker" in cmd
                else "run_process"
                if "job execute" in cmd or "execute_run" in cmd
                else "step_process"
                if "multiprocessing" in cmd or "execute_step" in cmd or "api execute_step" in cmd
                else "other"
            )
            roles[role] = max(roles.get(role, 0.0), round(kib / 1024, 1))
        return roles


def self_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# ---------------------------------------------------------------------- results
def offline_digest(root: Path) -> dict[str, str]:
    """sha256 of every stored offline file (data and metadata), by path under the root;
    registry and temporary files excluded (they name runs and times)."""
    out = {}
    for path in sorted(root.rglob("*.parquet")):
        rel = str(path.relative_to(root))
        if "_registry" in rel or "/." in rel or rel.startswith("_training_sets"):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def online_values(store_env: dict[str, str], repo_module: Path, entities: int) -> Any:
    """Every entity's online features through the client (as served)."""
    from skewless import FeatureStore
    from skewless.config import StoreConfig
    from skewless.repository import load_repository

    repository = load_repository(str(repo_module))
    config = StoreConfig(
        store_env["SKEWLESS_OFFLINE_ROOT"],
        store_env["SKEWLESS_REDIS_URL"],
        store_env["SKEWLESS_HOME"],
        store_env["SKEWLESS_KEY_PREFIX"],
    )
    with FeatureStore(repository, config) as store:
        return store.get_online_features({"user_id": list(range(entities))}, features=FEATURES)


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


# ---------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    parser.add_argument("--days-per-run", type=int, default=0, help="default: days / 8, at least 1")
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (for --reuse)")
    parser.add_argument(
        "--reuse",
        default=None,
        help="a work folder kept by an earlier run (--keep): reuse its backfill figures and "
        "offline store, run only the training sets",
    )
    parser.add_argument(
        "--configs", default="", help="comma-separated subset, e.g. in_process,celery_2 (default: all)"
    )
    args = parser.parse_args()
    size = SIZES[args.size]

    from bench_redis import resolve_redis

    data_dir = Path(args.data_dir or ROOT / "bench" / ".data" / f"scale-{args.size}")
    generate(data_dir, size["days"], size["rows_per_day"], size["entities"], size["labels"])
    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="skewless-bench-scale-"))
    url = resolve_redis(args.redis_url, work / "state")
    if not args.redis_url and url.startswith("redis://"):
        # millions of keys: a database of its own, so other clients' SCANs of db 0 stay fast
        url = url.rsplit("/", 1)[0] + "/12"
    db_url = url.rsplit("/", 1)[0] + "/13" if url.startswith("redis://") else url
    module_dir = work / "code"
    module_dir.mkdir(exist_ok=True)
    repo_module = module_dir / "scale_repo.py"
    repo_module.write_text(
        REPO.format(
            data=str(data_dir / "events"),
            labels=str(data_dir / "labels.parquet"),
            start=START.isoformat(),
            features=FEATURES,
        )
    )
    first, last = START, START + timedelta(days=size["days"] - 1)
    per_run = args.days_per_run or max(1, size["days"] // 8)
    result: dict[str, Any] = {
        "size": args.size,
        "days": size["days"],
        "rows_per_day": size["rows_per_day"],
        "days_per_run": per_run,
    }
    log(f"work folder {work}; Redis {url}; {size['days']} days in runs of {per_run}")
    configs: list[tuple[str, str, int]] = [
        ("in_process", "in_process", 1),
        ("multiprocess_1", "multiprocess", 1),
        ("multiprocess_2", "multiprocess", 2),
    ]
    if not args.skip_celery:
        configs += [("celery_1", "celery", 1), ("celery_2", "celery", 2)]
    if args.configs:
        chosen = set(args.configs.split(","))
        configs = [c for c in configs if c[0] in chosen]
    saved = work / "backfill.json"
    if args.reuse:
        if not saved.exists():
            parser.error(f"--reuse {work}: no backfill.json there (was it kept with --keep?)")
        result = json.loads(saved.read_text())
        configs = []
        log(f"reusing the backfill of {work}: {result.get('configs_compared')}")
    prefixes: list[str] = []
    failed_any = False
    digests: dict[str, dict[str, str]] = {}
    online: dict[str, Any] = {}
    from skewless.feature_assets.backfill import backfill

    try:
        for name, executor, workers in configs:
            home = work / name
            (home / "dagster").mkdir(parents=True)
            (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            prefix = f"skbench:scale{uuid.uuid4().hex[:6]}"
            prefixes.append(prefix)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(module_dir), str(ROOT)]),
                "SKEWLESS_HOME": str(home / "state"),
                "DAGSTER_HOME": str(home / "dagster"),
                "SKEWLESS_OFFLINE_ROOT": str(home / "offline"),
                "SKEWLESS_REDIS_URL": url,
                "SKEWLESS_KEY_PREFIX": prefix,
                "SKEWLESS_CELERY_BROKER": db_url,
                # multiprocess: `workers` step processes in all (runs at a time x steps per run
                # at a time), so 1 worker really is one process working
                "SKEWLESS_MAX_CONCURRENT": "1",
            }
            log(f"{name}: backfill {first}..{last} ({executor}, {workers} worker(s))")
            try:
                with PeakRSS() as rss:
                    started = time.perf_counter()
                    done = backfill(
                        "scale_repo",
                        first,
                        last,
                        home / "dagster",
                        executor=executor,
                        workers=workers,
                        partitions_per_run=per_run,
                        env=env,
                        working_directory=module_dir,
                    )
                    seconds = time.perf_counter() - started
            except Exception as exc:  # Celery that cannot start: a printed skip, not a silent pass
                log(f"{name}: skipped: {type(exc).__name__}: {exc}")
                result[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if not done.ok:
                failed_any = True
                (home / "failure.log").write_text(done.failure_log)
                log(f"{name}: FAILED {done.statuses}; the runs' output: {home / 'failure.log'}")
                result[f"{name}_error"] = f"runs failed: {done.statuses}"
                continue
            result[f"{name}_s"] = round(seconds, 2)
            result[f"{name}_rss_mb"] = rss.summary()
            result[f"{name}_max_rss_mb"] = max(rss.summary().values(), default=0.0)
            result[f"{name}_workers_used"] = len(done.workers)
            digests[name] = offline_digest(home / "offline")
            online[name] = online_values(env, repo_module, size["entities"])
            log(
                f"{name}: {seconds:.1f} s, {len(done.run_ids)} runs, steps on {len(done.workers)} "
                f"worker(s), largest process {result[f'{name}_max_rss_mb']} MiB"
            )
        base = "in_process"
        if configs:
            identical = (
                bool(digests)
                and base in digests
                and all(digests[n] == digests[base] and online[n].equals(online[base]) for n in digests)
            )
            result["results_identical"] = identical
            result["configs_compared"] = sorted(digests)
            result["offline_files"] = len(digests.get(base, {}))
            if "multiprocess_1_s" in result and "multiprocess_2_s" in result:
                result["speedup_2_workers"] = round(
                    result["multiprocess_1_s"] / result["multiprocess_2_s"], 3
                )
            if "celery_1_s" in result and "celery_2_s" in result:
                result["speedup_2_workers_celery"] = round(result["celery_1_s"] / result["celery_2_s"], 3)
            result["celery_workers_used"] = result.get("celery_2_workers_used", 0)
            saved.write_text(json.dumps(result))
        if not args.skip_training and base in result.get("configs_compared", []):
            result.update(training(work, module_dir, repo_module, data_dir, url, work / base, db_url))
    finally:
        for prefix in prefixes:
            with contextlib.suppress(Exception):
                delete_prefix(url, prefix)
        if not args.keep and not args.reuse and not failed_any:
            shutil.rmtree(work, ignore_errors=True)
    result["bench_process_rss_mb"] = self_peak_mb()
    print(json.dumps(result))
    return 0 if result.get("results_identical") else 1


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import polars as pl
    from skewless import FeatureStore
    from skewless.config import StoreConfig
    from skewless.repository import load_repository

    repo_module, offline_root, state, engine, labels_path, out = sys.argv[1:7]
    repository = load_repository(repo_module)
    labels = pl.read_parquet(labels_path)
    config = StoreConfig(offline_root, "redis://127.0.0.1:1/0", state, "unused")
    store = FeatureStore(repository, config)
    started = time.perf_counter()
    frame = store.get_training_dataset(
        labels, features={features!r}, timestamp_column="label_ts", engine=engine
    )
    seconds = time.perf_counter() - started
    frame.write_parquet(out)
    stats = store.last_training_stats
    print(json.dumps({{"seconds": seconds, "engine": stats.engine, "buckets": stats.buckets,
                      "estimated_mb": round(stats.estimated_bytes / 2**20, 1)}}))
    """
)


def train_in_process(
    engine: str, repo_module: Path, offline_root: Path, labels_path: Path, out: Path, state: Path
) -> dict[str, Any]:
    """One in-process engine in a fresh interpreter, so its peak RSS is its own."""
    import subprocess

    script = TRAIN_SCRIPT.format(features=FEATURES)
    command = [sys.executable, "-c", script, str(repo_module), str(offline_root), str(state), engine]
    command += [str(labels_path), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKEWLESS_HOME": str(state)}
    with PeakRSS() as rss:
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"training set ({engine}) failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "wall_s": wall, "max_rss_mb": max(rss.summary().values(), default=0.0)}


def training(
    work: Path, module_dir: Path, repo_module: Path, data_dir: Path, url: str, base: Path, broker: str
) -> dict[str, Any]:
    """The training set in process (both engines, each in its own interpreter) and as the
    distributed Dagster job (one step per bucket) on multiprocess and on 2 Celery workers,
    all over the in-process backfill's offline store; every result equals the in-memory
    engine's (`frame.equals`)."""
    import polars as pl

    labels_path = data_dir / "labels.parquet"
    out: dict[str, Any] = {
        "training_label_rows": pl.scan_parquet(labels_path).select(pl.len()).collect().item()
    }
    frames: dict[str, Path] = {}
    for engine in ("memory", "partitioned"):
        target = work / f"train-{engine}.parquet"
        log(f"training set: in process, engine {engine}")
        figures = train_in_process(
            engine, repo_module, base / "offline", labels_path, target, work / "train-state"
        )
        frames[engine] = target
        out[f"training_{engine}_s"] = round(figures["seconds"], 2)
        out[f"training_{engine}_max_rss_mb"] = figures["max_rss_mb"]
        if engine == "partitioned":
            out["training_partitioned_buckets"] = figures["buckets"]
        out["training_estimated_mb"] = figures["estimated_mb"]
        log(f"training set ({engine}): {figures['seconds']:.1f} s, {figures['max_rss_mb']} MiB")
    from skewless.feature_assets.distributed_training import run_distributed_training_set

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(module_dir), str(ROOT)]),
        "SKEWLESS_OFFLINE_ROOT": str(base / "offline"),
        "SKEWLESS_REDIS_URL": url,  # never connected: training sets read the offline store only
        "SKEWLESS_KEY_PREFIX": "skbench:scaletrain",
        "SKEWLESS_CELERY_BROKER": broker,
    }
    for name, executor in (("multiprocess_2", "multiprocess"), ("celery_2", "celery")):
        home = work / f"train-{name}"
        (home / "dagster").mkdir(parents=True, exist_ok=True)
        (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        run_env = {**env, "SKEWLESS_HOME": str(home / "state"), "DAGSTER_HOME": str(home / "dagster")}
        log(f"training set: distributed job on {executor}, 2 workers")
        try:
            with PeakRSS() as rss:
                done = run_distributed_training_set(
                    "scale_repo",
                    "scale_training_v1",
                    home / "dagster",
                    executor=executor,
                    workers=2,
                    env=run_env,
                    working_directory=module_dir,
                )
        except Exception as exc:  # Celery that cannot start: a printed skip, not a silent pass
            log(f"training set ({name}): skipped: {type(exc).__name__}: {exc}")
            out[f"training_distributed_{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if not done.ok:
            (home / "failure.log").write_text(done.log)
            log(f"training set ({name}): FAILED {done.status}; output in {home / 'failure.log'}")
            out[f"training_distributed_{name}_error"] = f"run {done.status}"
            out["training_identical"] = False
            continue
        target = work / f"train-distributed-{name}.parquet"
        assert done.path is not None
        shutil.copyfile(done.path, target)
        frames[f"distributed_{name}"] = target
        joins = [s for s in done.steps if "join" in s.step_key]
        out[f"training_distributed_{name}_s"] = round(done.seconds, 2)
        out[f"training_distributed_{name}_buckets"] = done.buckets
        out[f"training_distributed_{name}_workers_used"] = len({s.worker for s in joins})
        out[f"training_distributed_{name}_rss_mb"] = rss.summary()
        out[f"training_distributed_{name}_max_rss_mb"] = max(rss.summary().values(), default=0.0)
        log(
            f"training set ({name}): {done.seconds:.1f} s, {done.buckets} buckets, join steps on "
            f"{out[f'training_distributed_{name}_workers_used']} worker(s)"
        )
    reference = pl.read_parquet(frames["memory"])
    out["training_compared"] = sorted(frames)
    out["training_identical"] = out.get("training_identical", True) and all(
        pl.read_parquet(p).equals(reference) for p in frames.values()
    )
    if "training_distributed_multiprocess_2_s" in out:
        out["speedup_training_distributed_vs_memory"] = round(
            out["training_memory_s"] / out["training_distributed_multiprocess_2_s"], 3
        )
    return out


if __name__ == "__main__":
    sys.exit(main())

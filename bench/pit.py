"""Point-in-time join benchmark: skewless's training-set path against plain Polars and DuckDB.

    python bench/pit.py --size medium|large|xl [--ttl-days N] [--data-dir DIR] [--keep]

What it does
------------
1. **Data** (seeded, deterministic, cached). A synthetic feature group `bench_features:v1`
   (entity `user_id` Int64, 20 float64 features `f00..f19`, ~0.5% nulls per feature) is written
   day by day (30 daily partitions from 2026-01-01) into the project's offline layout with
   `OfflineStore.write_partition`, exactly as the Dagster offline asset would. ~2% of the rows
   are corrections: same user and `event_timestamp` as another row, a later
   `created_timestamp`, different values. 10% of the rows belong to a "hot" 1% of entities.
   Label rows (`user_id`, `label_ts`) are spread over the last 10 days, in random order, with
   ~0.1% before the first feature row, ~1% unknown entities, ~1% sitting exactly on a feature
   row's event time (or 1-3 whole days after it, to hit the TTL boundary) and ~0.5% exact
   duplicate rows.

   | size   | label rows | feature rows | entities |
   |--------|-----------:|-------------:|---------:|
   | medium |       100k |           1M |     100k |
   | large  |         1M |          10M |       1M |
   | xl     |        10M |         100M |      10M |

   (About 10 feature rows per entity at every size.) Generation runs in its own process, one
   day in memory at a time (an xl day is ~3.3M rows, ~2 GB peak RSS while built, ~5 s to
   build and write; the 100M rows are never in memory together), and is reused when
   `<data-dir>/MANIFEST.json` records the same parameters. Default data dir:
   `bench/.data/<size>` (git-ignored).

2. **Engines**, each in a fresh subprocess, one after the other (the partition files are read
   once beforehand so no engine pays the cold page cache for the others):
   - `memory`, `partitioned`: `FeatureStore(...).get_training_dataset(labels, features=[20
               refs], timestamp_column="label_ts", engine=...)`, skewless's two engines
               (no Redis: the training path must not touch it; the benchmark checks that
               the embedded Redis was never started). `--no-prune` turns off their row
               pruning (`training_set.PRUNE_ROWS`: the labels' time range, and for the
               partitioned engine's scatter the entities no label names);
   - `polars`: `scan_parquet(all partition files)`, sort by (event, created),
               `labels.sort("label_ts").join_asof(..., by="user_id", strategy="backward")`
               (with `tolerance=ttl` under `--ttl-days`), back to label order via a row index;
   - `duckdb`: `ASOF LEFT JOIN` over `read_parquet([...])` after dropping superseded
               corrections (`QUALIFY row_number() ... = 1`), TTL as a CASE, ordered back to
               label order, fetched as Arrow.
   The baselines always read every partition; ours prune by the TTL like the library does.
   The children import this checkout's `skewless` (not whatever the venv has installed).

3. **Agreement.** Every engine writes its result (user_id, label_ts, f00..f19, label order) to
   Parquet; the parent compares them column by column: nulls equal, floats exactly equal.

Other flags: `--repeat N` runs each engine N times, round robin (the fastest join counts;
single runs on a small or shared machine can be +-30% noisy), `--engines memory,polars` runs a
subset, `--engine-timeout S` (default 1800) kills a child that takes longer, `--keep` keeps the
run folder (each engine's result Parquet and log) under the data dir.

Reading the output
------------------
Progress lines start with `[pit]`. The LAST line is one JSON object:

- `<engine>_s`: wall seconds inside the child around the join only: reading the labels
  Parquet, listing/reading partitions, joining, materializing the result in memory. Imports,
  store construction and writing the result file are excluded (minimum over `--repeat` runs).
- `<engine>_total_s`: wall seconds of the whole child process as seen by the parent
  (interpreter start, imports, join, writing the result).
- `<engine>_rss_mb`: the child's peak resident set size (`os.wait4` `ru_maxrss`, MiB),
  including the interpreter and imported libraries (~100-150 MB of baseline).
- `ratio_partitioned_vs_memory_time` / `_rss`: the out-of-core engine against the in-memory
  one (the targets: at most 1.5 and 0.6).
- `estimate_mb`: the in-memory engine's estimated peak (`training_set.estimated_peak`, what
  `engine="auto"` compares with the budget); `estimate_error` = |estimate - memory_rss_mb| /
  memory_rss_mb. `buckets`: the partitioned engine's bucket count.
- `<engine>_rows_joined`: feature rows the partitioned engine scattered after pruning;
  `<engine>_rss_before_join_mb`: the child's peak RSS before the join (imports, store).
- `ratio_<ours>_vs_<baseline>_time` / `_rss` (ours: memory, partitioned; baseline: polars,
  duckdb): above 1 means ours is slower / hungrier than the baseline.
- `rows_agree`: true when all selected engines produced identical rows; false when any two
  differ (see `mismatches`); null when an engine failed or was skipped (`<engine>_error`
  says why); the engines that ran are still compared (`engines_compared`).
- `partitions_total`: partitions on disk; `<engine>_partitions_read`: partition files our client
  listed for the join; `partitions_needed`: partitions in [min(label_ts) - ttl, max(label_ts)]
  (no lower bound without a TTL), which is what min/max pruning can achieve;
  `partitions_needed_exact`: the union of each label's own [label_ts - ttl, label_ts] days.
- `label_rows_matched`: label rows that got at least one non-null feature value.

Exit status: 0 when every selected engine ran and they agree (and ours did not start Redis),
1 otherwise; the JSON line is printed either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
if str(PROJECT_DIR) not in sys.path:  # measure this checkout's skewless, not an installed one
    sys.path.insert(0, str(PROJECT_DIR))

GENERATOR_VERSION = 1
SEED = 20_260_101
START = date(2026, 1, 1)
DAYS = 30
LABEL_DAYS = 10
N_FEATURES = 20
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
GROUP = "bench_features"
ENTITY_KEY = "user_id"
DAY_US = 86_400 * 1_000_000
CORRECTION_RATE = 0.02
NULL_RATE = 0.005
HOT_SHARE = 0.10  # share of feature rows that belong to the hot entities
HOT_ENTITIES = 0.01  # the hot entities: the first 1% of ids
ENGINES = ("memory", "partitioned", "polars", "duckdb")
OURS = ("memory", "partitioned")
RESULT_COLUMNS = [ENTITY_KEY, "label_ts", *FEATURES]


@dataclass(frozen=True)
class Size:
    label_rows: int
    feature_rows: int
    entities: int


SIZES = {
    "medium": Size(label_rows=100_000, feature_rows=1_000_000, entities=100_000),
    "large": Size(label_rows=1_000_000, feature_rows=10_000_000, entities=1_000_000),
    "xl": Size(label_rows=10_000_000, feature_rows=100_000_000, entities=10_000_000),
}


def log(message: str) -> None:
    print(f"[pit] {message}", flush=True)


def epoch_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


# --------------------------------------------------------------------------- layout
def offline_root(data_dir: Path) -> Path:
    return data_dir / "offline"


def labels_path(data_dir: Path) -> Path:
    return data_dir / "labels.parquet"


def manifest_path(data_dir: Path) -> Path:
    return data_dir / "MANIFEST.json"


def make_group(data_dir: Path, ttl_days: int | None) -> Any:
    """The benchmark's feature group; the TTL does not change the offline layout."""
    import polars as pl

    from skewless.language import Entity, Feature, FeatureGroup, FileSource

    return FeatureGroup(
        GROUP,
        entity=Entity("user", {ENTITY_KEY: pl.Int64}),
        source=FileSource(
            "bench_events",
            str(data_dir / "source"),
            "event_timestamp",
            created_timestamp_field="created_timestamp",
            start_date=START,
        ),
        features=[Feature(name, pl.Float64) for name in FEATURES],
        ttl=f"{ttl_days}d" if ttl_days else None,
    )


def partition_files(data_dir: Path) -> list[str]:
    """All partition files of the group, oldest day first (what the baselines read)."""
    base = offline_root(data_dir) / GROUP / "v1"
    return sorted(str(p) for p in base.glob("date=*/data.parquet"))


def params_for(size_name: str) -> dict[str, Any]:
    size = SIZES[size_name]
    return {
        "generator_version": GENERATOR_VERSION,
        "size": size_name,
        "seed": SEED,
        "start": START.isoformat(),
        "days": DAYS,
        "label_days": LABEL_DAYS,
        "features": N_FEATURES,
        "correction_rate": CORRECTION_RATE,
        "null_rate": NULL_RATE,
        **asdict(size),
    }


# --------------------------------------------------------------------------- generation
def draw_entities(rng: Any, n: int, entities: int) -> Any:
    """Entity ids with a mild skew: HOT_SHARE of draws land on the first HOT_ENTITIES."""
    import numpy as np

    hot = max(1, int(entities * HOT_ENTITIES))
    is_hot = rng.random(n) < HOT_SHARE
    return np.where(is_hot, rng.integers(0, hot, n), rng.integers(0, entities, n)).astype(np.int64)


def feature_values(rng: Any, n: int) -> dict[str, Any]:
    """Twenty float64 columns of standard normals with ~NULL_RATE nulls each."""
    import polars as pl

    columns = {}
    for name in FEATURES:
        values = rng.standard_normal(n)
        nulls = rng.random(n) < NULL_RATE
        columns[name] = pl.Series(name, values).scatter(nulls.nonzero()[0], None)
    return columns


def day_frame(day_index: int, rows: int, entities: int, schema: dict[str, Any]) -> Any:
    """One day's feature rows, corrections included, sorted as the offline store keeps them."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng([SEED, day_index])
    n_corrections = round(rows * CORRECTION_RATE)
    n_base = rows - n_corrections
    day_start = epoch_us(START + timedelta(days=day_index))
    base = pl.DataFrame(
        {
            ENTITY_KEY: draw_entities(rng, n_base, entities),
            "event_us": day_start + rng.integers(0, DAY_US, n_base),
        }
    )
    # Two base rows of one user at the same microsecond would be a full tie; drop the rare ones.
    base = base.unique([ENTITY_KEY, "event_us"], keep="first", maintain_order=True)
    n_base = base.height
    delay = 1 + rng.exponential(300 * 1_000_000, n_base).astype(np.int64)  # mean 5 min after
    base = base.with_columns(created_us=pl.col("event_us") + delay, **feature_values(rng, n_base))
    # Corrections: a later created time (1 s to 2 days later), new values, one per corrected row.
    n_corrections = min(n_corrections, n_base)
    picked = np.sort(rng.choice(n_base, n_corrections, replace=False))
    later = rng.integers(1_000_000, 2 * DAY_US, n_corrections)
    corrections = base.select(ENTITY_KEY, "event_us", "created_us")[picked].with_columns(
        created_us=pl.col("created_us") + later, **feature_values(rng, n_corrections)
    )
    frame = pl.concat([base, corrections])
    frame = frame.select(
        pl.col(ENTITY_KEY),
        pl.col("event_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("event_timestamp"),
        pl.col("created_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("created_timestamp"),
        *FEATURES,
    ).sort([ENTITY_KEY, "event_timestamp", "created_timestamp"])
    frame = frame.select(list(schema))
    if dict(frame.schema) != schema:
        raise AssertionError(f"generated schema {frame.schema} != offline schema {schema}")
    return frame, rng


def make_labels(size: Size, tie_users: Any, tie_event_us: Any) -> Any:
    """Label rows in random order: regular, unknown entity, early, on-boundary, duplicates."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng([SEED, 1_000_000])
    n = size.label_rows
    n_early = max(5, n // 1000)
    n_unknown = n // 100
    n_tie = min(n // 100, len(tie_users))
    n_duplicate = n // 200
    n_regular = n - n_early - n_unknown - n_tie - n_duplicate
    window_start = epoch_us(START + timedelta(days=DAYS - LABEL_DAYS))
    end = epoch_us(START + timedelta(days=DAYS))
    first = epoch_us(START)

    picked = rng.choice(len(tie_users), n_tie, replace=False)
    offsets = rng.choice(np.array([0, 0, 1, 2, 3], dtype=np.int64), n_tie) * DAY_US
    tie_ts = tie_event_us[picked] + offsets
    tie_ts = np.where(tie_ts < end, tie_ts, tie_event_us[picked])
    users = np.concatenate(
        [
            draw_entities(rng, n_regular, size.entities),
            size.entities + rng.integers(0, size.entities, n_unknown),  # ids no feature row has
            draw_entities(rng, n_early, size.entities),
            tie_users[picked],
        ]
    )
    stamps = np.concatenate(
        [
            rng.integers(window_start, end, n_regular),
            rng.integers(window_start, end, n_unknown),
            first - rng.integers(1, 2 * DAY_US, n_early),  # before the first feature row
            tie_ts,
        ]
    )
    copies = rng.integers(0, len(users), n_duplicate)
    users = np.concatenate([users, users[copies]])
    stamps = np.concatenate([stamps, stamps[copies]])
    order = rng.permutation(len(users))
    return pl.DataFrame({ENTITY_KEY: users[order], "label_us": stamps[order]}).select(
        pl.col(ENTITY_KEY).cast(pl.Int64),
        pl.col("label_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("label_ts"),
    )


def generate(data_dir: Path, size_name: str) -> dict[str, Any]:
    """Write all partitions day by day, then the labels; returns statistics for the manifest."""
    import numpy as np

    from skewless.storage.offline import OfflineStore

    size = SIZES[size_name]
    group = make_group(data_dir, None)
    schema = group.offline_schema()
    store = OfflineStore(offline_root(data_dir))
    per_day = [size.feature_rows // DAYS + (1 if d < size.feature_rows % DAYS else 0) for d in range(DAYS)]
    tie_days = range(DAYS - LABEL_DAYS - 3, DAYS)  # ties may be shifted by up to 3 days
    tie_per_day = math.ceil(size.label_rows // 100 / len(tie_days)) + 1
    tie_users, tie_events = [], []
    total_rows = corrections = 0
    started = time.perf_counter()
    for d in range(DAYS):
        frame, rng = day_frame(d, per_day[d], size.entities, schema)
        store.write_partition(group, START + timedelta(days=d), frame)
        total_rows += frame.height
        corrections += frame.height - frame.select(ENTITY_KEY, "event_timestamp").n_unique()
        if d in tie_days:
            rows = np.sort(rng.choice(frame.height, min(tie_per_day, frame.height), replace=False))
            sample = frame[rows]
            tie_users.append(sample[ENTITY_KEY].to_numpy())
            tie_events.append(sample["event_timestamp"].dt.epoch("us").to_numpy())
        del frame
        if d % 5 == 4 or d == DAYS - 1:
            log(f"  day {d + 1}/{DAYS} written ({total_rows:,} rows, {time.perf_counter() - started:.1f}s)")
    labels = make_labels(size, np.concatenate(tie_users), np.concatenate(tie_events))
    labels.write_parquet(labels_path(data_dir), compression="zstd", statistics=True)
    return {
        "feature_rows": total_rows,
        "correction_rows": corrections,
        "label_rows": labels.height,
        "partitions": DAYS,
    }


# --------------------------------------------------------------------------- engines
def run_ours(
    data_dir: Path, run_dir: Path, ttl_days: int | None, engine: str, prune: bool
) -> tuple[Any, float, dict[str, Any]]:
    import polars as pl

    from skewless.client import training_set
    from skewless.client.feature_store import FeatureStore
    from skewless.config import StoreConfig
    from skewless.repository import FeatureRepository

    training_set.PRUNE_ROWS = prune
    state_dir = run_dir / f"{engine}-state"
    group = make_group(data_dir, ttl_days)
    config = StoreConfig(
        offline_root=str(offline_root(data_dir)), redis_url=None, state_dir=str(state_dir), key_prefix="bench"
    )
    store = FeatureStore(FeatureRepository([group]), config)
    refs = [f"{GROUP}:v1:{name}" for name in FEATURES]

    rss_before = vm_hwm_mb()
    started = time.perf_counter()
    labels = pl.read_parquet(labels_path(data_dir))
    result = store.get_training_dataset(labels, features=refs, timestamp_column="label_ts", engine=engine)
    elapsed = time.perf_counter() - started

    stats = store.last_training_stats
    group_stats = stats.groups[f"{GROUP}:v1"]
    info = {
        "partitions_read": group_stats["partitions_read"],
        "rows_read": group_stats["rows_read"],
        "rows_joined": group_stats.get("rows_joined"),
        "engine": stats.engine,
        "buckets": stats.buckets,
        "estimate_mb": stats.estimated_bytes / 2**20,
        "rss_before_join_mb": rss_before,
        "redis_started": (state_dir / "redis").exists() or getattr(store.online, "_client", None) is not None,
    }
    store.close()
    return result.select(RESULT_COLUMNS), elapsed, info


def vm_hwm_mb() -> float | None:
    """This process's peak RSS so far (VmHWM), MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_memory(
    data_dir: Path, run_dir: Path, ttl_days: int | None, prune: bool
) -> tuple[Any, float, dict[str, Any]]:
    return run_ours(data_dir, run_dir, ttl_days, "memory", prune)


def run_partitioned(
    data_dir: Path, run_dir: Path, ttl_days: int | None, prune: bool
) -> tuple[Any, float, dict[str, Any]]:
    return run_ours(data_dir, run_dir, ttl_days, "partitioned", prune)


def run_polars(
    data_dir: Path, run_dir: Path, ttl_days: int | None, prune: bool
) -> tuple[Any, float, dict[str, Any]]:
    import polars as pl

    started = time.perf_counter()
    labels = pl.read_parquet(labels_path(data_dir)).with_row_index("__row")
    files = partition_files(data_dir)
    features = (
        pl.scan_parquet(files)
        .select(ENTITY_KEY, "event_timestamp", "created_timestamp", *FEATURES)
        .sort("event_timestamp", "created_timestamp")
        .drop("created_timestamp")
    )
    result = (
        labels.lazy()
        .sort("label_ts")
        .join_asof(
            features,
            left_on="label_ts",
            right_on="event_timestamp",
            by=ENTITY_KEY,
            strategy="backward",
            tolerance=timedelta(days=ttl_days) if ttl_days else None,
            check_sortedness=False,
        )
        .sort("__row")
        .select(RESULT_COLUMNS)
        .collect()
    )
    return result, time.perf_counter() - started, {"partitions_read": len(files)}


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_duckdb(
    data_dir: Path, run_dir: Path, ttl_days: int | None, prune: bool
) -> tuple[Any, float, dict[str, Any]]:
    import duckdb
    import polars as pl

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {sql_string(str(run_dir / 'duckdb-tmp'))}")

    started = time.perf_counter()
    files = partition_files(data_dir)
    file_list = "[" + ", ".join(sql_string(f) for f in files) + "]"
    if ttl_days:
        ttl_us = ttl_days * DAY_US
        fresh = f"epoch_us(f.event_timestamp) >= epoch_us(l.label_ts) - {ttl_us}"
        values = ", ".join(f"CASE WHEN {fresh} THEN f.{name} END AS {name}" for name in FEATURES)
    else:
        values = ", ".join(f"f.{name}" for name in FEATURES)
    query = f"""
        WITH labels AS (
            SELECT file_row_number AS row_id, {ENTITY_KEY}, label_ts
            FROM read_parquet({sql_string(str(labels_path(data_dir)))}, file_row_number = true)
        ),
        features AS (
            SELECT {ENTITY_KEY}, event_timestamp, {", ".join(FEATURES)}
            FROM read_parquet({file_list})
            QUALIFY row_number() OVER (
                PARTITION BY {ENTITY_KEY}, event_timestamp ORDER BY created_timestamp DESC
            ) = 1
        )
        SELECT l.{ENTITY_KEY}, l.label_ts, {values}
        FROM labels l
        ASOF LEFT JOIN features f ON l.{ENTITY_KEY} = f.{ENTITY_KEY} AND l.label_ts >= f.event_timestamp
        ORDER BY l.row_id
    """
    table = con.sql(query).to_arrow_table()
    result = pl.from_arrow(table)
    elapsed = time.perf_counter() - started
    con.close()
    return result, elapsed, {"partitions_read": len(files)}


RUNNERS = {"memory": run_memory, "partitioned": run_partitioned, "polars": run_polars, "duckdb": run_duckdb}


def child_main(args: argparse.Namespace) -> int:
    """Entry point of a child process: `generate` or one engine."""
    data_dir = Path(args.data_dir)
    report_path = Path(args.report)
    report: dict[str, Any] = {}
    try:
        if args.child == "generate":
            started = time.perf_counter()
            report.update(generate(data_dir, args.size))
            report["seconds"] = time.perf_counter() - started
        else:
            run_dir = Path(args.run_dir)
            result, elapsed, info = RUNNERS[args.child](data_dir, run_dir, args.ttl_days, not args.no_prune)
            report.update(info, join_s=elapsed, rows=result.height)
            started = time.perf_counter()
            result.write_parquet(run_dir / f"{args.child}.parquet", compression="lz4")
            report["write_s"] = time.perf_counter() - started
        code = 0
    except BaseException as exc:  # report MemoryError, KeyboardInterrupt... to the parent too
        report["error"] = f"{type(exc).__name__}: {exc}".strip()[:2000]
        report["traceback"] = traceback.format_exc()[-4000:]
        code = 1
    report_path.write_text(json.dumps(report))
    return code


def spawn(child_args: list[str], report: Path, log_path: Path | None, timeout: float) -> dict[str, Any]:
    """Run `pit.py --child ...`; measure wall time and peak RSS (ru_maxrss, KiB) of the child."""
    report.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *child_args, "--report", str(report)]
    output = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=output, stderr=output)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - started > timeout:
            timed_out = True
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if output:
        output.close()
    outcome: dict[str, Any] = {
        "total_s": elapsed,
        "rss_mb": usage.ru_maxrss / 1024,
        "returncode": process.returncode,
    }
    if report.exists():
        outcome.update(json.loads(report.read_text()))
    tail = log_path.read_text(errors="replace")[-2000:].strip() if log_path and log_path.exists() else ""
    if timed_out:
        outcome["error"] = f"timed out after {timeout:g}s (killed)"
    elif process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        hint = " (out of memory? the kernel OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        outcome["error"] = f"killed by {name}{hint}" + (f": {tail}" if tail else "")
    elif process.returncode != 0 and "error" not in outcome:
        outcome["error"] = f"exit status {process.returncode}: {tail}"
    return outcome


# --------------------------------------------------------------------------- parent
def ensure_data(data_dir: Path, size_name: str, timeout: float) -> tuple[dict[str, Any], bool]:
    """Reuse the cached data if its manifest matches, otherwise generate it (in a child)."""
    params = params_for(size_name)
    marker = manifest_path(data_dir)
    if marker.exists():
        manifest = json.loads(marker.read_text())
        if (
            manifest.get("params") == params
            and len(partition_files(data_dir)) == DAYS
            and labels_path(data_dir).exists()
        ):
            log(f"reusing data in {data_dir} (generated in {manifest['stats']['seconds']:.1f}s)")
            return manifest, True
        log(f"cached data in {data_dir} does not match; regenerating")
    marker.unlink(missing_ok=True)
    shutil.rmtree(offline_root(data_dir), ignore_errors=True)
    labels_path(data_dir).unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    size = SIZES[size_name]
    log(
        f"generating {size_name}: {size.feature_rows:,} feature rows over {DAYS} days, "
        f"{size.entities:,} entities, {size.label_rows:,} label rows -> {data_dir}"
    )
    outcome = spawn(
        ["--child", "generate", "--size", size_name, "--data-dir", str(data_dir)],
        data_dir / ".generate.json",
        None,
        timeout,
    )
    (data_dir / ".generate.json").unlink(missing_ok=True)
    if "error" in outcome:
        raise SystemExit(f"[pit] data generation failed: {outcome['error']}\n{outcome.get('traceback', '')}")
    stats = {
        k: outcome[k] for k in ("feature_rows", "correction_rows", "label_rows", "partitions", "seconds")
    }
    stats["peak_rss_mb"] = round(outcome["rss_mb"], 1)
    stats["bytes"] = sum(p.stat().st_size for p in data_dir.rglob("*.parquet"))
    manifest = {"params": params, "stats": stats}
    temp = marker.with_suffix(".tmp")
    temp.write_text(json.dumps(manifest, indent=2))
    os.replace(temp, marker)
    log(
        f"generated in {stats['seconds']:.1f}s (peak RSS {stats['peak_rss_mb']:.0f} MB, "
        f"{stats['bytes'] / 2**20:.0f} MiB on disk)"
    )
    return manifest, False


def warm_page_cache(files: list[str]) -> float:
    started = time.perf_counter()
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass
    return time.perf_counter() - started


def partitions_needed(data_dir: Path, ttl_days: int | None) -> dict[str, Any]:
    """Partitions that min/max pruning (and exact per-label pruning) would need to read."""
    import polars as pl

    days = {date.fromisoformat(Path(f).parent.name[len("date=") :]) for f in partition_files(data_dir)}
    label_days = (
        pl.scan_parquet(labels_path(data_dir))
        .select(pl.col("label_ts").dt.date().unique())
        .collect()
        .to_series()
        .to_list()
    )
    first, last = min(label_days), max(label_days)
    if ttl_days is None:
        return {"partitions_needed": sum(1 for d in days if d <= last), "partitions_needed_exact": None}
    low = first - timedelta(days=ttl_days)
    exact = {d - timedelta(days=k) for d in label_days for k in range(ttl_days + 1)} & days
    return {
        "partitions_needed": sum(1 for d in days if low <= d <= last),
        "partitions_needed_exact": len(exact),
    }


def compare(run_dir: Path, engines: list[str], label_rows: int) -> dict[str, Any]:
    """Column-by-column comparison of the engines' results (nulls equal, floats exact)."""
    import polars as pl

    paths = {e: run_dir / f"{e}.parquet" for e in engines}
    heights = {e: pl.scan_parquet(p).select(pl.len()).collect().item() for e, p in paths.items()}
    pairs = [(a, b) for i, a in enumerate(engines) for b in engines[i + 1 :]]
    details: dict[str, Any] = {}
    if len(set(heights.values())) > 1 or any(h != label_rows for h in heights.values()):
        details["heights"] = heights
        return {"agree": False, "details": details, "matched": None}
    differs = {pair: pl.repeat(False, label_rows, eager=True) for pair in pairs}
    bad_columns: dict[tuple[str, str], list[str]] = {pair: [] for pair in pairs}
    any_value = pl.repeat(False, label_rows, eager=True)
    for column in RESULT_COLUMNS:
        series = {}
        for engine, path in paths.items():
            s = pl.read_parquet(path, columns=[column]).to_series()
            series[engine] = s.to_physical() if column == "label_ts" else s
        if column in FEATURES:
            any_value = any_value | series[engines[0]].is_not_null()
        for a, b in pairs:
            mismatch = ~series[a].eq_missing(series[b])
            if mismatch.any():
                differs[(a, b)] = differs[(a, b)] | mismatch
                bad_columns[(a, b)].append(column)
    agree = True
    for (a, b), mask in differs.items():
        count = int(mask.sum())
        if count:
            agree = False
            details[f"{a}_vs_{b}"] = {
                "rows": count,
                "columns": bad_columns[(a, b)],
                "first_rows": mask.arg_true().head(5).to_list(),
            }
    return {"agree": agree, "details": details, "matched": int(any_value.sum())}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--data-dir", help="default: bench/.data/<size>")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (results, logs)")
    parser.add_argument("--ttl-days", type=int, default=None, help="give the group ttl='<N>d'")
    parser.add_argument("--engine-timeout", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine; the fastest counts")
    parser.add_argument(
        "--no-prune",
        action="store_true",
        help="our engines read every row of the partitions they read (no time-range row pruning)",
    )
    parser.add_argument("--child", choices=["generate", *ENGINES], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ttl_days is not None and args.ttl_days < 1:
        parser.error("--ttl-days must be a positive number of days")
    data_dir = Path(args.data_dir or BENCH_DIR / ".data" / args.size).expanduser().resolve()
    args.data_dir = str(data_dir)
    if args.child:
        return child_main(args)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        parser.error(f"--engines: unknown {sorted(unknown)}; choose from {', '.join(ENGINES)}")

    import duckdb
    import polars as pl

    manifest, reused = ensure_data(data_dir, args.size, args.engine_timeout)
    stats = manifest["stats"]
    files = partition_files(data_dir)
    os.sync()  # flush freshly generated files now, not while the first engine runs
    log(f"read {len(files)} partition files once to warm the page cache: {warm_page_cache(files):.1f}s")
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=data_dir))
    summary: dict[str, Any] = {
        "size": args.size,
        "ttl_days": args.ttl_days,
        "rows_agree": None,
        "label_rows": stats["label_rows"],
        "feature_rows": stats["feature_rows"],
        "correction_rows": stats["correction_rows"],
        "entities": SIZES[args.size].entities,
        "partitions_total": len(files),
        "generation_s": round(stats["seconds"], 2),
        "generation_rss_mb": stats["peak_rss_mb"],
        "data_reused": reused,
        "prune": not args.no_prune,
        "data_mib": round(stats["bytes"] / 2**20, 1),
        "cpus": os.cpu_count(),
        "polars": pl.__version__,
        "duckdb": duckdb.__version__,
    }
    summary.update(partitions_needed(data_dir, args.ttl_days))
    ok: list[str] = []
    try:
        selected = [e for e in ENGINES if e in engines]
        for engine in ENGINES:
            summary.update({f"{engine}_s": None, f"{engine}_total_s": None, f"{engine}_rss_mb": None})
            if engine not in selected:
                summary[f"{engine}_error"] = "skipped (--engines)"
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in selected}
        failed: set[str] = set()
        for attempt in range(args.repeat):  # round robin, so drift on the machine hits all alike
            for engine in [e for e in selected if e not in failed]:
                child = ["--child", engine, "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
                if args.ttl_days:
                    child += ["--ttl-days", str(args.ttl_days)]
                if args.no_prune:
                    child.append("--no-prune")
                outcome = spawn(
                    child, run_dir / f"{engine}.json", run_dir / f"{engine}.log", args.engine_timeout
                )
                if "error" in outcome:
                    log(f"{engine}: FAILED: {outcome['error'].splitlines()[0] if outcome['error'] else ''}")
                    summary[f"{engine}_error"] = outcome["error"]
                    summary[f"{engine}_rss_mb"] = round(outcome["rss_mb"], 1)
                    failed.add(engine)
                    continue
                log(
                    f"{engine} (run {attempt + 1}/{args.repeat}): join {outcome['join_s']:.2f}s, "
                    f"child total {outcome['total_s']:.2f}s, peak RSS {outcome['rss_mb']:.0f} MB"
                )
                runs[engine].append(outcome)
        for engine in selected:
            if engine in failed:
                continue
            ok.append(engine)
            best = min(runs[engine], key=lambda r: r["join_s"])
            summary[f"{engine}_s"] = round(best["join_s"], 3)
            summary[f"{engine}_total_s"] = round(best["total_s"], 3)
            summary[f"{engine}_rss_mb"] = round(max(r["rss_mb"] for r in runs[engine]), 1)
            if args.repeat > 1:
                summary[f"{engine}_runs_s"] = [round(r["join_s"], 3) for r in runs[engine]]
            if engine in OURS:
                summary[f"{engine}_partitions_read"] = best.get("partitions_read")
                summary[f"{engine}_rows_joined"] = best.get("rows_joined")
                summary[f"{engine}_rss_before_join_mb"] = best.get("rss_before_join_mb")
                summary["estimate_mb"] = round(best["estimate_mb"], 1)
                if engine == "partitioned":
                    summary["buckets"] = best.get("buckets")
                if any(r.get("redis_started") for r in runs[engine]):
                    summary["redis_started"] = True
        if len(ok) >= 2:
            log(f"comparing {', '.join(ok)} row by row")
            verdict = compare(run_dir, ok, stats["label_rows"])
            summary["label_rows_matched"] = verdict["matched"]
            if verdict["details"]:
                summary["mismatches"] = verdict["details"]
            if not verdict["agree"]:
                summary["rows_agree"] = False
            elif len(ok) == len(engines):
                summary["rows_agree"] = True
            summary["engines_compared"] = ok
    finally:
        if args.keep:
            log(f"kept run folder {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    summary["ratio_partitioned_vs_memory_time"] = ratio(summary["partitioned_s"], summary["memory_s"])
    summary["ratio_partitioned_vs_memory_rss"] = ratio(
        summary["partitioned_rss_mb"], summary["memory_rss_mb"]
    )
    measured = summary["memory_rss_mb"]
    estimate = summary.get("estimate_mb")
    summary["estimate_error"] = (
        round(abs(estimate - measured) / measured, 3) if estimate is not None and measured else None
    )
    for ours in OURS:
        for other in ("polars", "duckdb"):
            both = summary[f"{ours}_s"] is not None and summary[f"{other}_s"] is not None
            summary[f"ratio_{ours}_vs_{other}_time"] = ratio(summary[f"{ours}_s"], summary[f"{other}_s"])
            summary[f"ratio_{ours}_vs_{other}_rss"] = (
                ratio(summary[f"{ours}_rss_mb"], summary[f"{other}_rss_mb"]) if both else None
            )
    if summary.get("redis_started"):
        summary["memory_error"] = "the training path started the embedded Redis"
    print(json.dumps(summary), flush=True)
    healthy = len(ok) == len(engines) and summary["rows_agree"] is not False
    return 0 if healthy and not summary.get("redis_started") else 1


if __name__ == "__main__":
    sys.exit(main())

"""Building a training set: choose an engine, read only the partitions that can matter, join.

Two engines give identical results (the tests run both):
- `memory`: one lazy Polars plan per group (`join_asof` on the pruned partitions), collected
  together. Fastest while the feature rows fit comfortably in memory.
- `partitioned`: larger than memory. Label rows and feature rows are hash-partitioned by the
  entity's join keys into buckets on disk with Polars' streaming sink (bounded memory), then
  each bucket is joined in memory and its result spilled; the buckets are finally gathered back
  into label order. Every entity lives in exactly one bucket, so per-bucket joins are exact.
`auto` picks `partitioned` when the in-memory engine's estimated peak (`estimated_peak`:
feature rows from Parquet footers and label rows, with per-row costs calibrated on the demo)
exceeds the memory budget (`SKEWLESS_PIT_MEMORY_MB`, default a quarter of physical memory,
capped at half of the memory available when the training set starts).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq

from skewless.compute.point_in_time import LABEL_TS, ROW, join_group
from skewless.errors import RequestError
from skewless.language.durations import LIFETIME
from skewless.language.feature_group import FeatureGroup
from skewless.storage.offline import Location, OfflineStore, scan_merged, superseded_filter
from skewless.storage.offline_layout import day_of

Engine = Literal["auto", "memory", "partitioned"]
BUCKET = "__skewless_bucket"


@dataclass
class GroupPlan:
    """What one group contributes: its features, output names and the files to read.

    `files` are the needed days' partitions and micro-batch pieces (day order, partition
    first); `_scan` merges each day's pieces so the rows read equal a merged partition.
    """

    group: FeatureGroup
    features: list[str]
    names: dict[str, str]
    files: list[Location]
    partitions_total: int
    rows: int = 0
    all_files: list[Location] = field(default_factory=list)  # window groups: every stored file
    store: OfflineStore | None = None  # reads the files (None: local paths)

    @property
    def first_day(self) -> date | None:
        return None if not self.files else day_of(self.files[0])


@dataclass
class TrainingSetStats:
    """How the last training set was built: shown by the benchmark and in asset metadata."""

    engine: str = ""
    label_rows: int = 0
    buckets: int = 0
    estimated_bytes: int = 0  # the in-memory engine's estimated peak
    budget_bytes: int = 0
    groups: dict[str, dict[str, int]] = field(default_factory=dict)


def plan_group(
    offline: OfflineStore,
    group: FeatureGroup,
    features: list[str],
    names: dict[str, str],
    label_days: list[date],
) -> GroupPlan:
    """Prune partitions to the days that can hold a value for some label.

    Without a TTL that is every day up to the last label's day. With one, only the days in
    `[label day - ttl, label day]` of some label: a few early labels no longer force reading
    everything in between.
    """
    stored = offline.files(group)  # one listing (on object storage, one LIST per 1,000 files)
    days = sorted({day_of(f) for f in stored})
    last = max(label_days)
    ttl = group.max_window if group.is_windowed else group.time_to_live
    if ttl is None or ttl >= LIFETIME:
        needed = [d for d in days if d <= last]
    else:
        span = math.ceil(ttl / timedelta(days=1))
        wanted = {d - timedelta(days=k) for d in label_days for k in range(span + 1)}
        needed = [d for d in days if d in wanted]
    keep = set(needed)
    files = [path for path in stored if day_of(path) in keep]
    every = stored if group.is_windowed else []
    return GroupPlan(
        group, features, names, files, partitions_total=len(days), all_files=every, store=offline
    )


def memory_budget_bytes() -> int:
    """What a training set may use: `SKEWLESS_PIT_MEMORY_MB`, else a quarter of physical
    memory — and never more than half of what the machine has available right now. The cap
    matters when the process is already large (a demo that just backfilled in process) or
    Redis holds much of the memory: the 24 GiB machine's quarter is 6 GiB, which is not there
    when 16 GiB are in use. Both engines give identical results, so a choice that depends on
    the moment only changes how long it takes."""
    configured = os.environ.get("SKEWLESS_PIT_MEMORY_MB")
    if configured:
        return int(float(configured) * 1024 * 1024)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 1024**3
    available = _available_bytes()
    budget = total // 4
    return budget if available is None else min(budget, available // 2)


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Calibrated on the card-fraud demo's data at 20k and 200k users (0.9M and 9M label rows, as
# many feature rows; `bench/memory.py` prints estimate and measured growth side by side):
LABEL_BYTES = 60  # per label row and group: sorted label copy, join indices, output column
ROW_FACTOR_ONE_KEY = 1.1  # x schema width per feature row: as-of join on one key
ROW_FACTOR_KEYS = 3.4  # several keys: the join hashes them
ROW_FACTOR_WINDOWS = 3.2  # window groups: sorted events, prefix sums, per-column lists


def row_width(group: FeatureGroup) -> int:
    """Bytes per offline row from the schema (no data read)."""
    width = 0
    for dtype in group.offline_schema().values():
        if isinstance(dtype, pl.Array):
            width += 8 * dtype.size
        elif dtype == pl.String:
            width += 24
        else:
            width += 8
    return width


def estimated_bytes(plan: GroupPlan, label_rows: int = 0) -> int:
    """One group's working memory: rows from Parquet footers (cheap, no data read) times the
    schema width times what its join holds per row, plus its share per label row."""
    plan.rows = sum(_footer_rows(plan, f) for f in plan.files)
    group = plan.group
    if group.is_windowed:
        factor = ROW_FACTOR_WINDOWS
    elif len(group.entity.key_columns) > 1:
        factor = ROW_FACTOR_KEYS
    else:
        factor = ROW_FACTOR_ONE_KEY
    return int(plan.rows * row_width(group) * factor) + label_rows * LABEL_BYTES


def estimated_peak(plans: list[GroupPlan], label_rows: int) -> int:
    """The in-memory engine's peak: window groups are computed one after another (eagerly),
    then the row groups' joins run together (`collect_all`), so the peak is the larger of the
    biggest window group and the sum of the row groups — not the sum of everything, which
    overestimated the measured peak by about 2x."""
    windows = [estimated_bytes(p, label_rows) for p in plans if p.group.is_windowed]
    rows = [estimated_bytes(p, label_rows) for p in plans if not p.group.is_windowed]
    return max(max(windows, default=0), sum(rows))


def _footer_rows(plan: GroupPlan, path: Location) -> int:
    """Rows in a file's footer; 0 for a piece compaction removed since planning (its rows
    are in the day's partition, which is counted)."""
    try:
        if plan.store is not None:
            return plan.store.footer_rows(path)
        return pq.ParquetFile(path).metadata.num_rows
    except FileNotFoundError:
        return 0


def _scan(plan: GroupPlan) -> pl.LazyFrame:
    """The plan's rows with each day's pieces merged into it (deduplicated, join order).

    Window groups also drop event versions superseded on a day the plan does not read (a
    correction that moved an event to another day), checked against every stored file."""
    scan = scan_merged(plan.group, plan.files, plan.store)
    if plan.group.is_windowed and plan.all_files:
        scan = superseded_filter(plan.group, plan.all_files, scan, plan.store)
    return scan


FILTER_MAX_LABELS = 20_000  # up to this many label rows, feature rows are filtered to their entities


def _for_entities(labels: pl.DataFrame, plan: GroupPlan) -> pl.LazyFrame:
    """The group's rows, only for the labels' entities when there are few labels.

    A handful of entities (an online/offline comparison, a debugging lookup) then costs a
    filtered scan instead of a join over every row in the TTL window. Filtering keeps row
    order, which the as-of join relies on; rows of other entities can never match.
    """
    scan = _scan(plan)
    if labels.height > FILTER_MAX_LABELS or not plan.files:
        return scan
    keys = plan.group.entity.key_columns
    if len(keys) == 1:
        return scan.filter(pl.col(keys[0]).is_in(labels.get_column(keys[0]).unique().implode()))
    wanted = labels.select(pl.struct(keys).alias("__k")).unique().get_column("__k")
    return scan.filter(pl.struct(keys).is_in(wanted.implode()))


def join_in_memory(labels: pl.DataFrame, plans: list[GroupPlan]) -> list[pl.DataFrame]:
    lazy = labels.lazy()
    parts = [
        join_group(lazy, p.group, p.features, _for_entities(labels, p), p.names).sort(ROW).drop(ROW)
        for p in plans
    ]
    return pl.collect_all(parts)


def _bucket_expr(keys: list[str], buckets: int) -> pl.Expr:
    key = pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)
    return (key.hash(seed=42) % buckets).cast(pl.UInt32).alias(BUCKET)


def feature_columns(plan: GroupPlan) -> list[str]:
    """The columns a group's join reads: every stored column for window groups (their
    aggregations read any of them), else keys, times and the requested features."""
    group = plan.group
    if group.is_windowed:
        return list(group.offline_schema())
    keys = group.entity.key_columns
    created = ["created_timestamp"] if group.has_created_timestamp else []
    return [*keys, "event_timestamp", *created, *plan.features]


WorkKind = Literal["labels", "features", "results"]


def bucket_dir(work: Path, i: int, kind: WorkKind, bucket: int) -> Path:
    """The one owner of the work area's layout: group `i`'s files of one kind for one bucket.

    Every step reads and writes only through this function and `bucket_files`, so a job that
    moves a bucket's inputs to another worker (and its result back) copies whole folders and
    never needs to know the file format inside."""
    return work / f"g{i}" / kind / f"{bucket:05d}"


def bucket_files(work: Path, i: int, kind: WorkKind, bucket: int) -> list[Path]:
    """The files of one bucket folder in name order (empty when the bucket got no rows)."""
    folder = bucket_dir(work, i, kind, bucket)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _bucketed_sink(frame: pl.LazyFrame, work: Path, i: int, kind: WorkKind) -> None:
    """Stream `frame` (carrying BUCKET) into one folder per bucket, bounded memory."""
    root = work / f"g{i}" / kind
    frame.sink_parquet(
        pl.PartitionBy(
            root,
            key=BUCKET,
            include_key=False,
            file_path_provider=lambda a: f"{a.partition_keys.item():05d}/{a.index_in_partition}.parquet",
        ),
        mkdir=True,
    )


def scatter_buckets(labels: pl.DataFrame, plans: list[GroupPlan], buckets: int, work: Path) -> None:
    """Step 1 of the partitioned engine: hash-partition each group's label rows and feature
    rows by entity into bucket folders (`bucket_dir`) with Polars' streaming sink (bounded
    memory). Every entity lands in exactly one bucket, so per-bucket joins are exact; the
    folder is all later steps read, so they can run in other processes."""
    for i, plan in enumerate(plans):
        keys = plan.group.entity.key_columns
        label_parts = labels.select(ROW, *keys, LABEL_TS).with_columns(_bucket_expr(keys, buckets))
        _bucketed_sink(label_parts.lazy(), work, i, "labels")
        del label_parts
        features = _scan(plan).select(feature_columns(plan)).with_columns(_bucket_expr(keys, buckets))
        _bucketed_sink(features, work, i, "features")


def join_bucket(work: Path, plans: list[GroupPlan], i: int, bucket: int) -> Path | None:
    """Step 2: join group `i`'s bucket in memory and spill it into its results folder (None
    when no label fell in the bucket). Reads only the scattered files and the group's
    definition, never the offline store."""
    plan = plans[i]
    label_files = bucket_files(work, i, "labels", bucket)
    if not label_files:
        return None
    feature_files = bucket_files(work, i, "features", bucket)
    offline_schema = plan.group.offline_schema()
    schema = {c: offline_schema[c] for c in feature_columns(plan)}
    features = pl.scan_parquet(feature_files, schema=schema) if feature_files else pl.LazyFrame(schema=schema)
    joined = join_group(pl.scan_parquet(label_files), plan.group, plan.features, features, plan.names)
    out_dir = bucket_dir(work, i, "results", bucket)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "0.parquet"
    joined.collect().write_parquet(out)
    return out


def gather_buckets(work: Path, plans: list[GroupPlan], buckets: int) -> list[pl.DataFrame]:
    """Step 3: each group's bucket results back in label order."""
    outputs = []
    for i, plan in enumerate(plans):
        results = [f for b in range(buckets) for f in bucket_files(work, i, "results", b)]
        if not results:  # only when there are no labels, which callers handle before joining
            raise RequestError(f"no bucket results for {plan.group.ref} under {work}")
        outputs.append(pl.scan_parquet(results).sort(ROW).drop(ROW).collect())
    return outputs


def join_partitioned(
    labels: pl.DataFrame, plans: list[GroupPlan], buckets: int, spill_dir: str | None = None
) -> list[pl.DataFrame]:
    """Hash-partition labels and features by entity, join bucket by bucket, gather in order.

    The three steps are separate functions so a Dagster job can run each bucket as its own
    step on any worker (`feature_assets` builds that job); here they run one after another."""
    root = Path(tempfile.mkdtemp(prefix="skewless-pit-", dir=spill_dir))
    try:
        scatter_buckets(labels, plans, buckets, root)
        for i in range(len(plans)):
            for b in range(buckets):
                join_bucket(root, plans, i, b)
        return gather_buckets(root, plans, buckets)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build(
    labels: pl.DataFrame, plans: list[GroupPlan], engine: Engine, stats: TrainingSetStats
) -> list[pl.DataFrame]:
    """Feature columns for every label row (labels carry ROW, keys and LABEL_TS), per group."""
    if engine not in ("auto", "memory", "partitioned"):
        raise RequestError(f"unknown engine {engine!r}: use 'auto', 'memory' or 'partitioned'")
    size = estimated_peak(plans, labels.height)
    budget = memory_budget_bytes()
    chosen = engine if engine != "auto" else ("partitioned" if size > budget else "memory")
    stats.engine = chosen
    stats.estimated_bytes = size
    stats.budget_bytes = budget
    stats.label_rows = labels.height
    stats.groups = {
        p.group.ref: {
            "partitions_read": len({day_of(f) for f in p.files}),  # days, pieces included
            "partitions_total": p.partitions_total,
            "rows_read": p.rows,
        }
        for p in plans
    }
    if chosen == "memory":
        stats.buckets = 0
        return join_in_memory(labels, plans)
    stats.buckets = max(2, math.ceil(size / max(budget // 2, 1)))
    return join_partitioned(labels, plans, stats.buckets)


def default_buckets(plans: list[GroupPlan], label_rows: int) -> int:
    """The partitioned engine's bucket count for these plans (what `build` picks): the
    in-memory estimate over half the memory budget, at least 2. The distributed job's
    default, so each of its bucket steps fits a worker like one of `build`'s buckets."""
    size = estimated_peak(plans, label_rows)
    return max(2, math.ceil(size / max(memory_budget_bytes() // 2, 1)))

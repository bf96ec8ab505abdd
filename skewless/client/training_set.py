"""Building a training set: choose an engine, read only the partitions and rows that can
matter, join.

Two engines give identical results (the tests run both, pruned and not):
- `memory`: one lazy Polars plan per group (`join_asof` on the pruned partitions and rows),
  collected together. Fastest while the feature rows fit comfortably in memory.
- `partitioned`: larger than memory, in three steps a Dagster job can also run apart
  (`scatter_buckets`, `join_bucket` per bucket, `gather_buckets`; they share nothing but
  the work folder, laid out by `bucket_dir`/`bucket_files` alone):
  1. scatter: label rows and the reachable feature rows are hash-partitioned by the entity's
     join keys into one folder per bucket with Polars' streaming sink (bounded memory), as
     uncompressed Arrow IPC: a work file is written once and read back once on the same
     machine, so Parquet's encoding and compression were most of the engine's time (3-4x
     the in-memory engine on bench/pit.py large; now ~1.2-1.4x at under a third of its RSS).
  2. join a bucket (`join_group_sorted`): the scattered rows keep each entity's (event,
     created, stored) order, so one stable sort of keys and event times and a binary search
     find every label's row; only the picked rows' values are then read, batch by batch
     from plain files (`_take_rows`; a memory-mapped pass would count the whole bucket as
     resident). A bucket costs ~50 bytes per feature row, not the row's width.
  3. gather: the buckets' results back into label order.
  Every entity lives in exactly one bucket, so per-bucket joins are exact.
Row pruning (`time_range`, both engines; `PRUNE_ROWS`): partition pruning (`plan_group`)
drops whole days, then rows after the last label time and, with a TTL or a window, before
the first label time minus it are dropped too; the scatter also skips entities no label
names (`labelled`), since every row it keeps is written and read back.
`auto` picks `partitioned` when the in-memory engine's estimated peak (`estimated_peak`: a
fixed part, the feature rows pruning keeps from Parquet footers times their width, and per
label row; fitted to measured peak RSS) exceeds the memory budget (`SKEWLESS_PIT_MEMORY_MB`,
default a quarter of physical memory, capped at half of the memory available when the
training set starts); the bucket count keeps a bucket's share under half the budget.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from skewless.compute.point_in_time import LABEL_TS, ROW, join_group, join_group_sorted
from skewless.errors import RequestError
from skewless.language.durations import LIFETIME
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.storage.offline import Location, OfflineStore, scan_merged, superseded_filter
from skewless.storage.offline_layout import day_of

Engine = Literal["auto", "memory", "partitioned"]
BUCKET = "__skewless_bucket"
PRUNE_ROWS = True  # prune feature rows to the labels' time range (bench/pit.py --no-prune turns it off)


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


# Refitted on bench/pit.py's data (one Int64 key, 20 float64 features; 100k labels x 1M rows
# and 1M labels x 10M rows) against the measured peak RSS (VmHWM) of the whole process, so
# the estimate is what a machine needs: medium 468 MiB measured, large 2,576 MiB. The
# several-keys and window factors are the earlier calibration on the card-fraud demo (growth
# over the process's baseline, 0.98x measured at 0.9M labels), rescaled by nothing.
FIXED_BYTES = 232 * 2**20  # interpreter, Polars and skewless imported (~135 MiB), join buffers
LABEL_BYTES = 40  # per label row and group: sorted label copy, join indices
OUTPUT_COPIES = 2  # per label row and group: output width x 2 (the join's output, label order)
ROW_FACTOR_ONE_KEY = 1.14  # x schema width per feature row: as-of join on one key
ROW_FACTOR_KEYS = 3.4  # several keys: the join hashes them
ROW_FACTOR_WINDOWS = 3.2  # window groups: sorted events, prefix sums, per-column lists


def _width(dtype: pl.DataType) -> int:
    if isinstance(dtype, pl.Array):
        return 8 * dtype.size
    return 24 if dtype == pl.String else 8


def row_width(group: FeatureGroup) -> int:
    """Bytes per offline row from the schema (no data read)."""
    return sum(_width(dtype) for dtype in group.offline_schema().values())


def output_width(plan: GroupPlan) -> int:
    """Bytes per label row of the group's output columns (row index included)."""
    return 8 + sum(_width(plan.group.feature(f).polars_dtype) for f in plan.features)


LabelSpan = tuple[datetime, datetime]  # first and last label time


def estimated_bytes(plan: GroupPlan, label_rows: int = 0, span: LabelSpan | None = None) -> int:
    """One group's working memory: rows from Parquet footers (cheap, no data read; `rows`)
    that the row pruning keeps (`span`: a day partly outside the labels' reach counts by the
    part inside) times the schema width times what its join holds per row, plus its share per
    label row."""
    plan.rows = sum(_footer_rows(plan, f) for f in plan.files)
    group = plan.group
    if group.is_windowed:
        factor = ROW_FACTOR_WINDOWS
    elif len(group.entity.key_columns) > 1:
        factor = ROW_FACTOR_KEYS
    else:
        factor = ROW_FACTOR_ONE_KEY
    rows = plan.rows if span is None else _reachable_rows(plan, span)
    per_label = LABEL_BYTES + OUTPUT_COPIES * output_width(plan)
    return int(rows * row_width(group) * factor) + label_rows * per_label


def _reachable_rows(plan: GroupPlan, span: LabelSpan) -> float:
    """Footer rows scaled per day by the share of the day `time_range` keeps (rows spread
    evenly over a day: only the first and last days read are partial)."""
    first, last = span
    back = reach(plan.group)
    low = None
    if back is not None:
        with contextlib.suppress(OverflowError):
            low = first - back
    day_len = timedelta(days=1)
    total = 0.0
    for path in plan.files:
        day = day_of(path)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        lo = start if low is None else max(start, low)
        hi = min(start + day_len, last)
        if hi > lo:
            total += _footer_rows(plan, path) * ((hi - lo) / day_len)
    return total


def estimated_peak(plans: list[GroupPlan], label_rows: int, span: LabelSpan | None = None) -> int:
    """The in-memory engine's peak RSS: the process's fixed part plus, as the engine runs,
    window groups computed one after another (eagerly), then the row groups' joins together
    (`collect_all`): the larger of the biggest window group and the sum of the row groups."""
    windows = [estimated_bytes(p, label_rows, span) for p in plans if p.group.is_windowed]
    rows = [estimated_bytes(p, label_rows, span) for p in plans if not p.group.is_windowed]
    return FIXED_BYTES + max(max(windows, default=0), sum(rows))


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
    return scan.filter(labelled(labels, plan.group.entity.key_columns))


def labelled(labels: pl.DataFrame, keys: list[str]) -> pl.Expr:
    """Rows of the entities some label names (an order-keeping filter, a hash probe)."""
    if len(keys) == 1:
        return pl.col(keys[0]).is_in(labels.get_column(keys[0]).unique().implode())
    wanted = labels.select(pl.struct(keys).alias("__k")).unique().get_column("__k")
    return pl.struct(keys).is_in(wanted.implode())


def reach(group: FeatureGroup) -> timedelta | None:
    """How far back from a label time a group's rows can matter: the TTL, a window group's
    longest window; None when any earlier row can (no TTL, a lifetime window)."""
    back = group.max_window if group.is_windowed else group.time_to_live
    return None if back is None or back >= LIFETIME else back


def time_range(labels: pl.DataFrame, group: FeatureGroup) -> pl.Expr | None:
    """Feature rows some label can reach: `event_timestamp <= max label time` and, with a
    reach (`reach`), `>= min label time - reach`; None when there are no labels.

    Partition pruning (`plan_group`) drops whole days; this drops the rows inside the days
    that are read: a label never takes a row after its own time, nor one older than its
    TTL (the value would be stale, its default), nor a window's event before the window.
    For row groups only the latest reachable row counts, so dropping older ones changes no
    value; window groups' stored events are already one per identity (`_scan` drops
    superseded versions before this filter runs), so dropping events no window covers
    changes no aggregate.
    """
    if labels.height == 0:
        return None
    stamps = labels.get_column(LABEL_TS)
    first, last = stamps.min(), stamps.max()
    keep = pl.col(EVENT_TIMESTAMP) <= pl.lit(last, dtype=stamps.dtype)
    back = reach(group)
    if back is not None:
        with contextlib.suppress(OverflowError):  # a reach before year 1: no lower side
            keep &= pl.col(EVENT_TIMESTAMP) >= pl.lit(first - back, dtype=stamps.dtype)
    return keep


def _pruned(scan: pl.LazyFrame, labels: pl.DataFrame, plan: GroupPlan, prune: bool) -> pl.LazyFrame:
    keep = time_range(labels, plan.group) if prune else None
    return scan if keep is None else scan.filter(keep)


def join_in_memory(labels: pl.DataFrame, plans: list[GroupPlan], prune: bool = True) -> list[pl.DataFrame]:
    lazy = labels.lazy()
    parts = [
        join_group(lazy, p.group, p.features, _pruned(_for_entities(labels, p), labels, p, prune), p.names)
        .sort(ROW)
        .drop(ROW)
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


IPC_COMPRESSION: Literal["uncompressed", "lz4", "zstd"] = "uncompressed"
WORK_FILE = "{index:06d}.arrow"  # a bucket folder's files: Arrow IPC, numbered in write order


def _bucketed_sink(frame: pl.LazyFrame, work: Path, i: int, kind: WorkKind) -> None:
    """Stream `frame` (carrying BUCKET) into one folder per bucket, bounded memory, as Arrow
    IPC: written and read back at memory speed (no encoding, no compression), and a bucket
    folder is scratch that lives for one training set."""

    def path(args: pl.io.partition.FileProviderArgs) -> str:
        folder = bucket_dir(work, i, kind, args.partition_keys.item())
        return str(folder.relative_to(work) / WORK_FILE.format(index=args.index_in_partition))

    frame.sink_ipc(
        pl.PartitionBy(work, key=BUCKET, include_key=False, file_path_provider=path),
        mkdir=True,
        compression=IPC_COMPRESSION,
    )


def _scan_work(files: list[Path], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    return pl.scan_ipc(files) if files else pl.LazyFrame(schema=schema)


def scatter_buckets(
    labels: pl.DataFrame, plans: list[GroupPlan], buckets: int, work: Path, *, prune: bool = True
) -> list[int]:
    """Step 1 of the partitioned engine: hash-partition each group's label rows and feature
    rows by entity into bucket folders (`bucket_dir`) with Polars' streaming sink (bounded
    memory). Every entity lands in exactly one bucket, so per-bucket joins are exact; the
    folder is all later steps read, so they can run in other processes.

    `prune` first drops the feature rows no label can reach: outside the labels' time range
    (`time_range`, as the in-memory engine does) or of an entity no label names
    (`labelled`; cheap next to writing and reading the row back). Returns the feature rows
    written per group."""
    written = []
    for i, plan in enumerate(plans):
        keys = plan.group.entity.key_columns
        label_parts = labels.select(ROW, *keys, LABEL_TS).with_columns(_bucket_expr(keys, buckets))
        for (bucket,), part in label_parts.partition_by(BUCKET, as_dict=True, include_key=False).items():
            folder = bucket_dir(work, i, "labels", bucket)
            folder.mkdir(parents=True, exist_ok=True)
            part.write_ipc(folder / WORK_FILE.format(index=0), compression=IPC_COMPRESSION)
        del label_parts
        features = _pruned(_scan(plan), labels, plan, prune)
        if prune:  # every row is written and read back: skip the entities no label names
            features = features.filter(labelled(labels, keys))
        features = features.select(feature_columns(plan))
        _bucketed_sink(features.with_columns(_bucket_expr(keys, buckets)), work, i, "features")
        files = [f for b in range(buckets) for f in bucket_files(work, i, "features", b)]
        written.append(pl.scan_ipc(files).select(pl.len()).collect().item() if files else 0)
    return written


def join_bucket(work: Path, plans: list[GroupPlan], i: int, bucket: int) -> Path | None:
    """Step 2: join group `i`'s bucket in memory and spill it into its results folder (None
    when no label fell in the bucket). Reads only the scattered files and the group's
    definition, never the offline store.

    Row groups use `join_group_sorted`: the scattered rows keep each entity's (event,
    created, stored) order, so the label's row is found from keys and times alone and only
    the picked rows' values are read; window groups run `join_group` as in memory."""
    plan = plans[i]
    label_files = bucket_files(work, i, "labels", bucket)
    if not label_files:
        return None
    offline_schema = plan.group.offline_schema()
    schema = {c: offline_schema[c] for c in feature_columns(plan)}
    feature_files = bucket_files(work, i, "features", bucket)
    features = _scan_work(feature_files, schema)
    labels = pl.scan_ipc(label_files).collect()

    def take(positions: np.ndarray) -> pl.DataFrame:
        return _take_rows(feature_files, schema, plan.features, positions)

    joined = join_group_sorted(labels, plan.group, plan.features, features, plan.names, take)
    out_dir = bucket_dir(work, i, "results", bucket)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / WORK_FILE.format(index=0)
    joined.write_ipc(out, compression=IPC_COMPRESSION)
    return out


def _take_rows(
    files: list[Path], schema: dict[str, pl.DataType], columns: list[str], positions: np.ndarray
) -> pl.DataFrame:
    """Rows at `positions` (sorted, unique; counted over `files` in order) of `columns`.

    Read one record batch at a time with pyarrow from a plain file, not a memory map: Polars
    maps IPC files, and the mapped pages a pass touches all count as the process's resident
    memory, so gathering from a 1 GB bucket would cost 1 GB of RSS; here it is one batch
    (of the wanted columns only)."""
    parts: list[pl.DataFrame] = []
    offset = 0
    for path in files:
        with pa.OSFile(str(path)) as handle:
            names = ipc.open_file(handle).schema.names
            wanted = ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns])
            reader = ipc.open_file(handle, options=wanted)
            for k in range(reader.num_record_batches):
                batch = reader.get_batch(k)
                lo, hi = np.searchsorted(positions, [offset, offset + batch.num_rows])
                if hi > lo:
                    # the gather in Polars: pyarrow has no `take` for Polars' string views
                    chosen = pl.from_arrow(batch).select(columns)
                    parts.append(chosen[pl.Series(positions[lo:hi] - offset)])
                offset += batch.num_rows
    if not parts:
        return pl.DataFrame(schema={c: schema[c] for c in columns})
    return pl.concat(parts, how="vertical").cast({c: schema[c] for c in columns})


def gather_buckets(work: Path, plans: list[GroupPlan], buckets: int) -> list[pl.DataFrame]:
    """Step 3: each group's bucket results back in label order."""
    outputs = []
    for i, plan in enumerate(plans):
        results = [f for b in range(buckets) for f in bucket_files(work, i, "results", b)]
        if not results:  # only when there are no labels, which callers handle before joining
            raise RequestError(f"no bucket results for {plan.group.ref} under {work}")
        outputs.append(pl.scan_ipc(results).sort(ROW).drop(ROW).collect())
    return outputs


def join_partitioned(
    labels: pl.DataFrame,
    plans: list[GroupPlan],
    buckets: int,
    spill_dir: str | None = None,
    stats: TrainingSetStats | None = None,
    prune: bool = True,
) -> list[pl.DataFrame]:
    """Hash-partition labels and features by entity, join bucket by bucket, gather in order.

    The three steps are separate functions so a Dagster job can run each bucket as its own
    step on any worker (`feature_assets` builds that job); here they run one after another."""
    root = Path(tempfile.mkdtemp(prefix="skewless-pit-", dir=spill_dir))
    try:
        written = scatter_buckets(labels, plans, buckets, root, prune=prune)
        if stats is not None:
            for plan, rows in zip(plans, written, strict=True):
                stats.groups[plan.group.ref]["rows_joined"] = rows
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
    size = estimated_peak(plans, labels.height, _label_span(labels))
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
        return join_in_memory(labels, plans, PRUNE_ROWS)
    stats.buckets = _bucket_count(size, budget)
    return join_partitioned(labels, plans, stats.buckets, stats=stats, prune=PRUNE_ROWS)


def _bucket_count(size: int, budget: int) -> int:
    """A bucket holds its share of what the in-memory join would (the fixed part is paid
    once per process), and at most half the budget."""
    return max(2, math.ceil((size - FIXED_BYTES) / max(budget // 2, 1)))


def _label_span(labels: pl.DataFrame) -> LabelSpan | None:
    """The label times' range the estimate prunes rows by (None: no pruning)."""
    if not PRUNE_ROWS or not labels.height:
        return None
    stamps = labels.get_column(LABEL_TS)
    return (stamps.min(), stamps.max())


def default_buckets(plans: list[GroupPlan], labels: pl.DataFrame) -> int:
    """The partitioned engine's bucket count for these plans and labels (what `build`
    picks): the distributed job's default, so each of its bucket steps fits a worker like
    one of `build`'s buckets."""
    size = estimated_peak(plans, labels.height, _label_span(labels))
    return _bucket_count(size, memory_budget_bytes())

"""The offline store: every feature row ever computed, as Hive-style daily Parquet partitions.

    <root>/<group>/v<N>/date=YYYY-MM-DD/data.parquet
    <root>/<group>/v<N>/date=YYYY-MM-DD/piece-<name>.parquet   (stream micro-batches)

`data.parquet` is the day as the batch path computed it, replaced atomically (write a temp
file in the same folder, fsync, then `os.replace`), so a reader sees the old partition or the
new one, never half of either, and re-running a partition is idempotent. An empty day still
gets a file (with the schema).

Pieces are immutable files a micro-batch adds next to it instead of rewriting the day: two
micro-batches never read-modify-write the same file, so concurrent ones cannot lose each
other's rows, and a batch costs its own rows, not its days' sizes. A piece's name comes from
what it holds (the stream entry range), so a retried batch rewrites the same piece. Readers
(`scan`, `scan_files`, the training-set planner, SQL views) merge a day's pieces with its
partition and deduplicate exactly as an in-place merge would have: window groups by
(keys, event id) keeping the first stored version, row groups identical rows once, then the
day is sorted by (keys, event time, created time) with ties in storage order, the order the
point-in-time join relies on. The daily offline asset compacts: it recomputes the day from
the source (which holds the pushed rows) and deletes the pieces that existed before it read.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from skewless.compute.identity import latest_versions
from skewless.config import StoreConfig, private_dirs
from skewless.language.feature_group import (
    CREATED_TIMESTAMP,
    EVENT_ID,
    EVENT_SEQ,
    EVENT_TIMESTAMP,
    FeatureGroup,
)

DATA_FILE = "data.parquet"
PIECE_PREFIX = "piece-"


def _day_of(path: Path) -> date:
    return date.fromisoformat(path.parent.name[len("date=") :])


STALE_TEMP_S = 3600.0  # a temp file untouched this long has no live writer


def remove_stale_temps(target: Path, started: float, stale_after_s: float = STALE_TEMP_S) -> list[Path]:
    """After `target` was replaced successfully, delete the temp files a killed writer left in
    its folder (a half-written `.data.parquet.<uuid>.tmp` survives a kill: `finally` never ran).

    Two rules, because the folder is shared. Temps of `target` itself last modified before
    this write started are removed at once: whoever writes `target` owns it (one run
    materializes a day's partition; a piece's name is its run's), so an older temp of it is
    from a writer that died — or lost the race to this one anyway. Temps of other files (the
    pieces concurrent micro-batch runs write next to the partition) are removed only once
    untouched for `stale_after_s`: a live writer's temp is younger than that, so an in-flight
    write is never broken. Returns the files removed.
    """
    removed = []
    now = time.time()
    own = f".{target.name}."
    for temp in target.parent.glob(".*.tmp"):
        try:
            modified = temp.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer just finished (or someone else cleaned it)
        mine = temp.name.startswith(own)
        if (mine and modified < started) or (not mine and now - modified > stale_after_s):
            try:
                temp.unlink()
                removed.append(temp)
            except FileNotFoundError:
                pass
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder holding the new name (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dedupe_and_sort(group: FeatureGroup, frame: pl.LazyFrame) -> pl.LazyFrame:
    """One day's rows from several files (partition first, then pieces in name order) as one
    merged partition: what the old in-place append produced, byte for byte in row order.

    Window groups keep one event per (keys, event id), its latest version (highest
    `event_seq`, the last stored of equal ones: a re-pushed id is a correction); row groups
    drop identical rows only. The stable sort by (keys, event, created) keeps storage order for
    ties, so the last stored of equal-time rows still wins the point-in-time join.
    """
    keys = group.entity.key_columns
    if group.is_windowed:
        return latest_versions(group, frame).sort([*keys, EVENT_TIMESTAMP, EVENT_ID], maintain_order=True)
    order = [*keys, EVENT_TIMESTAMP] + ([CREATED_TIMESTAMP] if group.has_created_timestamp else [])
    return frame.unique(keep="first", maintain_order=True).sort(order, maintain_order=True)


def superseded_filter(group: FeatureGroup, files: list[Path], frame: pl.LazyFrame) -> pl.LazyFrame:
    """Drop event versions superseded by a later version stored on *another* day.

    A correction may move an event to another day (its time was wrong): each day's files
    then hold one version, and a reader of only one of those days must still know the
    other exists. The identity columns of every file of the group are scanned (narrow) to
    find the identities stored more than once; only those are checked against the winner.
    """
    if not files:
        return frame
    keys = group.entity.key_columns
    identity = [*keys, EVENT_ID]
    schema = {c: group.offline_schema()[c] for c in [*identity, EVENT_SEQ, EVENT_TIMESTAMP]}
    versions = pl.scan_parquet(files, schema=schema, extra_columns="ignore").select(list(schema))
    winners = (
        versions.sort([EVENT_SEQ, EVENT_TIMESTAMP], maintain_order=True)
        .group_by(identity)
        .agg(
            pl.len().alias("__n"),
            pl.col(EVENT_SEQ).last().alias("__wseq"),
            pl.col(EVENT_TIMESTAMP).last().alias("__wts"),
        )
        .filter(pl.col("__n") > 1)
        .drop("__n")
        .collect()
    )
    if winners.height == 0:
        return frame
    return (
        frame.join(winners.lazy(), on=identity, how="left", maintain_order="left")
        .filter(
            pl.col("__wseq").is_null()
            | ((pl.col(EVENT_SEQ) == pl.col("__wseq")) & (pl.col(EVENT_TIMESTAMP) == pl.col("__wts")))
        )
        .drop("__wseq", "__wts")
    )


class OfflineStore:
    """Reads and writes a group version's partitions under one root folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def group_dir(self, group: FeatureGroup) -> Path:
        return self.root / group.name / f"v{group.version}"

    def mark_in_use(self, group: FeatureGroup) -> None:
        """Create the version's folder: values of this definition now exist (a push before any
        materialization leaves it empty). From then on the lock file freezes the definition."""
        private_dirs(self.group_dir(group))

    def in_use(self, group: FeatureGroup) -> bool:
        """True once anything of this version was written here (partition, piece or push)."""
        return self.group_dir(group).is_dir()

    def partition_path(self, group: FeatureGroup, day: date) -> Path:
        return self.group_dir(group) / f"date={day.isoformat()}" / DATA_FILE

    def write_partition(self, group: FeatureGroup, day: date, frame: pl.DataFrame) -> Path:
        """Atomically replace one day's partition with `frame` (already validated and sorted)."""
        return self._replace(self.partition_path(group, day), frame)

    def piece_path(self, group: FeatureGroup, day: date, name: str) -> Path:
        return self.group_dir(group) / f"date={day.isoformat()}" / f"{PIECE_PREFIX}{name}.parquet"

    def write_piece(self, group: FeatureGroup, day: date, name: str, frame: pl.DataFrame) -> Path:
        """Add (or idempotently rewrite) one immutable piece of a day: never touches data.parquet."""
        return self._replace(self.piece_path(group, day, name), frame)

    def pieces(self, group: FeatureGroup, day: date) -> list[Path]:
        """A day's pieces in name order (the order their rows count as stored)."""
        folder = self.group_dir(group) / f"date={day.isoformat()}"
        if not folder.exists():
            return []
        return sorted(p for p in folder.glob(f"{PIECE_PREFIX}*.parquet") if p.is_file())

    def day_files(self, group: FeatureGroup, day: date) -> list[Path]:
        """Everything stored for a day, partition first: what a reader must merge."""
        partition = self.partition_path(group, day)
        return ([partition] if partition.exists() else []) + self.pieces(group, day)

    def has_pieces(self, group: FeatureGroup) -> bool:
        base = self.group_dir(group)
        return base.exists() and any(base.glob(f"date=*/{PIECE_PREFIX}*.parquet"))

    def delete_pieces(self, pieces: list[Path]) -> int:
        """Remove compacted pieces (those the partition now includes); returns how many."""
        removed = 0
        for piece in pieces:
            try:
                piece.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def training_set_path(self, service: str, version: int) -> Path:
        # '_' cannot start a group name, so training sets never collide with group folders
        return self.root / "_training_sets" / service / f"v{version}" / DATA_FILE

    def scan_training_set(self, service: str, version: int) -> pl.LazyFrame | None:
        """The materialized training set of a service version, lazily; None if never built."""
        path = self.training_set_path(service, version)
        return pl.scan_parquet(path) if path.exists() else None

    def write_training_set(self, service: str, version: int, frame: pl.DataFrame) -> Path:
        return self._replace(self.training_set_path(service, version), frame)

    def _replace(self, target: Path, frame: pl.DataFrame) -> Path:
        private_dirs(target.parent)
        # a dot-name ending in .tmp: no reader's glob (`*.parquet`) ever sees a half file
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        started = time.time()
        try:
            # owner-only from the first byte (Polars truncates, keeping the mode); not umask,
            # which is process-wide and would race other threads
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            frame.write_parquet(temp, compression="zstd", statistics=True)
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
            _fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)
        remove_stale_temps(target, started)
        return target

    def partitions(self, group: FeatureGroup) -> list[date]:
        """Days that have a partition file or a piece, oldest first."""
        base = self.group_dir(group)
        if not base.exists():
            return []
        days = []
        for child in base.iterdir():
            if not child.name.startswith("date="):
                continue
            if (child / DATA_FILE).exists() or any(child.glob(f"{PIECE_PREFIX}*.parquet")):
                days.append(date.fromisoformat(child.name[len("date=") :]))
        return sorted(days)

    def files(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> list[Path]:
        """Files (partitions, then each day's pieces) with `start <= day <= end`, in day order.

        Read them with `scan_merged`, which merges a day's pieces; a plain scan would see a
        re-stored event twice.
        """
        return [
            path
            for day in self.partitions(group)
            if (start is None or day >= start) and (end is None or day <= end)
            for path in self.day_files(group, day)
        ]

    def scan(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """Lazily read the partitions (with their pieces) in a day range; empty frame if none."""
        return scan_merged(group, self.files(group, start, end))


def scan_merged(group: FeatureGroup, files: list[Path]) -> pl.LazyFrame:
    """Lazily read files from `OfflineStore.files()` as merged partitions.

    Days without pieces are scanned as they are (already deduplicated and sorted); only a
    day with pieces pays for a dedupe and sort, and only of that day.
    """
    schema = group.offline_schema()
    if not files:
        return pl.LazyFrame(schema=schema)
    if not any(p.name.startswith(PIECE_PREFIX) for p in files):
        return pl.scan_parquet(files, schema=schema)
    by_day: dict[date, list[Path]] = {}
    for path in files:
        by_day.setdefault(_day_of(path), []).append(path)
    frames: list[pl.LazyFrame] = []
    plain: list[Path] = []
    for day in sorted(by_day):
        day_files = by_day[day]
        if not any(p.name.startswith(PIECE_PREFIX) for p in day_files):
            plain.extend(day_files)
            continue
        if plain:
            frames.append(pl.scan_parquet(plain, schema=schema))
            plain = []
        frames.append(dedupe_and_sort(group, _read_day(day_files, schema).lazy()))
    if plain:
        frames.append(pl.scan_parquet(plain, schema=schema))
    return pl.concat(frames, how="vertical")


def _read_day(day_files: list[Path], schema: pl.Schema) -> pl.DataFrame:
    """A day's partition and pieces, read pieces first so compaction cannot hide rows.

    Compaction replaces data.parquet *before* deleting the pieces it folded in, so a piece
    that vanished while we read means the partition we read afterwards already holds it.
    """
    pieces = []
    for path in (p for p in day_files if p.name.startswith(PIECE_PREFIX)):
        try:
            pieces.append(pl.read_parquet(path).select(list(schema)).cast(dict(schema)))
        except FileNotFoundError:
            continue
    partitions = []
    for path in (p for p in day_files if not p.name.startswith(PIECE_PREFIX)):
        try:
            partitions.append(pl.read_parquet(path).select(list(schema)).cast(dict(schema)))
        except FileNotFoundError:
            continue
    frames = partitions + pieces  # stored order: partition first, then pieces by name
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


def days_between(start: date, end_exclusive: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end_exclusive - start).days)]


def open_offline_store(config: StoreConfig) -> OfflineStore:
    """The offline store `config.offline_root` names: the one place a backend is chosen."""
    return OfflineStore(config.offline_root)

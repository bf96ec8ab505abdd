"""The offline store: every feature row ever computed, as Hive-style daily Parquet partitions.

    <root>/<group>/v<N>/date=YYYY-MM-DD/data.parquet
    <root>/<group>/v<N>/date=YYYY-MM-DD/piece-<name>.parquet   (stream micro-batches)

(every name is built in `storage/offline_layout.py`; training sets, registry snapshots and
served logs live under the same root.) `OfflineStore` is the interface every caller uses;
`LocalOfflineStore` keeps a local folder, `S3OfflineStore` an `s3://bucket/prefix` on any
S3-compatible object store, and `open_offline_store(config)` at the bottom is the one place a
backend is chosen. A backend implements a few primitives (list, exists, delete, an atomic
write of one file, Parquet scans with its credentials); the layout and every operation on
partitions, pieces, training sets, registry snapshots and served logs are written once, in
the interface, so both backends hold the same files under the same names.

`data.parquet` is the day as the batch path computed it, replaced atomically, so a reader sees
the old partition or the new one, never half of either, and re-running a partition is
idempotent. Locally that is a temp file in the same folder, fsync, then `os.replace`
(`atomic_write`, the one write helper); on object storage it is one PUT of the whole file,
which S3 makes visible all at once. An empty day still gets a file (with the schema).

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

A day of several files is therefore never replaced as a unit, and need not be: the rule that
keeps readers from seeing half a day is the order of single-file operations, the same on
every backend — compaction writes the new `data.parquet` (one atomic file) *before* deleting
the pieces it folded in, and a reader reads the pieces it listed before the partition, so a
piece that vanished between listing and reading is already inside the partition it reads.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from skewless.compute.identity import latest_versions
from skewless.config import StoreConfig, private_dirs
from skewless.errors import EncryptionKeyError
from skewless.language.feature_group import (
    CREATED_TIMESTAMP,
    EVENT_ID,
    EVENT_SEQ,
    EVENT_TIMESTAMP,
    FeatureGroup,
)
from skewless.storage import offline_layout as layout
from skewless.storage.keys import KEY_ID_META, PII_META, KeyRing, key_ring
from skewless.storage.offline_layout import DATA_FILE, PIECE_PREFIX

__all__ = [
    "DATA_FILE",
    "PIECE_PREFIX",
    "STALE_TEMP_S",
    "LocalOfflineStore",
    "Location",
    "OfflineStore",
    "S3OfflineStore",
    "S3Settings",
    "atomic_copy",
    "atomic_write",
    "days_between",
    "dedupe_and_sort",
    "encrypted_columns",
    "open_offline_store",
    "remove_stale_temps",
    "scan_merged",
    "superseded_filter",
]

# A file of the store: a `Path` in a local store (so local callers keep their paths), an
# `s3://bucket/key` string on object storage. Parse it with `offline_layout.day_of` & co.
Location = Path | str

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


def superseded_filter(
    group: FeatureGroup, files: Sequence[Location], frame: pl.LazyFrame, store: OfflineStore | None = None
) -> pl.LazyFrame:
    """Drop event versions superseded by a later version stored on *another* day.

    A correction may move an event to another day (its time was wrong): each day's files
    then hold one version, and a reader of only one of those days must still know the
    other exists. The identity columns of every file of the group are scanned (narrow) to
    find the identities stored more than once; only those are checked against the winner.
    `store` reads the files (its backend's credentials); None means local paths.
    """
    if not files:
        return frame
    keys = group.entity.key_columns
    identity = [*keys, EVENT_ID]
    schema = {c: group.offline_schema()[c] for c in [*identity, EVENT_SEQ, EVENT_TIMESTAMP]}
    reader = store if store is not None else _local_reader()
    versions = reader.scan_parquet(files, schema=schema, extra_columns="ignore").select(list(schema))
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


def atomic_write(target: Path, content: pl.DataFrame | bytes) -> Path:
    """Replace the local file `target` with `content` (a frame, written as zstd Parquet with
    statistics, or raw bytes) so that no reader ever sees half of it: the one local write path.

    A dot-named temp in the same folder (no reader's glob, `*.parquet`, sees it), owner-only
    from the first byte, fsync, `os.replace`, fsync of the folder (the rename is durable);
    temps killed writers left are cleaned afterwards (`remove_stale_temps`). Why fsync: after a
    power loss an un-synced rename can name an empty file, i.e. a lost partition.
    """
    if isinstance(content, pl.DataFrame):
        return _atomic(target, lambda temp: write_frame(content, temp))
    return _atomic(target, lambda temp: temp.write_bytes(content))


def atomic_copy(source: Path, target: Path) -> Path:
    """`atomic_write` of a local file's bytes, streamed: same temp, mode, fsync and rename."""
    return _atomic(target, lambda temp: shutil.copyfile(source, temp))


def _atomic(target: Path, fill: Callable[[Path], object]) -> Path:
    """The temp-fsync-rename protocol `atomic_write` documents, around `fill(temp)`."""
    private_dirs(target.parent)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    started = time.time()
    try:
        # owner-only from the first byte (writers truncate, keeping the mode); not umask,
        # which is process-wide and would race other threads
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        fill(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)
    remove_stale_temps(target, started)
    return target


ROW_GROUP_ROWS = 131_072


def write_frame(
    frame: pl.DataFrame,
    target: Path | io.BytesIO,
    pii: Sequence[str] = (),
    keys: KeyRing | None = None,
) -> None:
    """The one Parquet encoding of every stored frame: zstd, statistics, and a fixed row-group
    size. Without one, Polars cuts row groups where the frame's chunks end, and those depend
    on how the frame was computed (streaming morsels, threads, the machine's load), so the
    same rows written by two workers differed byte for byte (seen on bench/scale.py large).

    `pii` columns are encrypted with Parquet modular encryption under `keys`' current key
    (`KeyRing.parquet_encryption`: plaintext, signed footer; pages and statistics of the pii
    columns encrypted). Polars cannot write (or read) modular encryption, so such a frame is
    written by pyarrow, same compression and row groups; the key id and the encrypted columns
    go into the file's metadata. Encrypted bytes are not reproducible (random keys and
    nonces per file); the rows are."""
    columns = [c for c in pii if c in frame.columns]
    if not columns:
        frame.write_parquet(target, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS)
        return
    if keys is None:
        raise EncryptionKeyError(f"columns {columns} are pii: writing them needs the encryption keys")
    properties, key_id = keys.parquet_encryption(columns)
    table = frame.to_arrow()
    metadata = dict(table.schema.metadata or {})
    metadata[KEY_ID_META] = key_id.encode()
    metadata[PII_META] = json.dumps(columns).encode()
    pq.write_table(
        table.replace_schema_metadata(metadata),
        target,
        compression="zstd",
        write_statistics=True,
        row_group_size=ROW_GROUP_ROWS,
        encryption_properties=properties,
    )


def parquet_bytes(frame: pl.DataFrame, pii: Sequence[str] = (), keys: KeyRing | None = None) -> bytes:
    """The bytes `atomic_write` would put in a file (`write_frame`)."""
    buffer = io.BytesIO()
    write_frame(frame, buffer, pii, keys)
    return buffer.getvalue()


def encrypted_columns(source: Any) -> tuple[str | None, list[str]]:
    """(key id, encrypted columns) of a Parquet file (a path, file or bytes) from its
    plaintext footer; (None, []) for a file without pii columns. Reads no data pages."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    metadata = pq.read_metadata(source).metadata or {}
    if PII_META not in metadata:
        return None, []
    return metadata.get(KEY_ID_META, b"").decode(), json.loads(metadata[PII_META])


def read_decrypted(source: Any, keys: KeyRing) -> pl.DataFrame:
    """A Parquet file whose pii columns are encrypted (or not: plain files read too), as a
    frame: pyarrow decrypts (the key material in the file names its master key), Polars
    takes the table over without a copy."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    table = pq.read_table(source, decryption_properties=keys.parquet_decryption())
    return pl.from_arrow(table.replace_schema_metadata(None))  # type: ignore[return-value]


class OfflineStore(ABC):
    """The offline store interface: partitions, pushed pieces, window events (window groups'
    partitions hold their events), training sets, registry snapshots and served logs.

    Subclasses implement the storage primitives below (the `@abstractmethod`s); everything
    else is written once here on top of them and of `offline_layout`, so no caller and no
    backend builds a path of its own. `OfflineStore(root)` still works and returns the backend
    `open_offline_store` picks for that root (callers and tests written before the backends).
    """

    root: Location
    is_local: bool = True
    #: where the pii encryption keys are found (`storage.keys`; set by `open_offline_store`),
    #: and the ring once opened (or handed in)
    state_dir: str | None = None
    encryption_keys: KeyRing | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> OfflineStore:
        if cls is OfflineStore:
            root = args[0] if args else kwargs["root"]
            return open_offline_store(StoreConfig(str(root), None, "", key_prefix=""))
        return super().__new__(cls)

    # -- primitives: what a backend implements -------------------------------------------

    @abstractmethod
    def location(self, key: str) -> Location:
        """Where the layout key `key` lives in this store (a path or a URI)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Keys of the visible files under `prefix` (recursive, relative to the root, sorted)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove one file; False when it was not there."""

    @abstractmethod
    def write(self, key: str, content: pl.DataFrame | bytes) -> Location:
        """Atomically replace one file: readers see the old content or the new, never half."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """A file's bytes, None when it does not exist."""

    @abstractmethod
    def scan_parquet(self, locations: Sequence[Location], **options: Any) -> pl.LazyFrame:
        """`pl.scan_parquet` of files of this store, with its credentials."""

    @abstractmethod
    def read_parquet(self, location: Location, decrypt: bool = False) -> pl.DataFrame | None:
        """One file, None if it vanished (a compacted piece). `decrypt`: the file may have
        encrypted pii columns (read by pyarrow with the store's keys, `read_decrypted`)."""

    @abstractmethod
    def footer_rows(self, location: Location) -> int:
        """Rows of one Parquet file from its footer (no data read)."""

    @abstractmethod
    def put_file(self, key: str, source: Path) -> Location:
        """Store the local file `source` (any content, streamed: never whole in memory) at
        `key`, atomically like `write`."""

    @abstractmethod
    def get_file(self, key: str, target: Path) -> bool:
        """Copy the file at `key` to the local path `target` (folders made, streamed);
        False when it does not exist."""

    @abstractmethod
    def _delete_tree(self, prefix: str) -> int: ...

    def delete_tree(self, prefix: str) -> int:
        """Remove every file under the folder `prefix` (dot-named temps too); returns how many.
        Refuses the root and anything that is not a plain relative key: one wrong argument
        must not empty the store."""
        parts = prefix.strip("/").split("/")
        if not prefix.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"refusing to delete {prefix!r}: not a folder key under the root")
        return self._delete_tree("/".join(parts))

    # -- folders of files (the distributed training set's work area) -----------------------

    def upload_tree(self, local: Path, prefix: str) -> int:
        """Every visible file under the local folder `local` to `prefix/<relative path>`,
        whatever its name or format; returns how many. Dot-names are temps and skipped,
        as `list_keys` skips them."""
        count = 0
        if not local.is_dir():
            return 0
        for folder, dirs, names in os.walk(local):
            dirs[:] = sorted(d for d in dirs if layout.is_visible(d))
            for name in sorted(n for n in names if layout.is_visible(n)):
                path = Path(folder) / name
                self.put_file(f"{prefix}/{path.relative_to(local).as_posix()}", path)
                count += 1
        return count

    def download_tree(self, prefix: str, local: Path, keys: Sequence[str] | None = None) -> int:
        """The files under `prefix` into the local folder `local` (same relative paths);
        `keys` (from one `list_keys` of a wider prefix) saves the listing. Returns how many."""
        base = prefix.rstrip("/") + "/"
        wanted = self.list_keys(prefix) if keys is None else [k for k in keys if k.startswith(base)]
        for key in wanted:
            self.get_file(key, local / key[len(base) :])
        return len(wanted)

    def key_of(self, location: Location) -> str:
        """The layout key of a location of this store (inverse of `location`)."""
        root = str(self.location("")).rstrip("/")
        text = str(location)
        if not text.startswith(root + "/"):
            raise ValueError(f"{location} is not in the offline store {self.root}")
        return text[len(root) + 1 :]

    # -- pii encryption ---------------------------------------------------------------------

    def key_ring(self) -> KeyRing:
        """The keys pii columns are encrypted with: `self.encryption_keys` when set, else the
        ring of the state folder this store was opened for (`skewless keys init` creates it)."""
        if self.encryption_keys is None:
            if not self.state_dir:
                raise EncryptionKeyError(
                    f"the offline store {self.root} was built without a state folder, so it has no "
                    "encryption keys for pii features: open it with open_offline_store(config) "
                    "or set .encryption_keys"
                )
            self.encryption_keys = key_ring(self.state_dir)
        return self.encryption_keys

    def _sealed(self, frame: pl.DataFrame, pii: Sequence[str]) -> pl.DataFrame | bytes:
        """What `write` gets for a frame: the frame itself, or with pii columns its encrypted
        Parquet bytes (every backend writes bytes atomically, like frames)."""
        if not any(c in frame.columns for c in pii):
            return frame
        return parquet_bytes(frame, pii, self.key_ring())

    def read_any(self, location: Location) -> pl.DataFrame | None:
        """One file whether or not it has encrypted columns (rare paths that do not know the
        group: training sets, erasure): its footer says, so plain files cost one footer read
        more than `read_parquet`."""
        data = self.read_bytes(self.key_of(location))
        if data is None:
            return None
        if encrypted_columns(data)[1]:
            return read_decrypted(data, self.key_ring())
        return pl.read_parquet(io.BytesIO(data))

    # -- group versions ---------------------------------------------------------------------

    def group_dir(self, group: FeatureGroup) -> Location:
        return self.location(layout.group_key(group.name, group.version))

    def mark_in_use(self, group: FeatureGroup) -> None:
        """Record that values of this definition now exist (a push before any materialization
        leaves nothing else). From then on the lock file freezes the definition."""
        self.write(layout.in_use_key(group.name, group.version), b"")

    def in_use(self, group: FeatureGroup) -> bool:
        """True once anything of this version was written here (partition, piece or push)."""
        return self.exists(layout.in_use_key(group.name, group.version)) or bool(
            self.list_keys(layout.group_key(group.name, group.version))
        )

    def version_files(self, name: str, version: int) -> list[Location]:
        """Every partition and piece of a version, by name (retire: the definition is gone)."""
        return [
            self.location(k)
            for k in self.list_keys(layout.group_key(name, version))
            if k.endswith(layout.PARQUET) and layout.day_from_folder(k.split("/")[-2]) is not None
        ]

    # -- partitions and pieces --------------------------------------------------------------

    def partition_path(self, group: FeatureGroup, day: date) -> Location:
        return self.location(layout.partition_key(group.name, group.version, day))

    def write_partition(self, group: FeatureGroup, day: date, frame: pl.DataFrame) -> Location:
        """Atomically replace one day's partition with `frame` (already validated and sorted);
        a group's pii features are encrypted (`write_frame`)."""
        return self.write(
            layout.partition_key(group.name, group.version, day), self._sealed(frame, group.pii_features)
        )

    def read_partition(self, group: FeatureGroup, day: date) -> pl.DataFrame | None:
        """A day as stored by the batch path (no pieces merged), None if never written."""
        return self.read_parquet(self.partition_path(group, day), decrypt=bool(group.pii_features))

    def delete_partition(self, group: FeatureGroup, day: date) -> int:
        """Remove a day: its partition and pieces (pieces first, so a reader never finds a
        piece without the partition it was merged into). Returns the files removed."""
        removed = self.delete_pieces(self.pieces(group, day))
        return removed + int(self.delete(layout.partition_key(group.name, group.version, day)))

    def delete_expired(self, group: FeatureGroup, now: datetime) -> list[date]:
        """Delete the days (partitions and pieces) the group's `retention=` no longer keeps at
        `now`; returns them. Each day goes as a whole (`delete_partition`), oldest first, so
        an interrupted pass leaves a contiguous history and the next pass finishes it."""
        first_kept = group.first_retained_day(now)
        if first_kept is None:
            return []
        expired = [day for day in self.partitions(group) if day < first_kept]
        for day in expired:
            self.delete_partition(group, day)
        return expired

    def piece_path(self, group: FeatureGroup, day: date, name: str) -> Location:
        return self.location(layout.piece_key(group.name, group.version, day, name))

    def write_piece(self, group: FeatureGroup, day: date, name: str, frame: pl.DataFrame) -> Location:
        """Add (or idempotently rewrite) one immutable piece of a day: never touches data.parquet.
        Rows of erased entities are left out (a micro-batch must not bring them back)."""
        return self.write(
            layout.piece_key(group.name, group.version, day, name),
            self._sealed(self.without_erased(group, frame), group.pii_features),
        )

    def _day_keys(self, group: FeatureGroup, day: date) -> list[str]:
        return self.list_keys(layout.day_key(group.name, group.version, day))

    def pieces(self, group: FeatureGroup, day: date) -> list[Location]:
        """A day's pieces in name order (the order their rows count as stored)."""
        return [self.location(k) for k in self._day_keys(group, day) if _is_piece_key(k)]

    def day_files(self, group: FeatureGroup, day: date) -> list[Location]:
        """Everything stored for a day, partition first: what a reader must merge."""
        keys = self._day_keys(group, day)
        partition = [k for k in keys if layout.is_partition(k)]
        return [self.location(k) for k in partition + [k for k in keys if _is_piece_key(k)]]

    def has_pieces(self, group: FeatureGroup) -> bool:
        return any(_is_piece_key(k) for k in self.list_keys(layout.group_key(group.name, group.version)))

    def delete_pieces(self, pieces: Sequence[Location]) -> int:
        """Remove compacted pieces (those the partition now includes); returns how many."""
        return sum(int(self.delete(self.key_of(piece))) for piece in pieces)

    def partitions(self, group: FeatureGroup) -> list[date]:
        """Days that have a partition file or a piece, oldest first."""
        days = set()
        for key in self.list_keys(layout.group_key(group.name, group.version)):
            parts = key.split("/")
            if len(parts) == 4 and (layout.is_partition(key) or _is_piece_key(key)):
                day = layout.day_from_folder(parts[2])
                if day is not None:
                    days.add(day)
        return sorted(days)

    def files(
        self, group: FeatureGroup, start: date | None = None, end: date | None = None
    ) -> list[Location]:
        """Files (partitions, then each day's pieces) with `start <= day <= end`, in day order.

        Read them with `scan_merged`, which merges a day's pieces; a plain scan would see a
        re-stored event twice.
        """
        by_day: dict[date, list[str]] = {}
        for key in self.list_keys(layout.group_key(group.name, group.version)):
            parts = key.split("/")
            if len(parts) != 4 or not (layout.is_partition(key) or _is_piece_key(key)):
                continue
            day = layout.day_from_folder(parts[2])
            if day is not None and (start is None or day >= start) and (end is None or day <= end):
                by_day.setdefault(day, []).append(key)
        return [
            self.location(k)
            for day in sorted(by_day)
            for k in sorted(by_day[day], key=lambda k: (not layout.is_partition(k), k))
        ]

    def scan(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """Lazily read the partitions (with their pieces) in a day range; empty frame if none."""
        return scan_merged(group, self.files(group, start, end), self)

    # -- erasure (right to be forgotten) ----------------------------------------------------

    def record_erasure(self, entity: str, keys: pl.DataFrame) -> Location:
        """Add `keys` (the entity's join-key columns) to its erasure list. Recorded before
        anything is deleted, so a backfill racing the erasure already leaves them out."""
        stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.__dict__.setdefault("_erased_seen", {}).pop(entity, None)
        return self.write(layout.erasure_key(entity, stamp), keys.unique())

    def erased(
        self, entity: str, key_schema: dict[str, pl.DataType], max_age_s: float = 0.0
    ) -> pl.DataFrame | None:
        """Every erased key of an entity (None: none erased). Listed on each call by default:
        a backfill must see an erasure recorded a moment ago by another process. `max_age_s`
        lets a latency-bound caller (a push: one LIST request per push on S3) reuse what
        this store read that long ago; its own erasures are always seen at once."""
        seen: dict[str, tuple[float, pl.DataFrame | None]] = self.__dict__.setdefault("_erased_seen", {})
        cached = seen.get(entity)
        if max_age_s and cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        frames = []
        for key in self.list_keys(layout.erasures_key(entity)):
            if key.endswith(layout.PARQUET):
                frame = self.read_parquet(self.location(key))
                if frame is not None:
                    frames.append(frame.select([pl.col(c).cast(t) for c, t in key_schema.items()]))
        erased = pl.concat(frames).unique() if frames else None
        seen[entity] = (time.monotonic(), erased)
        return erased

    def without_erased(
        self, group: FeatureGroup, frame: pl.DataFrame, max_age_s: float = 0.0
    ) -> pl.DataFrame:
        """`frame` without rows of erased entities: what every materialization writes, so a
        backfill (or a micro-batch) never brings an erased entity back."""
        erased = self.erased(group.entity.name, dict(group.entity.key_schema), max_age_s)
        if erased is None or frame.is_empty():
            return frame
        return frame.join(erased, on=list(group.entity.key_schema), how="anti", nulls_equal=False)

    def erase_rows(self, locations: Sequence[Location], keys: pl.DataFrame) -> tuple[int, int]:
        """Rewrite each file holding rows of `keys` without them (atomically: a reader sees
        the old file or the new one, never half of one); (files rewritten, rows removed).
        Files lacking any key column are left alone."""
        rewritten = removed = 0
        columns = list(keys.columns)
        for location in locations:
            data = self.read_bytes(self.key_of(location))
            if data is None:
                continue
            _, pii = encrypted_columns(data)  # an encrypted file is rewritten encrypted
            frame = read_decrypted(data, self.key_ring()) if pii else pl.read_parquet(io.BytesIO(data))
            if not set(columns) <= set(frame.columns):
                continue
            cast = keys.select([pl.col(c).cast(frame.schema[c]) for c in columns])
            kept = frame.join(cast, on=columns, how="anti", nulls_equal=False)
            if kept.height < frame.height:
                self.write(self.key_of(location), self._sealed(kept, pii))
                rewritten += 1
                removed += frame.height - kept.height
        return rewritten, removed

    # -- training sets, registry snapshots, served logs -------------------------------------

    def training_set_path(self, service: str, version: int) -> Location:
        return self.location(layout.training_set_key(service, version))

    def write_training_set(
        self, service: str, version: int, frame: pl.DataFrame, pii: Sequence[str] = ()
    ) -> Location:
        """One service's training set; its `pii` columns (the pii features it selects) are
        encrypted like the partitions they came from."""
        return self.write(layout.training_set_key(service, version), self._sealed(frame, pii))

    def read_training_set(self, service: str, version: int) -> pl.DataFrame | None:
        return self.read_any(self.training_set_path(service, version))

    def has_training_set(self, service: str, version: int) -> bool:
        return self.exists(layout.training_set_key(service, version))

    def write_registry_snapshot(self, stamp: str, snapshot_json: str, features: pl.DataFrame) -> Location:
        """One registry snapshot (its JSON and its feature table); returns its folder."""
        self.write(layout.registry_key(stamp, layout.REGISTRY_JSON), snapshot_json.encode())
        self.write(layout.registry_key(stamp, layout.REGISTRY_FEATURES), features)
        return self.location(layout.registry_key(stamp))

    def registry_snapshots(self) -> list[str]:
        """Stamps of the stored registry snapshots, oldest first."""
        return sorted(
            {k.split("/")[1] for k in self.list_keys(layout.REGISTRY) if k.endswith(layout.REGISTRY_JSON)}
        )

    def read_registry_snapshot(self, stamp: str) -> str | None:
        data = self.read_bytes(layout.registry_key(stamp, layout.REGISTRY_JSON))
        return None if data is None else data.decode()

    def served_dir(self, service: str, version: int) -> Location:
        return self.location(layout.served_key(service, version))

    def write_served_log(
        self, service: str, version: int, first: str, last: str, rows: pl.DataFrame
    ) -> Location:
        """Served vectors of stream entries first..last as one file (a re-run rewrites it)."""
        return self.write(
            f"{layout.served_key(service, version)}/{layout.served_log_name(first, last)}", rows
        )

    def served_logs(self, service: str, version: int) -> list[Location]:
        return [
            self.location(k)
            for k in self.list_keys(layout.served_key(service, version))
            if k.endswith(layout.PARQUET)
        ]


def _is_piece_key(key: str) -> bool:
    return layout.is_piece(key) and key.endswith(layout.PARQUET)


class LocalOfflineStore(OfflineStore):
    """A local folder (the default, `<state>/offline`): files written by `atomic_write`."""

    is_local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def location(self, key: str) -> Path:
        return self.root / key if key else self.root

    def key_of(self, location: Location) -> str:
        return Path(location).relative_to(self.root).as_posix()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.location(prefix)
        if not base.is_dir():
            return []
        keys = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = [d for d in dirs if layout.is_visible(d)]
            rel = Path(folder).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{n}" for n in names if layout.is_visible(n))
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return self.location(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self.location(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def write(self, key: str, content: pl.DataFrame | bytes) -> Path:
        return atomic_write(self.location(key), content)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.location(key).read_bytes()
        except FileNotFoundError:
            return None

    def scan_parquet(self, locations: Sequence[Location], **options: Any) -> pl.LazyFrame:
        """A scan of the files *as they are now*: each is opened here and the plan holds the
        open file (closed when the plan is dropped). Why not paths: Polars opens a path more
        than once (footer when planning, pages when collecting), so a partition replaced in
        between was read as the old footer over the new bytes ("Invalid thrift", or worse);
        an open file keeps its inode after `os.replace`, so every file is read whole, old or
        new. The contract suite's racing-reader test caught this."""
        return pl.scan_parquet([open(p, "rb") for p in locations], **options)

    def read_parquet(self, location: Location, decrypt: bool = False) -> pl.DataFrame | None:
        try:
            with open(location, "rb") as handle:  # one open: one version of the file
                return read_decrypted(handle, self.key_ring()) if decrypt else pl.read_parquet(handle)
        except FileNotFoundError:
            return None

    def footer_rows(self, location: Location) -> int:
        with open(location, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def put_file(self, key: str, source: Path) -> Path:
        return atomic_copy(Path(source), self.location(key))

    def get_file(self, key: str, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self.location(key), target)
        except FileNotFoundError:
            return False
        return True

    def _delete_tree(self, prefix: str) -> int:
        base = self.location(prefix)
        if not base.is_dir():
            return int(self.delete(prefix))
        count = sum(len(names) for _, _, names in os.walk(base))
        shutil.rmtree(base, ignore_errors=True)
        return count

    # a local store keeps its folders, as before the interface: `in_use` is the folder
    def mark_in_use(self, group: FeatureGroup) -> None:
        private_dirs(Path(self.group_dir(group)))

    def in_use(self, group: FeatureGroup) -> bool:
        return Path(self.group_dir(group)).is_dir()


@dataclass(frozen=True)
class S3Settings:
    """Credentials and endpoint of an S3-compatible store, from the usual AWS variables.

    `AWS_ENDPOINT_URL_S3` (else `AWS_ENDPOINT_URL`) points at a non-AWS server (MinIO, moto,
    Ceph...); `AWS_ALLOW_HTTP=true` permits a plain-http endpoint (a local server). Unset keys
    leave the libraries to their default credential chain (instance profile, ~/.aws).
    """

    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    allow_http: bool = False

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        allow = env.get("AWS_ALLOW_HTTP", "").strip().lower() in ("1", "true", "yes", "on")
        return cls(
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            endpoint_url=endpoint,
            allow_http=allow or (endpoint or "").startswith("http://"),
        )

    def polars_options(self) -> dict[str, str]:
        """`storage_options` for Polars' object_store reader."""
        options = {
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_session_token": self.session_token,
            "aws_region": self.region or "us-east-1",
            "aws_endpoint_url": self.endpoint_url,
        }
        out = {k: v for k, v in options.items() if v}
        if self.allow_http:
            out["aws_allow_http"] = "true"
        return out

    def arrow_filesystem(self) -> Any:
        import pyarrow.fs as pafs

        kwargs: dict[str, Any] = {"region": self.region or "us-east-1"}
        if self.access_key and self.secret_key:
            kwargs.update(access_key=self.access_key, secret_key=self.secret_key)
            if self.session_token:
                kwargs["session_token"] = self.session_token
        if self.endpoint_url:
            scheme, _, host = self.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host.rstrip("/") or scheme, scheme=scheme if host else "https")
        # delayed open: a small object is sent as one PutObject at close, not as a multipart
        # upload of one part (both are atomic; one request is cheaper)
        return pafs.S3FileSystem(allow_delayed_open=True, **kwargs)


class S3OfflineStore(OfflineStore):
    """`s3://bucket/prefix` on an S3-compatible object store.

    Listing, PUT and DELETE go through `pyarrow.fs.S3FileSystem` (the AWS C++ SDK pyarrow
    already ships); Parquet scans through Polars' own object_store reader (lazy, projection and
    predicate pushdown, parallel range requests), with the same settings. A write serializes
    the whole file in memory, then sends it in one PUT (pyarrow switches to a multipart upload
    only past its part size, which S3 likewise makes visible only once complete): an object
    is never seen half written, and a failed write leaves the old object.
    """

    is_local = False

    def __init__(self, root: str, settings: S3Settings | None = None) -> None:
        if not root.startswith("s3://"):
            raise ValueError(f"not an s3:// root: {root}")
        bucket, _, prefix = root[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {root}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.settings = settings or S3Settings.from_env()
        self.fs = self.settings.arrow_filesystem()
        self.storage_options = self.settings.polars_options()

    def _path(self, key: str) -> str:
        """The pyarrow path (`bucket/prefix/key`) of a layout key."""
        return "/".join(p for p in (self.bucket, self.prefix, key) if p)

    def location(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def list_keys(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        base = self._path(prefix)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        strip = len(self._path("")) + 1
        keys = [
            info.path[strip:]
            for info in infos
            if info.type == pafs.FileType.File and layout.is_visible(layout.base_name(info.path))
        ]
        return sorted(keys)

    def exists(self, key: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        try:
            self.fs.delete_file(self._path(key))
            return True
        except FileNotFoundError:
            return False

    def write(self, key: str, content: pl.DataFrame | bytes) -> str:
        data = parquet_bytes(content) if isinstance(content, pl.DataFrame) else content
        with self.fs.open_output_stream(self._path(key)) as out:
            out.write(data)
        return self.location(key)

    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, one version of it.

        pyarrow asks for the size (HEAD), then GETs that byte range: an object replaced in
        between comes back as the new object whole (it was smaller: S3 clips the range) or as
        a prefix of it (it was larger). A prefix is not a Parquet file (no footer at its end),
        so Parquet objects are checked and read again until whole.
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                with self.fs.open_input_stream(self._path(key)) as stream:
                    data = stream.read()
            except FileNotFoundError:
                return None
            if not key.endswith(layout.PARQUET) or _whole_parquet(data):
                return data
        raise OSError(f"{self.location(key)} kept changing while it was read")

    def scan_parquet(self, locations: Sequence[Location], **options: Any) -> pl.LazyFrame:
        """A scan of the objects as they are now: each is fetched whole with one GET (in
        parallel), and Polars scans the bytes lazily. Why not Polars' own ranged reads
        (`storage_options`): they fetch the footer, then the pages, in separate requests, and
        an object replaced in between was read as the old footer over the new object ("must
        end with PAR1"); a single GET returns one version, so every file is read whole, old
        or new. The cost is the files' compressed bytes in memory while the plan lives."""
        keys = [self.key_of(p) for p in locations]
        blobs = list(_pool().map(self._get, keys)) if len(keys) > 1 else [self._get(k) for k in keys]
        return pl.scan_parquet([io.BytesIO(b) for b in blobs], **options)

    def _get(self, key: str) -> bytes:
        data = self.read_bytes(key)
        if data is None:
            raise FileNotFoundError(self.location(key))
        return data

    def read_parquet(self, location: Location, decrypt: bool = False) -> pl.DataFrame | None:
        data = self.read_bytes(self.key_of(location))
        if data is None:
            return None
        return read_decrypted(data, self.key_ring()) if decrypt else pl.read_parquet(io.BytesIO(data))

    def footer_rows(self, location: Location) -> int:
        # ranged reads of the footer: an estimate, so a replacement racing it is retried once
        for attempt in (0, 1):
            try:
                with self.fs.open_input_file(self._path(self.key_of(location))) as handle:
                    return pq.ParquetFile(handle).metadata.num_rows
            except FileNotFoundError:
                raise
            except Exception:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def put_file(self, key: str, source: Path) -> str:
        # streamed in parts: pyarrow sends one PUT, or a multipart upload past its part size,
        # which S3 makes visible only once complete (never half an object)
        with open(source, "rb") as handle, self.fs.open_output_stream(self._path(key)) as out:
            shutil.copyfileobj(handle, out, _COPY_CHUNK)
        return self.location(key)

    def get_file(self, key: str, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.fs.open_input_stream(self._path(key)) as stream, open(target, "wb") as out:
                shutil.copyfileobj(stream, out, _COPY_CHUNK)
        except FileNotFoundError:
            target.unlink(missing_ok=True)
            return False
        return True

    def _delete_tree(self, prefix: str) -> int:
        import pyarrow.fs as pafs

        base = self._path(prefix)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = [info.path for info in infos if info.type == pafs.FileType.File]
        if files:
            self.fs.delete_dir_contents(base, missing_dir_ok=True)
        return len(files) + int(self.delete(prefix))

    def arrow_dataset(self, files: Sequence[Location], group: FeatureGroup) -> Any:
        """A pyarrow dataset of a group's files with the Hive `date` column (DuckDB reads it
        through Arrow: its httpfs extension would have to be downloaded)."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        partitioning = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
        return ds.dataset(
            [self._path(self.key_of(f)) for f in files],
            filesystem=self.fs,
            format="parquet",
            partitioning=partitioning,
            partition_base_dir=self._path(layout.group_key(group.name, group.version)),
        )


_READ_ATTEMPTS = 20
_COPY_CHUNK = 8 * 1024 * 1024


def _whole_parquet(data: bytes) -> bool:
    """A complete Parquet file: magic at both ends and a footer that parses."""
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        return False
    if int.from_bytes(data[-8:-4], "little") + 12 > len(data):
        return False
    try:
        pq.read_metadata(io.BytesIO(data))
    except Exception:
        return False
    return True


_POOL: list[Any] = []


def _pool() -> Any:
    """Threads for parallel GETs (pyarrow releases the GIL while it waits on the network)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=16, thread_name_prefix="skewless-s3"))
    return _POOL[0]


def scan_merged(
    group: FeatureGroup, files: Sequence[Location], store: OfflineStore | None = None
) -> pl.LazyFrame:
    """Lazily read files from `OfflineStore.files()` as merged partitions.

    Days without pieces are scanned as they are (already deduplicated and sorted); only a
    day with pieces pays for a dedupe and sort, and only of that day. `store` reads the files
    (None: local paths).
    """
    reader = store if store is not None else _local_reader()
    schema = group.offline_schema()
    if not files:
        return pl.LazyFrame(schema=schema)
    if group.pii_features:
        return _scan_decrypted(group, files, reader, schema)
    if not any(layout.is_piece(p) for p in files):
        return reader.scan_parquet(files, schema=schema)
    by_day: dict[date, list[Location]] = {}
    for path in files:
        by_day.setdefault(layout.day_of(path), []).append(path)
    frames: list[pl.LazyFrame] = []
    plain: list[Location] = []
    for day in sorted(by_day):
        day_files = by_day[day]
        if not any(layout.is_piece(p) for p in day_files):
            plain.extend(day_files)
            continue
        if plain:
            frames.append(reader.scan_parquet(plain, schema=schema))
            plain = []
        frames.append(dedupe_and_sort(group, _read_day(reader, day_files, schema).lazy()))
    if plain:
        frames.append(reader.scan_parquet(plain, schema=schema))
    return pl.concat(frames, how="vertical")


def _scan_decrypted(
    group: FeatureGroup, files: Sequence[Location], reader: OfflineStore, schema: pl.Schema
) -> pl.LazyFrame:
    """`scan_merged` of a group with pii columns: Polars cannot read modular-encrypted Parquet,
    so each day is read eagerly by pyarrow with the store's keys (no projection or predicate
    pushdown: the price of encryption on reads), then merged exactly as the lazy path does."""
    by_day: dict[date, list[Location]] = {}
    for path in files:
        by_day.setdefault(layout.day_of(path), []).append(path)
    frames: list[pl.LazyFrame] = []
    for day in sorted(by_day):
        day_files = by_day[day]
        frame = _read_day(reader, day_files, schema, decrypt=True).lazy()
        frames.append(dedupe_and_sort(group, frame) if any(layout.is_piece(p) for p in day_files) else frame)
    return pl.concat(frames, how="vertical")


def _read_day(
    reader: OfflineStore, day_files: Sequence[Location], schema: pl.Schema, decrypt: bool = False
) -> pl.DataFrame:
    """A day's partition and pieces, read pieces first so compaction cannot hide rows.

    Compaction replaces data.parquet *before* deleting the pieces it folded in, so a piece
    that vanished while we read means the partition we read afterwards already holds it.
    """
    pieces = [reader.read_parquet(p, decrypt) for p in day_files if layout.is_piece(p)]
    partitions = [reader.read_parquet(p, decrypt) for p in day_files if not layout.is_piece(p)]
    frames = [
        f.select(list(schema)).cast(dict(schema)) for f in partitions + pieces if f is not None
    ]  # stored order: partition first, then pieces by name
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


_LOCAL: list[LocalOfflineStore] = []


def _local_reader() -> LocalOfflineStore:
    """Reads of plain local paths (callers that pass no store)."""
    if not _LOCAL:
        _LOCAL.append(LocalOfflineStore("/"))
    return _LOCAL[0]


def days_between(start: date, end_exclusive: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end_exclusive - start).days)]


def open_offline_store(config: StoreConfig) -> OfflineStore:
    """The offline store `config.offline_root` names: the one place a backend is chosen.

    A new backend is one `OfflineStore` subclass and one line here (its URI scheme).
    """
    root = str(config.offline_root)
    store: OfflineStore = S3OfflineStore(root) if root.startswith("s3://") else LocalOfflineStore(root)
    store.state_dir = config.state_dir or None
    return store

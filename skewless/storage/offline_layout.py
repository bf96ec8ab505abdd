"""The offline layout: every name under an offline root is built (and parsed) here, nowhere else.

    <root>/<group>/v<N>/date=YYYY-MM-DD/data.parquet          a day's partition (batch path)
    <root>/<group>/v<N>/date=YYYY-MM-DD/piece-<name>.parquet  pushed events of a micro-batch
    <root>/_training_sets/<service>/v<N>/data.parquet         a training-set asset's output
    <root>/_registry/<stamp>/registry.json, features.parquet  registry snapshots
    <root>/_served/<service>/v<N>/log-<first>-<last>.parquet  the sampled served-vector log
    <root>/_work/<run id>/...                                 a distributed job's scratch files
    <root>/_erasures/<entity>/<stamp>-<id>.parquet            erased entities' join keys
    <root>/_audit/date=YYYY-MM-DD/piece-<first>-<last>.parquet  compacted audit-log entries
    <root>/_audit/date=YYYY-MM-DD/direct-<stamp>.parquet        audit rows written without Redis

Why one module: before, six modules each spelled some of these names (`date=` globs in the
client, `_served` in the served asset, `_registry` in lineage, ...), so a second backend would
have had to find and re-implement every one. Keys here are relative, '/'-separated strings;
the store (`storage/offline.py`) joins them to its root, a local folder or an `s3://` prefix,
so the layout is byte-identical on every backend. A group name cannot start with '_', so the
`_`-folders never collide with a group. The pushed-rows folder of a `FileSource` (`_pushed/`)
is the source's own data and stays defined by the source (`FileSource.pushed_dir`, the
language layer, which must not import storage); only its file names are built here.
"""

from __future__ import annotations

import re
from datetime import date
from os import PathLike

DATA_FILE = "data.parquet"
PIECE_PREFIX = "piece-"
DATE_PREFIX = "date="
PARQUET = ".parquet"
TRAINING_SETS = "_training_sets"
REGISTRY = "_registry"
SERVED = "_served"
WORK = "_work"
ERASURES = "_erasures"
AUDIT = "_audit"
AUDIT_DIRECT_PREFIX = "direct-"
REGISTRY_JSON = "registry.json"
REGISTRY_FEATURES = "features.parquet"
IN_USE_MARKER = ".in-use"  # object stores have no folders: an empty object marks a version in use

_DAY = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/[^/]*$")


def group_key(name: str, version: int) -> str:
    return f"{name}/v{version}"


def day_folder(day: date) -> str:
    return f"{DATE_PREFIX}{day.isoformat()}"


def day_key(name: str, version: int, day: date) -> str:
    return f"{group_key(name, version)}/{day_folder(day)}"


def partition_key(name: str, version: int, day: date) -> str:
    return f"{day_key(name, version, day)}/{DATA_FILE}"


def piece_key(name: str, version: int, day: date, piece: str) -> str:
    return f"{day_key(name, version, day)}/{PIECE_PREFIX}{piece}{PARQUET}"


def files_glob(name: str, version: int) -> str:
    """Every partition and piece of a version, as a glob (DuckDB's `read_parquet`)."""
    return f"{group_key(name, version)}/{DATE_PREFIX}*/*{PARQUET}"


def partitions_glob(name: str, version: int) -> str:
    return f"{group_key(name, version)}/{DATE_PREFIX}*/{DATA_FILE}"


def in_use_key(name: str, version: int) -> str:
    return f"{group_key(name, version)}/{IN_USE_MARKER}"


def training_set_key(service: str, version: int) -> str:
    return f"{TRAINING_SETS}/{service}/v{version}/{DATA_FILE}"


def registry_key(stamp: str, file: str = "") -> str:
    return f"{REGISTRY}/{stamp}" + (f"/{file}" if file else "")


def served_key(service: str, version: int) -> str:
    return f"{SERVED}/{service}/v{version}"


def work_key(run_id: str) -> str:
    """The scratch area of one run of a distributed job (the training-set buckets): files
    every step reads and writes through the store, deleted when the run ends."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"not a run id: {run_id!r}")
    return f"{WORK}/{run_id}"


def erasures_key(entity: str) -> str:
    return f"{ERASURES}/{entity}"


def erasure_key(entity: str, stamp: str) -> str:
    """One erasure request's keys: a file per request, so two at once never lose one."""
    return f"{erasures_key(entity)}/{stamp}{PARQUET}"


def _entry_range_name(kind: str, first: str, last: str) -> str:
    """`<kind>-<first>-<last>.parquet` for a range of stream entry ids (`-` inside an id
    becomes `_`, so the name splits back unambiguously): a re-run names the same file."""
    return f"{kind}-{first.replace('-', '_')}-{last.replace('-', '_')}{PARQUET}"


def audit_day_key(day: date) -> str:
    return f"{AUDIT}/{day_folder(day)}"


def audit_piece_key(day: date, first: str, last: str) -> str:
    """Audit-log stream entries first..last of one day: a re-run names the same file."""
    return f"{audit_day_key(day)}/{_entry_range_name(PIECE_PREFIX.rstrip('-'), first, last)}"


def audit_direct_key(day: date, stamp: str) -> str:
    """One audit row written straight to the offline store (no Redis was running)."""
    return f"{audit_day_key(day)}/{AUDIT_DIRECT_PREFIX}{stamp}{PARQUET}"


def audit_piece_range(key: str) -> tuple[str, str] | None:
    """(first, last) stream entry ids of an audit piece's key; None for any other file."""
    name = base_name(key)
    if not (name.startswith(PIECE_PREFIX) and name.endswith(PARQUET)):
        return None
    parts = name[len(PIECE_PREFIX) : -len(PARQUET)].split("-")
    if len(parts) != 2:
        return None
    return parts[0].replace("_", "-"), parts[1].replace("_", "-")


def served_log_name(first: str, last: str) -> str:
    """A served-log file holds stream entries first..last: a re-run rewrites the same file."""
    return _entry_range_name("log", first, last)


def pushed_file_name(after: str, until: str) -> str:
    """The file a micro-batch keeps a stream range's pushed rows in, beside its FileSource."""
    return _entry_range_name("entries", after, until)


def base_name(location: str | PathLike[str]) -> str:
    return str(location).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def is_piece(location: str | PathLike[str]) -> bool:
    return base_name(location).startswith(PIECE_PREFIX)


def is_partition(location: str | PathLike[str]) -> bool:
    return base_name(location) == DATA_FILE


def is_visible(name: str) -> bool:
    """Dot-names are a local writer's temps (and the in-use marker): never data."""
    return not name.startswith(".")


def day_of(location: str | PathLike[str]) -> date:
    """The day of a partition or piece from its location (local path or URI)."""
    match = _DAY.search(str(location).replace("\\", "/"))
    if match is None:
        raise ValueError(f"{location} is not a file of a day partition")
    return date.fromisoformat(match.group(1))


def day_from_folder(name: str) -> date | None:
    """`date=YYYY-MM-DD` → the day; anything else → None."""
    if not name.startswith(DATE_PREFIX):
        return None
    try:
        return date.fromisoformat(name[len(DATE_PREFIX) :])
    except ValueError:
        return None

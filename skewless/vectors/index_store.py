"""Index builds on the offline store: build, check, publish, load.

    <offline_root>/_indexes/<group>/v<N>/<build>/index.faiss   the IVF cells or HNSW graph
    <offline_root>/_indexes/<group>/v<N>/<build>/vectors.npy   IVF only: vectors in label order
    <offline_root>/_indexes/<group>/v<N>/<build>/rows.parquet  label -> keys, times, scalars
    <offline_root>/_indexes/<group>/v<N>/<build>/build.json    data version, parameters, checks
    <offline_root>/_indexes/<group>/v<N>/current.json          the published build

A build's files are written before `current.json` names it (one atomic file), so a serving
process sees the old build or the new one, never half of one; a build whose `recall` check
fails is written but never published. The two newest builds are kept (a process may still
map the previous one); older ones are deleted. On S3 a serving process copies a build into
its state folder once and maps it there.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.compute.rows import latest_per_entity
from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureGroup
from skewless.language.vectors import VectorIndex
from skewless.storage.offline import OfflineStore
from skewless.vectors.engine import (
    CREATED_US,
    EVENT_US,
    VECTOR,
    VectorSearcher,
    build_hnsw,
    build_ivf,
    default_lists,
    faiss_module,
    prepared,
)

ROOT = "_indexes"
SAMPLE = 2000  # norms and centroid cosines kept per build for the next build's drift check


def spec_of(group: FeatureGroup) -> VectorIndex:
    if group.index is None:
        raise ValueError(f"feature group '{group.ref}' declares no VectorIndex")
    return group.index


def version_prefix(group: FeatureGroup) -> str:
    return f"{ROOT}/{group.name}/v{group.version}"


def build_prefix(group: FeatureGroup, build_id: str) -> str:
    return f"{version_prefix(group)}/{build_id}"


def scalar_features(group: FeatureGroup) -> list[str]:
    """The features filters can use: every non-vector feature of the group."""
    return [f.name for f in group.features if f.vector is None]


def index_rows(group: FeatureGroup, latest: pl.DataFrame) -> pl.DataFrame:
    """Latest rows (offline layout) in the index layout: keys, times in µs, scalar features and
    the indexed vector in `_vector` (null: the entity has no embedding, i.e. remove it)."""
    spec = spec_of(group)
    created = (
        pl.col(CREATED_TIMESTAMP).cast(pl.Int64)
        if CREATED_TIMESTAMP in latest.columns
        else pl.lit(0, pl.Int64)
    )
    return latest.select(
        *group.entity.key_columns,
        pl.col(EVENT_TIMESTAMP).cast(pl.Int64).alias(EVENT_US),
        created.alias(CREATED_US),
        *scalar_features(group),
        pl.col(spec.feature).alias(VECTOR),
    )


@dataclass
class Build:
    """One build: its index, table, metadata and check outcomes."""

    build_id: str
    index: Any
    rows: pl.DataFrame
    meta: dict[str, Any]
    outcomes: list[CheckOutcome] = field(default_factory=list)
    vectors: np.ndarray | None = None  # prepared, label order (saved beside an IVF index)

    @property
    def blocked(self) -> bool:
        return any(o.blocks for o in self.outcomes if o.name == "recall")


def latest_embeddings(
    offline: OfflineStore, group: FeatureGroup, now: datetime | None = None
) -> pl.DataFrame:
    """The latest row per entity over every stored partition, in the index layout, entities
    whose latest embedding is null or older than the TTL left out (they are not served)."""
    rows = offline.scan(group).collect()
    latest = latest_per_entity(group, rows) if rows.height else rows
    ttl = group.time_to_live
    if ttl is not None and latest.height:
        latest = latest.filter(pl.col(EVENT_TIMESTAMP) >= (now or datetime.now(UTC)) - ttl)
    table = index_rows(group, latest)
    return table.filter(pl.col(VECTOR).is_not_null())


def data_version(table: pl.DataFrame) -> str:
    """What the build was made from: a hash of every entity's keys and times (the rows
    that decide which vector is latest), with the count and the newest event."""
    if table.height == 0:
        return "empty"
    digest = int(table.drop(VECTOR).hash_rows(seed=7).sum())  # wrapping u64 sum: order-free
    newest = int(table.get_column(EVENT_US).max())  # type: ignore[arg-type]
    return f"{table.height}-{newest}-{digest & 0xFFFFFFFFFFFF:012x}"


def make_index(
    vectors: np.ndarray,
    rows: pl.DataFrame,
    key_columns: list[str],
    spec: VectorIndex,
    degrade: bool = False,
    threads: int | None = None,
) -> tuple[Any, VectorSearcher, dict[str, Any]]:
    """The index of a build's prepared `vectors` (label order), its searcher at the search
    width it will be served with (IVF probes tuned here unless declared), and the
    parameters to record. What `build` and bench/vectors.py both run."""
    from skewless.vectors.checks import tune_width

    kind = "hnsw" if degrade else spec.kind
    params: dict[str, Any] = {"kind": kind}
    if kind == "ivf":
        index = build_ivf(vectors, spec.metric, spec.lists or default_lists(len(vectors)), threads)
        params.update(lists=int(index.nlist), library=f"faiss {faiss_module().__version__} IndexIVFFlat")
        width = spec.probes or 1
    else:
        connectivity, expansion = (2, 1) if degrade else (spec.connectivity, spec.expansion_add)
        index = build_hnsw(vectors, spec.metric, connectivity, expansion, threads)
        params.update(
            connectivity=connectivity,
            expansion_add=expansion,
            library=f"faiss {faiss_module().__version__} IndexHNSWFlat",
        )
        width = 1 if degrade else spec.expansion_search
    searcher = VectorSearcher(index, rows, key_columns, spec.metric, width, vectors=vectors)
    params["tuning"] = []
    if kind == "ivf" and spec.probes is None and len(vectors):
        _, ladder = tune_width(searcher, vectors, spec.min_recall, spec.recall_queries, spec.recall_k)
        params["tuning"] = ladder
    params["width"] = searcher.width
    return index, searcher, params


def build(
    offline: OfflineStore,
    group: FeatureGroup,
    now: datetime | None = None,
    degrade: bool = False,
    threads: int | None = None,
) -> Build:
    """Build the index of `group` from the offline store and run its checks (not yet saved).

    `degrade=True` builds a deliberately broken HNSW graph (two links per node, a beam of
    one), whatever the declared kind: what the recall check must catch; for tests and drills.
    """
    from skewless.vectors.checks import index_checks

    spec = spec_of(group)
    now = now or datetime.now(UTC)
    table = latest_embeddings(offline, group, now)
    raw = (
        np.asarray(table.get_column(VECTOR).to_numpy(), dtype=np.float32)
        if table.height
        else np.zeros((0, group.feature(spec.feature).vector.dim), dtype=np.float32)  # type: ignore[union-attr]
    )
    vectors = prepared(raw, spec.metric) if len(raw) else raw.astype(np.float32)
    rows = table.drop(VECTOR)
    build_id = now.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
    norms = np.linalg.norm(raw, axis=1) if len(raw) else np.zeros(0)
    centroid = vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1])
    rng = np.random.default_rng(0)
    sample = rng.choice(len(raw), size=min(SAMPLE, len(raw)), replace=False) if len(raw) else np.zeros(0, int)
    index, searcher, params = make_index(vectors, rows, group.entity.key_columns, spec, degrade, threads)
    meta: dict[str, Any] = {
        "group": group.ref,
        "feature": spec.feature,
        "build": build_id,
        "built_at": now.isoformat(),
        "data_version": data_version(table),
        "entities": table.height,
        "newest_event_us": int(rows.get_column(EVENT_US).max()) if rows.height else None,  # type: ignore[arg-type]
        "metric": spec.metric,
        "dim": int(vectors.shape[1]),
        **params,
        "norm_sample": [float(x) for x in norms[sample]],
        "centroid": [float(x) for x in centroid],
    }
    result = Build(build_id, index, rows, meta, vectors=vectors)
    previous = read_current(offline, group)
    previous_meta = read_meta(offline, group, previous["build"]) if previous else None
    result.outcomes = index_checks(group, searcher, vectors, raw, meta, previous_meta, now)
    meta["checks"] = {o.name: {"passed": o.passed, **_plain(o.values)} for o in result.outcomes}
    return result


def index_bytes(built: Build) -> int:
    """What a build maps when served: vectors plus graph links (HNSW) or ids (IVF)."""
    n, dim = int(built.index.ntotal), int(built.meta["dim"])
    if built.meta.get("kind") == "ivf":
        return n * (dim * 4 + 8) + int(built.meta["lists"]) * dim * 4
    return n * (dim * 4 + int(built.meta.get("connectivity", 32)) * 8)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, int | float | str | bool) or v is None}


def save(offline: OfflineStore, group: FeatureGroup, built: Build) -> str:
    """Write a build's files (not published yet); returns its folder's key."""
    prefix = build_prefix(group, built.build_id)
    faiss = faiss_module()
    _write_large(offline, f"{prefix}/index.faiss", lambda path: faiss.write_index(built.index, path))
    if built.vectors is not None and built.meta.get("kind") == "ivf":
        matrix = np.ascontiguousarray(built.vectors, dtype=np.float32)
        _write_large(offline, f"{prefix}/vectors.npy", lambda path: _save_npy(path, matrix))
    offline.write(f"{prefix}/rows.parquet", built.rows)
    offline.write(f"{prefix}/build.json", json.dumps(built.meta).encode())
    return prefix


def _save_npy(path: str, matrix: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append ".npy" to a name
        np.save(handle, matrix)


def _write_large(offline: OfflineStore, key: str, write: Callable[[str], None]) -> None:
    """Write a large build file: on a local store straight to disk by `write(path)` (no
    second copy of a large index in memory), then renamed into place like every other
    local write; on object storage written to a temp file, then one PUT."""
    target = offline.location(key)
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            write(str(temp))
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="skewless-index-") as folder:
        temp = Path(folder) / Path(key).name
        write(str(temp))
        offline.write(key, temp.read_bytes())


def publish(offline: OfflineStore, group: FeatureGroup, built: Build, keep: int = 2) -> None:
    """Name the build in `current.json`, then delete builds older than the `keep` newest."""
    pointer = {k: built.meta[k] for k in ("build", "built_at", "data_version", "entities", "newest_event_us")}
    offline.write(f"{version_prefix(group)}/current.json", json.dumps(pointer).encode())
    builds = sorted(
        {key.split("/")[3] for key in offline.list_keys(version_prefix(group)) if key.count("/") >= 4}
    )
    others = [b for b in builds if b != built.build_id]
    for old in others[: max(0, len(others) - (keep - 1))]:
        for key in offline.list_keys(build_prefix(group, old)):
            offline.delete(key)


def delete_builds(offline: OfflineStore, group: FeatureGroup, keep: str | None = None) -> int:
    """Delete every build of a group version's index but `keep` (None: all of them, and the
    `current.json` naming one); returns the files deleted. Used when builds must not stay
    (an erasure whose rebuild could not be published)."""
    deleted = 0
    for key in offline.list_keys(version_prefix(group)):
        parts = key.split("/")
        if keep is not None and (len(parts) < 5 or parts[3] == keep or key.endswith("current.json")):
            continue
        deleted += int(offline.delete(key))
    return deleted


def read_current(offline: OfflineStore, group: FeatureGroup) -> dict[str, Any] | None:
    raw = offline.read_bytes(f"{version_prefix(group)}/current.json")
    return None if raw is None else json.loads(raw)


def read_meta(offline: OfflineStore, group: FeatureGroup, build_id: str) -> dict[str, Any] | None:
    raw = offline.read_bytes(f"{build_prefix(group, build_id)}/build.json")
    return None if raw is None else json.loads(raw)


def open_searcher(
    offline: OfflineStore, group: FeatureGroup, build_id: str, cache_dir: Path | None = None
) -> VectorSearcher:
    """A build's searcher, its vectors memory-mapped (from the store's folder, or a copy in
    `cache_dir` for object storage)."""
    faiss = faiss_module()
    prefix = build_prefix(group, build_id)
    meta = read_meta(offline, group, build_id) or {}
    names = ["index.faiss", "vectors.npy"] if meta.get("kind") == "ivf" else ["index.faiss"]
    paths = {name: _mappable(offline, group, build_id, name, cache_dir) for name in names}
    index = faiss.read_index(str(paths["index.faiss"]), faiss.IO_FLAG_MMAP_IFC)
    vectors = np.load(paths["vectors.npy"], mmap_mode="r") if "vectors.npy" in paths else None
    rows = offline.read_parquet(offline.location(f"{prefix}/rows.parquet"))
    if rows is None:
        raise FileNotFoundError(f"index build {build_id} of '{group.ref}' has no rows.parquet")
    spec = spec_of(group)
    width = int(meta.get("width", meta.get("expansion_search", spec.expansion_search)))
    return VectorSearcher(index, rows, group.entity.key_columns, spec.metric, width, vectors=vectors)


def _mappable(
    offline: OfflineStore, group: FeatureGroup, build_id: str, name: str, cache_dir: Path | None
) -> Path:
    """A local path of a build's file to map: in the store's folder, or copied once into
    `cache_dir` from object storage."""
    prefix = build_prefix(group, build_id)
    location = offline.location(f"{prefix}/{name}")
    if isinstance(location, Path):
        return location
    if cache_dir is None:
        raise ValueError("an index on object storage needs a local cache folder to map it from")
    path = cache_dir / "indexes" / group.name / f"v{group.version}" / build_id / name
    if not path.is_file():
        data = offline.read_bytes(f"{prefix}/{name}")
        if data is None:
            raise FileNotFoundError(f"index build {build_id} of '{group.ref}' has no {name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temp.write_bytes(data)
        os.replace(temp, path)
    return path

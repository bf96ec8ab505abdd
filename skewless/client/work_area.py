"""The partitioned engine's three steps run anywhere: a work area on the offline store.

A distributed training set (the Dagster job of `feature_assets.distributed_training`) runs
`training_set.scatter_buckets`, one `join_bucket` per bucket and `gather_buckets` as separate
steps, on workers that share no filesystem. What they share is the offline store, so the
work area lives there, under `_work/<run id>/`:

    manifest.json          the plans (groups, features, output names, the files to read)
    entity_df.parquet      the labels as given (the gather puts the features next to them)
    buckets/...            the bucket folders, laid out by `training_set.bucket_dir`

Each step downloads the bucket folders it needs into a local temp folder, runs the engine's
step function on it, and uploads what it wrote. Folders are copied whole, whatever files
they hold: the file format inside a bucket is the engine's business (`bucket_dir` /
`bucket_files` are the one owner of the layout), never this module's.

The steps read the plans from the manifest instead of planning again, so every step joins
exactly the files the first one planned (a partition landing mid-run changes nothing), and
the labels from `entity_df.parquet`, so the gather assembles what the scatter split.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from skewless.client.feature_store import TrainingSetPlan
from skewless.client.training_set import (
    GroupPlan,
    WorkKind,
    bucket_dir,
    default_buckets,
    gather_buckets,
    join_bucket,
    scatter_buckets,
)
from skewless.repository import FeatureRepository
from skewless.storage.offline import OfflineStore
from skewless.storage.offline_layout import day_of, work_key

MANIFEST = "manifest.json"
STARTED = "started.json"  # written first: when the area was created (what a sweep ages it by)
ENTITIES = "entity_df.parquet"
BUCKETS = "buckets"
FORMAT = 1


@dataclass
class DistributedStats:
    """What the metadata of a distributed training set reports."""

    buckets: int
    label_rows: int
    groups: dict[str, dict[str, int]] = field(default_factory=dict)


@contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="skewless-work-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class WorkArea:
    """One run's work area: `prefix` (`_work/<run id>`) on `store`."""

    store: OfflineStore
    prefix: str

    @classmethod
    def for_run(cls, store: OfflineStore, run_id: str) -> WorkArea:
        return cls(store, work_key(run_id))

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def bucket_key(self, i: int, kind: WorkKind, bucket: int) -> str:
        """The store key of a bucket folder: `bucket_dir`'s layout under `buckets/`."""
        return self.key(BUCKETS, bucket_dir(Path(), i, kind, bucket).as_posix())

    def delete(self) -> int:
        return self.store.delete_tree(self.prefix)

    def created_at(self) -> datetime | None:
        """When the scatter began (None: no marker, e.g. an area from before markers)."""
        data = self.store.read_bytes(self.key(STARTED))
        if data is None:
            return None
        try:
            return datetime.fromisoformat(json.loads(data)["created_at"])
        except (ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def run_ids(store: OfflineStore) -> list[str]:
        """The run ids that have a work area on `store` (`_work/<run id>/...`)."""
        prefix = work_key("x").rsplit("/", 1)[0]
        return sorted({key.split("/")[1] for key in store.list_keys(prefix) if key.count("/") >= 2})

    # -- the manifest ------------------------------------------------------------------------

    def _write_manifest(self, plan: TrainingSetPlan, buckets: int) -> None:
        store = self.store
        manifest = {
            "format": FORMAT,
            "buckets": buckets,
            "label_rows": 0 if plan.labels is None else plan.labels.height,
            "selection": [[g.name, g.version, list(feats)] for g, feats in plan.selection],
            "names": [[n, v, f, out] for (n, v, f), out in plan.names.items()],
            "plans": [
                {
                    "group": [p.group.name, p.group.version],
                    "features": list(p.features),
                    "names": dict(p.names),
                    "files": [store.key_of(f) for f in p.files],
                    "partitions_total": p.partitions_total,
                    "rows": p.rows,
                    "all_files": [store.key_of(f) for f in p.all_files],
                }
                for p in plan.plans
            ],
        }
        self.store.write(self.key(MANIFEST), json.dumps(manifest).encode())

    def manifest(self) -> dict[str, Any]:
        data = self.store.read_bytes(self.key(MANIFEST))
        if data is None:
            raise FileNotFoundError(f"no work area at {self.store.location(self.prefix)} (deleted?)")
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"work area {self.prefix} has format {manifest.get('format')}, not {FORMAT}")
        return manifest

    def plans(self, repo: FeatureRepository, manifest: dict[str, Any] | None = None) -> list[GroupPlan]:
        """The group plans the scatter step wrote, with the repository's group definitions
        (each step runs the code location's own)."""
        manifest = manifest or self.manifest()
        store = self.store
        return [
            GroupPlan(
                repo.group(*p["group"]),
                list(p["features"]),
                dict(p["names"]),
                [store.location(k) for k in p["files"]],
                partitions_total=p["partitions_total"],
                rows=p["rows"],
                all_files=[store.location(k) for k in p["all_files"]],
                store=store,
            )
            for p in manifest["plans"]
        ]

    def plan(self, repo: FeatureRepository, manifest: dict[str, Any] | None = None) -> TrainingSetPlan:
        """The whole plan with the labels as given (`labels` is None: they are in the buckets)."""
        manifest = manifest or self.manifest()
        selection = [(repo.group(n, v), list(feats)) for n, v, feats in manifest["selection"]]
        names = {(n, v, f): out for n, v, f, out in manifest["names"]}
        data = self.store.read_bytes(self.key(ENTITIES))
        if data is None:
            raise FileNotFoundError(f"{self.key(ENTITIES)} is missing from the work area")
        original = pl.read_parquet(io.BytesIO(data))
        return TrainingSetPlan(original, selection, names, None, self.plans(repo, manifest))

    # -- the three steps -------------------------------------------------------------------

    def scatter(self, plan: TrainingSetPlan, buckets: int | None = None) -> DistributedStats:
        """Step 1: the manifest, the labels and every bucket folder onto the store.
        `buckets` None or 0: the partitioned engine's own count (`default_buckets`)."""
        label_rows = 0 if plan.labels is None else plan.labels.height
        # the estimate also counts each plan's rows (footers), which the metadata reports
        estimate = default_buckets(plan.plans, plan.labels) if plan.plans and plan.labels is not None else 1
        chosen = buckets or estimate
        stats = DistributedStats(chosen, label_rows, groups=group_stats(plan.plans))
        started = {"created_at": datetime.now(UTC).isoformat(), "format": FORMAT}
        self.store.write(self.key(STARTED), json.dumps(started).encode())
        self.store.write(self.key(ENTITIES), plan.original)
        if plan.labels is not None:
            with _scratch() as local:
                scatter_buckets(plan.labels, plan.plans, chosen, local)
                self.store.upload_tree(local, self.key(BUCKETS))
        self._write_manifest(plan, chosen)  # last: a manifest means the scatter finished
        return stats

    def join(self, repo: FeatureRepository, bucket: int) -> int:
        """Step 2: join one bucket of every group; returns the groups that had labels in it."""
        plans = self.plans(repo)  # not the labels as given: only the gather needs them
        joined = 0
        with _scratch() as local:
            for i in range(len(plans)):
                for kind in ("labels", "features"):
                    rel = bucket_dir(Path(), i, kind, bucket).as_posix()
                    self.store.download_tree(self.bucket_key(i, kind, bucket), local / rel)
                if join_bucket(local, plans, i, bucket) is not None:
                    results = bucket_dir(local, i, "results", bucket)
                    self.store.upload_tree(results, self.bucket_key(i, "results", bucket))
                    joined += 1
        return joined

    def gather(self, repo: FeatureRepository) -> pl.DataFrame:
        """Step 3: every bucket's results back in label order, next to the labels."""
        manifest = self.manifest()
        plan = self.plan(repo, manifest)
        if not manifest["label_rows"]:
            return TrainingSetPlan(plan.original, plan.selection, plan.names, None, []).assemble([])
        buckets = manifest["buckets"]
        keys = self.store.list_keys(self.key(BUCKETS))  # one listing for every folder
        with _scratch() as local:
            for i in range(len(plan.plans)):
                for b in range(buckets):
                    rel = bucket_dir(Path(), i, "results", b).as_posix()
                    self.store.download_tree(self.bucket_key(i, "results", b), local / rel, keys=keys)
            frames = gather_buckets(local, plan.plans, buckets)
        return plan.assemble(frames)

    def run_all(
        self, repo: FeatureRepository, plan: TrainingSetPlan, buckets: int | None = None
    ) -> pl.DataFrame:
        """The three steps one after another in this process (tests, debugging)."""
        stats = self.scatter(plan, buckets)
        for b in range(stats.buckets):
            self.join(repo, b)
        return self.gather(repo)


def group_stats(plans: list[GroupPlan]) -> dict[str, dict[str, int]]:
    """Partitions read per group, as `build` reports them (`TrainingSetStats.groups`)."""
    return {
        p.group.ref: {
            "partitions_read": len({day_of(f) for f in p.files}),
            "partitions_total": p.partitions_total,
            "rows_read": p.rows,
        }
        for p in plans
    }

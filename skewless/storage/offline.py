"""The offline store: every feature row ever computed, as Hive-style daily Parquet partitions.

    <root>/<group>/v<N>/date=YYYY-MM-DD/data.parquet

One file per partition, replaced atomically (write a temp file in the same folder, then
`os.replace`), so a reader sees the old partition or the new one, never half of either, and
re-running a partition is idempotent. An empty day still gets a file (with the schema), so
"materialized" always means "its file exists".
"""

from __future__ import annotations

import os
import uuid
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from skewless.config import private_dirs
from skewless.language.feature_group import FeatureGroup

DATA_FILE = "data.parquet"


class OfflineStore:
    """Reads and writes a group version's partitions under one root folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def group_dir(self, group: FeatureGroup) -> Path:
        return self.root / group.name / f"v{group.version}"

    def partition_path(self, group: FeatureGroup, day: date) -> Path:
        return self.group_dir(group) / f"date={day.isoformat()}" / DATA_FILE

    def write_partition(self, group: FeatureGroup, day: date, frame: pl.DataFrame) -> Path:
        """Atomically replace one day's partition with `frame` (already validated and sorted)."""
        return self._replace(self.partition_path(group, day), frame)

    def training_set_path(self, service: str, version: int) -> Path:
        # '_' cannot start a group name, so training sets never collide with group folders
        return self.root / "_training_sets" / service / f"v{version}" / DATA_FILE

    def write_training_set(self, service: str, version: int, frame: pl.DataFrame) -> Path:
        return self._replace(self.training_set_path(service, version), frame)

    def _replace(self, target: Path, frame: pl.DataFrame) -> Path:
        private_dirs(target.parent)
        temp = target.with_name(f".{DATA_FILE}.{uuid.uuid4().hex}.tmp")
        try:
            # owner-only from the first byte (Polars truncates, keeping the mode); not umask,
            # which is process-wide and would race other threads
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            frame.write_parquet(temp, compression="zstd", statistics=True)
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return target

    def partitions(self, group: FeatureGroup) -> list[date]:
        """Days that have a partition file, oldest first."""
        base = self.group_dir(group)
        if not base.exists():
            return []
        days = []
        for child in base.iterdir():
            if child.name.startswith("date=") and (child / DATA_FILE).exists():
                days.append(date.fromisoformat(child.name[len("date=") :]))
        return sorted(days)

    def files(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> list[Path]:
        """Partition files with `start <= day <= end` (either bound open when None)."""
        return [
            self.partition_path(group, day)
            for day in self.partitions(group)
            if (start is None or day >= start) and (end is None or day <= end)
        ]

    def scan(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """Lazily read the partitions in a day range; an empty frame of the schema if none."""
        files = self.files(group, start, end)
        if not files:
            return pl.LazyFrame(schema=group.offline_schema())
        return pl.scan_parquet(files, schema=group.offline_schema())


def days_between(start: date, end_exclusive: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end_exclusive - start).days)]

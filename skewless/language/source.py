"""Sources: where a feature group's raw events come from."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from skewless.errors import DefinitionError, SourceDataError
from skewless.language.entity import check_name


@dataclass(frozen=True)
class FileSource:
    """Parquet events in a file, a folder (searched recursively) or a glob.

    `timestamp_field` is the event time (timezone-aware); `created_timestamp_field`, when
    given, orders corrections that share an event time (the latest created wins).
    `start_date` is the first day partition of every feature group built on this source.
    """

    name: str
    path: str | os.PathLike[str]
    timestamp_field: str
    created_timestamp_field: str | None = None
    start_date: str | date = "2026-01-01"
    description: str = ""
    owner: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "source")
        check_name(self.timestamp_field, f"source '{self.name}' timestamp_field")
        if self.created_timestamp_field is not None:
            check_name(self.created_timestamp_field, f"source '{self.name}' created_timestamp_field")
            if self.created_timestamp_field == self.timestamp_field:
                raise DefinitionError(
                    f"source '{self.name}': created_timestamp_field must differ from timestamp_field"
                )
        try:
            start = date.fromisoformat(str(self.start_date))
        except ValueError:
            raise DefinitionError(
                f"source '{self.name}': start_date {self.start_date!r} is not an ISO date (YYYY-MM-DD)"
            ) from None
        object.__setattr__(self, "start_date", start)
        object.__setattr__(self, "path", str(Path(self.path).expanduser()))

    @property
    def start(self) -> date:
        assert isinstance(self.start_date, date)
        return self.start_date

    def files(self) -> list[str]:
        """The Parquet files behind this source, sorted so reads are deterministic."""
        path = str(self.path)
        if any(ch in path for ch in "*?["):
            found = glob.glob(path, recursive=True)
        elif os.path.isdir(path):
            found = glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
        elif os.path.isfile(path):
            found = [path]
        else:
            found = []
        return sorted(found)

    def scan(self) -> pl.LazyFrame:
        """Lazily read the source, with its event-time column checked and made UTC.

        Raises SourceDataError naming the source and column when the event time is missing,
        not a datetime, or timezone-naive: a naive time has no defined instant, so guessing
        would silently shift every feature value.
        """
        files = self.files()
        if not files:
            raise SourceDataError(f"source '{self.name}': no Parquet files found at {self.path}")
        frame = pl.scan_parquet(files, hive_partitioning=False)
        schema = frame.collect_schema()
        for column in filter(None, (self.timestamp_field, self.created_timestamp_field)):
            if column not in schema:
                raise SourceDataError(
                    f"source '{self.name}': timestamp column '{column}' is missing "
                    f"(columns: {', '.join(schema.names())})"
                )
            dtype = schema[column]
            if not isinstance(dtype, pl.Datetime):
                raise SourceDataError(
                    f"source '{self.name}': column '{column}' has dtype {dtype}, "
                    "expected a timezone-aware UTC datetime"
                )
            if dtype.time_zone is None:
                raise SourceDataError(
                    f"source '{self.name}': column '{column}' is timezone-naive ({dtype}); "
                    "event times must be timezone-aware UTC"
                )
            frame = frame.with_columns(pl.col(column).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
        return frame

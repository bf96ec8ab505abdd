"""Sources: where a feature group's raw events come from (Parquet files or DuckDB).

Every source hands out a LazyFrame whose event-time column is checked (present, a
datetime, timezone-aware) and converted to UTC microseconds, so everything downstream can
rely on one time representation. A naive time is refused: it names no instant, and guessing
a zone would silently shift every feature value.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import polars as pl

from skewless.errors import DefinitionError, SourceDataError
from skewless.language.entity import check_name

# A column the batch path adds to a window group's source rows: their arrival order, "" for
# the source's own files and "<stream entry>:<row>" for rows pushed through the stream (kept
# in `_pushed/entries-<after>-<until>.parquet`). The micro-batch gives the same rows the same
# values, so both paths agree on which version of a re-pushed event is the latest.
INGESTED = "__skewless_ingested"
PUSHED_PREFIX = "entries-"


def padded_entry(entry: str) -> str:
    """A stream entry id as fixed-width text, so ids compare in stream order."""
    ms, _, seq = ("0-0" if entry in ("", "0") else entry).partition("-")
    return f"{int(ms):015d}-{int(seq or 0):06d}"


def ingested_values(until: str, n: int) -> pl.Series:
    """`INGESTED` for the n rows of the stream range ending at entry `until`, in order."""
    prefix = padded_entry(until)
    return pl.Series(INGESTED, [f"{prefix}:{i:09d}" for i in range(n)], dtype=pl.String)


class Source:
    """What every source offers; the concrete ones are dataclasses below."""

    name: str
    timestamp_field: str
    created_timestamp_field: str | None
    start_date: str | date
    description: str
    owner: str | None
    id_field: str | None
    # also fed by pushed events through a Redis Stream, applied by a sensor's micro-batches
    stream: bool

    kind = "source"

    def _check_common(self) -> None:
        check_name(self.name, "source")
        check_name(self.timestamp_field, f"source '{self.name}' timestamp_field")
        if self.created_timestamp_field is not None:
            check_name(self.created_timestamp_field, f"source '{self.name}' created_timestamp_field")
            if self.created_timestamp_field == self.timestamp_field:
                raise DefinitionError(
                    f"source '{self.name}': created_timestamp_field must differ from timestamp_field"
                )
        if self.id_field is not None:
            check_name(self.id_field, f"source '{self.name}' id_field")
        try:
            start = date.fromisoformat(str(self.start_date))
        except ValueError:
            raise DefinitionError(
                f"source '{self.name}': start_date {self.start_date!r} is not an ISO date (YYYY-MM-DD)"
            ) from None
        object.__setattr__(self, "start_date", start)

    @property
    def start(self) -> date:
        assert isinstance(self.start_date, date)
        return self.start_date

    @property
    def time_columns(self) -> list[str]:
        return [c for c in (self.timestamp_field, self.created_timestamp_field) if c]

    def location(self) -> str:
        """Where the data is, for metadata and messages."""
        raise NotImplementedError

    def _raw(self, start: datetime | None, end: datetime | None, provenance: bool = False) -> pl.LazyFrame:
        raise NotImplementedError

    def scan(
        self, start: datetime | None = None, end: datetime | None = None, provenance: bool = False
    ) -> pl.LazyFrame:
        """Events with event time in `[start, end)` (either bound open), times checked and UTC.

        `provenance` adds the `INGESTED` column (window groups: which version is latest)."""
        frame = self.checked(self._raw(start, end, provenance), start, end)
        if provenance:
            frame = self._with_provenance(frame)
        return frame

    def _with_provenance(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(pl.lit("", dtype=pl.String).alias(INGESTED))

    def checked(
        self, frame: pl.LazyFrame, start: datetime | None = None, end: datetime | None = None
    ) -> pl.LazyFrame:
        """`frame` with its time columns checked (present, tz-aware) and made UTC µs.

        Used for files and tables, and for rows pushed directly, so both get the same errors.
        """
        schema = frame.collect_schema()
        for column in self.time_columns:
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
            if dtype != pl.Datetime("us", "UTC"):  # already UTC µs: nothing to convert
                frame = frame.with_columns(pl.col(column).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
        ts = pl.col(self.timestamp_field)
        if start is not None:
            frame = frame.filter(ts >= start)
        if end is not None:
            frame = frame.filter(ts < end)
        return frame

    def count_null_event_times(self) -> int:
        """Rows with no event time anywhere in the source: they can belong to no partition."""
        return int(self._raw(None, None).select(pl.col(self.timestamp_field).null_count()).collect().item())


@dataclass(frozen=True)
class FileSource(Source):
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
    id_field: str | None = None
    stream: bool = False

    kind = "parquet"

    def __post_init__(self) -> None:
        self._check_common()
        object.__setattr__(self, "path", str(Path(self.path).expanduser()))

    def location(self) -> str:
        return str(self.path)

    @property
    def pushed_dir(self) -> Path:
        """Where a stream source keeps the rows that arrived by push (part of its data).

        Pushed events are written here by the micro-batch, so re-materializing a day from the
        source sees them as well as the landed files.
        """
        path = Path(str(self.path).split("*")[0].rstrip("/"))
        return path / "_pushed" if path.is_dir() or not path.suffix else path.with_name(path.name + ".pushed")

    def files(self, include_pushed: bool = True) -> list[str]:
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
        pushed = str(self.pushed_dir) + os.sep
        found = sorted(f for f in found if not f.startswith(pushed))
        if self.stream and include_pushed:
            # after the source's own files, in stream order (the names hold the entry range)
            found += sorted(glob.glob(os.path.join(pushed, "*.parquet")))
        return found

    def _with_provenance(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """`INGESTED` from the file each row came from: "" for the source's own files, the
        stream range's last entry and the row's position for a pushed file."""
        import pyarrow.parquet as pq

        files = self.files()
        folder = str(self.pushed_dir) + os.sep
        pushed = [f for f in files if f.startswith(folder) and os.path.basename(f).startswith(PUSHED_PREFIX)]
        if not pushed:
            return frame.with_columns(pl.lit("", dtype=pl.String).alias(INGESTED))
        offsets: dict[str, int] = {}
        at = 0
        for path in files:
            offsets[path] = at
            at += pq.ParquetFile(path).metadata.num_rows
        prefixes = {}
        for path in pushed:
            until = os.path.basename(path)[len(PUSHED_PREFIX) : -len(".parquet")].split("-", 2)[-1]
            prefixes[path] = padded_entry(until.replace("_", "-"))
        row = pl.col("__skewless_row").cast(pl.Int64) - pl.col("__skewless_file").replace_strict(
            offsets, return_dtype=pl.Int64
        )
        ingested = (
            pl.when(pl.col("__skewless_file").is_in(list(prefixes)))
            .then(
                pl.concat_str(
                    pl.col("__skewless_file").replace_strict(prefixes, default="", return_dtype=pl.String),
                    pl.lit(":"),
                    row.cast(pl.String).str.zfill(9),
                )
            )
            .otherwise(pl.lit(""))
        )
        return frame.with_columns(ingested.alias(INGESTED)).drop("__skewless_file", "__skewless_row")

    def _raw(self, start: datetime | None, end: datetime | None, provenance: bool = False) -> pl.LazyFrame:
        files = self.files()
        if not files:
            raise SourceDataError(f"source '{self.name}': no Parquet files found at {self.path}")
        if provenance:
            return pl.scan_parquet(
                files,
                hive_partitioning=False,
                include_file_paths="__skewless_file",
                row_index_name="__skewless_row",
            )
        return pl.scan_parquet(files, hive_partitioning=False)


@dataclass(frozen=True)
class DuckDBSource(Source):
    """Events from a DuckDB table or query, read-only, with the time filter pushed into SQL.

    Give `table` or `query`. `database` is a DuckDB file (`:memory:` only makes sense for a
    query over files, e.g. `SELECT * FROM read_csv(...)`). TIMESTAMPTZ columns arrive as UTC;
    plain TIMESTAMP columns are naive and refused, like naive Parquet times.
    """

    name: str
    timestamp_field: str
    database: str = ":memory:"
    table: str | None = None
    query: str | None = None
    created_timestamp_field: str | None = None
    start_date: str | date = "2026-01-01"
    description: str = ""
    owner: str | None = None
    id_field: str | None = None
    stream: bool = False

    kind = "duckdb"

    def __post_init__(self) -> None:
        self._check_common()
        if (self.table is None) == (self.query is None):
            raise DefinitionError(f"source '{self.name}': give exactly one of table= or query=")
        if self.database != ":memory:":
            object.__setattr__(self, "database", str(Path(self.database).expanduser()))

    def location(self) -> str:
        return f"{self.database}: {self.table or self.query}"

    def _raw(self, start: datetime | None, end: datetime | None, provenance: bool = False) -> pl.LazyFrame:
        import duckdb

        if self.database != ":memory:" and not os.path.exists(self.database):
            raise SourceDataError(f"source '{self.name}': DuckDB database {self.database} does not exist")
        relation = self.query if self.query is not None else f'SELECT * FROM "{self.table}"'
        conditions, params = [], []
        if start is not None:
            conditions.append(f'"{self.timestamp_field}" >= ?')
            params.append(start)
        if end is not None:
            conditions.append(f'"{self.timestamp_field}" < ?')
            params.append(end)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT * FROM ({relation}) AS source{where}"
        try:
            with duckdb.connect(self.database, read_only=self.database != ":memory:") as conn:
                conn.execute("SET TimeZone = 'UTC'")
                frame = conn.sql(sql, params=params).pl()
        except duckdb.Error as exc:
            raise SourceDataError(f"source '{self.name}': DuckDB query failed: {exc}") from exc
        return frame.lazy()

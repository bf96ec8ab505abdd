"""Sources: where a feature group's raw events come from (Parquet files or DuckDB).

Every source hands out a LazyFrame whose event-time column is checked (present, a
datetime, timezone-aware) and converted to UTC microseconds, so everything downstream can
rely on one time representation. A naive time is refused: it names no instant, and guessing
a zone would silently shift every feature value.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from skewless.errors import DefinitionError, SourceDataError
from skewless.language.entity import check_name

# A column the batch path adds to a window group's source rows: their arrival order, "" for
# the source's own files and "<stream entry>:<row>" for rows pushed through the stream (kept
# in `_pushed/entries-<after>-<until>.parquet`). The micro-batch gives the same rows the same
# values, so both paths agree on which version of a re-pushed event is the latest.
INGESTED = "__skewless_ingested"
PUSHED_PREFIX = "entries-"


# Hive-style day folders (`.../date=2026-03-01/...`): the only layout that tells which day's
# events a file can hold without reading it, so a corrupt file there fails only that day.
_HIVE_DATE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")

# Files whose time columns are aware but in different zones name the same instants; Polars
# refuses to combine them unless told to convert (which keeps the instant, not the wall time).
_SCAN_CAST = pl.ScanCastOptions(datetime_cast="convert-timezone")


@dataclass(frozen=True)
class Footer:
    """What a Parquet file's footer says: its Arrow schema and row count, or why it is unreadable."""

    schema: pa.Schema | None
    rows: int
    error: str | None


@lru_cache(maxsize=16_384)
def _read_footer(path: str, mtime_ns: int, size: int) -> Footer:
    """One footer read per file version: (mtime, size) in the key makes a rewrite re-read it,
    while repeated scans of an unchanged folder (every day of a backfill) cost a stat each."""
    try:
        parquet = pq.ParquetFile(path)
        return Footer(parquet.schema_arrow, parquet.metadata.num_rows, None)
    except (OSError, pa.ArrowException, ValueError) as exc:
        text = str(exc).strip()
        return Footer(None, 0, text.splitlines()[0] if text else type(exc).__name__)


def read_footer(path: str) -> Footer:
    """The (cached) footer of the Parquet file at `path`; a vanished file is unreadable too."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        return Footer(None, 0, f"{type(exc).__name__}: {exc.strerror or exc}")
    return _read_footer(path, stat.st_mtime_ns, stat.st_size)


def hive_day(path: str) -> date | None:
    """The day named by a `date=YYYY-MM-DD` folder in `path` (the innermost), if any."""
    found = _HIVE_DATE.findall(path.replace(os.sep, "/"))
    if not found:
        return None
    try:
        return date.fromisoformat(found[-1])
    except ValueError:
        return None


def _day_overlaps(day: date, start: datetime | None, end: datetime | None) -> bool:
    """Whether the UTC day `day` meets the range `[start, end)` (either bound open)."""
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    day_end = day_start + timedelta(days=1)
    if start is not None and day_end <= (start if start.tzinfo else start.replace(tzinfo=UTC)):
        return False
    return not (end is not None and day_start >= (end if end.tzinfo else end.replace(tzinfo=UTC)))


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

    Every file is checked before anything is computed, from its footer (cached per path,
    mtime and size), because one multi-file Polars scan takes its types from the first file:

    - each time column must be a timezone-aware timestamp in *every* file; a naive one is
      refused with the file named (Polars would silently read it as UTC after an aware file).
      Aware files in different zones are fine: they are converted, keeping the instant.
      Time units must agree across files (Polars cannot combine them); the file is named.
    - a file whose footer cannot be read (zero bytes, truncated, not Parquet) fails with
      "file <path> is not a readable Parquet file". Which days it holds is unknowable, so it
      fails every scan, except that a file under a Hive-style `date=YYYY-MM-DD` folder is
      taken to hold only that UTC day's events and is left out of scans of other days: a
      corrupt file there fails only its own day. (So in a `date=` layout, a folder must not
      hold events of other days.)
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

    def scan(
        self, start: datetime | None = None, end: datetime | None = None, provenance: bool = False
    ) -> pl.LazyFrame:
        """As `Source.scan`, with provenance computed over exactly the files scanned (a corrupt
        file left out of this range must not shift the row offsets of the others)."""
        files = self.scan_files(start, end)
        frame = self.checked(self._read(files, provenance), start, end)
        if provenance:
            frame = self._with_provenance(frame, files)
        return frame

    def count_null_event_times(self) -> int:
        """Rows with no event time in the readable files. A corrupt file in a `date=` folder
        is left out: its own day's scan fails with the named error, other days must not."""
        files = self.scan_files(None, None, skip_dated=True)
        frame = self._read(files, provenance=False)
        return int(frame.select(pl.col(self.timestamp_field).null_count()).collect().item())

    def scan_files(
        self, start: datetime | None, end: datetime | None, *, skip_dated: bool = False
    ) -> list[str]:
        """The files to scan for `[start, end)`, each checked from its footer (see the class
        docstring): unreadable ones named, naive or mismatched time columns refused.

        `skip_dated` leaves out every unreadable file under a `date=` folder, whatever its day.
        """
        files = self.files()
        if not files:
            raise SourceDataError(f"source '{self.name}': no Parquet files found at {self.path}")
        usable: list[str] = []
        skipped: list[str] = []
        reference: dict[str, tuple[str, pa.TimestampType]] = {}
        for path in files:
            footer = read_footer(path)
            if footer.schema is None:
                day = hive_day(path)
                if day is not None and (skip_dated or not _day_overlaps(day, start, end)):
                    skipped.append(path)
                    continue
                raise self._unreadable(path, footer)
            self._check_file_times(path, footer.schema, reference)
            usable.append(path)
        if not usable:  # nothing left to read: no schema to offer, so name what is broken
            raise self._unreadable(skipped[0], read_footer(skipped[0]))
        return usable

    def check_files(self, paths: list[str]) -> None:
        """Check files about to be read together (e.g. newly landed ones), as `scan_files` does:
        a corrupt file or a naive or mismatched time column fails with the file named."""
        reference: dict[str, tuple[str, pa.TimestampType]] = {}
        for path in paths:
            footer = read_footer(path)
            if footer.schema is None:
                raise self._unreadable(path, footer)
            self._check_file_times(path, footer.schema, reference)

    def _unreadable(self, path: str, footer: Footer) -> SourceDataError:
        return SourceDataError(
            f"source '{self.name}': file {path} is not a readable Parquet file: {footer.error}"
        )

    def _check_file_times(
        self, path: str, schema: pa.Schema, reference: dict[str, tuple[str, pa.TimestampType]]
    ) -> None:
        """Refuse a file whose time columns Polars would misread or fail on with no file named.

        `reference` holds, per column, the first file's path and type (the scan's target).
        """
        for column in self.time_columns:
            index = schema.get_field_index(column)
            if index < 0:
                raise SourceDataError(
                    f"source '{self.name}': timestamp column '{column}' is missing in file {path} "
                    f"(columns: {', '.join(schema.names)})"
                )
            dtype = schema.field(index).type
            if not pa.types.is_timestamp(dtype):
                raise SourceDataError(
                    f"source '{self.name}': column '{column}' has type {dtype} in file {path}, "
                    "expected a timezone-aware UTC datetime"
                )
            if dtype.tz is None:
                raise SourceDataError(
                    f"source '{self.name}': column '{column}' is timezone-naive ({dtype}) in file "
                    f"{path}; event times must be timezone-aware UTC"
                )
            first = reference.setdefault(column, (path, dtype))
            if dtype.unit != first[1].unit:
                raise SourceDataError(
                    f"source '{self.name}': column '{column}' is {dtype} in file {path} but "
                    f"{first[1]} in file {first[0]}; all files must use one time unit"
                )

    def _read(self, files: list[str], provenance: bool) -> pl.LazyFrame:
        """One lazy scan over checked files; aware times in other zones converted to the first's."""
        if provenance:
            return pl.scan_parquet(
                files,
                hive_partitioning=False,
                include_file_paths="__skewless_file",
                row_index_name="__skewless_row",
                cast_options=_SCAN_CAST,
            )
        return pl.scan_parquet(files, hive_partitioning=False, cast_options=_SCAN_CAST)

    def _with_provenance(self, frame: pl.LazyFrame, files: list[str] | None = None) -> pl.LazyFrame:
        """`INGESTED` from the file each row came from: "" for the source's own files, the
        stream range's last entry and the row's position for a pushed file.

        `files` must be the list the frame was scanned from (row offsets are per file)."""
        files = self.scan_files(None, None) if files is None else files
        folder = str(self.pushed_dir) + os.sep
        pushed = [f for f in files if f.startswith(folder) and os.path.basename(f).startswith(PUSHED_PREFIX)]
        if not pushed:
            return frame.with_columns(pl.lit("", dtype=pl.String).alias(INGESTED))
        offsets: dict[str, int] = {}
        at = 0
        for path in files:
            offsets[path] = at
            at += read_footer(path).rows
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
        return self._read(self.scan_files(start, end), provenance)


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

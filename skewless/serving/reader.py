"""The online read path: one MGET per request, numpy decoding, the same TTL and default rules
as training sets.

A `ReadPlan` is resolved once per feature list (or service) and cached, so a request does no
parsing or schema work: it turns entity keys into Redis keys with string formatting, issues a
single MGET for every group and entity, decodes each group's packed records in one numpy call,
and builds the output columns. Small requests are dominated by the round trip; large ones by
decoding, which does not create Python objects per feature.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
import redis

from skewless.errors import AccessDenied, RequestError
from skewless.language.feature_group import FeatureGroup
from skewless.storage import online_keys as K
from skewless.storage.codec import Decoded, GroupCodec, column_series, to_series
from skewless.storage.online import OnlineStore

SMALL = 16  # requests up to this many entities build their frame from rows

try:  # Polars' own row constructor, minus the per-call schema normalisation of pl.from_dicts
    from polars._plr import PyDataFrame as _PyDataFrame
except ImportError:  # pragma: no cover - a Polars without it falls back to the public call
    _PyDataFrame = None


def frame_from_dicts(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A frame from a few rows with an already-normalised schema.

    `pl.from_dicts(schema=...)` spends about as long re-validating the schema as building
    the frame; for a one-entity lookup that is a third of a loopback round trip, so the
    single-entity hot path calls the constructor it wraps with the plan's fixed schema.
    """
    if _PyDataFrame is not None:
        try:
            return pl.DataFrame._from_pydf(
                _PyDataFrame.from_dicts(rows, schema, None, strict=True, infer_schema_length=None)
            )
        except TypeError:  # the private signature changed: use the public path
            pass
    return pl.from_dicts(rows, schema=schema)


@dataclass
class FeatureRead:
    """One requested feature: where it sits in the decoded record and how to convert it."""

    name: str  # output column name
    field: str  # numpy field of the packed record
    position: int  # index among the group's features (validity column)
    dtype: pl.DataType
    default: Any
    plain: bool  # numeric: numpy's tolist() already gives the Python value


@dataclass
class GroupRead:
    """Everything needed to read one group version, computed once."""

    group: FeatureGroup
    codec: GroupCodec
    features: list[str]
    names: list[str]
    prefix: str
    suffix: str
    ttl_us: int | None

    def __post_init__(self) -> None:
        order = self.group.feature_names
        self.reads = []
        for feature, name in zip(self.features, self.names, strict=True):
            spec = self.group.feature(feature)
            dtype = spec.polars_dtype
            plain = dtype.is_numeric() and not isinstance(dtype, pl.Array)
            self.reads.append(
                FeatureRead(name, f"f_{feature}", order.index(feature), dtype, spec.default, plain)
            )
        # a group with pii features has sealed values (`storage.sealed`): they are opened
        # only when a requested feature is pii (the client refused them to roles without
        # pii access before any plan was built)
        self.sealed = bool(self.group.pii_features)
        self.decrypt = any(f in self.group.pii_features for f in self.features)
        self.positions = [r.position for r in self.reads]
        self.fields = [r.field for r in self.reads]
        self.all_plain = all(r.plain for r in self.reads)
        self.whole = self.positions == list(range(len(self.group.features)))
        # every feature requested, in order, all of one numeric type: the record's value
        # bytes are then a plain (n, k) matrix, read without a structured-dtype view
        record = self.codec.record
        kinds = {record.fields[f][0] for f in self.fields}
        self.matrix: tuple[np.dtype, int] | None = None
        if self.whole and self.all_plain and len(kinds) == 1:
            (kind,) = kinds
            offsets = [record.fields[f][1] for f in self.fields]
            if offsets == [offsets[0] + i * kind.itemsize for i in range(len(offsets))]:
                self.matrix = (kind, offsets[0])

    def keys(self, columns: Mapping[str, list[Any]]) -> list[str]:
        """Online keys, formatted exactly as `online_keys.key_expression` builds them."""
        return K.format_keys(self.group.entity.key_schema, self.prefix, self.suffix, columns)


@dataclass
class WindowRows:
    """A window group's finished values: one tuple per requested entity (requested order)."""

    rows: list[tuple[Any, ...]]
    read: GroupRead

    def series(self) -> list[pl.Series]:
        out = []
        for j, spec in enumerate(self.read.reads):
            data = [row[j] for row in self.rows]
            out.append(pl.Series(spec.name, data, dtype=spec.dtype, strict=False))
        return out


class ReadPlan:
    """A resolved online request shape: which groups, features and output names."""

    def __init__(
        self, store: OnlineStore, selection: list[tuple[FeatureGroup, list[str]]], names: dict
    ) -> None:
        self.store = store
        self.groups: list[GroupRead] = []
        self.key_schema: dict[str, pl.DataType] = {}
        self.schema: dict[str, pl.DataType] = {}
        for group, features in selection:
            for column, dtype in group.entity.key_schema.items():
                known = self.key_schema.setdefault(column, dtype)
                if known != dtype:
                    raise RequestError(
                        f"join key '{column}' is {known} for one requested group and {dtype} for "
                        f"'{group.ref}'; request them separately"
                    )
            ttl = group.time_to_live
            self.groups.append(
                GroupRead(
                    group=group,
                    codec=store.codec(group),
                    features=list(features),
                    names=[names[(group.name, group.version, f)] for f in features],
                    prefix=K.entity_head(store.key_prefix, group.entity.name),
                    suffix=K.version_tail(group.name, group.version),
                    ttl_us=None if ttl is None or group.is_windowed else ttl // timedelta(microseconds=1),
                )
            )

        self.group_refs = [read.group.ref for read in self.groups]
        self.service_ref: str | None = None  # set by the client for lookups by feature service
        self.schema = dict(self.key_schema)
        for read in self.groups:
            for feature in read.reads:
                self.schema[feature.name] = feature.dtype
        #: output columns holding pii features (never written to the served-vector log)
        self.pii_columns = [
            spec.name
            for read in self.groups
            for spec, feature in zip(read.reads, read.features, strict=True)
            if feature in read.group.pii_features
        ]

    # ------------------------------------------------------------------ request parsing
    def entity_columns(self, entities: Any) -> tuple[dict[str, list[Any]], int]:
        """The join-key columns of a request as Python lists, checked against declared dtypes."""
        if isinstance(entities, pl.LazyFrame):
            entities = entities.collect()
        module = type(entities).__module__
        if module.startswith("pandas"):
            entities = pl.from_pandas(entities)
        elif module.startswith("pyarrow"):
            entities = pl.from_arrow(entities)
        columns: dict[str, list[Any]] = {}
        if isinstance(entities, pl.DataFrame):
            for column in self.key_schema:
                if column not in entities.columns:
                    raise self._missing(column, entities.columns)
                columns[column] = entities.get_column(column).to_list()
        elif isinstance(entities, Mapping):
            for column in self.key_schema:
                if column not in entities:
                    raise self._missing(column, list(entities))
                values = entities[column]
                columns[column] = values.tolist() if hasattr(values, "tolist") else list(values)
        elif isinstance(entities, Sequence) and not isinstance(entities, str):
            for column in self.key_schema:
                try:
                    columns[column] = [entity[column] for entity in entities]
                except KeyError:
                    raise self._missing(column, list(next(e for e in entities if column not in e))) from None
                except TypeError:
                    raise RequestError("entities must be dicts of join keys, e.g. [{'user_id': 7}]") from None
        else:
            raise RequestError(
                "entities must be a list of dicts, a dict of columns, or a Polars/pandas/Arrow frame"
            )
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise RequestError(f"entities: key columns have different lengths {sorted(lengths)}")
        for column, dtype in self.key_schema.items():
            columns[column] = self._checked(column, dtype, columns[column])
        return columns, lengths.pop() if lengths else 0

    def _missing(self, column: str, present: list[str]) -> RequestError:
        return RequestError(
            f"entities has no join key column '{column}' (needs {', '.join(self.key_schema)}; "
            f"got {', '.join(map(str, present)) or 'nothing'})"
        )

    @staticmethod
    def _checked(column: str, dtype: pl.DataType, values: list[Any]) -> list[Any]:
        """`values` as plain Python ints/strs, or a one-line error naming the column and row.

        Integer keys are range-checked against the declared width: a key that cannot exist
        must be refused, not looked up as a different key. Nulls and floats get a hint,
        because they usually come from pandas, which turns an integer column holding a
        missing value into float64 (NaN).
        """
        want = str if dtype == pl.String else int

        def check_range(ints: list[int]) -> None:
            if not dtype.is_integer():
                return
            bits = int(str(dtype).lstrip("UInt") or 64)
            signed = not dtype.is_unsigned_integer()
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            low, high = min(ints), max(ints)
            if low < lo or high > hi:
                bad = low if low < lo else high
                raise RequestError(
                    f"entities: join key '{column}' row {ints.index(bad)} is {bad}, out of range "
                    f"for the entity's {dtype} ({lo}..{hi})"
                )

        if all(type(v) is want for v in values):
            if want is int and values:
                check_range(values)
            return values
        out = []
        for i, v in enumerate(values):
            if want is int and isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                out.append(int(v))
            elif want is str and isinstance(v, str):
                out.append(v)
            else:
                hint = ""
                if want is int and (v is None or isinstance(v, (float, np.floating))):
                    nulls = sum(1 for x in values if x is None or x != x)  # x != x: NaN
                    hint = (
                        f"; {nulls} of its values are null/NaN: pandas stores an integer column "
                        "with missing values as float64, so keep keys integer with pandas' "
                        f"nullable dtype (df['{column}'].astype('Int64')) and drop rows without a key"
                    )
                elif v is None:
                    hint = "; every entity needs its join keys (nulls are not looked up)"
                raise RequestError(
                    f"entities: join key '{column}' row {i} is {v!r} ({type(v).__name__}), "
                    f"but the entity declares {dtype}{hint}"
                )
        if want is int and out:
            check_range(out)
        return out

    # ------------------------------------------------------------------ reading
    def fetch(self, columns: dict[str, list[Any]], n: int, now_us: int) -> list[Decoded | WindowRows]:
        """Row groups: one MGET for every group and entity, decoded records per group.
        Window groups: their tiles and edge events as of `now_us` (`storage.window_state`),
        one round trip per group; their result is the finished feature frame."""
        row_keys: list[str] = []
        for read in self.groups:
            if not read.group.is_windowed:
                row_keys.extend(read.keys(columns))
        try:
            raw = self.store.mget(row_keys) if n and row_keys else []
        except redis.exceptions.NoPermissionError as exc:
            raise self._refused(columns, exc) from None
        out: list[Decoded | WindowRows] = []
        rows_at = 0
        for read in self.groups:
            if read.group.is_windowed:
                out.append(self._windows(read, columns, n, now_us))
            else:
                values = raw[rows_at * n : (rows_at + 1) * n]
                if read.sealed:
                    keys = row_keys[rows_at * n : (rows_at + 1) * n]
                    out.append(read.codec.decode_arrays(values, keys, read.decrypt))  # type: ignore[call-arg]
                else:
                    out.append(read.codec.decode_arrays(values))
                rows_at += 1
        return out

    def _refused(self, columns: dict[str, list[Any]], exc: Exception) -> AccessDenied:
        """Which groups of a refused MGET the store's user may not read: the one MGET spans
        every row group, so ask Redis again for one key of each (only on this error path) —
        the answer is still the server's, never a check of our own."""
        denied = []
        for read in self.groups:
            if read.group.is_windowed:
                continue
            try:
                self.store.mget(read.keys(columns)[:1])
            except redis.exceptions.NoPermissionError:
                denied.append(read.group.ref)
        error = self.store.denied("read", denied[0] if denied else "(unknown)", exc)
        if len(denied) > 1:
            error = AccessDenied(
                str(error).replace(f"group '{denied[0]}'", f"groups {', '.join(map(repr, denied))}"),
                role=self.store.role,
                groups=denied,
            )
        return error

    def _windows(self, read: GroupRead, columns: dict[str, list[Any]], n: int, now_us: int) -> WindowRows:
        """The requested window features, in the requested order and names, one row per
        requested entity (a repeated entity is read once and repeated, never summed), with
        defaults applied: plain Python values, so small requests build no Polars objects."""
        bases = read.keys(columns) if n else []
        unique = list(dict.fromkeys(bases))
        try:
            values = self.store.windows.read(read.group, unique, now_us) if unique else []
        except redis.exceptions.NoPermissionError as exc:
            raise self.store.denied("read", read.group, exc) from None
        defaults = [spec.default for spec in read.reads]
        by_base = {}
        for base, found in zip(unique, values, strict=True):
            row = tuple(found.get(feature) for feature in read.features)
            if None in row:
                row = tuple(d if v is None else v for v, d in zip(row, defaults, strict=True))
            by_base[base] = row
        rows = [by_base[base] for base in bases]
        temporal = [j for j, spec in enumerate(read.reads) if spec.dtype.is_temporal()]
        if temporal and rows:  # min/max/last of a datetime column: physical ints until here
            converted = {
                j: pl.Series([r[j] for r in rows], dtype=pl.Int64).cast(read.reads[j].dtype).to_list()
                for j in temporal
            }
            rows = [
                tuple(converted[j][i] if j in converted else v for j, v in enumerate(row))
                for i, row in enumerate(rows)
            ]
        return WindowRows(rows, read)

    def _valid_rows(self, read: GroupRead, decoded: Decoded, now_us: int) -> np.ndarray:
        if read.ttl_us is None:
            return decoded.present
        return decoded.present & (decoded.event_us >= now_us - read.ttl_us)

    def _validity(self, read: GroupRead, decoded: Any, now_us: int) -> tuple[np.ndarray, bool]:
        """(n, requested features) validity after TTL, and whether every cell is valid."""
        cells = decoded.validity if read.whole else decoded.validity[:, read.positions]
        rows = self._valid_rows(read, decoded, now_us)
        if rows.all():
            return cells, bool(cells.all())
        valid = cells & rows[:, None]
        return valid, bool(valid.all())

    def to_polars(self, columns: dict[str, list[Any]], n: int, now_us: int | None = None) -> pl.DataFrame:
        if n <= SMALL:
            # a few rows: one frame from Python tuples beats a Series per feature
            return frame_from_dicts(self.to_dicts(columns, n, now_us), self.schema)
        now_us = now_us or time.time_ns() // 1000
        series = [pl.Series(c, columns[c], dtype=d) for c, d in self.key_schema.items()]
        for read, decoded in zip(self.groups, self.fetch(columns, n, now_us), strict=True):
            if isinstance(decoded, WindowRows):
                series.extend(decoded.series())
                continue
            valid, all_valid = self._validity(read, decoded, now_us)
            if read.matrix is not None:
                # every feature of one numeric type: one column-major copy of the (n, k)
                # matrix, one Series, zero-copy slices of it — not a Series per feature
                # (~17 µs each, 0.85 ms for 50; Polars' from_numpy builds them one by one too)
                rows = decoded.n
                flat = pl.Series(np.ascontiguousarray(self._matrix(read, decoded).T).ravel())
                for j, feature in enumerate(read.reads):
                    column = flat.slice(j * rows, rows).alias(feature.name)
                    if not all_valid:
                        column = to_series(feature.name, column, valid[:, j])
                        if feature.default is not None:
                            column = column.fill_null(pl.lit(feature.default, dtype=feature.dtype))
                    series.append(column)
                continue
            for j, feature in enumerate(read.reads):
                data = decoded.data(read.features[j])
                column = column_series(feature.name, feature.dtype, data)
                if not all_valid:
                    column = to_series(feature.name, column, valid[:, j])
                    if feature.default is not None:
                        column = column.fill_null(pl.lit(feature.default, dtype=feature.dtype))
                series.append(column)
        return pl.DataFrame(series)

    @staticmethod
    def _matrix(read: GroupRead, decoded: Decoded) -> np.ndarray:
        """The (n, k) view of the records' value bytes (`GroupRead.matrix`), no copy."""
        assert read.matrix is not None
        kind, offset = read.matrix
        record = decoded.record
        return np.ndarray(
            (decoded.n, len(read.fields)),
            kind,
            buffer=record,
            offset=offset,
            strides=(record.itemsize, kind.itemsize),
        )

    def _group_rows(
        self, read: GroupRead, decoded: Decoded | WindowRows, now_us: int
    ) -> list[tuple[Any, ...]]:
        """One tuple of Python values per entity for one group, TTL and defaults applied."""
        if isinstance(decoded, WindowRows):
            return decoded.rows
        valid, all_valid = self._validity(read, decoded, now_us)
        if read.matrix is not None:
            rows = self._matrix(read, decoded).tolist()
        elif read.all_plain:
            # numeric features: one structured tolist() gives every row's Python values
            rows = decoded.record[read.fields].tolist()
        else:
            columns = []
            for j, feature in enumerate(read.reads):
                if feature.plain:
                    columns.append(decoded.record[feature.field].tolist())
                elif feature.dtype == pl.Boolean:
                    columns.append(decoded.record[feature.field].view(np.bool_).tolist())
                elif (strings := decoded.python_strings(read.features[j])) is not None:
                    columns.append(strings)
                else:
                    data = decoded.data(read.features[j])
                    columns.append(column_series(feature.name, feature.dtype, data).to_list())
            rows = list(zip(*columns, strict=True)) if columns else [()] * decoded.n
        if all_valid:
            return rows
        defaults = [feature.default for feature in read.reads]
        out = []
        for row, ok in zip(rows, valid.tolist(), strict=True):
            out.append(
                row
                if all(ok)
                else tuple(x if good else d for x, good, d in zip(row, ok, defaults, strict=True))
            )
        return out

    def _rows(
        self, columns: dict[str, list[Any]], n: int, now_us: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Output rows as tuples: join keys, then each group's features."""
        now_us = now_us or time.time_ns() // 1000
        parts: list[list[Any]] = [list(zip(*(columns[c] for c in self.key_schema), strict=True))]
        for read, decoded in zip(self.groups, self.fetch(columns, n, now_us), strict=True):
            parts.append(self._group_rows(read, decoded, now_us))
        if len(parts) == 2:
            return [(*k, *g) for k, g in zip(*parts, strict=True)]
        return [tuple(v for part in row for v in part) for row in zip(*parts, strict=True)]

    def to_rows(
        self, columns: dict[str, list[Any]], n: int, now_us: int | None = None
    ) -> list[tuple[Any, ...]]:
        """One tuple per entity in `schema` order (what `to_dicts` zips with the names)."""
        return self._rows(columns, n, now_us)

    def to_dicts(
        self, columns: dict[str, list[Any]], n: int, now_us: int | None = None
    ) -> list[dict[str, Any]]:
        names = list(self.schema)
        return [dict(zip(names, row, strict=True)) for row in self._rows(columns, n, now_us)]

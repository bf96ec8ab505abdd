"""The online value codec: one packed record per entity and group version.

Layout of a value (all of it one Redis string, so a whole request is one MGET):

    b"1"                      format tag
    17 ASCII digits           event time, microseconds since the epoch, zero padded
    17 ASCII digits           created time (zeros when the source has none)
    fixed record              per feature a validity byte, then each feature's fixed-width
                              little-endian value (strings: an int32 byte length, -1 = null)
    tail                      the UTF-8 bytes of the string features, in declared order

The ASCII header sorts like the (event, created) pair it encodes, so the server-side write
guard (a Lua script) compares two values with one string comparison. The fixed record is a
numpy structured dtype, so encoding and decoding a batch are a handful of vectorised calls
rather than Python objects per feature; floats, NaN and infinities round-trip bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_TIMESTAMP, Feature, FeatureGroup

SMALL_ENCODE = 32  # up to this many rows, encode from Python values
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
_MICRO = timedelta(microseconds=1)


def _micros(value: datetime) -> int:
    """Microseconds since the epoch of a UTC datetime (Polars hands out aware datetimes)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICRO


FORMAT_TAG = b"1"
TAG = FORMAT_TAG[0]
HEADER_WIDTH = 35
_DIGITS = 17
_POWERS = (10 ** np.arange(_DIGITS - 1, -1, -1)).astype(np.int64)
MAX_MICROS = 10**_DIGITS - 1

_NUMPY = {
    pl.Int8: "<i1",
    pl.Int16: "<i2",
    pl.Int32: "<i4",
    pl.Int64: "<i8",
    pl.UInt8: "<u1",
    pl.UInt16: "<u2",
    pl.UInt32: "<u4",
    pl.UInt64: "<u8",
    pl.Float32: "<f4",
    pl.Float64: "<f8",
    pl.Boolean: "u1",
    pl.Date: "<i4",
}


def _field_type(dtype: pl.DataType) -> str | tuple[str, tuple[int, ...]]:
    if dtype == pl.String:
        return "<i4"
    if isinstance(dtype, pl.Datetime):
        return "<i8"
    if isinstance(dtype, pl.Array):
        return ("<f4" if dtype.inner == pl.Float32 else "<f8", (dtype.size,))
    return _NUMPY[type(dtype)]


def validity_view(record: Any, n: int, features: int, width: int) -> np.ndarray:
    """The (n, features) validity flags of n packed records, as a view of their buffer (no copy)."""
    if not n:
        return np.zeros((0, features), dtype=np.bool_)
    return np.ndarray((n, features), dtype=np.bool_, buffer=record, offset=HEADER_WIDTH, strides=(width, 1))


class GroupCodec:
    """Encodes and decodes the latest feature rows of one group version."""

    def __init__(self, group: FeatureGroup, features: list[Feature] | None = None) -> None:
        self.group = group
        self.features = list(group.features) if features is None else features
        self.names = [f.name for f in self.features]
        self.strings = [f.name for f in self.features if f.polars_dtype == pl.String]
        fields: list[tuple] = [("h", f"S{HEADER_WIDTH}")]
        fields += [(f"v_{name}", "u1") for name in self.names]
        for feature in self.features:
            spec = _field_type(feature.polars_dtype)
            fields.append(
                (f"f_{feature.name}", *spec) if isinstance(spec, tuple) else (f"f_{feature.name}", spec)
            )
        self.record = np.dtype(fields)
        self.width = self.record.itemsize
        empty = np.zeros(1, dtype=self.record)
        empty["h"] = b"0" * HEADER_WIDTH
        for name in self.strings:
            empty[f"f_{name}"] = -1
        self._empty = empty.tobytes()

    # ------------------------------------------------------------------ encode
    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        """One value per row of `frame` (offline layout: event/created time and features)."""
        n = frame.height
        if n <= SMALL_ENCODE and not any(isinstance(f.polars_dtype, pl.Array) for f in self.features):
            return self._encode_small(frame)
        record, tails = self._records(frame)
        buffer = memoryview(record.tobytes())
        w = self.width
        if tails is None:
            return [bytes(buffer[i * w : (i + 1) * w]) for i in range(n)]
        tail_list = tails.to_list()
        return [bytes(buffer[i * w : (i + 1) * w]) + tail_list[i] for i in range(n)]

    def encode_array(self, frame: pl.DataFrame) -> pa.Array:
        """`encode` as one Arrow `large_binary` array: values stay in Arrow buffers, so a
        caller that joins them with other bytes (window-state members) does it in one
        vectorised call instead of a Python loop over rows."""
        record, tails = self._records(frame)
        fixed = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(self.width), frame.height, [None, pa.py_buffer(record)]
        ).cast(pa.large_binary())
        if tails is None:
            return fixed
        return pc.binary_join_element_wise(
            fixed, tails.to_arrow().cast(pa.large_binary()), pa.scalar(b"", pa.large_binary())
        )

    def _records(self, frame: pl.DataFrame) -> tuple[np.ndarray, pl.Series | None]:
        """The fixed-width records of `frame`'s rows, and their string tails (None when the
        group has no string feature)."""
        n = frame.height
        record = np.zeros(n, dtype=self.record)
        event_us = frame[EVENT_TIMESTAMP].dt.epoch("us").to_numpy()
        created_us = (
            frame[CREATED_TIMESTAMP].dt.epoch("us").fill_null(0).to_numpy()
            if CREATED_TIMESTAMP in frame.columns
            else np.zeros(n, dtype=np.int64)
        )
        header = np.empty((n, HEADER_WIDTH), dtype=np.uint8)
        header[:, 0] = FORMAT_TAG[0]
        # cast before assigning: numpy's implicit int64 -> uint8 cast on assignment is 4x slower
        header[:, 1 : 1 + _DIGITS] = ((event_us[:, None] // _POWERS) % 10 + 48).astype(np.uint8)
        header[:, 1 + _DIGITS :] = ((created_us[:, None] // _POWERS) % 10 + 48).astype(np.uint8)
        record["h"] = header.view(f"S{HEADER_WIDTH}").ravel()
        for feature in self.features:
            column = frame[feature.name]
            dtype = feature.polars_dtype
            record[f"v_{feature.name}"] = column.is_not_null().to_numpy()
            target = f"f_{feature.name}"
            if dtype == pl.String:
                record[target] = column.str.len_bytes().fill_null(-1).cast(pl.Int32).to_numpy()
            elif isinstance(dtype, pl.Datetime):
                record[target] = column.dt.epoch("us").fill_null(0).to_numpy()
            elif isinstance(dtype, pl.Array):
                inner = column.cast(pl.List(dtype.inner)).fill_null(pl.lit([0.0] * dtype.size))
                record[target] = inner.list.to_array(dtype.size).to_numpy()
            elif dtype == pl.Date:
                record[target] = column.cast(pl.Int32).fill_null(0).to_numpy()
            else:
                record[target] = column.fill_null(0).to_numpy()
        if not self.strings:
            return record, None
        tails = frame.select(
            pl.concat_str([pl.col(s).fill_null("") for s in self.strings]).cast(pl.Binary)
        ).to_series()
        return record, tails

    def _encode_small(self, frame: pl.DataFrame) -> list[bytes]:
        """`encode` for a few rows from Python values: every Polars Series operation costs
        tens of microseconds, `to_list` almost nothing, and a push is often one event."""
        n = frame.height
        record = np.zeros(n, dtype=self.record)
        columns = frame.columns
        event_us = [_micros(v) for v in frame.get_column(EVENT_TIMESTAMP).to_list()]
        created = (
            frame.get_column(CREATED_TIMESTAMP).to_list() if CREATED_TIMESTAMP in columns else [None] * n
        )
        record["h"] = [
            b"%s%017d%017d" % (FORMAT_TAG, e, 0 if c is None else _micros(c))
            for e, c in zip(event_us, created, strict=True)
        ]
        tails: list[bytes] = [b""] * n
        for feature in self.features:
            values = frame.get_column(feature.name).to_list()
            dtype = feature.polars_dtype
            record[f"v_{feature.name}"] = [v is not None for v in values]
            target = f"f_{feature.name}"
            if dtype == pl.String:
                raw = [None if v is None else v.encode() for v in values]
                record[target] = [-1 if r is None else len(r) for r in raw]
                tails = [t if r is None else t + r for t, r in zip(tails, raw, strict=True)]
            elif isinstance(dtype, pl.Datetime):
                record[target] = [0 if v is None else _micros(v) for v in values]
            elif dtype == pl.Date:
                record[target] = [0 if v is None else (v - _EPOCH_DATE).days for v in values]
            else:
                record[target] = [0 if v is None else v for v in values]
        buffer = memoryview(record.tobytes())
        w = self.width
        return [bytes(buffer[i * w : (i + 1) * w]) + tails[i] for i in range(n)]

    # ------------------------------------------------------------------ decode
    def decode_arrays(self, values: Sequence[bytes | None]) -> Decoded:
        """Decode raw values (None for a missing key) into numpy columns, one row per value.

        Missing keys decode as an all-null record with `present` False, so there is no
        scatter step: the rows line up with the request whatever is missing.
        """
        n = len(values)
        if any(v is None for v in values):
            values = [self._empty if v is None else v for v in values]
        # without strings every value is exactly one fixed record: join them as they are
        fixed = b"".join([v[: self.width] for v in values]) if self.strings else b"".join(values)  # type: ignore
        record = np.frombuffer(fixed, dtype=self.record, count=n)
        if n <= 16:  # a few records: Python slicing beats a dozen numpy calls
            present = np.array([v[0] == TAG for v in values], dtype=np.bool_)  # type: ignore[index]
            event_us = np.array([int(v[1 : 1 + _DIGITS]) for v in values], dtype=np.int64)  # type: ignore[index]
            created_us = np.array([int(v[1 + _DIGITS : HEADER_WIDTH]) for v in values], dtype=np.int64)  # type: ignore[index]
        else:
            header = np.frombuffer(record["h"].tobytes(), dtype=np.uint8).reshape(n, HEADER_WIDTH)
            present = header[:, 0] == TAG
            digits = header.astype(np.int64) - 48
            event_us = digits[:, 1 : 1 + _DIGITS] @ _POWERS
            created_us = digits[:, 1 + _DIGITS :] @ _POWERS
        strings: dict[str, Any] = {}
        if self.strings:
            small = n <= 16  # a few records: Python slices beat building Arrow buffers
            strings = (self._small_strings if small else self._decode_strings)(values, record)  # type: ignore[arg-type]
        validity = validity_view(record, n, len(self.names), self.width)
        return Decoded(n, present, event_us, created_us, record, validity, strings)

    def decode(self, values: Sequence[bytes | None]) -> pl.DataFrame:
        """Decode raw values into a frame: `event_timestamp`, `created_timestamp`, features.

        A missing key gives nulls everywhere, `event_timestamp` included, so callers can tell
        "no value" from "a null value".
        """
        return self.frame(self.decode_arrays(values))

    def frame(self, decoded: Decoded) -> pl.DataFrame:
        """Decoded records as the frame `decode` returns."""
        present = decoded.present
        event = pl.Series(EVENT_TIMESTAMP, decoded.event_us, dtype=pl.Int64)
        created = pl.Series(CREATED_TIMESTAMP, decoded.created_us, dtype=pl.Int64)
        series = [
            to_series(EVENT_TIMESTAMP, event.cast(pl.Datetime("us", "UTC")), present),
            to_series(
                CREATED_TIMESTAMP, created.cast(pl.Datetime("us", "UTC")), present & (decoded.created_us > 0)
            ),
        ]
        for i, feature in enumerate(self.features):
            column = column_series(feature.name, feature.polars_dtype, decoded.data(feature.name))
            series.append(to_series(feature.name, column, decoded.validity[:, i]))
        return pl.DataFrame(series)

    def _small_strings(self, values: list[bytes], record: np.ndarray) -> dict[str, list[str]]:
        """`_decode_strings` for a few records, as Python strings: the tails hold each row's
        non-null strings back to back in feature order (a null's length is -1: no bytes, and
        an empty string here, as on the Arrow path; validity says it is null)."""
        width = self.width
        lengths = [record[f"f_{s}"].tolist() for s in self.strings]
        out: dict[str, list[str]] = {s: [] for s in self.strings}
        columns = [out[s] for s in self.strings]
        for i, value in enumerate(values):
            at = width
            for k, column in enumerate(columns):
                size = lengths[k][i]
                if size > 0:
                    column.append(value[at : at + size].decode())
                    at += size
                else:
                    column.append("")
        return out

    def _decode_strings(self, values: list[bytes], record: np.ndarray) -> dict[str, pa.Array]:
        m = len(values)
        tails = b"".join([v[self.width :] for v in values])
        data = np.frombuffer(tails, dtype=np.uint8)
        lengths = np.stack([record[f"f_{s}"].astype(np.int64) for s in self.strings], axis=1)
        sizes = np.maximum(lengths, 0)
        row_start = np.zeros(m, dtype=np.int64)
        if m > 1:
            np.cumsum(sizes.sum(axis=1)[:-1], out=row_start[1:])
        within = np.cumsum(sizes, axis=1) - sizes
        out: dict[str, pa.Array] = {}
        for k, name in enumerate(self.strings):
            size = sizes[:, k]
            offsets = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(size, out=offsets[1:])
            if m == 1 or not offsets[-1]:
                start = int(row_start[0] + within[0, k]) if m == 1 else 0
                chunk = data[start : start + int(offsets[-1])]
            else:
                starts = row_start + within[:, k]
                chunk = data[np.repeat(starts - offsets[:-1], size) + np.arange(offsets[-1])]
            out[name] = pa.LargeStringArray.from_buffers(
                m, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chunk.tobytes())
            )
        return out


@dataclass
class Decoded:
    """Decoded records; `present` is False where the key was missing."""

    n: int
    present: np.ndarray
    event_us: np.ndarray
    created_us: np.ndarray
    record: np.ndarray  # the packed fixed-width records, one per value
    validity: np.ndarray  # (n, features) view of the validity bytes
    strings: dict[str, pa.Array | list[str]]  # Python strings for a few records (`_small_strings`)

    def data(self, feature: str) -> Any:
        """A feature's raw column: a numpy field of the record, or an Arrow array for strings."""
        if feature not in self.strings:
            return self.record[f"f_{feature}"]
        column = self.strings[feature]
        return pa.array(column, type=pa.large_string()) if isinstance(column, list) else column

    def python_strings(self, feature: str) -> list[str] | None:
        """A string feature's values as Python strings, when decoded that way (a few rows)."""
        column = self.strings.get(feature)
        return column if isinstance(column, list) else None


def column_series(name: str, dtype: pl.DataType, data: Any) -> pl.Series:
    """A Polars series of `dtype` from a decoded column (validity applied separately)."""
    if dtype == pl.String:
        return pl.Series(name, pl.from_arrow(data)).cast(pl.String)
    if isinstance(dtype, pl.Datetime):
        return pl.Series(name, data, dtype=pl.Int64).cast(dtype)
    if isinstance(dtype, pl.Array):
        return pl.Series(name, np.ascontiguousarray(data)).cast(dtype)
    if dtype == pl.Boolean:
        return pl.Series(name, data.view(np.bool_))
    if dtype == pl.Date:
        return pl.Series(name, data, dtype=pl.Int32).cast(pl.Date)
    return pl.Series(name, data, dtype=dtype)


def to_series(name: str, series: pl.Series, valid: np.ndarray) -> pl.Series:
    """Null out the invalid rows (a scatter, only when there are any)."""
    if valid.all():
        return series.alias(name)
    if isinstance(series.dtype, pl.Array):  # scatter does not support fixed-size lists
        return pl.select(pl.when(pl.lit(pl.Series(valid))).then(pl.lit(series)).alias(name)).to_series()
    return series.scatter(np.flatnonzero(~valid), None).alias(name)

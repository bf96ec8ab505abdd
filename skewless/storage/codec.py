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

import numpy as np
import polars as pl
import pyarrow as pa

from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureGroup

FORMAT_TAG = b"1"
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


class GroupCodec:
    """Encodes and decodes the latest feature rows of one group version."""

    def __init__(self, group: FeatureGroup) -> None:
        self.group = group
        self.features = list(group.features)
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

    # ------------------------------------------------------------------ encode
    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        """One value per row of `frame` (offline layout: event/created time and features)."""
        n = frame.height
        record = np.zeros(n, dtype=self.record)
        created = (
            frame[CREATED_TIMESTAMP].dt.epoch("us").fill_null(0)
            if CREATED_TIMESTAMP in frame.columns
            else pl.repeat(0, n, eager=True, dtype=pl.Int64)
        )
        header = (
            pl.DataFrame({"e": frame[EVENT_TIMESTAMP].dt.epoch("us"), "c": created})
            .select(
                pl.concat_str(
                    pl.lit("1"),
                    pl.col("e").cast(pl.String).str.zfill(_DIGITS),
                    pl.col("c").cast(pl.String).str.zfill(_DIGITS),
                )
            )
            .to_series()
        )
        record["h"] = header.to_numpy().astype(f"S{HEADER_WIDTH}")
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
        buffer = memoryview(record.tobytes())
        w = self.width
        if not self.strings:
            return [bytes(buffer[i * w : (i + 1) * w]) for i in range(n)]
        tails = (
            frame.select(pl.concat_str([pl.col(s).fill_null("") for s in self.strings]).cast(pl.Binary))
            .to_series()
            .to_list()
        )
        return [bytes(buffer[i * w : (i + 1) * w]) + tails[i] for i in range(n)]

    # ------------------------------------------------------------------ decode
    def decode(self, values: Sequence[bytes | None]) -> pl.DataFrame:
        """Decode raw values (None for a missing key) into a frame, one row per value.

        Missing values give nulls and `event_timestamp` null, so callers can tell "no value"
        from "a null value" when they apply TTLs and defaults.
        """
        n = len(values)
        present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
        kept = [v for v in values if v is not None]
        m = len(kept)
        record = np.frombuffer(b"".join(v[: self.width] for v in kept), dtype=self.record, count=m)
        digits = np.frombuffer(record["h"].tobytes(), dtype=np.uint8).reshape(m, HEADER_WIDTH)
        digits = digits.astype(np.int64) - 48
        event_us = digits[:, 1 : 1 + _DIGITS] @ _POWERS
        created_us = digits[:, 1 + _DIGITS :] @ _POWERS
        columns: dict[str, pl.Series] = {
            EVENT_TIMESTAMP: pl.Series(EVENT_TIMESTAMP, event_us, dtype=pl.Int64).cast(
                pl.Datetime("us", "UTC")
            ),
            CREATED_TIMESTAMP: pl.select(
                pl.when(pl.lit(pl.Series(created_us)) > 0).then(pl.lit(pl.Series(created_us)))
            )
            .to_series()
            .cast(pl.Datetime("us", "UTC"))
            .alias(CREATED_TIMESTAMP),
        }
        string_cols = self._decode_strings(kept, record) if self.strings else {}
        for feature in self.features:
            name, dtype = feature.name, feature.polars_dtype
            raw = record[f"f_{name}"]
            if dtype == pl.String:
                series = string_cols[name]
            elif isinstance(dtype, pl.Datetime):
                series = pl.Series(name, raw, dtype=pl.Int64).cast(dtype)
            elif isinstance(dtype, pl.Array):
                series = pl.Series(name, np.ascontiguousarray(raw)).cast(dtype)
            elif dtype == pl.Boolean:
                series = pl.Series(name, raw.astype(bool))
            elif dtype == pl.Date:
                series = pl.Series(name, raw, dtype=pl.Int32).cast(pl.Date)
            else:
                series = pl.Series(name, raw).cast(dtype)
            valid = pl.Series(record[f"v_{name}"].astype(bool))
            columns[name] = pl.select(pl.when(valid).then(series).otherwise(None).alias(name)).to_series()
        decoded = pl.DataFrame(list(columns.values()))
        if m == n:
            return decoded
        positions = pl.DataFrame({"__pos": np.flatnonzero(present)})
        return (
            pl.DataFrame({"__pos": np.arange(n)})
            .join(
                pl.concat([positions, decoded], how="horizontal"),
                on="__pos",
                how="left",
                maintain_order="left",
            )
            .drop("__pos")
        )

    def _decode_strings(self, kept: list[bytes], record: np.ndarray) -> dict[str, pl.Series]:
        m = len(kept)
        tails = b"".join(v[self.width :] for v in kept)
        data = np.frombuffer(tails, dtype=np.uint8)
        lengths = np.stack([record[f"f_{s}"].astype(np.int64) for s in self.strings], axis=1)
        sizes = np.maximum(lengths, 0)
        row_start = np.zeros(m, dtype=np.int64)
        np.cumsum(sizes.sum(axis=1)[:-1], out=row_start[1:]) if m > 1 else None
        within = np.cumsum(sizes, axis=1) - sizes
        out: dict[str, pl.Series] = {}
        for k, name in enumerate(self.strings):
            starts = row_start + within[:, k]
            size = sizes[:, k]
            offsets = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(size, out=offsets[1:])
            gather = np.repeat(starts - offsets[:-1], size) + np.arange(offsets[-1])
            chunk = data[gather] if offsets[-1] else np.zeros(0, dtype=np.uint8)
            valid = lengths[:, k] >= 0
            array = pa.LargeStringArray.from_buffers(
                m,
                pa.py_buffer(offsets.tobytes()),
                pa.py_buffer(chunk.tobytes()),
                pa.py_buffer(np.packbits(valid, bitorder="little").tobytes()),
            )
            out[name] = pl.Series(name, pl.from_arrow(array)).cast(pl.String)
        return out

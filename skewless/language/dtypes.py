"""The feature and key dtypes skewless can store offline and online, and their checks.

Feature dtypes are Polars dtypes. The online codec packs each supported dtype into a fixed
width (strings go to a variable tail), so the set is closed: anything else is refused when
the definition loads rather than failing on the first write.
"""

from __future__ import annotations

from typing import Any

import polars as pl

_INTEGERS: tuple[type[pl.DataType], ...] = (
    pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
)  # fmt: skip
KEY_DTYPES: tuple[type[pl.DataType], ...] = (*_INTEGERS, pl.String)
_FIXED_NUMERIC = (*_INTEGERS, pl.Float32, pl.Float64, pl.Boolean, pl.Date)

UTC_DATETIME = pl.Datetime("us", "UTC")


def normalize_dtype(dtype: Any) -> pl.DataType:
    """Instantiate a dtype given as a class (`pl.Int64`) so comparisons are exact."""
    if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
        dtype = dtype()
    if not isinstance(dtype, pl.DataType):
        raise TypeError(f"not a Polars dtype: {dtype!r}")
    return dtype


def is_supported_feature_dtype(dtype: pl.DataType) -> bool:
    """True when the offline and online stores can both hold `dtype` exactly."""
    if isinstance(dtype, _FIXED_NUMERIC) or dtype == pl.String:
        return True
    if isinstance(dtype, pl.Datetime):
        return dtype.time_zone == "UTC"
    if isinstance(dtype, pl.Array):
        return dtype.inner in (pl.Float32, pl.Float64) and len(dtype.shape) == 1
    return False


def is_supported_key_dtype(dtype: pl.DataType) -> bool:
    """Join keys must stringify losslessly into Redis keys: integers and strings only."""
    return isinstance(dtype, KEY_DTYPES)


def default_fits(dtype: pl.DataType, default: Any) -> bool:
    """Whether a declared constant default can live in a column of `dtype`."""
    if default is None:
        return True
    try:
        series = pl.Series([default]).cast(dtype, strict=True)
    except Exception:
        return False
    return series.null_count() == 0


_SIGNED = (pl.Int8, pl.Int16, pl.Int32, pl.Int64)
_UNSIGNED = (pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_BITS = {
    pl.Int8: 8, pl.Int16: 16, pl.Int32: 32, pl.Int64: 64,
    pl.UInt8: 8, pl.UInt16: 16, pl.UInt32: 32, pl.UInt64: 64,
}  # fmt: skip
_MANTISSA = {pl.Float32: 24, pl.Float64: 53}


def casts_losslessly(source: pl.DataType, target: pl.DataType) -> bool:
    """True when every value of `source` has an exact, equal value in `target`.

    Decided from the dtypes alone (not the values at hand), so whether a push is accepted
    never depends on which numbers it happens to carry: Int32 -> Int64 and Float32 -> Float64
    widen; Int64 -> Int32, Float -> Int or String -> anything are refused.
    """
    if source == target or source == pl.Null:
        return True
    src, dst = type(source), type(target)
    if src in _BITS and dst in _BITS:
        if (src in _SIGNED) == (dst in _SIGNED):
            return _BITS[dst] >= _BITS[src]
        return src in _UNSIGNED and dst in _SIGNED and _BITS[dst] > _BITS[src]
    if src in _BITS and dst in _MANTISSA:
        return _BITS[src] - (1 if src in _SIGNED else 0) <= _MANTISSA[dst]
    if src in _MANTISSA and dst in _MANTISSA:
        return _MANTISSA[dst] >= _MANTISSA[src]
    return False


def conform_frame(
    frame: pl.DataFrame, schema: pl.Schema, allow_extra: bool = False
) -> tuple[pl.DataFrame, list[str]]:
    """`frame` with exactly `schema`'s columns, in its order and dtypes, or the problems.

    Columns in another order are reordered and lossless dtypes cast (`casts_losslessly`);
    a missing column, a column that would lose values, and (unless `allow_extra`) a column
    `schema` does not have are problems, each described with the column's name.
    """
    have = frame.schema  # built once: each `frame.schema` makes a new Schema object
    problems = [f"missing column '{c}'" for c in schema if c not in have]
    if not allow_extra:
        problems += [f"extra column '{c}' (not in the source)" for c in have if c not in schema]
    for column, dtype in schema.items():
        if column in have and not casts_losslessly(have[column], dtype):
            problems.append(f"column '{column}' has dtype {have[column]}, the source has {dtype}")
    if problems:
        return frame, problems
    if have == schema:
        return frame, []
    return frame.select(pl.col(c).cast(d) for c, d in schema.items()), []

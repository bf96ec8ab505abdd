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

"""Window aggregations: declared, not hand-coded, and executed identically by every path.

`Aggregation("sum", "amount", windows=["1h", "7d"])` declares the features `amount_sum_1h`
and `amount_sum_7d`. The value at time `t` aggregates the entity's events with event time in
`(t - w, t]` (and passing `where`, when given). Offline, a window group stores its events
(the window state); training sets and online reads compute values from those events with
the same function (`compute/windows.py`), which is what makes batch and stream agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import polars as pl

from skewless.errors import DefinitionError
from skewless.language.dtypes import normalize_dtype
from skewless.language.durations import format_duration, parse_duration
from skewless.language.entity import check_name

FUNCTIONS = ("count", "sum", "mean", "min", "max", "last", "distinct_count")
_NUMERIC = (
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
    pl.Float32,
    pl.Float64,
)


@dataclass(frozen=True, eq=False)
class Aggregation:
    """One aggregate of one column over one or more sliding windows.

    `dtype` is the input column's dtype (declared so the output schema is known at load).
    `distinct_count` is exact (computed from the window's events, so no sketch error);
    `sum` adds values in event order (event time, then event id), the documented order
    that makes floats agree bit for bit across paths.

    Equality and hashing go through `identity()`, not the generated dataclass `__eq__`:
    that one would compare `where` expressions with `==`, which builds a Polars expression
    instead of a bool (`the truth value of an Expr is ambiguous`) as soon as two
    aggregations differ only by their filter.
    """

    function: str
    column: str | None = None
    windows: Sequence[str | timedelta] = ()
    dtype: Any = pl.Float64
    where: pl.Expr | None = None
    name: str | None = None
    _windows: tuple[timedelta, ...] = field(init=False, repr=False, compare=False, default=())
    _labels: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        # a count without a column counts rows: say so rather than "of None"
        subject = repr(self.column) if self.column is not None else "rows"
        what = f"aggregation {self.function!r} of {subject}"
        if self.function not in FUNCTIONS:
            raise DefinitionError(f"{what}: function must be one of {', '.join(FUNCTIONS)}")
        if self.column is None and self.function != "count":
            raise DefinitionError(f"{what}: needs a column")
        if self.column is not None:
            check_name(self.column, f"{what} column")
        try:
            dtype = normalize_dtype(self.dtype)
        except TypeError:
            raise DefinitionError(f"{what}: dtype {self.dtype!r} is not a Polars dtype") from None
        if self.function in ("sum", "mean") and not isinstance(dtype, _NUMERIC):
            raise DefinitionError(f"{what}: {self.function} needs a numeric column, got {dtype}")
        object.__setattr__(self, "dtype", dtype)
        if self.where is not None and not isinstance(self.where, pl.Expr):
            raise DefinitionError(f"{what}: where must be a Polars expression, e.g. pl.col('status') == 'ok'")
        if isinstance(self.windows, str) or not self.windows:
            raise DefinitionError(f"{what}: windows must be a non-empty list such as ['1h', '7d']")
        windows = tuple(parse_duration(w, what=f"{what} window") for w in self.windows)  # type: ignore[misc]
        if len(set(windows)) != len(windows):
            raise DefinitionError(f"{what}: a window is listed twice")
        object.__setattr__(self, "_windows", windows)
        # names keep the declared spelling ("7d" stays "7d", not "1w")
        labels = tuple(w.strip() if isinstance(w, str) else format_duration(w) for w in self.windows)
        object.__setattr__(self, "_labels", labels)
        if self.name is not None:
            check_name(self.name, f"{what} name")

    def identity(self) -> tuple[Any, ...]:
        """What the aggregation computes, as plain comparable values.

        `where` is its serialized expression tree: equal filters serialize equally and no
        expression is ever evaluated (or compared with `==`, which is element-wise in Polars).
        """
        where: str | None = None
        if self.where is not None:
            try:
                where = str(self.where.meta.serialize(format="json"))
            except Exception:  # e.g. a Python UDF that cannot be serialized: its text
                where = str(self.where)
        return (self.function, self.column, self._windows, self._labels, str(self.dtype), where, self.name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Aggregation):
            return NotImplemented
        return self is other or self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())

    @property
    def base_name(self) -> str:
        if self.name:
            return self.name
        return "count" if self.column is None else f"{self.column}_{self.function}"

    @property
    def window_list(self) -> tuple[timedelta, ...]:
        return self._windows

    def feature_name(self, window: timedelta) -> str:
        return f"{self.base_name}_{self._labels[self._windows.index(window)]}"

    @property
    def output_dtype(self) -> pl.DataType:
        if self.function in ("count", "distinct_count"):
            return pl.Int64()
        if self.function == "mean":
            return pl.Float64()
        if self.function == "sum":
            return pl.Float64() if self.dtype.is_float() else pl.Int64()
        assert isinstance(self.dtype, pl.DataType)
        return self.dtype

    @property
    def default(self) -> Any:
        """Empty windows: 0 for counts and sums, None otherwise (there is no value)."""
        return 0 if self.function in ("count", "distinct_count", "sum") else None


def windowed_features(aggregations: Sequence[Aggregation]) -> list[tuple[Aggregation, timedelta, str]]:
    return [(a, w, a.feature_name(w)) for a in aggregations for w in a.window_list]

"""Point-in-time joins: the feature values that were known at each label row's time.

Rules (the contract tests pin):
- one output row per label row, in the caller's order; label rows are never dropped or merged;
- a feature value is the latest row with `event_timestamp <= label time`, and with
  `event_timestamp >= label time - ttl` when the group has a TTL;
- rows sharing an event time are ordered by created time, the latest wins; if that ties too,
  the row stored last in the offline partition (its sort order is deterministic) wins;
- no match, or a null value: the feature's declared default (None when none is declared),
  exactly as the online path does.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from skewless.errors import RequestError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup

ROW = "__skewless_row"
LABEL_TS = "__skewless_label_ts"
FEATURE_TS = "__skewless_feature_ts"


def normalize_label_times(labels: pl.DataFrame, column: str) -> pl.Series:
    """The label time column as UTC microseconds, or a RequestError naming what is wrong."""
    if column not in labels.columns:
        raise RequestError(
            f"label frame has no timestamp column '{column}' (columns: {', '.join(labels.columns)})"
        )
    series = labels[column]
    if not isinstance(series.dtype, pl.Datetime):
        raise RequestError(
            f"label column '{column}' has dtype {series.dtype}, expected a timezone-aware UTC datetime"
        )
    if series.dtype.time_zone is None:
        raise RequestError(
            f"label column '{column}' is timezone-naive ({series.dtype}); label times must be "
            "timezone-aware (e.g. .dt.replace_time_zone('UTC'))"
        )
    if series.null_count():
        raise RequestError(f"label column '{column}' has {series.null_count()} null timestamps")
    return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def conform_keys(frame: pl.DataFrame, group: FeatureGroup, what: str) -> pl.DataFrame:
    """Check the entity's key columns exist with a compatible dtype, casting integer widths."""
    casts = []
    for column, dtype in group.entity.key_schema.items():
        if column not in frame.columns:
            raise RequestError(
                f"{what} has no join key column '{column}' needed by feature group '{group.ref}' "
                f"(entity '{group.entity.name}'; columns: {', '.join(frame.columns)})"
            )
        actual = frame.schema[column]
        if actual == dtype:
            continue
        if actual.is_integer() and dtype.is_integer():
            casts.append(pl.col(column).cast(dtype, strict=True))
        elif actual == pl.Null:
            casts.append(pl.col(column).cast(dtype))
        else:
            raise RequestError(
                f"{what}: join key '{column}' has dtype {actual}, but entity '{group.entity.name}' "
                f"declares {dtype}"
            )
    if not casts:
        return frame
    try:
        return frame.with_columns(casts)
    except pl.exceptions.InvalidOperationError as exc:
        raise RequestError(f"{what}: join key values do not fit the entity's dtype: {exc}") from None


def apply_defaults(group: FeatureGroup, features: list[str], names: dict[str, str]) -> list[pl.Expr]:
    """Fill missing values with each feature's declared default: shared by both paths."""
    exprs = []
    for feature in features:
        spec = group.feature(feature)
        expr = pl.col(names[feature])
        if spec.default is not None:
            expr = expr.fill_null(pl.lit(spec.default, dtype=spec.polars_dtype))
        exprs.append(expr.alias(names[feature]))
    return exprs


def join_group(
    labels: pl.LazyFrame,
    group: FeatureGroup,
    features: list[str],
    rows: pl.LazyFrame,
    names: dict[str, str],
) -> pl.LazyFrame:
    """Feature columns of one group for every label row, as `(ROW, *features)`.

    Window groups aggregate their stored events at each label time (`compute/windows.py`);
    row groups take the latest row.

    `labels` carries ROW, LABEL_TS and the join keys; `rows` is the group's offline rows.
    """
    if group.is_windowed:
        from skewless.compute.windows import window_values

        return window_values(group, rows, labels, names)
    keys = group.entity.key_columns
    # No sort: offline partitions are sorted by (keys, event, created) and read in day order,
    # so each entity's rows are already in (event, created, stored) order, which is all a
    # `by` asof join needs; the last of equal rows wins, giving the documented tie rule.
    right = rows.select([*keys, EVENT_TIMESTAMP, *features]).rename(
        {EVENT_TIMESTAMP: FEATURE_TS, **{f: names[f] for f in features}}
    )
    left = labels.select([ROW, *keys, LABEL_TS]).sort(LABEL_TS)
    joined = left.join_asof(
        right,
        left_on=LABEL_TS,
        right_on=FEATURE_TS,
        by=keys,
        strategy="backward",
        check_sortedness=False,
    )
    ttl: timedelta | None = group.time_to_live
    if ttl is not None:
        fresh = pl.col(FEATURE_TS) >= pl.col(LABEL_TS) - pl.duration(
            microseconds=ttl // timedelta(microseconds=1)
        )
        joined = joined.with_columns(
            [pl.when(fresh).then(pl.col(names[f])).otherwise(None).alias(names[f]) for f in features]
        )
    return joined.select([ROW, *apply_defaults(group, features, names)])

"""Point-in-time joins: the feature values that were known at each label row's time.

Rules (the contract tests pin):
- one output row per label row, in the caller's order; label rows are never dropped or merged;
- a feature value is the latest row with `event_timestamp <= label time`, and with
  `event_timestamp >= label time - ttl` when the group has a TTL;
- rows sharing an event time are ordered by created time, the latest wins; if that ties too,
  the row stored last in the offline partition (its sort order is deterministic) wins;
- no match, or a null value: the feature's declared default (None when none is declared),
  exactly as the online path does.

Two implementations of these rules give the same values: `join_group` (Polars' by-key
`join_asof`, the in-memory engine) and `join_group_sorted` (one bucket of the partitioned
engine: a stable sort of keys and event times plus a binary search per label,
`latest_positions`, then only the picked rows' values are read).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
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
        rows = series.is_null().arg_true().head(5).to_list()
        more = ", ..." if series.null_count() > len(rows) else ""
        raise RequestError(
            f"label column '{column}' has {series.null_count()} null timestamps "
            f"(rows {', '.join(map(str, rows))}{more}); every label row needs a time"
        )
    return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def conform_keys(frame: pl.DataFrame, group: FeatureGroup, what: str) -> pl.DataFrame:
    """Check the entity's key columns exist with a compatible dtype, casting integer widths.

    Null keys are allowed (such a label row gets the features' defaults, as online). The
    errors name the column and the fix, because the usual causes are not obvious from a
    dtype: pandas turns an integer column holding a missing value into float64, and an
    integer that does not fit the declared width would otherwise surface as Polars'
    multi-line cast error.
    """
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
            casts.append(_checked_int_cast(frame, column, dtype, what))
        elif actual == pl.Null:
            casts.append(pl.col(column).cast(dtype))
        elif actual.is_float() and dtype.is_integer():
            nulls = frame.get_column(column).is_null() | frame.get_column(column).is_nan()
            hint = (
                f"it holds {int(nulls.sum())} null/NaN values: pandas stores an integer column "
                "with missing values as float64, so keep keys integer with pandas' nullable "
                f"dtype (df['{column}'].astype('Int64'))"
                if nulls.any()
                else f"cast it to {dtype} before the request"
            )
            raise RequestError(
                f"{what}: join key '{column}' has dtype {actual}, but entity '{group.entity.name}' "
                f"declares {dtype}; {hint}"
            )
        else:
            raise RequestError(
                f"{what}: join key '{column}' has dtype {actual}, but entity '{group.entity.name}' "
                f"declares {dtype}"
            )
    if not casts:
        return frame
    return frame.with_columns(casts)


def _checked_int_cast(frame: pl.DataFrame, column: str, dtype: pl.DataType, what: str) -> pl.Expr:
    """A cast of an integer key column to the declared width, or a one-line error naming the
    column and its first value that does not fit (instead of Polars' multi-line report)."""
    values = frame.get_column(column)
    lossy = values.is_not_null() & values.cast(dtype, strict=False).is_null()
    if lossy.any():
        bad = values.filter(lossy)
        raise RequestError(
            f"{what}: join key '{column}' has {bad.len()} values out of range for the entity's "
            f"{dtype} (first: {bad[0]})"
        )
    return pl.col(column).cast(dtype)


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


POSITION = "__skewless_position"


def latest_positions(
    labels: pl.DataFrame, keys: list[str], ttl: timedelta | None, index: pl.DataFrame
) -> pl.Series | None:
    """For each label row, the position in `index` (keys, event time; each entity's rows in
    (event, created, stored) order, entities in any order) of the row the join picks, null
    when none does; None when the entities x time span do not fit one int64 search key.

    One stable sort of the index by the keys (a row's entity rows stay in their order), a
    run id per entity, and a binary search of `(entity, label time)` in `(entity, event
    time)`: the last row at or before the label time is the latest of equal event times
    too, which is the tie rule. No sort of the feature values and no hash join over them:
    only the picked rows are gathered afterwards.
    """
    n = labels.height
    if index.height == 0:
        return pl.Series(POSITION, [None] * n, dtype=pl.UInt32)
    if len(keys) == 1 and index.schema[keys[0]].is_integer():
        found = _latest_positions_int(labels, keys[0], ttl, index)
        if found is not None:
            return found
    perm = index.select(pl.arg_sort_by(keys, maintain_order=True)).to_series()
    ordered = index.select(*keys, EVENT_TIMESTAMP)[perm]
    entity = (pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)).rle_id().alias("__entity")
    ordered = ordered.with_columns(entity)
    ev_entity = ordered.get_column("__entity").to_numpy().astype(np.int64)
    ev_ts = ordered.get_column(EVENT_TIMESTAMP).dt.epoch("us").to_numpy()
    base = int(ev_ts.min()) - 1
    span = int(ev_ts.max()) - base + 2
    if (int(ev_entity[-1]) + 1) * span >= 2**62:
        return None
    entities = ordered.select(*keys, "__entity").unique(subset="__entity", keep="first")
    codes = labels.select(keys).join(entities, on=keys, how="left", maintain_order="left")
    q_entity = codes.get_column("__entity").fill_null(-1).to_numpy().astype(np.int64)
    q_ts = labels.get_column(LABEL_TS).dt.epoch("us").to_numpy()
    combined = ev_entity * span + (ev_ts - base)
    wanted = np.maximum(q_entity, 0) * span + np.clip(q_ts - base, 0, span - 1)
    order = np.argsort(wanted)  # searching sorted needles is several times faster (cache)
    at = np.empty(n, np.int64)
    at[order] = np.searchsorted(combined, wanted[order], side="right") - 1
    safe = np.maximum(at, 0)
    valid = (q_entity >= 0) & (at >= 0) & (ev_entity[safe] == q_entity)
    if ttl is not None:
        valid &= ev_ts[safe] >= q_ts - ttl // timedelta(microseconds=1)
    picked = perm.to_numpy()[safe]
    return pl.Series(POSITION, picked, dtype=pl.UInt32).scatter(np.flatnonzero(~valid), None)


def _latest_positions_int(
    labels: pl.DataFrame, key: str, ttl: timedelta | None, index: pl.DataFrame
) -> pl.Series | None:
    """`latest_positions` for one integer key: the search key is `(key - min) * span + time`
    directly (no entity codes, no join); None when that does not fit an int64."""
    ev_key = index.get_column(key)
    if ev_key.null_count():
        return None
    ev_ts = index.get_column(EVENT_TIMESTAMP).dt.epoch("us").to_numpy()
    low, high = int(ev_key.min()), int(ev_key.max())
    base = int(ev_ts.min()) - 1
    span = int(ev_ts.max()) - base + 2
    if (high - low + 1) * span >= 2**62:
        return None
    keys = ev_key.to_numpy().astype(np.int64) - low
    frame = pl.DataFrame({"c": keys * span + (ev_ts - base)})
    # stable: an entity's rows of equal times keep their (created, stored) order
    perm = frame.select(pl.arg_sort_by("c", maintain_order=True)).to_series()
    combined = frame.get_column("c").gather(perm).to_numpy()
    q_key = labels.get_column(key)
    q_ts = labels.get_column(LABEL_TS).dt.epoch("us").to_numpy()
    q = q_key.fill_null(low - 1).to_numpy().astype(np.int64) - low
    known = (q >= 0) & (q <= high - low)
    wanted = np.where(known, q, 0) * span + np.clip(q_ts - base, 0, span - 1)
    order = np.argsort(wanted)  # searching sorted needles is several times faster (cache)
    at = np.empty(labels.height, np.int64)
    at[order] = np.searchsorted(combined, wanted[order], side="right") - 1
    safe = np.maximum(at, 0)
    # the row found must be the label's entity: same key part of the search key
    valid = known & (at >= 0) & (combined[safe] // span == q)
    if ttl is not None:
        valid &= combined[safe] % span + base >= q_ts - ttl // timedelta(microseconds=1)
    picked = perm.to_numpy()[safe]
    return pl.Series(POSITION, picked, dtype=pl.UInt32).scatter(np.flatnonzero(~valid), None)


def join_group_sorted(
    labels: pl.DataFrame,
    group: FeatureGroup,
    features: list[str],
    rows: pl.LazyFrame,
    names: dict[str, str],
    take: Callable[[np.ndarray], pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """`join_group` for a row group over frames small enough for memory (one bucket of the
    partitioned engine), the same values: `latest_positions` finds each label's row from the
    keys and event times alone, then only the picked rows' feature values are read:
    `take(sorted unique positions)` returns those rows' `features` in that order (default:
    a pass over `rows` keeping them), so a bucket's other values are never held in memory."""
    if group.is_windowed:
        return join_group(labels.lazy(), group, features, rows, names).collect()
    keys = group.entity.key_columns
    index = rows.select(*keys, EVENT_TIMESTAMP).collect()
    positions = latest_positions(labels, keys, group.time_to_live, index)
    del index
    if positions is None:  # a span too long to search as one key: Polars' as-of join
        return join_group(labels.lazy(), group, features, rows, names).collect()
    picked = positions.drop_nulls().unique().sort()
    if take is None:
        values = (
            rows.select(features)
            .with_row_index(POSITION)
            .filter(pl.col(POSITION).is_in(picked.implode()))
            .drop(POSITION)
            .collect()
        )
    else:
        values = take(picked.to_numpy())
    values = values.select(features).rename({f: names[f] for f in features}).with_columns(picked)
    out = (
        labels.select(ROW)
        .with_columns(positions)
        .join(values, on=POSITION, how="left", maintain_order="left")
    )
    return out.select([ROW, *apply_defaults(group, features, names)])

"""Training-set window values by index ranges: O(events + labels) instead of labels × events.

Every entity's stored events are sorted by (event time, event id) into one array. For a label
at `t` and a window `w`, the events in `(t - w, t]` are a contiguous range `[lo, hi)` of it,
found for all labels at once by a binary search (`np.searchsorted` on an (entity, time)
key). Each aggregation then reads its range in constant or near-constant time:

- count, integer sum: prefix sums, `P[hi] - P[lo]`;
- float sum and mean: `math.fsum` of the range (C, correctly rounded); long ranges
  (lifetime windows) subtract exact integer prefix sums instead (`compute.exact`), the same
  correctly rounded value in O(1);
- min, max: a sparse table (O(1) range minimum), NaN ignored unless all NaN, -0.0 as 0.0;
- last: the range's last element (present values only, already in (time, id) order);
- distinct_count: the distinct codes of the range.

These are the same rules `compute.tiles` applies to pre-aggregated tiles online, so a
training set and an online read of the same events agree to the bit (property-tested against
a brute-force oracle in tests/test_window_tiles.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from skewless.compute.exact import ExactSum, exact_sum, scaled
from skewless.language.aggregation import windowed_features
from skewless.language.feature_group import EVENT_ID, EVENT_TIMESTAMP, FeatureGroup

LONG_RANGE = 512  # ranges longer than this use exact prefix sums instead of fsum


def range_window_values(
    group: FeatureGroup,
    events: pl.LazyFrame,
    queries: pl.LazyFrame,
    names: dict[str, str],
    row: str,
    query_ts: str,
) -> pl.LazyFrame:
    """Window features for each query `(row, *keys, query_ts)`, as `(row, *features)`."""
    keys = group.entity.key_columns
    wanted = [(i, agg, window, name) for i, (agg, window, name) in _indexed(group) if name in names]
    inputs = [EVENT_TIMESTAMP, EVENT_ID, *group.input_columns(), *group.where_columns()]
    ev = (
        events.select(*keys, *inputs)
        .unique(subset=[*keys, EVENT_ID], keep="last", maintain_order=True)
        .sort([*keys, EVENT_TIMESTAMP, EVENT_ID])
        .with_columns(pl.struct(keys).rle_id().alias("__entity"))
        .collect()
    )
    q = queries.select(row, *keys, query_ts).collect()
    entities = ev.select(*keys, "__entity").unique(subset=keys, keep="first")
    q = q.join(entities, on=keys, how="left", maintain_order="left")
    n = ev.height
    q_entity = q.get_column("__entity").fill_null(-1).to_numpy().astype(np.int64)
    q_ts = q.get_column(query_ts).dt.epoch("us").to_numpy().astype(np.int64)
    ev_entity = ev.get_column("__entity").to_numpy().astype(np.int64)
    ev_ts = ev.get_column(EVENT_TIMESTAMP).dt.epoch("us").to_numpy().astype(np.int64)
    search = _Search(ev_entity, ev_ts, q_entity)
    hi = search.count_at_or_before(q_ts)
    spans = {w for _, _, w, _ in wanted}
    lows = {w: search.count_at_or_before(q_ts - w // timedelta(microseconds=1)) for w in spans}
    known = q_entity >= 0
    columns: list[pl.Series] = [q.get_column(row)]
    cache: dict[Any, Any] = {}
    for index, agg, window, name in wanted:
        lo = np.where(known, lows[window], 0)
        top = np.where(known, hi, 0)
        values = _aggregate(group, index, agg, ev, lo, top, cache, n, window)
        feature = group.feature(name)
        series = pl.Series(names[name], values, dtype=agg.output_dtype, strict=False)
        if feature.default is not None:
            series = series.fill_null(pl.lit(feature.default, dtype=feature.polars_dtype))
        columns.append(series.cast(feature.polars_dtype))
    return pl.DataFrame(columns).lazy()


def _indexed(group: FeatureGroup) -> list[tuple[int, tuple[Any, timedelta, str]]]:
    index_of = {id(agg): i for i, agg in enumerate(group.aggregations)}
    return [(index_of[id(agg)], (agg, w, name)) for agg, w, name in windowed_features(group.aggregations)]


class _Search:
    """How many events of a query's entity lie at or before a time: a global index."""

    def __init__(self, ev_entity: np.ndarray, ev_ts: np.ndarray, q_entity: np.ndarray) -> None:
        self.ev_entity, self.ev_ts, self.q_entity = ev_entity, ev_ts, q_entity
        self.base = int(ev_ts.min()) - 1 if len(ev_ts) else 0
        self.span = (int(ev_ts.max()) - self.base + 2) if len(ev_ts) else 2
        entities = int(ev_entity.max()) + 1 if len(ev_entity) else 1
        self.combined = entities * self.span < 2**62
        if self.combined:
            self.keys = ev_entity * self.span + (ev_ts - self.base)

    def count_at_or_before(self, t: np.ndarray) -> np.ndarray:
        entity = np.maximum(self.q_entity, 0)
        if self.combined:
            rel = np.clip(t - self.base, 0, self.span - 1)
            return np.searchsorted(self.keys, entity * self.span + rel, side="right")
        # very long spans with many entities: sort events and queries together
        kinds = np.concatenate([np.zeros(len(self.ev_ts), np.int8), np.ones(len(t), np.int8)])
        ent = np.concatenate([self.ev_entity, entity])
        ts = np.concatenate([self.ev_ts, t])
        order = np.lexsort((kinds, ts, ent))
        is_event = (kinds[order] == 0).astype(np.int64)
        before = np.cumsum(is_event) - is_event
        out = np.empty(len(t), np.int64)
        queries = order[kinds[order] == 1] - len(self.ev_ts)
        out[queries] = before[kinds[order] == 1]
        return out


def _aggregate(
    group: FeatureGroup,
    index: int,
    agg: Any,
    ev: pl.DataFrame,
    lo: np.ndarray,
    hi: np.ndarray,
    cache: dict[Any, Any],
    n: int,
    window: timedelta,
) -> list[Any] | np.ndarray:
    """One feature for every query: the aggregate of the events at global positions [lo, hi)."""
    flag = f"where__{index}" if agg.where is not None else None
    if (flag, "mask") not in cache:
        cache[(flag, "mask")] = (
            np.ones(n, dtype=bool) if flag is None else ev.get_column(flag).fill_null(False).to_numpy()
        )
    mask = cache[(flag, "mask")]
    if agg.function == "count":
        if (flag, "count") not in cache:
            cache[(flag, "count")] = _prefix(mask.astype(np.int64))
        prefix = cache[(flag, "count")]
        return prefix[hi] - prefix[lo]
    key = (agg.column, flag)
    if key not in cache:
        column = ev.get_column(agg.column)
        present = mask & column.is_not_null().to_numpy()
        positions = np.flatnonzero(present)
        cache[key] = (_prefix(present.astype(np.int64)), positions, column.gather(positions))
    rank, positions, values = cache[key]
    a, b = rank[lo], rank[hi]  # the range in the present values' own positions
    function = agg.function
    if function == "sum" and not agg.dtype.is_float():
        if (key, "ints") not in cache:
            cache[(key, "ints")] = _prefix(values.cast(pl.Int64).to_numpy())
        prefix = cache[(key, "ints")]
        return prefix[b] - prefix[a]
    if function in ("sum", "mean"):
        if (key, "floats") not in cache:
            cache[(key, "floats")] = values.cast(pl.Float64).to_list()
        # a sum and a mean of one column over one window share their range sums
        if (key, "sums", window) not in cache:
            cache[(key, "sums", window)] = _exact_range_sums(cache[(key, "floats")], a, b, cache, key)
        sums = cache[(key, "sums", window)]
        if function == "sum":
            return sums
        counts = b - a
        return [s / c if c else None for s, c in zip(sums, counts.tolist(), strict=True)]
    if function in ("min", "max"):
        return _range_extreme(values, agg, a, b, function, cache, key)
    if function == "last":
        if (key, "list") not in cache:
            cache[(key, "list")] = values.to_list()
        listed = cache[(key, "list")]
        return [listed[j - 1] if j > i else None for i, j in zip(a.tolist(), b.tolist(), strict=True)]
    if (key, "codes") not in cache:
        cache[(key, "codes")] = _distinct_codes(values, agg)
    codes = cache[(key, "codes")]
    return [len(set(codes[i:j])) for i, j in zip(a.tolist(), b.tolist(), strict=True)]


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _exact_range_sums(
    listed: list[float], a: np.ndarray, b: np.ndarray, cache: dict[Any, Any], key: Any
) -> list[float]:
    """Correctly rounded exact sums of `listed[a:b]` for every range (see `compute.exact`)."""
    starts, stops = a.tolist(), b.tolist()
    fsum = math.fsum
    try:
        # C for the common case: short ranges of finite values
        out = [
            fsum(listed[i:j]) + 0.0 if j - i <= LONG_RANGE else math.nan
            for i, j in zip(starts, stops, strict=False)
        ]
    except (OverflowError, ValueError):
        out = [math.nan] * len(starts)
    prefix = None
    for k, value in enumerate(out):
        if math.isfinite(value):
            continue  # fsum is correctly rounded: the exact sum's value (inputs were finite)
        i, j = starts[k], stops[k]
        if j - i <= LONG_RANGE:
            out[k] = exact_sum(listed[i:j])
            continue
        if prefix is None:
            prefix = cache.get((key, "exact"))
            if prefix is None:
                prefix = cache[(key, "exact")] = _exact_prefix(listed)
        totals, nan, pos, neg = prefix
        out[k] = ExactSum(totals[j] - totals[i], nan[j] - nan[i], pos[j] - pos[i], neg[j] - neg[i]).value()
    return out


def _exact_prefix(listed: list[float]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Exact scaled-integer prefix sums, and prefix counts of NaN / +inf / -inf."""
    totals = [0]
    running = 0
    specials = np.zeros((len(listed), 3), dtype=np.int64)
    for k, value in enumerate(listed):
        if math.isfinite(value):
            if value:
                running += scaled(value)
        elif value != value:
            specials[k, 0] = 1
        elif value > 0:
            specials[k, 1] = 1
        else:
            specials[k, 2] = 1
        totals.append(running)
    counts = [_prefix(specials[:, c]) for c in range(3)]
    return totals, counts[0], counts[1], counts[2]


def _range_extreme(
    values: pl.Series, agg: Any, a: np.ndarray, b: np.ndarray, function: str, cache: dict, key: Any
) -> list[Any]:
    """min/max over ranges with a sparse table of ranks (floats: NaN ignored unless all)."""
    is_float = bool(agg.dtype.is_float())
    if is_float:
        fill = np.inf if function == "min" else -np.inf
        if (key, function) not in cache:
            raw = values.cast(pl.Float64).to_numpy()
            nan = np.isnan(raw)
            data = np.where(nan, fill, np.where(raw == 0, 0.0, raw))
            cache[(key, function)] = (_sparse_table(data, function), _prefix((~nan).astype(np.int64)))
        table, not_nan = cache[(key, function)]
        result = _query(table, a, b, function, fill)
        out: list[Any] = []
        for i, j, v in zip(a.tolist(), b.tolist(), result.tolist(), strict=True):
            if j <= i:
                out.append(None)
            elif not_nan[j] - not_nan[i] == 0:
                out.append(math.nan)
            else:
                out.append(v)
        return out
    if (key, function) not in cache:
        listed = values.to_physical().to_list() if values.dtype.is_temporal() else values.to_list()
        uniques = sorted(set(listed))
        ranks = np.array([bisect_left(uniques, v) for v in listed], dtype=np.int64)
        cache[(key, function)] = (_sparse_table(ranks, function), uniques)
    table, uniques = cache[(key, function)]
    fill_rank = len(uniques) if function == "min" else -1
    result = _query(table, a, b, function, fill_rank)
    picked = [
        uniques[r] if j > i else None for i, j, r in zip(a.tolist(), b.tolist(), result.tolist(), strict=True)
    ]
    if values.dtype.is_temporal():
        return pl.Series(picked, dtype=pl.Int64).cast(values.dtype).to_list()
    return picked


def _sparse_table(data: np.ndarray, function: str) -> list[np.ndarray]:
    pick = np.minimum if function == "min" else np.maximum
    table = [data]
    width = 1
    while 2 * width <= len(data):
        prev = table[-1]
        table.append(pick(prev[: len(prev) - width], prev[width:]))
        width *= 2
    return table


def _query(table: list[np.ndarray], a: np.ndarray, b: np.ndarray, function: str, fill: Any) -> np.ndarray:
    length = b - a
    safe = np.maximum(length, 1)
    level = np.floor(np.log2(safe)).astype(np.int64)
    out = np.full(len(a), fill, dtype=table[0].dtype if len(table[0]) else np.float64)
    pick = np.minimum if function == "min" else np.maximum
    for k in np.unique(level[length > 0]).tolist():
        rows = np.flatnonzero((level == k) & (length > 0))
        row_table = table[k]
        left = row_table[a[rows]]
        right = row_table[b[rows] - (1 << k)]
        out[rows] = pick(left, right)
    return out


def _distinct_codes(values: pl.Series, agg: Any) -> list[Any]:
    """Values as distinct-count keys: floats with -0.0 as 0.0 and every NaN as one value."""
    listed = values.to_list()
    if agg.dtype.is_float():
        return ["nan" if v != v else v + 0.0 for v in listed]
    return listed

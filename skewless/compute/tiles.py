"""Tiles: pre-aggregated window state, so an online window read costs the same for 100 or
100,000 events in the window.

Time is cut into tiles at fixed levels (10 s, 1 min, 10 min, 1 h, 6 h, 1 d, 7 d, 28 d,
336 d, 3360 d), each level's tile exactly `ratio` tiles of the level below, all aligned to the epoch.
A tile `(level, k)` covers event times in `(k*size, (k+1)*size]` — left-open like a window.
Any window `(t - w, t]` is cut (`cover`) into whole tiles, largest first, plus at most two
raw ranges shorter than ten seconds at its edges, read as events: so values are exactly the
`(t - w, t]` of the contract, not "approximately the last w", and the work is bounded by the
number of levels, not by the events.

A tile holds one *partial aggregate* per declared aggregation: counts; exact sums
(`compute.exact`: integers, so merging tiles in any order or grouping is exact); min/max;
the last value by (event time, event id); the distinct values. Partials of disjoint ranges
merge into the partial of their union, and `finish` turns a partial into the feature value
with the same rules `compute.windows.window_values` applies to raw events — which is why
online tile reads and training sets agree to the bit (the parity property test checks it).

Tiles are computed from events by `partials` (the same function whichever path stored the
events: batch backfill, push, micro-batch), cached in Redis by the read path, and
invalidated by every write that touches them (`storage.window_state`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from skewless.compute.exact import ExactSum, scaled
from skewless.language.feature_group import FeatureGroup

BASE_US = 10_000_000  # the finest tile: 10 s (raw edges are shorter than this)
RATIOS = (1, 6, 10, 6, 6, 4, 7, 4, 12, 10)
SIZES: tuple[int, ...] = tuple(BASE_US * math.prod(RATIOS[: i + 1]) for i in range(len(RATIOS)))


def tile_index(ts_us: int, level: int) -> int:
    """The tile of `level` holding an event at `ts_us`: `(k*size, (k+1)*size]`."""
    return (ts_us - 1) // SIZES[level]


def tile_range(level: int, k: int) -> tuple[int, int]:
    size = SIZES[level]
    return k * size, (k + 1) * size


def children(level: int, k: int) -> list[tuple[int, int]]:
    ratio = RATIOS[level]
    return [(level - 1, k * ratio + j) for j in range(ratio)]


def field(level: int, k: int) -> str:
    return f"{level}:{k}"


def cover(low: int, high: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Whole tiles and raw ranges `(lo, hi]` that together are exactly `(low, high]`."""
    tiles: list[tuple[int, int]] = []
    raws: list[tuple[int, int]] = []

    def split(a: int, b: int, level: int) -> None:
        if a >= b:
            return
        if level < 0:
            raws.append((a, b))
            return
        size = SIZES[level]
        first, stop = -(-a // size), b // size
        if first >= stop:
            split(a, b, level - 1)
            return
        split(a, first * size, level - 1)
        tiles.extend((level, k) for k in range(first, stop))
        split(stop * size, b, level - 1)

    split(low, high, len(SIZES) - 1)
    return tiles, raws


# --------------------------------------------------------------------------- partials
@dataclass(frozen=True)
class Part:
    """How one aggregation is pre-aggregated: its function, column and `where` flag."""

    function: str
    column: str | None
    where: str | None
    is_float: bool


def parts(group: FeatureGroup) -> list[Part]:
    out = []
    for i, agg in enumerate(group.aggregations):
        where = f"where__{i}" if agg.where is not None else None
        is_float = agg.column is not None and bool(agg.dtype.is_float())
        out.append(Part(agg.function, agg.column, where, is_float))
    return out


def _canonical(value: Any, is_float: bool) -> Any:
    """Distinct values as Polars counts them: -0.0 is 0.0 and every NaN is one value."""
    if is_float:
        if value != value:
            return "nan"
        return value + 0.0
    return value


def empty(part: Part) -> Any:
    if part.function == "count":
        return 0
    if part.function in ("sum", "mean"):
        return [0, ExactSum()]
    if part.function in ("min", "max"):
        return [None, False]
    if part.function == "last":
        return None
    return set()


def partials(group_parts: Sequence[Part], events: dict[str, list[Any]], rows: Sequence[int]) -> list[Any]:
    """The partial aggregates of the events at positions `rows` (a tile or a raw range)."""
    out = []
    ts, ids = events["ts"], events["id"]
    for part in group_parts:
        flags = events[part.where] if part.where is not None else None
        chosen = rows if flags is None else [r for r in rows if flags[r]]
        if part.function == "count":
            out.append(len(chosen))
            continue
        values = events[part.column]  # type: ignore[index]
        present = [r for r in chosen if values[r] is not None]
        acc = empty(part)
        for r in present:
            acc = _add(part, acc, values[r], ts[r], ids[r])
        out.append(acc)
    return out


def _add(part: Part, acc: Any, value: Any, ts: int, event_id: str) -> Any:
    function = part.function
    if function in ("sum", "mean"):
        acc[0] += 1
        if part.is_float:
            acc[1].add(float(value))
        else:
            acc[1].total += value if function == "sum" else _scaled_int(value)
        return acc
    if function in ("min", "max"):
        if part.is_float and value != value:
            acc[1] = True
            return acc
        if part.is_float:
            value = value + 0.0
        best = acc[0]
        if best is None or (value < best if function == "min" else value > best):
            acc[0] = value
        return acc
    if function == "last":
        if acc is None or (ts, event_id) > (acc[0], acc[1]):
            return [ts, event_id, value]
        return acc
    acc.add(_canonical(value, part.is_float))
    return acc


def _scaled_int(value: int) -> int:
    """An integer column's value in a mean: summed exactly as the Float64 it is cast to."""
    return scaled(float(value))


def merge(part: Part, a: Any, b: Any) -> Any:
    """The partial of two disjoint ranges' partials (commutative and associative)."""
    function = part.function
    if function == "count":
        return a + b
    if function in ("sum", "mean"):
        total = ExactSum(a[1].total, a[1].nan, a[1].pos_inf, a[1].neg_inf)
        total.merge(b[1])
        return [a[0] + b[0], total]
    if function in ("min", "max"):
        if a[0] is None:
            best = b[0]
        elif b[0] is None:
            best = a[0]
        else:
            best = min(a[0], b[0]) if function == "min" else max(a[0], b[0])
        return [best, a[1] or b[1]]
    if function == "last":
        if a is None:
            return b
        if b is None:
            return a
        return a if (a[0], a[1]) > (b[0], b[1]) else b
    return a | b


def merge_all(part: Part, accs: list[Any]) -> Any:
    """`merge` folded over many partials, specialised per function (the read's hot loop)."""
    function = part.function
    if not accs:
        return empty(part)
    if function == "count":
        return sum(accs)
    if function in ("sum", "mean"):
        total = ExactSum()
        n = 0
        for acc in accs:
            n += acc[0]
            s = acc[1]
            total.total += s.total
            if s.nan or s.pos_inf or s.neg_inf:
                total.nan += s.nan
                total.pos_inf += s.pos_inf
                total.neg_inf += s.neg_inf
        return [n, total]
    if function in ("min", "max"):
        found = [acc[0] for acc in accs if acc[0] is not None]
        best = (min(found) if function == "min" else max(found)) if found else None
        return [best, any(acc[1] for acc in accs)]
    if function == "last":
        present = [acc for acc in accs if acc is not None]
        return max(present, key=lambda a: (a[0], a[1])) if present else None
    return set().union(*accs)


def finish(part: Part, acc: Any) -> Any:
    """The feature value of a window from its partial (before the feature's default)."""
    function = part.function
    if function == "count":
        return acc
    if function == "sum":
        return acc[1].value() if part.is_float else acc[1].total
    if function == "mean":
        if acc[0] == 0:
            return None
        return acc[1].value() / acc[0]
    if function in ("min", "max"):
        if acc[0] is None:
            return math.nan if acc[1] else None
        return acc[0]
    if function == "last":
        return None if acc is None else acc[2]
    return len(acc)


# --------------------------------------------------------------------------- storage form
def _encode_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return value


def _decode_value(value: Any, is_float: bool) -> Any:
    if is_float and isinstance(value, str):
        return float(value)
    return value


def to_json(group_parts: Sequence[Part], tile: list[Any]) -> list[Any]:
    """A tile's partials as JSON-able lists (exact sums as hex integers, specials as text)."""
    out: list[Any] = []
    for part, acc in zip(group_parts, tile, strict=True):
        function = part.function
        if function == "count":
            out.append(acc)
        elif function in ("sum", "mean"):
            out.append([acc[0], *acc[1].to_list()])
        elif function in ("min", "max"):
            out.append([_encode_value(acc[0]), acc[1]])
        elif function == "last":
            out.append(None if acc is None else [acc[0], acc[1], _encode_value(acc[2])])
        else:
            out.append(sorted((_encode_value(v) for v in acc), key=lambda v: (type(v).__name__, v)))
    return out


def from_json(group_parts: Sequence[Part], raw: list[Any]) -> list[Any]:
    out: list[Any] = []
    for part, acc in zip(group_parts, raw, strict=True):
        function = part.function
        if function == "count":
            out.append(acc)
        elif function in ("sum", "mean"):
            out.append([acc[0], ExactSum.from_list(acc[1:])])
        elif function in ("min", "max"):
            out.append([_decode_value(acc[0], part.is_float), acc[1]])
        elif function == "last":
            out.append(None if acc is None else [acc[0], acc[1], _decode_value(acc[2], part.is_float)])
        else:
            out.append({v if v == "nan" else _decode_value(v, part.is_float) for v in acc})
    return out

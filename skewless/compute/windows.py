"""Window aggregations: a window group's stored events, and its training-set values.

`event_rows` turns source rows into stored events (identity, latest version, `where` flags)
for every path; `pushed_events` is its shortcut for a few pushed rows. Training-set values
come from `compute/window_ranges.py`, online values from tiles (`compute/tiles.py`,
`storage/window_state.py`); both follow the same rules (exact sums, NaN and -0.0 handling,
last by (event time, event id)), so they agree to the bit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from skewless.checks.schema import check_rows
from skewless.compute.identity import latest_versions
from skewless.errors import SourceDataError, TransformationError
from skewless.language.feature_group import EVENT_ID, EVENT_SEQ, EVENT_TIMESTAMP, FeatureGroup
from skewless.language.source import INGESTED

ROW = "__skewless_row"
QUERY_TS = "__skewless_label_ts"


def event_rows(group: FeatureGroup, frame: pl.LazyFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """A window group's stored events: keys, time, id, aggregated columns, `where` flags.

    Events without an id column get one from a hash of the whole row (stable for a given
    Polars version). Identity is (entity keys, event id): a re-delivered event is kept once,
    and of several versions of one identity the latest (`event_seq`: the arrival order the
    source's rows carry in `INGESTED`, pushed rows after the source's own files) wins. A
    declared id column with nulls is refused: a null names no event, and guessing would
    merge or split events differently on the two paths.
    """
    source = group.source
    schema = frame.collect_schema()
    problems = []
    for column, dtype in {**group.entity.key_schema, **group.input_columns()}.items():
        if column not in schema:
            problems.append(f"column '{column}' is missing")
        elif schema[column] != dtype:
            problems.append(f"column '{column}' has dtype {schema[column]}, declared {dtype}")
    if source.id_field is not None and source.id_field not in schema:
        problems.append(f"id column '{source.id_field}' is missing")
    if problems:
        raise TransformationError(
            f"feature group '{group.ref}': events do not match the declared aggregations: "
            + "; ".join(problems)
        )
    event_id = (
        pl.col(source.id_field).cast(pl.String)
        if source.id_field is not None
        else pl.struct(pl.all().exclude(INGESTED)).hash(seed=0).cast(pl.String)
    )
    seq = pl.col(INGESTED) if INGESTED in schema else pl.lit("", dtype=pl.String)
    keys = group.entity.key_columns
    try:
        selected = frame.select(
            *keys,
            pl.col(source.timestamp_field).alias(EVENT_TIMESTAMP),
            event_id.alias(EVENT_ID),
            seq.alias(EVENT_SEQ),
            *group.input_columns(),
            *[expr.fill_null(False).alias(name) for name, expr in group.where_columns().items()],
        ).filter(_in_range(start, end))
        events = selected.collect()
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransformationError(f"feature group '{group.ref}': computing events failed: {message}") from exc
    null_ids = events[EVENT_ID].null_count()
    if null_ids:
        raise SourceDataError(
            f"feature group '{group.ref}': {null_ids} events have a null id in '{source.id_field}' "
            f"(source '{source.name}'); every event needs an id, its identity with the entity keys"
        )
    if events.height == 1:
        pass  # one event: nothing to dedupe or order (the common single-event push)
    elif (
        _unique_identities(events, keys)
        if events.height <= 32
        # ids unique across the whole frame (the usual case) is a tenth of the cost of
        # checking (keys, id) pairs, and implies it
        else events.get_column(EVENT_ID).n_unique() == events.height
        or not events.select(pl.struct([*keys, EVENT_ID]).is_duplicated().any()).item()
    ):
        # every identity once (the usual batch or push): nothing to choose between versions
        events = events.sort([*keys, EVENT_TIMESTAMP, EVENT_ID], maintain_order=True)
    else:
        events = (
            latest_versions(group, events.lazy())
            .sort([*keys, EVENT_TIMESTAMP, EVENT_ID], maintain_order=True)
            .collect()
        )
    check_rows(group, events)
    return events


_RANGES: dict[tuple[datetime, datetime], pl.Expr] = {}


def _in_range(start: datetime, end: datetime) -> pl.Expr:
    """`start <= event time < end`, built once per range: literal datetimes cost a Series
    each, which a single-event push would pay on every call."""
    found = _RANGES.get((start, end))
    if found is None:
        if len(_RANGES) > 1024:
            _RANGES.clear()
        found = _RANGES[(start, end)] = (pl.col(EVENT_TIMESTAMP) >= start) & (pl.col(EVENT_TIMESTAMP) < end)
    return found


def pushed_events(group: FeatureGroup, rows: pl.DataFrame) -> pl.DataFrame | None:
    """`event_rows` for a few pushed rows of a group without a transformation, built from the
    rows' own columns (one eager select for the `where` flags instead of a lazy query per
    push). The same frame `event_rows` returns; None when that shortcut does not apply."""
    source = group.source
    if group.transformation is not None or rows.height > 32 or source.id_field is None:
        return None
    keys = group.entity.key_columns
    expected = {**group.entity.key_schema, **group.input_columns(), source.id_field: pl.String()}
    schema = rows.schema
    if any(schema.get(c) != d for c, d in expected.items()) or INGESTED in schema:
        return None
    ids = rows.get_column(source.id_field)
    if ids.null_count():
        return None  # event_rows names the problem
    flags = group.where_columns()
    where = _where_flags(group, flags, rows) if flags else None
    columns = [
        *(rows.get_column(k) for k in keys),
        rows.get_column(source.timestamp_field).alias(EVENT_TIMESTAMP),
        ids.alias(EVENT_ID),
        pl.Series(EVENT_SEQ, [""] * rows.height, dtype=pl.String),
        *(rows.get_column(c) for c in group.input_columns()),
        *(where.get_columns() if where is not None else []),
    ]
    events = pl.DataFrame(columns)
    if events.height > 1:
        if not _unique_identities(events, keys):
            return None
        events = events.sort([*keys, EVENT_TIMESTAMP, EVENT_ID], maintain_order=True)
    check_rows(group, events)
    return events


# Keyed by the group object's id, with the group held in the value (so the id cannot be reused
# while the entry lives, and two definitions sharing a name and version never share flags).
_WHERE_INPUTS: dict[int, tuple[FeatureGroup, list[str] | None]] = {}
_WHERE_MEMO: dict[tuple[Any, ...], tuple[FeatureGroup, pl.DataFrame]] = {}
_UNSAFE = ("Selector", "Python", "Anonymous", "Udf", "Opaque", "Window", "Over")


def _where_inputs(group: FeatureGroup, flags: dict[str, pl.Expr]) -> list[str] | None:
    """The columns the `where` flags read, when a flag of one row is a pure function of that
    row's values in them; None when that cannot be told from the expressions (wildcards,
    selectors, Python functions, windows): then every push evaluates them."""
    known = _WHERE_INPUTS.get(id(group))
    if known is None or known[0] is not group:
        roots: set[str] = set()
        safe = True
        for expr in flags.values():
            try:
                shape = expr.meta.serialize(format="json")
            except Exception:  # not serializable (a Python function): opaque
                safe = False
                break
            names = expr.meta.root_names()
            if not names or any(word in shape for word in _UNSAFE):
                safe = False
                break
            roots.update(names)
        if len(_WHERE_INPUTS) >= 1024:
            _WHERE_INPUTS.clear()
        known = _WHERE_INPUTS[id(group)] = (group, sorted(roots) if safe else None)
    return known[1]


def _where_flags(group: FeatureGroup, flags: dict[str, pl.Expr], rows: pl.DataFrame) -> pl.DataFrame:
    """The `where` flags of pushed rows. For one row they are remembered by the values of the
    columns they read (a push of one event is the common streaming case, and an eager select
    costs ~0.1 ms); the first time, and for anything else, Polars evaluates them — the same
    expressions the batch path runs, so the flags are the same."""
    exprs = [expr.fill_null(False).alias(n) for n, expr in flags.items()]
    inputs = _where_inputs(group, flags) if rows.height == 1 else None
    if inputs is None:
        return rows.select(exprs)
    columns = rows.columns
    if any(c not in columns for c in inputs):
        return rows.select(exprs)  # let Polars name the missing column
    row = rows.row(0)
    dtypes = rows.dtypes
    at = [columns.index(c) for c in inputs]
    # floats by their exact bits: -0.0 == 0.0 in Python, not always in an expression
    values = tuple(v.hex() if isinstance(v, float) else v for v in (row[i] for i in at))
    key = (id(group), tuple(dtypes[i] for i in at), values)
    try:
        found = _WHERE_MEMO.get(key)
    except TypeError:  # an unhashable value (a list column): evaluate
        return rows.select(exprs)
    if found is None or found[0] is not group:
        if len(_WHERE_MEMO) >= 4096:
            _WHERE_MEMO.clear()
        found = _WHERE_MEMO[key] = (group, rows.select(exprs))
    return found[1]


def _unique_identities(events: pl.DataFrame, keys: list[str]) -> bool:
    columns = [events.get_column(c).to_list() for c in [*keys, EVENT_ID]]
    return len(set(zip(*columns, strict=True))) == events.height


def window_values(
    group: FeatureGroup, events: pl.LazyFrame, queries: pl.LazyFrame, names: dict[str, str]
) -> pl.LazyFrame:
    """Window features for each query `(ROW, *keys, QUERY_TS)`, as `(ROW, *features)`.

    `names` maps feature names to output column names. Queries with no events get each
    feature's empty-window value (0 for counts and sums, null otherwise), then defaults.
    Computed by index ranges over the entity's sorted events (`compute/window_ranges.py`):
    linear in events plus labels, whatever the windows' lengths.
    """
    from skewless.compute.window_ranges import range_window_values

    return range_window_values(group, events, queries, names, ROW, QUERY_TS)

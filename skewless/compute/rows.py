"""Computing a group's feature rows for a time range: the single code path for every store."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from skewless.checks.schema import check_output_schema, check_rows
from skewless.errors import SkewlessError, SourceDataError, TransformationError
from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FeatureGroup


def _first_line(exc: Exception) -> str:
    """Polars appends its whole query plan to errors; the first line says what is wrong."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def compute_rows(group: FeatureGroup, start: datetime, end: datetime) -> pl.DataFrame:
    """Feature rows with event time in `[start, end)`, in the offline layout, sorted.

    The source is filtered before the transformation so a day's partition reads only that
    day (row features are per event). Sorting by keys then times makes output bytes
    deterministic across runs.
    """
    source = group.source
    frame = source.scan(start, end, provenance=group.is_windowed)
    null_times = source.count_null_event_times()
    if null_times:
        raise SourceDataError(
            f"source '{source.name}': {null_times} rows have no event time in '{source.timestamp_field}'"
        )
    return transform_rows(group, frame, start, end)


def transform_rows(group: FeatureGroup, frame: pl.LazyFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Apply a group's definition to checked source events: the batch and push paths share it."""
    source = group.source
    ts, created = source.timestamp_field, source.created_timestamp_field
    time_columns = {ts: EVENT_TIMESTAMP}
    if created:
        time_columns[created] = CREATED_TIMESTAMP
    if group.transformation is not None:
        try:
            frame = group.transformation(frame)
        except SkewlessError:
            raise
        except Exception as exc:
            raise TransformationError(
                f"feature group '{group.ref}': transformation failed: {_first_line(exc)}"
            ) from exc
        if not isinstance(frame, pl.LazyFrame):
            raise TransformationError(
                f"feature group '{group.ref}': transformation returned {type(frame).__name__}, "
                "expected a polars LazyFrame"
            )
    try:
        schema = frame.collect_schema()
    except Exception as exc:
        raise TransformationError(
            f"feature group '{group.ref}': transformation is invalid: {_first_line(exc)}"
        ) from exc
    if group.is_windowed:
        from skewless.compute.windows import event_rows

        return event_rows(group, frame, start, end)
    vector_lists: list[str] = []
    if group.vector_features:
        from skewless.checks.vectors import prepare_vectors

        frame, schema, vector_lists = prepare_vectors(group, frame, schema)
    check_output_schema(group, schema, time_columns=time_columns)
    keys = group.entity.key_columns
    columns = [*keys, *time_columns, *group.feature_names]
    try:
        result = (
            frame.select(columns)
            .rename(time_columns)
            .sort([*keys, *time_columns.values()], maintain_order=True)
            .collect()
        )
    except Exception as exc:
        raise TransformationError(
            f"feature group '{group.ref}': computing rows failed: {_first_line(exc)}"
        ) from exc
    check_rows(group, result)
    if vector_lists:
        from skewless.checks.vectors import finish_vectors

        result = finish_vectors(group, result, vector_lists)
    outside = result.filter((pl.col(EVENT_TIMESTAMP) < start) | (pl.col(EVENT_TIMESTAMP) >= end)).height
    if outside:
        raise TransformationError(
            f"feature group '{group.ref}': transformation moved {outside} rows outside their "
            f"partition's time range [{start.isoformat()}, {end.isoformat()})"
        )
    return result


def latest_per_entity(group: FeatureGroup, frame: pl.DataFrame) -> pl.DataFrame:
    """The newest row per entity by (event time, created time): what the online store holds."""
    order = [EVENT_TIMESTAMP] + ([CREATED_TIMESTAMP] if CREATED_TIMESTAMP in frame.columns else [])
    return (
        frame.sort(order, maintain_order=True)
        .unique(subset=group.entity.key_columns, keep="last", maintain_order=False)
        .sort(group.entity.key_columns)
    )

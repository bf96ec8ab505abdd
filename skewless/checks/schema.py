"""Schema checks on computed feature rows, run before anything is written.

A transformation's output is compared with the group's declared features: every join key,
the event time and each feature must be there with the declared dtype. Failing here keeps a
bad partition out of both stores and tells the user which group and column to fix.
"""

from __future__ import annotations

import polars as pl

from skewless.errors import TransformationError
from skewless.language.feature_group import FeatureGroup


def check_output_schema(group: FeatureGroup, schema: pl.Schema, *, time_columns: dict[str, str]) -> None:
    """Raise TransformationError unless `schema` carries every declared column and dtype.

    `time_columns` maps the source's time column names to the offline names, so messages
    name the column the user wrote.
    """
    where = f"feature group '{group.ref}'"
    origin = "its transformation's output" if group.transformation else f"source '{group.source.name}'"
    problems: list[str] = []
    expected: dict[str, pl.DataType] = dict(group.entity.key_schema)
    for column in time_columns:
        expected[column] = pl.Datetime("us", "UTC")
    for feature in group.features:
        expected[feature.name] = feature.polars_dtype
    for column, dtype in expected.items():
        if column not in schema:
            kind = (
                "join key"
                if column in group.entity.join_keys
                else ("timestamp column" if column in time_columns else "feature")
            )
            problems.append(f"{kind} '{column}' is missing")
        elif schema[column] != dtype:
            problems.append(f"column '{column}' has dtype {schema[column]}, declared {dtype}")
    if problems:
        raise TransformationError(
            f"{where}: {origin} does not match the declared schema: {'; '.join(problems)} "
            f"(columns present: {', '.join(schema.names())})"
        )


def check_rows(group: FeatureGroup, frame: pl.DataFrame) -> None:
    """Rows the stores cannot hold: null join keys or null event times."""
    where = f"feature group '{group.ref}'"
    for column in [*group.entity.key_columns, "event_timestamp"]:
        nulls = frame[column].null_count()
        if nulls:
            raise TransformationError(f"{where}: {nulls} rows have a null '{column}'")

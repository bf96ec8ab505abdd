"""Schema checks on computed feature rows, run before anything is written.

A transformation's output is compared with the group's declared features: every join key,
the event time and each feature must be there with the declared dtype. Failing here keeps a
bad partition out of both stores and tells the user which group and column to fix.
"""

from __future__ import annotations

import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.errors import TransformationError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup


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


def declared_violations(group: FeatureGroup, frame: pl.DataFrame) -> str | None:
    """The declared constraints (nullable, range, allowed values) of a row group's features,
    checked on rows about to be written by a push or a micro-batch; None when they hold.

    One Polars select counts the violations, so a clean push pays microseconds, not a
    pandera validation; the first failure is then described by the same pandera check the
    batch path runs, so every write path refuses the same rows with the same words.
    """
    if group.is_windowed or frame.height == 0:
        return None
    counts = []
    for feature in group.features:
        column = pl.col(feature.name)
        if not feature.nullable:
            counts.append(column.is_null().sum().alias(f"{feature.name}:not_nullable"))
        if feature.min_value is not None:
            counts.append((column < feature.min_value).sum().alias(f"{feature.name}:min"))
        if feature.max_value is not None:
            counts.append((column > feature.max_value).sum().alias(f"{feature.name}:max"))
        if feature.allowed_values is not None:
            allowed = pl.Series(list(feature.allowed_values))
            counts.append(
                (~column.is_in(allowed.implode()) & column.is_not_null()).sum().alias(f"{feature.name}:isin")
            )
    if group.vector_features:
        from skewless.checks.vectors import check_vectors

        vectors = check_vectors(group, frame)
        if vectors is not None and not vectors.passed:
            return vectors.description
    if not counts:
        return None
    found = frame.select(counts).row(0)
    if not any(found):
        return None
    return validate_schema(group, frame).description


# ---------------------------------------------------------------------- pandera schema check
def declared_schema(group: FeatureGroup):  # -> pandera.polars.DataFrameSchema (imported lazily)
    """The group's declared schema as a pandera (Polars backend) schema.

    Join keys and the event time may never be null; features carry their declared dtype,
    nullability, inclusive range and allowed values. Window groups store events, so their
    aggregated input columns are checked for dtype only.
    """
    import pandera.polars as pa

    columns: dict[str, pa.Column] = {}
    for name, dtype in group.offline_schema().items():
        columns[name] = pa.Column(
            dtype, nullable=name not in group.entity.key_schema and name != EVENT_TIMESTAMP
        )
    if not group.is_windowed:
        for feature in group.features:
            checks = []
            if feature.min_value is not None or feature.max_value is not None:
                if feature.min_value is not None and feature.max_value is not None:
                    checks.append(pa.Check.in_range(feature.min_value, feature.max_value))
                elif feature.min_value is not None:
                    checks.append(pa.Check.ge(feature.min_value))
                else:
                    checks.append(pa.Check.le(feature.max_value))
            if feature.allowed_values is not None:
                checks.append(pa.Check.isin(list(feature.allowed_values)))
            columns[feature.name] = pa.Column(feature.polars_dtype, nullable=feature.nullable, checks=checks)
    return pa.DataFrameSchema(columns, strict=False, name=group.ref)


_SCHEMAS: dict[tuple[str, int], object] = {}  # by (ref, id): groups hold dicts, so are unhashable


def validate_schema(group: FeatureGroup, frame: pl.DataFrame) -> CheckOutcome:
    """Every row against the declared schema; the outcome says which columns and rows failed."""
    import pandera.errors

    key = (group.ref, id(group))
    schema = _SCHEMAS.get(key)
    if schema is None:
        schema = _SCHEMAS.setdefault(key, declared_schema(group))
    try:
        schema.validate(frame, lazy=True)  # type: ignore[attr-defined]
    except pandera.errors.SchemaErrors as exc:
        failures = _failure_table(group, frame, exc.failure_cases)
        total = int(failures["failing_rows"].sum())
        described = "; ".join(
            f"{r['column']}: {r['check']} ({r['failing_rows']} rows, e.g. {r['examples']})"
            for r in failures.head(5).iter_rows(named=True)
        )
        return CheckOutcome(
            "schema",
            passed=False,
            description=f"{group.ref}: {total} schema violations in {frame.height} rows: {described}",
            tables={"failures": failures},
            values={"rows_checked": frame.height, "violations": total},
        )
    return CheckOutcome(
        "schema",
        passed=True,
        description=f"{group.ref}: {frame.height} rows match the declared schema",
        values={"rows_checked": frame.height, "violations": 0, "columns_checked": len(schema.columns)},  # type: ignore[attr-defined]
    )


def _failure_table(group: FeatureGroup, frame: pl.DataFrame, cases: pl.DataFrame) -> pl.DataFrame:
    """One row per (column, check): how many rows fail, example values, and the first rows' keys."""
    keys = [*group.entity.key_columns, EVENT_TIMESTAMP]
    located = frame.select(keys).with_row_index("index").with_columns(pl.col("index").cast(pl.Int32))
    cases = cases.join(located, on="index", how="left").with_columns(pl.col("failure_case").fill_null("null"))
    label = pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=" @ ", ignore_nulls=True)
    return (
        cases.with_columns(label.alias("row"))
        .group_by("column", "check", maintain_order=True)
        .agg(
            pl.len().alias("failing_rows"),
            pl.col("failure_case").unique(maintain_order=True).head(5).str.join(", ").alias("examples"),
            pl.col("row").drop_nulls().head(3).str.join("; ").alias("first_rows"),
        )
        .with_columns(pl.col("failing_rows").cast(pl.Int64))
    )

"""The checks a group's new partitions must pass before anything is written.

Schema (pandera), expectations (Great Expectations, when declared) and drift (when declared)
run on the computed rows of every day of a run. An ERROR outcome blocks the whole run: no
partition file is replaced and the online asset downstream never runs.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Protocol

import polars as pl

from skewless.checks.drift import drift_outcome
from skewless.checks.expectations import run_expectations
from skewless.checks.outcome import CheckOutcome
from skewless.checks.schema import validate_schema
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup

DAY = "__day"


class DriftReferences(Protocol):
    """What the drift check reads besides the new rows; the offline store provides it.
    Checks sit below the stores, so they name what they need instead of importing one."""

    def scan(self, group: FeatureGroup, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """The stored partitions of `group` in a day range (an empty frame if none)."""
        ...

    def read_training_set(self, service: str, version: int) -> pl.DataFrame | None:
        """A service version's materialized training set; None if it was never built."""
        ...


def partition_check_names(group: FeatureGroup) -> list[str]:
    """The checks a group's offline asset declares (and always reports)."""
    names = ["schema"]
    if group.vector_features:
        names.append("vectors")
    if group.all_expectations():
        names.append("expectations")
    if group.drift is not None:
        names.append("drift")
    return names


def check_partitions(
    group: FeatureGroup, rows: pl.DataFrame, days: list[date], store: DriftReferences
) -> list[CheckOutcome]:
    from skewless.checks.vectors import check_vectors

    outcomes = [validate_schema(group, rows)]
    vectors = check_vectors(group, rows)
    if vectors is not None:
        outcomes.append(vectors)
    expectations = run_expectations(group, rows)
    if expectations is not None:
        outcomes.append(expectations)
    if group.drift is not None:
        outcomes.append(check_drift(group, rows, days, store))
    return outcomes


def drift_columns(group: FeatureGroup) -> dict[str, pl.DataType]:
    if group.is_windowed:
        return group.input_columns()
    # embeddings have no univariate distribution to bin; the index asset scores their drift
    return {f.name: f.polars_dtype for f in group.features if f.vector is None}


def check_drift(
    group: FeatureGroup, rows: pl.DataFrame, days: list[date], store: DriftReferences
) -> CheckOutcome:
    """Each day of the run against its reference; the run's outcome is its worst day's."""
    policy = group.drift
    assert policy is not None
    columns = drift_columns(group)
    if policy.reference_service is not None:
        reference, label = _service_reference(group, store, policy.reference_service, columns)
        columns = {c: columns[c] for c in reference.columns}
        fixed: pl.DataFrame | None = reference
    else:
        fixed, label = None, f"the previous {policy.span.days} days"
        span_days = max(1, policy.span.days)
        before = store.scan(group, days[0] - timedelta(days=span_days), days[0] - timedelta(days=1))
        history = pl.concat(
            [before.select(EVENT_TIMESTAMP, *columns).collect(), rows.select(EVENT_TIMESTAMP, *columns)]
        ).with_columns(pl.col(EVENT_TIMESTAMP).dt.date().alias(DAY))
    outcomes: list[tuple[date, CheckOutcome]] = []
    by_day = rows.with_columns(pl.col(EVENT_TIMESTAMP).dt.date().alias(DAY))
    for day in days:
        current = by_day.filter(pl.col(DAY) == day)
        if fixed is None:
            reference = history.filter(
                (pl.col(DAY) < day) & (pl.col(DAY) >= day - timedelta(days=max(1, policy.span.days)))
            )
        else:
            reference = fixed
        outcomes.append(
            (
                day,
                drift_outcome(
                    f"{group.ref} {day}", policy, reference, current, columns, reference_label=label
                ),
            )
        )
    rank = {"ok": 0, "warn": 1, "error": 2}

    def severity(outcome: CheckOutcome) -> int:
        return 0 if outcome.passed else (2 if outcome.severity == "ERROR" else 1)

    day, worst = max(outcomes, key=lambda pair: (severity(pair[1]), pair[1].values.get("max_psi", 0.0)))
    tables = [
        o.tables["scores"].with_columns(pl.lit(d.isoformat()).alias("day"))
        for d, o in outcomes
        if "scores" in o.tables
    ]
    scores = (
        pl.concat(tables).sort(
            pl.col("status").replace_strict(rank, return_dtype=pl.Int8), "psi", descending=True
        )
        if tables
        else pl.DataFrame()
    )
    scored = sum(1 for _, o in outcomes if "scores" in o.tables)
    return CheckOutcome(
        "drift",
        passed=worst.passed,
        severity=worst.severity,
        description=(
            worst.description
            if len(days) == 1
            else f"{len(days)} days, {scored} scored; worst {worst.description}"
        ),
        tables={"scores": scores} if scores.height else {},
        values=worst.values | {"days_scored": scored},
    )


def _service_reference(
    group: FeatureGroup, store: DriftReferences, service_ref: str, columns: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, str]:
    name, _, version = service_ref.partition(":v")
    training = store.read_training_set(name, int(version or 1))
    label = f"the training set of {service_ref}"
    if training is None:
        return pl.DataFrame(schema=columns), f"{label} (not materialized yet)"
    available = training.schema
    picks = []
    for column in columns:
        for candidate in (column, f"{group.name}__v{group.version}__{column}"):
            if candidate in available:
                picks.append(pl.col(candidate).alias(column))
                break
    # only the features the service pins can be compared; the others are left out
    return training.select(picks), label

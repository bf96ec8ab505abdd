"""Great Expectations suites declared on groups and features, run on each partition.

Great Expectations takes seconds to import, so it is imported on the first group that
declares expectations, and one ephemeral data context is kept per process. It validates
pandas frames; only the columns the suite names are converted (at the edge, per the
Polars-first rule).
"""

from __future__ import annotations

import threading
from typing import Any

import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.errors import DefinitionError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.quality import Expectation

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _batch_definition() -> Any:
    with _LOCK:
        if "batch" not in _STATE:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            source = context.data_sources.add_pandas("skewless")
            asset = source.add_dataframe_asset("partition")
            _STATE["batch"] = asset.add_batch_definition_whole_dataframe("whole")
            _STATE["suites"] = {}
        return _STATE["batch"]


def _suite(group: FeatureGroup, expectations: list[Expectation]) -> Any:
    import great_expectations as gx

    suites: dict[tuple[str, int], Any] = _STATE["suites"]
    key = (group.ref, id(group))  # groups hold dicts (tags), so they are not hashable
    if key in suites:
        return suites[key]
    suite = gx.ExpectationSuite(name=f"{group.name}_v{group.version}")
    for expectation in expectations:
        cls = getattr(gx.expectations, expectation.class_name, None)
        if cls is None:
            raise DefinitionError(
                f"feature group '{group.ref}': Great Expectations has no expectation "
                f"'{expectation.type}' (class {expectation.class_name})"
            )
        kwargs = dict(expectation.kwargs)
        if expectation.column is not None:
            kwargs["column"] = expectation.column
        try:
            suite.add_expectation(cls(**kwargs))
        except Exception as exc:  # pydantic validation of the expectation's arguments
            raise DefinitionError(
                f"feature group '{group.ref}': expectation {expectation.describe()} is invalid: "
                f"{str(exc).splitlines()[0]}"
            ) from None
    suites[key] = suite
    return suite


def run_expectations(group: FeatureGroup, frame: pl.DataFrame) -> CheckOutcome | None:
    """The group's suite on each day (partition) of `frame`; None when none is declared."""
    expectations = group.all_expectations()
    if not expectations:
        return None
    batch_definition = _batch_definition()
    suite = _suite(group, expectations)
    columns = sorted({e.column for e in expectations if e.column} & set(frame.columns))
    days = frame.select(columns or frame.columns).with_columns(
        frame[EVENT_TIMESTAMP].dt.date().alias("__day")
    )
    rows: list[dict[str, Any]] = []
    for (day,), part in days.partition_by("__day", as_dict=True, maintain_order=True).items():
        data = part.drop("__day").to_pandas()
        result = batch_definition.get_batch(batch_parameters={"dataframe": data}).validate(suite)
        rows += _result_rows(result, day.isoformat())
    table = pl.DataFrame(rows, schema=RESULT_SCHEMA)
    return _outcome(group, frame, table)


RESULT_SCHEMA = {
    "day": pl.String,
    "expectation": pl.String,
    "column": pl.String,
    "success": pl.Boolean,
    "observed": pl.String,
    "unexpected_count": pl.Int64,
    "unexpected_percent": pl.Float64,
    "examples": pl.String,
    "error": pl.String,
}


def _result_rows(result: Any, day: str) -> list[dict[str, Any]]:
    rows = []
    for item in result.results:
        config = item.expectation_config
        details = item.result or {}
        observed = details.get("observed_value")
        rows.append(
            {
                "day": day,
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "success": bool(item.success),
                "observed": None if observed is None else str(observed),
                "unexpected_count": details.get("unexpected_count"),
                "unexpected_percent": details.get("unexpected_percent"),
                "examples": ", ".join(map(str, (details.get("partial_unexpected_list") or [])[:5])) or None,
                "error": (item.exception_info or {}).get("exception_message") if not item.success else None,
            }
        )
    return rows


def _outcome(group: FeatureGroup, frame: pl.DataFrame, table: pl.DataFrame) -> CheckOutcome:
    failed = table.filter(~pl.col("success"))
    values = {"expectations": table.height, "failed": failed.height, "rows_checked": frame.height}
    if failed.height:
        described = "; ".join(
            f"{r['day']} {r['expectation']}({r['column'] or ''}) observed "
            f"{r['observed'] or r['unexpected_count']}"
            for r in failed.head(5).iter_rows(named=True)
        )
        return CheckOutcome(
            "expectations",
            passed=False,
            description=f"{group.ref}: {failed.height} of {table.height} expectations failed: {described}",
            tables={"results": failed.vstack(table.filter(pl.col("success")))},
            values=values,
        )
    return CheckOutcome(
        "expectations",
        passed=True,
        description=f"{group.ref}: all {table.height} expectations met on {frame.height} rows",
        tables={"results": table},
        values=values,
    )

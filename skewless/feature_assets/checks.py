"""Data-quality checks as Dagster asset checks, shown next to the asset they guard.

Partition checks (schema, expectations, drift) are declared on the offline asset and
evaluated inside it, before any file is written, so a failure blocks the write itself as
well as everything downstream (`blocking=True`). Online checks (freshness, agreement with
the offline store) are declared on the online asset and evaluated inside it right after the
write. Between runs, the assets' `FreshnessPolicy` (evaluated by Dagster's daemon) says
when a group version has not been refreshed in time.
"""

from typing import Any

import dagster as dg
import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.language.feature_group import FeatureGroup
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource

DESCRIPTIONS = {
    "schema": "Declared dtypes, nullability, ranges and allowed values (pandera); blocks the write",
    "vectors": "Vector features: finite values, unit norm when declared normalized; blocks the write",
    "expectations": "The group's Great Expectations suite; blocks the write",
    "drift": (
        "PSI / KS of each new partition against the reference; above the error threshold blocks the write"
    ),
}

MAX_TABLE_ROWS = 40


def markdown_table(frame: pl.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    for row in frame.head(max_rows).iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    if frame.height > max_rows:
        lines.append(f"\n{frame.height - max_rows} more rows not shown")
    return "\n".join(lines)


def check_metadata(outcome: CheckOutcome) -> dict[str, Any]:
    metadata: dict[str, Any] = {"summary": outcome.description}
    for key, value in outcome.values.items():
        metadata[key] = value if isinstance(value, int | float | str | bool) else str(value)
    for name, table in outcome.tables.items():
        metadata[name] = dg.MetadataValue.md(markdown_table(table))
    return metadata


def to_check_result(outcome: CheckOutcome, asset_key: dg.AssetKey | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        asset_key=asset_key,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata=check_metadata(outcome),
    )


def partition_check_specs(group: FeatureGroup, asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    from skewless.checks.partition import partition_check_names

    return [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=DESCRIPTIONS[name])
        for name in partition_check_names(group)
    ]


def feature_store(repo: FeatureRepository, offline: OfflineStoreResource, online: OnlineStoreResource) -> Any:
    """A client over the run's resources (sharing the online resource's connection)."""
    from skewless.client.feature_store import FeatureStore
    from skewless.config import StoreConfig

    config = StoreConfig(offline.root, online.redis_url, online.state_dir, online.key_prefix)
    return FeatureStore(repo, config, offline=offline.store(), online=online.store())


def online_check_specs(group: FeatureGroup, asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "online_freshness",
            asset=asset_key,
            description=f"Age of the newest value in Redis for {group.ref}, limit {group.freshness_limit}",
        ),
        dg.AssetCheckSpec(
            "online_offline_agreement",
            asset=asset_key,
            blocking=True,
            description=(
                "A sample of entities read from Redis and from the offline store (point in time, now) "
                f"must give identical values for {group.ref}"
            ),
        ),
    ]

"""Metadata shared by the feature assets: what the Dagster UI shows about a group version."""

from __future__ import annotations

import dagster as dg
import polars as pl

from skewless.language.durations import format_duration
from skewless.language.feature_group import FeatureGroup


def column_schema(group: FeatureGroup) -> dg.TableSchema:
    descriptions = {f.name: f.description for f in group.features}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=str(dtype), description=descriptions.get(name) or None)
            for name, dtype in group.offline_schema().items()
        ]
    )


def online_column_schema(group: FeatureGroup) -> dg.TableSchema:
    """What a lookup returns for this version: join keys, then every feature (with defaults)."""
    columns = [dg.TableColumn(name=k, type=str(v)) for k, v in group.entity.key_schema.items()]
    for feature in group.features:
        default = "" if feature.default is None else f" (default {feature.default!r})"
        columns.append(
            dg.TableColumn(
                name=feature.name,
                type=str(feature.dtype),
                description=(feature.description + default).strip() or None,
                constraints=dg.TableColumnConstraints(nullable=feature.default is None),
            )
        )
    return dg.TableSchema(columns=columns)


def definition_metadata(group: FeatureGroup) -> dict[str, object]:
    """Static metadata, known without running anything."""
    return {
        "dagster/column_schema": column_schema(group),
        "entity": group.entity.name,
        "join_keys": ", ".join(group.entity.key_columns),
        "version": group.version,
        "ttl": format_duration(group.time_to_live) or "none",
        "source": group.source.name,
    }


def partitions_table(rows: pl.DataFrame) -> dg.MarkdownMetadataValue:
    """A small Markdown table of rows per partition for the materialization page."""
    lines = ["| partition | rows |", "|---|---|"]
    for day, count in rows.iter_rows():
        lines.append(f"| {day} | {count} |")
    return dg.MetadataValue.md("\n".join(lines))


def value_columns(group: FeatureGroup) -> list[str]:
    """The stored columns whose null rate is worth watching: features (row groups) or the
    aggregated input columns (window groups, whose partitions hold events)."""
    if group.is_windowed:
        return list(group.input_columns())
    return [f.name for f in group.features]


def partition_stats(group: FeatureGroup, rows: pl.DataFrame) -> dict[str, object]:
    """One partition's own figures: rows, distinct entities and each value column's null rate.

    Attached per partition (`context.add_asset_metadata(..., partition_key=day)`), because a
    single-run backfill otherwise gives every partition the whole run's figures and Dagster's
    per-partition plots go flat. Floats, so the UI plots them over partitions.
    """
    keys = group.entity.key_columns
    stats: dict[str, object] = {
        "dagster/row_count": rows.height,
        "entities": rows.select(keys).n_unique() if rows.height else 0,
    }
    columns = [c for c in value_columns(group) if c in rows.columns]
    if rows.height and columns:
        nulls = rows.select(pl.col(columns).null_count()).row(0)
        stats.update({f"null_rate/{c}": n / rows.height for c, n in zip(columns, nulls, strict=True)})
    else:
        stats.update({f"null_rate/{c}": 0.0 for c in columns})
    return stats


def asset_tags(group: FeatureGroup, store: str) -> dict[str, str]:
    """The group's own tags plus what the asset is: group, version, store (offline/online)."""
    assert isinstance(group.tags, dict)
    return {
        **group.tags,
        "skewless/group": group.name,
        "skewless/version": f"v{group.version}",
        "skewless/store": store,
    }


def code_version(group: FeatureGroup) -> str:
    """Dagster's code version of both assets of a group version: its fingerprint (what decides
    its values), so the UI flags partitions materialized by other code."""
    from skewless.registry.fingerprint import fingerprint

    return fingerprint(group)


def freshness_policy(group: FeatureGroup) -> dg.FreshnessPolicy:
    """Fail when the asset has not been updated within the group's freshness limit; warn at 80%."""
    limit = group.freshness_limit
    return dg.FreshnessPolicy.time_window(fail_window=limit, warn_window=limit * 0.8)

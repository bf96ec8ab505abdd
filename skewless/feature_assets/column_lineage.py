"""Column lineage (`dagster/column_lineage`) of the offline, online and training-set assets.

Offline columns come from source columns: by name without a transformation, from the
aggregated columns for window groups, and, through a transformation, from a probe that runs
it on two rows and nulls one source column at a time. Online columns come from the same
offline columns; training-set columns from the features of the versions the service pins.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from skewless.asset_keys import source_key
from skewless.language.aggregation import windowed_features
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.feature_service import FeatureService
from skewless.repository import FeatureRepository


def _probe_frame(schema: pl.Schema) -> pl.DataFrame:
    """Two rows of plain non-null values per dtype: enough to run a transformation."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    columns = []
    for name, dtype in schema.items():
        if dtype == pl.String:
            values: list = ["a", "b"]
        elif dtype == pl.Boolean:
            values = [True, False]
        elif isinstance(dtype, pl.Datetime):
            values = [now, now]
        elif dtype == pl.Date:
            values = [now.date(), now.date()]
        elif dtype.is_numeric():
            values = [1, 2]
        else:
            return pl.DataFrame()
        columns.append(pl.Series(name, values).cast(dtype))
    return pl.DataFrame(columns)


def transformation_lineage(group: FeatureGroup, source_schema: pl.Schema) -> dict[str, list[str]]:
    """Output feature -> source columns it reads, found by running the transformation on two
    probe rows and nulling one source column at a time: a feature that turns null depends on
    it. A heuristic (a column used only in a filter is not seen); empty when it cannot run."""
    probe = _probe_frame(source_schema)
    if probe.is_empty() or group.transformation is None:
        return {}
    try:
        base = group.transformation(probe.lazy()).collect()
    except Exception:
        return {}
    features = [f for f in group.feature_names if f in base.columns and base[f].null_count() == 0]
    if base.height == 0:
        return {}
    lineage: dict[str, list[str]] = {f: [] for f in features}
    for column in source_schema.names():
        try:
            out = group.transformation(
                probe.with_columns(pl.lit(None, dtype=source_schema[column]).alias(column)).lazy()
            ).collect()
        except Exception:
            continue
        if out.height != base.height:
            continue
        for feature in features:
            if feature in out.columns and out[feature].null_count() == out.height:
                lineage[feature].append(column)
    return lineage


def offline_column_lineage(group: FeatureGroup, source_schema: pl.Schema | None) -> dg.TableColumnLineage:
    source = source_key(group.source)
    deps: dict[str, list[dg.TableColumnDep]] = {}
    for key in group.entity.key_columns:
        deps[key] = [dg.TableColumnDep(asset_key=source, column_name=key)]
    deps[EVENT_TIMESTAMP] = [dg.TableColumnDep(asset_key=source, column_name=group.source.timestamp_field)]
    if group.is_windowed:
        for column in group.input_columns():
            deps[column] = [dg.TableColumnDep(asset_key=source, column_name=column)]
    elif group.transformation is None:
        for feature in group.feature_names:
            deps[feature] = [dg.TableColumnDep(asset_key=source, column_name=feature)]
    elif source_schema is not None:
        for feature, columns in transformation_lineage(group, source_schema).items():
            if columns:
                deps[feature] = [dg.TableColumnDep(asset_key=source, column_name=c) for c in columns]
    return dg.TableColumnLineage(deps_by_column=deps)


def online_column_lineage(group: FeatureGroup, upstream: dg.AssetKey) -> dg.TableColumnLineage:
    deps = {k: [dg.TableColumnDep(asset_key=upstream, column_name=k)] for k in group.entity.key_columns}
    if group.is_windowed:
        # a window feature is computed from its aggregated column (a count from event times)
        for agg, _window, name in windowed_features(group.aggregations):
            column = agg.column or EVENT_TIMESTAMP
            deps[name] = [dg.TableColumnDep(asset_key=upstream, column_name=column)]
    else:
        for feature in group.feature_names:
            deps[feature] = [dg.TableColumnDep(asset_key=upstream, column_name=feature)]
    return dg.TableColumnLineage(deps_by_column=deps)


def training_set_column_lineage(
    repo: FeatureRepository, service: FeatureService, names: dict, key_of: object
) -> dg.TableColumnLineage:
    """`key_of(group)` gives a group version's offline asset key."""
    deps: dict[str, list[dg.TableColumnDep]] = {}
    for ref in service.refs:
        group, features = repo.resolve(ref)
        for feature in features:
            output = names.get((group.name, group.version, feature), feature)
            deps[output] = [dg.TableColumnDep(asset_key=key_of(group), column_name=feature)]  # type: ignore[operator]
    return dg.TableColumnLineage(deps_by_column=deps)

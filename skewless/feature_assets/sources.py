"""Sources as external assets: the roots of the lineage graph."""

from __future__ import annotations

import dagster as dg

from skewless.language.source import FileSource


def source_key(source: FileSource) -> dg.AssetKey:
    return dg.AssetKey(["sources", source.name])


def source_spec(source: FileSource) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=source_key(source),
        description=source.description or f"Parquet events at {source.path}",
        group_name="sources",
        kinds={"parquet"},
        owners=[source.owner] if source.owner else [],
        metadata={
            "path": dg.MetadataValue.path(str(source.path)),
            "timestamp_field": source.timestamp_field,
            "created_timestamp_field": source.created_timestamp_field or "",
        },
    )

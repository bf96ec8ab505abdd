"""Sources as external assets: the roots of the lineage graph."""

from __future__ import annotations

import dagster as dg

from skewless.asset_keys import source_key
from skewless.language.source import Source


def source_spec(source: Source) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=source_key(source),
        description=source.description or f"Events at {source.location()}",
        group_name="sources",
        kinds={source.kind},
        owners=[source.owner] if source.owner else [],
        tags={"skewless/source": source.name},
        metadata={
            "location": source.location(),
            "timestamp_field": source.timestamp_field,
            "created_timestamp_field": source.created_timestamp_field or "",
        },
    )

"""An asset that publishes the offline store as DuckDB views, through dagster-duckdb.

The views live in a DuckDB database file (the `duckdb` resource), so anyone can open it —
`duckdb .skewless/offline.duckdb` — and query every group version with SQL. Views glob the
partition folders, so they stay current; re-materialize after adding a group version.
"""

import dagster as dg
from dagster import AssetExecutionContext
from dagster_duckdb import DuckDBResource

from skewless.asset_keys import offline_key, sql_views_key
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource


def build_sql_views_asset(repo: FeatureRepository) -> dg.AssetsDefinition:
    @dg.asset(
        key=sql_views_key(),
        deps=[offline_key(g) for g in repo.groups],
        group_name="sql",
        description="DuckDB views over the offline store: <group>_v<N> per version, <group> for the latest",
        kinds={"duckdb"},
        tags={"skewless/kind": "sql"},
    )
    def _views(
        context: AssetExecutionContext, duckdb: DuckDBResource, offline: OfflineStoreResource
    ) -> dg.MaterializeResult:
        from pathlib import Path

        from skewless.storage.sql import create_views

        Path(duckdb.database).parent.mkdir(parents=True, exist_ok=True)
        with duckdb.get_connection() as conn:
            names = create_views(conn, repo.groups, offline.store(), persistent=True)
        context.log.info(f"views: {', '.join(names)}")
        return dg.MaterializeResult(
            metadata={"views": ", ".join(names), "database": dg.MetadataValue.path(duckdb.database)}
        )

    return _views

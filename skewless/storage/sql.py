"""SQL over the offline store with DuckDB: one view per group version.

Views read the partition folders through a glob with Hive partitioning, so they stay current
as partitions are written (and `WHERE date >= ...` prunes files). `<group>_v<N>` names a
version; `<group>` names its highest version. A group version with no partition yet gets an
empty view of the declared schema, so queries against it work rather than fail.

When stream micro-batches have added pieces next to the partitions (see storage/offline.py),
the view reads them too and deduplicates like the Polars readers: window groups one row per
(day, keys, event id), the partition's before any piece's, pieces in name order; row groups
identical rows once. Views are created per query, so they see the pieces of that moment.

On object storage DuckDB would need its httpfs extension, which it downloads from
extensions.duckdb.org at first use (not from a package registry, so not installable offline
or pinned by our lock). There the data reaches DuckDB through Arrow instead: a group
version without pieces as a lazy `pyarrow.dataset` over its S3 files (DuckDB scans it with
projection and filter pushdown, the Hive `date` column from the folder names), one with
pieces as the merged Polars scan the other readers use. Those are registered on the
connection; `persistent=True` (the `sql/offline_views` asset, whose database file outlives
the connection) stores each as a table instead, a snapshot as of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from skewless.language.feature_group import EVENT_ID, EVENT_TIMESTAMP, FeatureGroup
from skewless.storage import offline_layout as layout
from skewless.storage.offline import OfflineStore, S3OfflineStore

_DUCKDB_TYPES = {
    pl.Int8: "TINYINT",
    pl.Int16: "SMALLINT",
    pl.Int32: "INTEGER",
    pl.Int64: "BIGINT",
    pl.UInt8: "UTINYINT",
    pl.UInt16: "USMALLINT",
    pl.UInt32: "UINTEGER",
    pl.UInt64: "UBIGINT",
    pl.Float32: "FLOAT",
    pl.Float64: "DOUBLE",
    pl.Boolean: "BOOLEAN",
    pl.String: "VARCHAR",
    pl.Date: "DATE",
}


def duckdb_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ"
    if isinstance(dtype, pl.Array):
        return f"{duckdb_type(dtype.inner)}[{dtype.size}]"
    return _DUCKDB_TYPES[type(dtype)]


def view_name(group: FeatureGroup) -> str:
    return f"{group.name}_v{group.version}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(offline: OfflineStore, group: FeatureGroup) -> str:
    """A view's SELECT over a local store's files (DuckDB reads the folders itself)."""
    if offline.has_pieces(group):
        pattern = _quote(str(offline.location(layout.files_glob(group.name, group.version))))
        if not group.is_windowed:
            return f"SELECT DISTINCT * FROM read_parquet({pattern}, hive_partitioning = true)"
        by = ", ".join(f'"{c}"' for c in ["date", *group.entity.key_columns, EVENT_ID])
        # within a day folder 'data.parquet' sorts before every 'piece-*': partition first
        return (
            f"SELECT * EXCLUDE (filename) FROM read_parquet({pattern}, hive_partitioning = true, "
            f"filename = true) QUALIFY row_number() OVER (PARTITION BY {by} ORDER BY filename) = 1"
        )
    if offline.partitions(group):
        pattern = str(offline.location(layout.partitions_glob(group.name, group.version)))
        return f"SELECT * FROM read_parquet({_quote(pattern)}, hive_partitioning = true)"
    columns = ", ".join(
        f'CAST(NULL AS {duckdb_type(dtype)}) AS "{name}"' for name, dtype in group.offline_schema().items()
    )
    return f"SELECT {columns}, CAST(NULL AS DATE) AS date WHERE false"


def _arrow_relation(offline: OfflineStore, group: FeatureGroup, pii: bool = False) -> Any:
    """A group version's rows as an Arrow object DuckDB can scan (object storage, and groups
    with pii features on any store: DuckDB cannot read their encrypted files, so they are
    decrypted here). `pii`: keep the pii columns (an in-memory view for a reader allowed
    them); otherwise they are left out."""
    if group.pii_features:
        merged = offline.scan(group)
        if not pii:
            merged = merged.drop(list(group.pii_features))
        return merged.with_columns(pl.col(EVENT_TIMESTAMP).dt.date().alias("date")).collect().to_arrow()
    if offline.has_pieces(group):
        # merged and deduplicated like every Polars reader; the day from the event time
        # (a partition holds exactly its UTC day)
        merged = offline.scan(group).with_columns(pl.col(EVENT_TIMESTAMP).dt.date().alias("date"))
        return merged.collect().to_arrow()
    assert isinstance(offline, S3OfflineStore)
    return offline.arrow_dataset(offline.files(group), group)


def _drop_other(conn: Any, name: str, kind: str) -> None:
    """Drop `name` if it exists as `kind` (a database file that switched backends holds a
    table where a view now goes, or the reverse: CREATE OR REPLACE cannot change the kind)."""
    found = conn.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    if found and found[0][0] == kind:
        conn.execute(f'DROP {"VIEW" if kind == "VIEW" else "TABLE"} "{name}"')


def create_views(
    conn: Any,
    groups: Sequence[FeatureGroup],
    offline: OfflineStore,
    persistent: bool = False,
    pii: bool = False,
) -> list[str]:
    """(Re)create the views of `groups` (a repository's) on a DuckDB connection; returns
    their names. `pii`: views keep the groups' pii columns, decrypted in memory (a caller
    allowed to read them); never with `persistent`, whose tables are a DuckDB file at rest."""
    conn.execute("SET TimeZone = 'UTC'")
    names = []
    latest: dict[str, FeatureGroup] = {}
    for group in groups:
        if (isinstance(offline, S3OfflineStore) or group.pii_features) and offline.partitions(group):
            relation = _arrow_relation(offline, group, pii and not persistent)
            source = f"__skewless_arrow_{view_name(group)}"
            conn.register(source, relation)
            if persistent:
                _drop_other(conn, view_name(group), "VIEW")
                conn.execute(f'CREATE OR REPLACE TABLE "{view_name(group)}" AS SELECT * FROM "{source}"')
                conn.unregister(source)
            else:
                conn.execute(f'CREATE OR REPLACE VIEW "{view_name(group)}" AS SELECT * FROM "{source}"')
        else:
            if persistent:
                _drop_other(conn, view_name(group), "BASE TABLE")
            conn.execute(f'CREATE OR REPLACE VIEW "{view_name(group)}" AS {view_sql(offline, group)}')
        names.append(view_name(group))
        if group.name not in latest or group.version > latest[group.name].version:
            latest[group.name] = group
    for name, group in latest.items():
        conn.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "{view_name(group)}"')
        names.append(name)
    return names

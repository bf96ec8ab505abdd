"""The one owner of the Dagster asset key scheme.

Every asset key skewless creates or looks up is built here, and every key read back from an
asset graph is parsed here, so the scheme can change in one place.

Scheme: `<layer>/<name>`, two components. The layer (`sources`, `features`, `online`,
`training_sets`, `services`, `models`, `served`, `indexes`, `sql`, `registry`, `lifecycle`)
groups the catalog and
selects by prefix (`AssetSelection.key_prefixes(["features"])`); the name is what the asset
graph labels a node with, so it says what the asset is on its own: versioned assets end in
`_v<N>_<what>` — `features/user_last_txn_v2_offline`, `online/user_last_txn_v2_online`,
`training_sets/fraud_model_v1_training_set`, `services/fraud_model_v1_service`,
`served/fraud_model_v1_served_log`, `indexes/item_embeddings_v2_index` — while sources and
models keep their own names.

`*_path` functions return plain `list[str]` (no Dagster import: the client and the serving
path must not pay for importing Dagster); `*_key` functions make the `dagster.AssetKey`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skewless.language.feature_group import FeatureGroup
    from skewless.language.feature_service import FeatureService
    from skewless.language.source import Source

SOURCES = "sources"
OFFLINE = "features"
ONLINE = "online"
TRAINING_SETS = "training_sets"
SERVICES = "services"
MODELS = "models"
SERVED = "served"
SQL = "sql"
REGISTRY = "registry"
INDEXES = "indexes"
LIFECYCLE = "lifecycle"

# the name (last path component, what the asset graph labels a node with) ends with what the
# asset is, so `user_last_txn_v2_offline` and `user_last_txn_v2_online` never look alike
SUFFIXES = {
    OFFLINE: "offline",
    ONLINE: "online",
    TRAINING_SETS: "training_set",
    SERVICES: "service",
    SERVED: "served_log",
    INDEXES: "index",
}
_VERSIONED = re.compile(r"^(?P<name>.+)_v(?P<version>[0-9]+)_(?P<suffix>[a-z_]+)$")

SQL_VIEWS = [SQL, "offline_views"]
REGISTRY_SNAPSHOT = [REGISTRY, "snapshot"]
OFFLINE_RETENTION = [LIFECYCLE, "offline_retention"]
AUDIT_LOG = [LIFECYCLE, "audit_log"]


def _versioned(layer: str, name: str, version: int) -> list[str]:
    return [layer, f"{name}_v{version}_{SUFFIXES[layer]}"]


def source_path(source: Source | str) -> list[str]:
    return [SOURCES, source if isinstance(source, str) else source.name]


def offline_path(group: FeatureGroup) -> list[str]:
    """`features/<group>_v<N>_offline`: the daily Parquet partitions of a group version."""
    return _versioned(OFFLINE, group.name, group.version)


def online_path(group: FeatureGroup) -> list[str]:
    """`online/<group>_v<N>_online`: the latest values of a group version in Redis."""
    return _versioned(ONLINE, group.name, group.version)


def index_path(group: FeatureGroup) -> list[str]:
    """`indexes/<group>_v<N>_index`: the vector index over a group version's latest embeddings."""
    return _versioned(INDEXES, group.name, group.version)


def training_set_path(service: FeatureService) -> list[str]:
    return _versioned(TRAINING_SETS, service.name, service.version)


def service_path(service: FeatureService) -> list[str]:
    return _versioned(SERVICES, service.name, service.version)


def served_path(service: FeatureService) -> list[str]:
    return _versioned(SERVED, service.name, service.version)


def model_path(model: str) -> list[str]:
    return [MODELS, model]


def user_string(path: list[str]) -> str:
    """How Dagster prints a key (`features/g_v1_offline`), for messages and CLI commands."""
    return "/".join(path)


def key(path: list[str]) -> Any:
    """The `dagster.AssetKey` of a path (imports Dagster)."""
    import dagster as dg

    return dg.AssetKey(path)


def source_key(source: Source | str) -> Any:
    return key(source_path(source))


def offline_key(group: FeatureGroup) -> Any:
    return key(offline_path(group))


def online_key(group: FeatureGroup) -> Any:
    return key(online_path(group))


def index_key(group: FeatureGroup) -> Any:
    return key(index_path(group))


def training_set_key(service: FeatureService) -> Any:
    return key(training_set_path(service))


def service_key(service: FeatureService) -> Any:
    return key(service_path(service))


def served_key(service: FeatureService) -> Any:
    return key(served_path(service))


def model_key(model: str) -> Any:
    return key(model_path(model))


def sql_views_key() -> Any:
    return key(SQL_VIEWS)


def registry_snapshot_key() -> Any:
    return key(REGISTRY_SNAPSHOT)


def retention_key() -> Any:
    """`lifecycle/offline_retention`: the pass that deletes partitions past `retention=`."""
    return key(OFFLINE_RETENTION)


def audit_log_key() -> Any:
    """`lifecycle/audit_log`: the audit stream compacted into Parquet day partitions."""
    return key(AUDIT_LOG)


def parse(path: list[str] | tuple[str, ...]) -> tuple[str, str, str | None] | None:
    """(layer, label, name) of a key this module made, or None for a key of another scheme.

    `label` is `name:vN` for versioned assets (group versions, their online assets, training
    sets, services, served logs) and the rest of the path otherwise; `name` is the group,
    service, model or source name (None for the SQL views and the registry)."""
    path = list(path)
    if len(path) != 2:
        return None
    layer, last = path
    if layer in SUFFIXES:
        match = _VERSIONED.match(last)
        if match is None or match["suffix"] != SUFFIXES[layer]:
            return None
        return layer, f"{match['name']}:v{match['version']}", match["name"]
    if layer in (SOURCES, MODELS):
        return layer, last, last
    if layer in (SQL, REGISTRY, LIFECYCLE):
        return layer, last, None
    return None

"""The one owner of the Dagster asset key scheme.

Every asset key skewless creates or looks up is built here, and every key read back from an
asset graph is parsed here, so the scheme can change in one place. Plain `list[str]` paths
(no Dagster import: the client and the serving path must not pay for importing Dagster);
`key(path)` makes the `dagster.AssetKey`.
"""

from __future__ import annotations

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

SQL_VIEWS = [SQL, "offline_views"]
REGISTRY_SNAPSHOT = [REGISTRY, "snapshot"]


def source_path(source: Source | str) -> list[str]:
    return [SOURCES, source if isinstance(source, str) else source.name]


def offline_path(group: FeatureGroup) -> list[str]:
    return [OFFLINE, group.name, f"v{group.version}"]


def online_path(group: FeatureGroup) -> list[str]:
    return [ONLINE, group.name, f"v{group.version}"]


def training_set_path(service: FeatureService) -> list[str]:
    return [TRAINING_SETS, service.name, f"v{service.version}"]


def service_path(service: FeatureService) -> list[str]:
    return [SERVICES, service.name, f"v{service.version}"]


def served_path(service: FeatureService) -> list[str]:
    return [SERVED, service.name, f"v{service.version}"]


def model_path(model: str) -> list[str]:
    return [MODELS, model]


def user_string(path: list[str]) -> str:
    """How Dagster prints a key (`features/g/v1`), for messages and CLI commands."""
    return "/".join(path)


def key(path: list[str]) -> Any:
    """The `dagster.AssetKey` of a path (imports Dagster)."""
    import dagster as dg

    return dg.AssetKey(path)


def parse(path: list[str] | tuple[str, ...]) -> tuple[str, str] | None:
    """(layer, label) of a key this module made: label `name:vN` for versioned assets,
    the remaining path otherwise; None for a key of another scheme."""
    path = list(path)
    if not path:
        return None
    layer = path[0]
    if layer in (OFFLINE, ONLINE, TRAINING_SETS, SERVICES, SERVED) and len(path) == 3:
        return layer, f"{path[1]}:{path[2]}"
    if layer in (SOURCES, MODELS, SQL, REGISTRY) and len(path) >= 2:
        return layer, "/".join(path[1:])
    return None

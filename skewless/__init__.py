"""skewless: a feature store inside Dagster — features defined once, served without skew.

The public API is small: the definition language, `FeatureStore`, and `build_definitions`.
Names are imported lazily so that a serving process using only the client does not pay for
importing Dagster.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Aggregation": "skewless.language",
    "Drift": "skewless.language",
    "DuckDBSource": "skewless.language",
    "Entity": "skewless.language",
    "Expectation": "skewless.language",
    "Feature": "skewless.language",
    "FeatureGroup": "skewless.language",
    "FeatureService": "skewless.language",
    "FileSource": "skewless.language",
    "Vector": "skewless.language",
    "VectorIndex": "skewless.language",
    "Role": "skewless.language",
    "FeatureRepository": "skewless.repository",
    "load_repository": "skewless.repository",
    "FeatureStore": "skewless.client.feature_store",
    "StoreConfig": "skewless.config",
    "build_definitions": "skewless.feature_assets.definitions",
}

__all__ = [
    "Aggregation",
    "Drift",
    "DuckDBSource",
    "Entity",
    "Expectation",
    "Feature",
    "FeatureGroup",
    "FeatureRepository",
    "FeatureService",
    "FeatureStore",
    "FileSource",
    "Role",
    "StoreConfig",
    "Vector",
    "VectorIndex",
    "build_definitions",
    "load_repository",
]

if TYPE_CHECKING:
    from skewless.client.feature_store import FeatureStore
    from skewless.config import StoreConfig
    from skewless.feature_assets.definitions import build_definitions
    from skewless.language import (
        Aggregation,
        Drift,
        DuckDBSource,
        Entity,
        Expectation,
        Feature,
        FeatureGroup,
        FeatureService,
        FileSource,
        Role,
        Vector,
        VectorIndex,
    )
    from skewless.repository import FeatureRepository, load_repository


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'skewless' has no attribute {name!r}")

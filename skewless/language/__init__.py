"""The definition language: entities, sources, feature groups and feature services.

Plain, typed Python objects validated when constructed, so a bad definition fails when the
repository loads (in `dagster dev`, the CLI or a test), naming what is wrong.
"""

from skewless.language.aggregation import Aggregation
from skewless.language.entity import Entity
from skewless.language.feature_group import Feature, FeatureGroup
from skewless.language.feature_service import FeatureRef, FeatureService
from skewless.language.quality import Drift, Expectation
from skewless.language.role import Role
from skewless.language.source import DuckDBSource, FileSource, Source
from skewless.language.vectors import Vector, VectorIndex

__all__ = [
    "Aggregation",
    "Drift",
    "DuckDBSource",
    "Entity",
    "Expectation",
    "Feature",
    "FeatureGroup",
    "FeatureRef",
    "FeatureService",
    "FileSource",
    "Role",
    "Source",
    "Vector",
    "VectorIndex",
]

"""skewless: a feature store inside Dagster — features defined once, served without skew."""

from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.language import Entity, Feature, FeatureGroup, FeatureService, FileSource
from skewless.repository import FeatureRepository, load_repository

__all__ = [
    "Entity",
    "Feature",
    "FeatureGroup",
    "FeatureRepository",
    "FeatureService",
    "FeatureStore",
    "FileSource",
    "StoreConfig",
    "build_definitions",
    "load_repository",
]

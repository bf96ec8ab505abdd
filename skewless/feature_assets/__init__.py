"""The asset factory: feature definitions in, Dagster assets, jobs and schedules out."""

from skewless.feature_assets.definitions import build_definitions
from skewless.feature_assets.offline import offline_key
from skewless.feature_assets.online import online_key

__all__ = ["build_definitions", "offline_key", "online_key"]

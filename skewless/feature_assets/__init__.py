"""The asset factory: feature definitions in, Dagster assets, jobs and schedules out."""

from skewless.asset_keys import offline_key, online_key
from skewless.feature_assets.definitions import build_definitions

__all__ = ["build_definitions", "offline_key", "online_key"]

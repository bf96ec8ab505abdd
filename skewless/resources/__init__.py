"""Dagster resources: configuration of the stores as `ConfigurableResource`s."""

from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource

__all__ = ["OfflineStoreResource", "OnlineStoreResource"]

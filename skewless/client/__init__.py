"""Where features are served: the Python client."""

from skewless.client.feature_store import FeatureStore

__all__ = ["FeatureStore"]

"""Where skewless keeps its state, read from the environment.

One state folder (`SKEWLESS_HOME`, default `./.skewless`) holds the offline store, the
embedded Redis and the Dagster instance, so `make demo` and `make ui` see the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def home() -> Path:
    """The state folder, absolute, so every process (Dagster steps, sensors) agrees on it."""
    return Path(os.environ.get("SKEWLESS_HOME", ".skewless")).expanduser().resolve()


@dataclass(frozen=True)
class StoreConfig:
    """Locations of the stores; `redis_url=None` means the embedded Redis in the state folder."""

    offline_root: str
    redis_url: str | None
    state_dir: str
    key_prefix: str = "skewless"
    serving_log_rate: float = 0.0  # fraction of service lookups logged for the skew check

    @classmethod
    def from_env(cls) -> StoreConfig:
        state = home()
        return cls(
            offline_root=os.environ.get("SKEWLESS_OFFLINE_ROOT", str(state / "offline")),
            redis_url=os.environ.get("SKEWLESS_REDIS_URL") or None,
            state_dir=str(state),
            key_prefix=os.environ.get("SKEWLESS_KEY_PREFIX", "skewless"),
            serving_log_rate=float(os.environ.get("SKEWLESS_SERVING_LOG_RATE", "0") or 0),
        )

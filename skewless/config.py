"""Where skewless keeps its state, read from the environment.

One state folder (`SKEWLESS_HOME`, default `./.skewless`) holds the offline store, the
embedded Redis and the Dagster instance, so `make demo` and `make ui` see the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from skewless.errors import DefinitionError

MAX_KEY_PREFIX = 64
_PREFIX_FORBIDDEN = set("*?[]\\{}")


def validate_key_prefix(prefix: str) -> str:
    """The prefix, if safe to build keys and SCAN patterns from; else a clear error.

    `delete_all` deletes `SCAN MATCH <prefix>:*`: a glob character in the prefix (`*` alone
    matches every key) would delete other applications' keys on a shared server, and braces
    would break the Redis Cluster hash tag that keeps one entity's groups in one slot.
    """
    if not isinstance(prefix, str) or not prefix:
        raise DefinitionError("SKEWLESS_KEY_PREFIX must be a non-empty string")
    bad = sorted(set(prefix) & _PREFIX_FORBIDDEN)
    if bad:
        raise DefinitionError(
            f"SKEWLESS_KEY_PREFIX {prefix!r} contains {' '.join(bad)}: glob characters (* ? [ ] \\) "
            "would make key scans match other applications' keys, and braces break hash tags"
        )
    if not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise DefinitionError(f"SKEWLESS_KEY_PREFIX {prefix!r} must be printable and contain no whitespace")
    if len(prefix) > MAX_KEY_PREFIX:
        raise DefinitionError(f"SKEWLESS_KEY_PREFIX is {len(prefix)} characters; at most {MAX_KEY_PREFIX}")
    return prefix


def private_dirs(path: Path) -> None:
    """`mkdir -p` whose new folders are 0700: feature data and Redis state are not for other
    local users. (Folders that already exist are left as they are.)"""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask; be explicit


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

    def __post_init__(self) -> None:
        # "" is tolerated for configs that never touch Redis (training-set assets build one);
        # from_env, the path users configure, requires a non-empty prefix.
        if self.key_prefix:
            validate_key_prefix(self.key_prefix)

    @classmethod
    def from_env(cls) -> StoreConfig:
        state = home()
        return cls(
            offline_root=os.environ.get("SKEWLESS_OFFLINE_ROOT", str(state / "offline")),
            redis_url=os.environ.get("SKEWLESS_REDIS_URL") or None,
            state_dir=str(state),
            key_prefix=validate_key_prefix(os.environ.get("SKEWLESS_KEY_PREFIX", "skewless")),
            serving_log_rate=float(os.environ.get("SKEWLESS_SERVING_LOG_RATE", "0") or 0),
        )

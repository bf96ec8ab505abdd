"""Where skewless keeps its state: anchored to the feature repository, not the current folder.

One state folder holds the offline store, the embedded Redis and the Dagster instance, so
`make demo`, `make ui`, the CLI and Dagster's own runs see the same data. It is, in order:

1. `SKEWLESS_HOME`, when set (what `make` exports);
2. the `state_dir` of the `skewless.toml` found in the repository module's folder or the
   nearest folder above it (relative to that file; default `.skewless` beside it);
3. `.skewless` in the repository module's folder.

Before, the default was `./.skewless` of the *current* folder: the same command run from
another folder silently started a second embedded Redis on an empty state and served only
defaults (issue 12 item 3). Relative `FileSource` paths are anchored the same way (to the
folder of `skewless.toml`, else the module's), see `skewless.repository`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from skewless.errors import DefinitionError

CONFIG_NAME = "skewless.toml"
STATE_NAME = ".skewless"
_CONFIG_KEYS = {"state_dir"}
_loading: list[Path] = []  # repository files `load_repository` is executing (innermost last)

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


def find_config(start: str | Path) -> Path | None:
    """The `skewless.toml` in `start`'s folder or the nearest folder above it, if any."""
    path = Path(start).expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, *folder.parents):
        config = candidate / CONFIG_NAME
        if config.is_file():
            return config
    return None


def read_config(path: Path) -> dict[str, str]:
    """The settings of a `skewless.toml`; unknown keys and wrong types are errors naming the
    file, so a misspelled `state_dir` cannot silently fall back to another state folder."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DefinitionError(f"config file {path} cannot be read: {exc}") from None
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise DefinitionError(
            f"config file {path}: unknown setting {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
        )
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise DefinitionError(f"config file {path}: {key} must be a non-empty string, not {value!r}")
    return data


@dataclass(frozen=True)
class RepositoryLocation:
    """Where a feature repository lives: the folder its relative paths are resolved against,
    its state folder (before `SKEWLESS_HOME` is considered) and its config file, if any."""

    root: Path
    state_dir: Path
    config_file: Path | None


def locate(near: str | Path) -> RepositoryLocation:
    """The location of the repository whose module file (or folder) is `near`."""
    path = Path(near).expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    config = find_config(folder)
    if config is None:
        return RepositoryLocation(folder, folder / STATE_NAME, None)
    state = Path(read_config(config).get("state_dir", STATE_NAME)).expanduser()
    return RepositoryLocation(config.parent, (config.parent / state).resolve(), config)


def home(near: str | Path | None = None) -> Path:
    """The state folder, absolute, so every process (Dagster steps, sensors) agrees on it.

    `SKEWLESS_HOME` wins; else the state folder of the repository at `near` (a module file
    such as `__file__`, or a folder), else of the repository module being loaded, else of
    the current folder (its `skewless.toml` above it, else `./.skewless`).
    """
    configured = os.environ.get("SKEWLESS_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    if near is None:
        near = _loading[-1] if _loading else Path.cwd()
    return locate(near).state_dir


def offline_root(state_dir: str | Path) -> Path | str:
    """`SKEWLESS_OFFLINE_ROOT`, else `<state>/offline`: one rule for every reader of it.

    A URI (`s3://bucket/prefix`) is returned as the string it is: `Path` would fold its
    `//` and make it a relative local folder named `s3:`.
    """
    configured = os.environ.get("SKEWLESS_OFFLINE_ROOT")
    if configured and "://" in configured:
        return configured.rstrip("/")
    return Path(configured or Path(state_dir) / "offline")


@dataclass(frozen=True)
class StoreConfig:
    """Locations of the stores; `redis_url=None` means the embedded Redis in the state folder."""

    offline_root: str
    redis_url: str | None
    state_dir: str
    key_prefix: str = "skewless"
    serving_log_rate: float = 0.0  # fraction of service lookups logged for the skew check
    role: str | None = None  # connect to Redis as this repository role's ACL user (SKEWLESS_ROLE)
    audit_sample: float = 0.01  # fraction of online reads audited (SKEWLESS_AUDIT_SAMPLE; see storage.audit)

    def __post_init__(self) -> None:
        # "" is tolerated for configs that never touch Redis (training-set assets build one);
        # from_env, the path users configure, requires a non-empty prefix.
        if self.key_prefix:
            validate_key_prefix(self.key_prefix)
        if not 0.0 <= self.audit_sample <= 1.0:
            raise DefinitionError(f"SKEWLESS_AUDIT_SAMPLE must be within [0, 1], got {self.audit_sample}")

    @classmethod
    def from_env(cls, state_dir: str | Path | None = None) -> StoreConfig:
        """From the environment; `state_dir` (a repository's anchored state folder) is used
        when `SKEWLESS_HOME` is not set, else `home()`."""
        state = home() if state_dir is None or os.environ.get("SKEWLESS_HOME") else Path(state_dir)
        return cls(
            offline_root=str(offline_root(state)),
            redis_url=os.environ.get("SKEWLESS_REDIS_URL") or None,
            state_dir=str(state),
            key_prefix=validate_key_prefix(os.environ.get("SKEWLESS_KEY_PREFIX", "skewless")),
            serving_log_rate=float(os.environ.get("SKEWLESS_SERVING_LOG_RATE", "0") or 0),
            role=os.environ.get("SKEWLESS_ROLE", "").strip() or None,
            audit_sample=_env_fraction("SKEWLESS_AUDIT_SAMPLE", 0.01),
        )


def _env_fraction(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise DefinitionError(f"{name}={raw!r} is not a number within [0, 1]") from None


EXECUTORS = ("default", "in_process", "multiprocess", "celery")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DefinitionError(f"{name}={raw!r} is not a whole number") from None
    if value < 0:
        raise DefinitionError(f"{name}={raw!r} must be 0 or more")
    return value


@dataclass(frozen=True)
class ExecutionConfig:
    """How the definitions' jobs run and how a backfill is cut into runs.

    - `partitions_per_run`: 0 (default) keeps one run per backfill
      (`BackfillPolicy.single_run()`: every day of the backfill checked before any is written);
      N > 0 gives `BackfillPolicy.multi_run(N)`: Dagster's backfill cuts the range into runs of
      N days, which the run coordinator can run side by side. Runs, not days, are what spread
      over processes and workers: a run is one step per asset, whatever its number of days.
    - `executor`: `default` leaves Dagster's (multiprocess for launched runs, in process for
      `materialize`); `in_process`; `multiprocess` (`max_concurrent` steps of a run at once,
      0 = one per CPU); `celery` (dagster-celery: every step is a Celery task on
      `celery_queue` of the broker, run by whichever worker takes it).
    - `celery_broker` / `celery_backend`: e.g. `redis://host:6379/5`; the backend defaults
      to the broker. Workers read the same variables (`skewless.feature_assets.celery_app`).
    """

    executor: str = "default"
    partitions_per_run: int = 0
    max_concurrent: int = 0
    celery_broker: str | None = None
    celery_backend: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise DefinitionError(
                f"SKEWLESS_EXECUTOR={self.executor!r} is not an executor (known: {', '.join(EXECUTORS)})"
            )
        if self.partitions_per_run < 0 or self.max_concurrent < 0:
            raise DefinitionError("partitions_per_run and max_concurrent must be 0 or more")
        if self.executor == "celery" and not self.celery_broker:
            raise DefinitionError(
                "SKEWLESS_EXECUTOR=celery needs SKEWLESS_CELERY_BROKER (e.g. redis://127.0.0.1:6379/5): "
                "the executor and its workers must name the same broker"
            )

    @property
    def backend(self) -> str | None:
        """The Celery result backend: the configured one, else the broker itself."""
        return self.celery_backend or self.celery_broker

    @classmethod
    def from_env(cls) -> ExecutionConfig:
        """`SKEWLESS_EXECUTOR`, `SKEWLESS_PARTITIONS_PER_RUN`, `SKEWLESS_MAX_CONCURRENT`,
        `SKEWLESS_CELERY_BROKER`, `SKEWLESS_CELERY_BACKEND`."""
        return cls(
            executor=os.environ.get("SKEWLESS_EXECUTOR", "").strip() or "default",
            partitions_per_run=_env_int("SKEWLESS_PARTITIONS_PER_RUN", 0),
            max_concurrent=_env_int("SKEWLESS_MAX_CONCURRENT", 0),
            celery_broker=os.environ.get("SKEWLESS_CELERY_BROKER") or None,
            celery_backend=os.environ.get("SKEWLESS_CELERY_BACKEND") or None,
        )

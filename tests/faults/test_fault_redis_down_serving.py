"""Drill: Redis down while `skewless serve` serves, then back on the same port.

The drill's own Redis (AOF on) is killed with -9 and, later, SIGSTOPped (hung) while a real
`skewless serve` process answers lookups: every lookup and /health answers 503 within the
deadline with a message naming the online store, never its address. Restarted on the same
port and files (and resumed), the same server process answers 200 with the stored values
again: no server restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from skewless import FeatureStore
from skewless.config import StoreConfig
from skewless.repository import load_repository
from tests.faults.drills import TIMEOUT_S, RedisProcess, free_port, store_env, write_repo
from tests.helpers import make_events

NOW = datetime.now(UTC).replace(microsecond=0)
LOOKUP = {"features": ["user_stats:v1:amount"], "entities": [{"user_id": 7}]}


def call(port: int, path: str, body: dict | None = None) -> tuple[int, dict, float]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), time.monotonic() - started
    except urllib.error.URLError as error:  # not listening yet (the startup line comes first)
        return 0, {"error": str(error)}, time.monotonic() - started


def until_ok(port: int, seconds: float = 15) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, body, _ = call(port, "/features/online", LOOKUP)
        if status == 200:
            return body
        assert time.monotonic() < deadline, f"no recovery: {status} {body}"
        time.sleep(0.1)


def assert_unavailable(port: int, redis: RedisProcess) -> None:
    for path, body in (("/features/online", LOOKUP), ("/health", None)):
        status, payload, took = call(port, path, body)
        assert status == 503, (path, status, payload)
        assert took < 3, (path, took)  # the deadline (500 ms) plus slack for this shared machine
        assert "the online store (Redis)" in payload["error"], payload
        assert str(redis.port) not in payload["error"] and "127.0.0.1" not in payload["error"], payload


def test_redis_down_gives_503_naming_the_store_and_serving_recovers_without_restart(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    events = make_events(n=50, users=10)
    repo_path = write_repo(tmp_path / "repo", events)
    config = StoreConfig(str(tmp_path / "offline"), own_redis.url, str(tmp_path / "state"), "skfault:serve")
    row = {"user_id": [7], "ts": [NOW - timedelta(minutes=1)], "created": [NOW], "amount": [42.5]}
    pushed = pl.DataFrame({**row, "channel": ["pos"]}).with_columns(
        pl.col("ts", "created").dt.cast_time_unit("us")
    )
    with FeatureStore(load_repository(repo_path), config) as store:
        store.push("events", pushed)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "skewless"), "serve", str(repo_path), "--port", str(port)],
        env=store_env(config, tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().decode().startswith("skewless feature server on"), "no startup line"
        assert until_ok(port)["results"] == [{"user_id": 7, "amount": 42.5}]

        own_redis.kill()  # kill -9
        assert_unavailable(port, own_redis)
        own_redis.start()  # same port, same append-only file
        assert until_ok(port)["results"] == [{"user_id": 7, "amount": 42.5}]
        assert call(port, "/health")[0] == 200

        own_redis.pause()  # a hung Redis: SIGSTOP
        assert_unavailable(port, own_redis)
        own_redis.resume()
        assert until_ok(port)["results"] == [{"user_id": 7, "amount": 42.5}]
        assert call(port, "/health")[0] == 200
        assert server.poll() is None, "the server process restarted or died"
    finally:
        own_redis.resume()
        server.terminate()
        try:
            server.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)

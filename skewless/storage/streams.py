"""Redis Streams as the built-in stream source: pushed events, read back by micro-batches.

Each push of a source appends one stream entry holding its rows (one entry per push keeps a
big push atomic and cheap): as Arrow IPC bytes (field `rows`), or, for a few rows of plain
dtypes, as JSON columns with their dtypes (field `cols`) — a single-event push is the common
streaming case, and Arrow's writer alone costs a quarter of a millisecond per call.
Entry ids are Redis' own, increasing; the sensor's cursor is the last entry id a micro-batch
was requested for, and the id of the last entry a micro-batch finished is recorded next to
the stream, so a crashed batch is simply re-run: every update it makes is idempotent (events
are unique members; the latest-value guard keeps the newer; offline appends deduplicate).

A source with a group that has `pii` features seals its entries (field `sealed`): the same
payload (`cols` or `rows`, one tag byte saying which) AES-256-GCM-encrypted under the key
ring's current online key, like the groups' sealed online values (`storage.sealed`):

    1 byte key-id length · key id · 12-byte nonce · AES-GCM(tag byte · payload) with its tag

bound (associated data) to the stream's key and the key id, so the pushed rows — which hold
the source columns pii features are computed from — never sit in Redis in clear. Reading needs
the key ring (`OnlineStore.key_ring`); rotation needs no rewrite (the key id travels along).

Entries are read back aligned to one schema, so one entry whose columns differ (pushed before
`FeatureStore.push` checked columns, or appended by hand) cannot fail every micro-batch over
its range: each append also records its schema next to the stream (`<stream>:schema`, an
empty Arrow IPC frame), which `read` uses as the reference when no schema is passed.
"""

from __future__ import annotations

import io
import math
from typing import Any

import orjson
import polars as pl
import redis
from cryptography.exceptions import InvalidTag

from skewless.errors import EncryptionKeyError, SourceDataError
from skewless.language.dtypes import conform_frame
from skewless.storage import online_keys as K
from skewless.storage.codec import _EPOCH_DATE, _micros
from skewless.storage.online import OnlineStore
from skewless.storage.sealed import open_block, seal_block

MAX_ENTRIES = 1_000_000  # approximate cap (XADD MAXLEN ~): old entries are already applied


def stream_key(store: OnlineStore, source: str) -> str:
    return K.stream_key(store.key_prefix, source)


def _ipc(frame: pl.DataFrame) -> bytes:
    """Arrow IPC (file format) bytes. Small pushes go through pyarrow uncompressed: Polars'
    writer plans a query per call (~0.4 ms), pyarrow's takes ~0.05 ms for a few rows."""
    if frame.height > 1000:
        buffer = io.BytesIO()
        frame.write_ipc(buffer, compression="zstd")
        return buffer.getvalue()
    import pyarrow as pa

    table = frame.to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


SMALL_ENTRY = 32  # up to this many rows of plain dtypes, an entry is JSON columns
# fmt: off
_PLAIN: dict[str, pl.DataType] = {
    str(d): d
    for d in (
        pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt16(), pl.UInt32(),
        pl.UInt64(), pl.Float32(), pl.Float64(), pl.String(), pl.Boolean(), pl.Date(),
        pl.Datetime("us", "UTC"),
    )
}
# fmt: on


def _columns_json(frame: pl.DataFrame) -> bytes | None:
    """A few rows as JSON columns `[[name, dtype, values], ...]`, exact for the dtypes in
    `_PLAIN` (times as µs / days since the epoch); None when a dtype or a value (NaN,
    infinity: JSON has no spelling for them) needs Arrow."""
    names = [str(d) for d in frame.dtypes]
    if any(n not in _PLAIN for n in names):
        return None
    out = []
    for name, dtype, series in zip(frame.columns, names, frame.iter_columns(), strict=True):
        values = series.to_list()
        if dtype.startswith("Datetime"):
            values = [None if v is None else _micros(v) for v in values]
        elif dtype == "Date":
            values = [None if v is None else (v - _EPOCH_DATE).days for v in values]
        elif dtype.startswith("Float") and not all(v is None or math.isfinite(v) for v in values):
            return None
        out.append((name, dtype, values))
    return orjson.dumps(out)


def _from_columns_json(raw: bytes) -> pl.DataFrame:
    columns = []
    for name, dtype, values in orjson.loads(raw):
        target = _PLAIN[dtype]
        if isinstance(target, pl.Datetime):
            columns.append(pl.Series(name, values, dtype=pl.Int64).cast(target))
        elif isinstance(target, pl.Date):
            columns.append(pl.Series(name, values, dtype=pl.Int32).cast(target))
        else:
            columns.append(pl.Series(name, values, dtype=target))
    return pl.DataFrame(columns)


class EntrySeal:
    """Seals and opens the entries of one stream (see the module docstring) with the block
    layout of `storage.sealed`: the store gives the key ring (opened only when an entry is
    sealed or opened), the stream's key is what the entries are bound to."""

    def __init__(self, store: OnlineStore, key: str) -> None:
        self.store = store
        self.aad = key.encode() + b"\0"

    def seal(self, tag: bytes, payload: bytes) -> bytes:
        ring = self.store.key_ring()
        key_id = ring.current
        return seal_block(ring.aead(key_id), key_id.encode(), tag + payload, self.aad)

    def open(self, sealed: bytes, entry: str = "?") -> tuple[bytes, bytes]:
        try:
            _, plain = open_block(self.store.key_ring(), sealed, self.aad)
        except InvalidTag:
            kid = sealed[1 : 1 + sealed[0]].decode(errors="replace")
            raise EncryptionKeyError(
                f"stream entry {entry} of {self.aad[:-1].decode()} does not decrypt under key "
                f"'{kid}': tampered with, or copied from another stream"
            ) from None
        return plain[:1], plain[1:]


_TAGS = {b"c": b"cols", b"r": b"rows"}


def entry_fields(frame: pl.DataFrame, seal: EntrySeal | None = None) -> dict[str, bytes]:
    """The fields of the stream entry holding `frame` (read back by `entry_frame`); sealed
    with `seal` (a source whose groups have pii features)."""
    fields: dict[str, bytes] | None = None
    if frame.height <= SMALL_ENTRY:
        packed = _columns_json(frame)
        if packed is not None:
            fields = {"cols": packed}
    if fields is None:
        fields = {"rows": _ipc(frame)}
    if seal is None:
        return fields
    ((name, payload),) = fields.items()
    return {"sealed": seal.seal(b"c" if name == "cols" else b"r", payload)}


def entry_frame(fields: dict[bytes, bytes], seal: EntrySeal | None = None, entry: str = "?") -> pl.DataFrame:
    if b"sealed" in fields:
        if seal is None:
            raise EncryptionKeyError(f"stream entry {entry} is sealed (pii): reading it needs the key ring")
        tag, payload = seal.open(fields[b"sealed"], entry)
        fields = {_TAGS[tag]: payload}
    if b"cols" in fields:
        return _from_columns_json(fields[b"cols"])
    return pl.read_ipc(io.BytesIO(fields[b"rows"]))


_SCHEMAS: dict[tuple[tuple[str, str], ...], bytes] = {}


def _schema_ipc(schema: pl.Schema) -> bytes:
    """An empty frame of `schema` as Arrow IPC, encoded once per schema (pushes repeat it)."""
    key = tuple((name, str(dtype)) for name, dtype in schema.items())
    found = _SCHEMAS.get(key)
    if found is None:
        found = _SCHEMAS[key] = _ipc(pl.DataFrame(schema=schema))
    return found


def append(store: OnlineStore, source: str, rows: pl.DataFrame, sealed: bool = False) -> str:
    """Append a batch of checked rows (`sealed`: encrypted, see the module docstring);
    returns the entry id.

    The rows' schema is recorded too (same round trip), as the reference `read` aligns
    entries to: pushes are normalised to the source's schema, so it is the source's.
    """
    key = stream_key(store, source)
    fields = entry_fields(rows, EntrySeal(store, key) if sealed else None)
    try:
        schema = _schema_ipc(rows.schema)
        recorded = getattr(store, "_recorded_schemas", None)
        if recorded is None:
            recorded = store._recorded_schemas = {}  # type: ignore[attr-defined]
        if recorded.get(source) == schema:  # recorded by this process already: one command
            entry = store.client.xadd(key, fields, maxlen=MAX_ENTRIES, approximate=True)
        else:
            pipe = store.client.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=MAX_ENTRIES, approximate=True)
            pipe.set(K.stream_schema_key(store.key_prefix, source), schema)
            entry = pipe.execute()[0]
            recorded[source] = schema
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise store._unreachable(f"appending to the stream of source '{source}'", exc) from exc
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def append_commands(
    store: OnlineStore,
    source: str,
    rows: pl.DataFrame,
    sealed: bool = False,
    entry: dict[str, bytes] | None = None,
) -> list[tuple[Any, ...]]:
    """`append` as raw commands for a caller to send with its own (a push sends them with its
    online writes: one round trip); the XADD first. `entry`: the fields `entry_fields` made
    of `rows` already (a large push encodes them in a thread while it computes its events)."""
    key = stream_key(store, source)
    schema = _schema_ipc(rows.schema)
    recorded = getattr(store, "_recorded_schemas", None)
    if recorded is None:
        recorded = store._recorded_schemas = {}  # type: ignore[attr-defined]
    if entry is None:
        entry = entry_fields(rows, EntrySeal(store, key) if sealed else None)
    fields = [part for pair in entry.items() for part in pair]
    commands: list[tuple[Any, ...]] = [("XADD", key, "MAXLEN", "~", MAX_ENTRIES, "*", *fields)]
    if recorded.get(source) != schema:
        commands.append(("SET", K.stream_schema_key(store.key_prefix, source), schema))
        recorded[source] = schema
    return commands


def recorded_schema(store: OnlineStore, source: str) -> pl.Schema | None:
    """The schema of the last appended entry, or None for a stream appended to before it was kept."""
    raw = store.client.get(K.stream_schema_key(store.key_prefix, source))
    return None if raw is None else pl.read_ipc(io.BytesIO(raw)).schema


def newest_id(store: OnlineStore, source: str) -> str | None:
    found = store.client.xrevrange(stream_key(store, source), count=1)
    if not found:
        return None
    entry = found[0][0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def read(
    store: OnlineStore, source: str, after: str, until: str, schema: pl.Schema | None = None
) -> tuple[pl.DataFrame | None, int]:
    """Rows of the entries with `after < id <= until`, concatenated in entry order.

    Each entry is aligned to `schema` (default: the one recorded by `append`): columns
    reordered, lossless dtypes widened, columns the schema lacks dropped (they were never
    part of the source). An entry missing a column or holding one that cannot be cast raises
    a `SourceDataError` naming the entry id, so the bad entry can be found and removed. With
    no reference at all, entries are aligned by column name (`diagonal_relaxed`).
    """
    low = "-" if after in ("", "0", "0-0") else f"({after}"
    entries: list[Any] = store.client.xrange(stream_key(store, source), min=low, max=until)
    if not entries:
        return None, 0
    ids = [entry.decode() if isinstance(entry, bytes) else str(entry) for entry, _ in entries]
    seal = EntrySeal(store, stream_key(store, source))
    frames = [entry_frame(fields, seal, entry) for entry, (_, fields) in zip(ids, entries, strict=True)]
    reference = schema if schema is not None else recorded_schema(store, source)
    if reference is not None:
        aligned = []
        for entry, frame in zip(ids, frames, strict=True):
            frame, problems = conform_frame(frame, reference, allow_extra=True)
            if problems:
                raise SourceDataError(
                    f"stream of source '{source}': entry {entry} does not match the source's schema: "
                    + "; ".join(problems)
                )
            aligned.append(frame)
        return pl.concat(aligned, how="vertical"), len(entries)
    try:
        return pl.concat(frames, how="diagonal_relaxed"), len(entries)
    except (pl.exceptions.PolarsError, TypeError):
        pass
    for i in range(1, len(frames)):  # name the first entry that cannot join the ones before it
        try:
            pl.concat(frames[: i + 1], how="diagonal_relaxed")
        except (pl.exceptions.PolarsError, TypeError) as exc:
            raise SourceDataError(
                f"stream of source '{source}': entry {ids[i]} cannot be aligned with the entries "
                f"before it: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from exc
    raise AssertionError("unreachable: concatenation failed but every prefix succeeds")


def first_id(store: OnlineStore, source: str, after: str, until: str) -> str:
    """The id of the first entry with `after < id <= until` (names a flushed file)."""
    low = "-" if after in ("", "0", "0-0") else f"({after}"
    entry = store.client.xrange(stream_key(store, source), min=low, max=until, count=1)[0][0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def mark_applied(store: OnlineStore, source: str, until: str) -> None:
    store.client.set(K.stream_applied_key(store.key_prefix, source), until)


def applied(store: OnlineStore, source: str) -> str | None:
    value = store.client.get(K.stream_applied_key(store.key_prefix, source))
    return value.decode() if value is not None else None


def without_keys(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """`frame` without the rows of `keys` (join-key columns, cast to `frame`'s dtypes);
    unchanged when `frame` lacks a key column (its rows cannot name the entity)."""
    columns = list(keys.columns)
    if frame.is_empty() or not set(columns) <= set(frame.columns):
        return frame
    cast = keys.select([pl.col(c).cast(frame.schema[c]) for c in columns])
    return frame.join(cast, on=columns, how="anti", nulls_equal=False)


def erase(store: OnlineStore, key: str, keys: pl.DataFrame, applied_until: str | None) -> tuple[int, int]:
    """Remove the rows of `keys` from every entry of the stream at `key`; (entries, rows).

    An entry holding such rows is deleted (XDEL). Its other rows are appended again as a new
    entry when the entry was not yet applied (`applied_until`: the last applied id; None:
    nothing applied), so the micro-batch still gets them; an applied entry's rows are already
    in both stores and the stream only held them as history. Read in pages of 1,000 entries;
    erasure is rare and may take a pass over the stream. A micro-batch that read an entry
    before it was deleted still drops the erased entities (it consults the erasure list).
    """
    rewritten = removed = 0
    start = "-"
    seal = EntrySeal(store, key)
    while True:
        entries: list[Any] = store.client.xrange(key, min=start, max="+", count=1000)
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            frame = entry_frame(fields, seal, entry)
            kept = without_keys(frame, keys)
            if kept.height == frame.height:
                continue
            pipe = store.client.pipeline(transaction=True)
            pipe.xdel(key, entry)
            if kept.height and (applied_until is None or _after(entry, applied_until)):
                # sealed stays sealed (under the current key)
                again = entry_fields(kept, seal if b"sealed" in fields else None)
                pipe.xadd(key, again, maxlen=MAX_ENTRIES, approximate=True)
            pipe.execute()
            rewritten += 1
            removed += frame.height - kept.height
        if len(entries) < 1000:
            break
        last = entries[-1][0]
        start = f"({last.decode() if isinstance(last, bytes) else last}"
    return rewritten, removed


def _after(entry: str, applied_until: str) -> bool:
    """Stream ids compare as (milliseconds, sequence)."""
    ms, _, seq = entry.partition("-")
    ams, _, aseq = applied_until.partition("-")
    return (int(ms), int(seq or 0)) > (int(ams), int(aseq or 0))

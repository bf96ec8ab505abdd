"""Online window state in Redis: raw events for exact edges and identity, cached tiles for
constant-time reads.

Per entity and window group version, three keys under the entity's hash tag (one cluster
slot, so one entity is always one slot):

    <base>:events   sorted set, score = event time (µs), member = id length, id, packed event
    <base>:ids      hash, event id -> current member: identity is (entity keys, event id)
    <base>:tiles    hash, "<level>:<k>" -> tile partials (JSON), "_gen" -> write generation

`<base>` is the entity's online key; every key is built by `storage.online_keys`. On a
Redis Cluster the store cuts the write script's batches per slot (`OnlineStore.slot_batches`)
and runs transactions per slot: each call stays in one slot. Writes go through one Lua script
(`lua/write_events.lua`): a re-delivered event changes nothing, a re-pushed id with new
content replaces the old version (latest write wins), and every tile an event enters or
leaves is dropped from the cache. Reads cut each window into tiles and two short raw edges
(`compute.tiles.cover`), fetch them in one MULTI/EXEC round trip (a cluster: one per slot),
and compute any tile not cached from its children (or its few raw events), writing it back
only if the generation did not move in between. A steady read touches a bounded number of
tiles whatever the events.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import redis

from skewless.compute import tiles as T
from skewless.errors import OnlineStoreError
from skewless.language.durations import LIFETIME
from skewless.language.feature_group import EVENT_ID, EVENT_TIMESTAMP, Feature, FeatureGroup
from skewless.storage import online_keys as K
from skewless.storage.codec import GroupCodec, _micros

if TYPE_CHECKING:
    from skewless.storage.online import OnlineStore

SMALL_WRITE = 32  # up to this many events, a write is prepared from Python values
WRITE_CHUNK = 100_000  # larger writes go in slices of this many events (bounded memory)
PIPE_SLICE = 2_000  # a large write is encoded and sent in slices of this many events (overlap)
RAW_TILE_MAX = 256  # a missing tile with at most this many events is computed from them directly
TILE_CACHE_MAX = 200_000  # decoded tiles kept in process (cleared when full)
MERGED_MAX = 100_000  # entities whose merged tiles are remembered (cleared when full)


def members(ids: Sequence[str], packed: Sequence[bytes]) -> list[bytes]:
    out = []
    for event_id, value in zip(ids, packed, strict=True):
        raw = event_id.encode()
        if len(raw) > 65535:
            raise ValueError(f"event id {event_id[:40]!r}... is longer than 65535 bytes")
        out.append(len(raw).to_bytes(2, "big") + raw + value)
    return out


def check_id_lengths(ids: pl.Series) -> None:
    """Ids are stored behind a 2-byte length."""
    lengths = ids.str.len_bytes()
    if len(lengths) and (lengths.max() or 0) > 65535:  # type: ignore[operator]
        at = lengths.arg_max()
        raise ValueError(f"event id {ids[at][:40]!r}... is longer than 65535 bytes")


def member_array(ids: pl.Series, packed: pa.Array, checked: bool = False) -> list[bytes]:
    """`members` for many events in one Arrow call (a Python loop costs ~1 µs an event)."""
    if not checked:
        check_id_lengths(ids)
    lengths = ids.str.len_bytes()
    prefix = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(2), len(ids), [None, pa.py_buffer(lengths.to_numpy().astype(">u2").tobytes())]
    ).cast(pa.large_binary())
    raw = ids.cast(pl.Binary).to_arrow().cast(pa.large_binary())
    joined = pc.binary_join_element_wise(prefix, raw, packed, pa.scalar(b"", pa.large_binary()))
    return joined.to_pylist()  # type: ignore[no-any-return]


def _runs(keys: list[str]) -> list[tuple[str, int]]:
    """Consecutive equal keys as (key, run length)."""
    return [(key, sum(1 for _ in run)) for key, run in itertools.groupby(keys)]


def unpack_member(member: bytes) -> bytes:
    return member[2 + int.from_bytes(member[:2], "big") :]


class WindowState:
    """The window state of every window group on one online store."""

    def __init__(self, store: OnlineStore) -> None:
        self.store = store
        self._write_lua: Any = None
        self._put_lua: Any = None
        self._codecs: dict[tuple[str, int], GroupCodec] = {}
        self._parts: dict[tuple[str, int], list[T.Part]] = {}
        self._tile_cache: dict[tuple[str, int, bytes], list[Any]] = {}
        # (entity base, plan key) -> (generation, merged tiles[, edge events, values])
        self._merged: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}
        self._plans: dict[tuple[Any, ...], Any] = {}
        self._window_lists: dict[tuple[str, int], list[int]] = {}
        self._layouts: dict[tuple[str, int], dict[int, list[tuple[int, T.Part, str]]]] = {}

    def _decoded(self, group: FeatureGroup, parts: list[T.Part], raw: bytes) -> list[Any]:
        """A cached tile's partials; decoded once per distinct stored bytes (tiles change only
        when written, so a steady read decodes nothing). Partials are never mutated."""
        if not raw:
            return []
        key = (group.name, group.version, raw)
        found = self._tile_cache.get(key)
        if found is None:
            if len(self._tile_cache) >= TILE_CACHE_MAX:
                self._tile_cache.clear()
            found = self._tile_cache[key] = T.from_json(parts, orjson.loads(raw))
        return found

    # ------------------------------------------------------------------ layout
    @staticmethod
    def suffixes() -> tuple[str, str, str]:
        return K.WINDOW_SUFFIXES

    def codec(self, group: FeatureGroup) -> GroupCodec:
        key = (group.name, group.version)
        if key not in self._codecs:
            columns = {EVENT_ID: pl.String(), **group.input_columns()}
            columns.update({name: pl.Boolean() for name in group.where_columns()})
            self._codecs[key] = GroupCodec(group, [Feature(n, d) for n, d in columns.items()])
        return self._codecs[key]

    def parts(self, group: FeatureGroup) -> list[T.Part]:
        key = (group.name, group.version)
        if key not in self._parts:
            self._parts[key] = T.parts(group)
        return self._parts[key]

    # ------------------------------------------------------------------ writes
    def write(
        self, group: FeatureGroup, events: pl.DataFrame, now: datetime | None = None, before: Any = None
    ) -> int:
        """Add or correct events (offline event layout); returns how many ids were new.

        Events older than the longest window are not kept online (they stay offline). The
        same event twice is one event; the same id with new content replaces the old one.
        `before() -> commands` gives raw commands to send first in the same round trip (a
        push's stream append).
        """
        if events.height > WRITE_CHUNK:
            # a backfill's millions of events in slices: the per-event Python objects (keys,
            # members, script arguments) of one slice at a time, not gigabytes of them. An
            # entity cut between slices is simply updated twice, in order: every step of the
            # write script is idempotent and the later rows still win.
            return sum(
                self.write(group, events.slice(start, WRITE_CHUNK), now, before if start == 0 else None)
                for start in range(0, events.height, WRITE_CHUNK)
            )
        store = self.store
        wall_us = time.time_ns() // 1000
        now_us = wall_us if now is None else int(now.timestamp() * 1_000_000)
        shift_ms = max(0, (wall_us - now_us) // 1000)
        longest = group.max_window
        lifetime = longest >= LIFETIME
        window_us = longest // timedelta(microseconds=1)
        cutoff = -1 if lifetime else max(-1, now_us - window_us)
        if events.height <= SMALL_WRITE:
            # a push of a few events: Python values (each Polars call costs tens of µs)
            scores_all = [_micros(v) for v in events.get_column(EVENT_TIMESTAMP).to_list()]
            keep = [i for i, score in enumerate(scores_all) if score > cutoff]
            if not keep:
                return self._only(before)
            frame = events if len(keep) == events.height else events[keep]
            keys_all = K.entity_keys(group, store.key_prefix, frame)
            scores = [scores_all[i] for i in keep]
        else:
            frame = events.with_columns(
                K.key_expression(group, store.key_prefix).alias("__key"),
                pl.col(EVENT_TIMESTAMP).dt.epoch("us").alias("__score"),
            ).filter(pl.col("__score") > cutoff)
            # one version per identity (the script requires it: see its header), the last
            # row winning as "later writes win" has it; ids are usually unique across the
            # whole write, which is ten times cheaper to check than deduplicating. Not
            # `identity.latest_versions`: its callers (event_rows, offline reads) have applied
            # it already; here arrival order is the rule, as in the script before
            if frame.get_column(EVENT_ID).n_unique() < frame.height:
                frame = frame.unique(subset=["__key", EVENT_ID], keep="last", maintain_order=True)
            if frame.height == 0:
                return self._only(before)
        sha = self._write_sha()
        head: list[Any] = [cutoff, 0 if lifetime else window_us // 1000, shift_ms, len(T.SIZES), *T.SIZES]
        first = list(before()) if before is not None else []
        if frame.height <= SMALL_WRITE:
            ids = frame.get_column(EVENT_ID).to_list()
            packed = members(ids, self.codec(group).encode(frame))
            if len(set(zip(keys_all, ids, strict=True))) < len(ids):
                # one version per identity, the last row winning (the script requires it)
                last = {identity: i for i, identity in enumerate(zip(keys_all, ids, strict=True))}
                pick = sorted(last.values())
                keys_all, scores = [keys_all[i] for i in pick], [scores[i] for i in pick]
                ids, packed = [ids[i] for i in pick], [packed[i] for i in pick]
            one = [(keys_all, scores, ids, packed)]
            prepared = lambda: one  # noqa: E731
            newest = max(scores)
        else:
            check_id_lengths(frame.get_column(EVENT_ID))
            newest = int(frame.get_column("__score").max())  # type: ignore[arg-type]
            prepared = lambda: self._slices(group, frame)  # noqa: E731  (made again on a retry)

        def scripts(sha: str) -> Iterator[tuple[Any, ...]]:
            for keys_all, scores, ids, packed in prepared():
                yield from self._scripts(sha, head, keys_all, scores, ids, packed)

        try:
            # a large write is prepared slice by slice while the server runs the slices
            # before it (`send_streamed`): encoding overlaps the scripts instead of adding
            replies = store.send_streamed(
                itertools.chain(first, scripts(sha), [store.mark_command(group, newest)])
            )
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                # the server lost its scripts (restart, SCRIPT FLUSH): reload, redo the scripts
                # (idempotent); what was queued before them has run
                self._write_lua = None
                store._mark_sha = None
                sha = self._write_sha()
                replies = [
                    *replies[: len(first)],
                    *store.send_streamed(itertools.chain(scripts(sha), [store.mark_command(group, newest)])),
                ]
            failed = [r for r in replies if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise store._unreachable(f"writing window state of '{group.ref}'", exc) from exc
        return sum(replies[len(first) : -1])

    def _slices(self, group: FeatureGroup, frame: pl.DataFrame) -> Iterator[tuple[list, list, list, list]]:
        """A large write's events as (keys, scores, ids, members) per slice of `PIPE_SLICE`
        rows, made lazily: slice k + 1 is encoded while the server runs slice k. An entity cut
        between slices is updated twice, in order, which the script makes idempotent."""
        codec = self.codec(group)
        for start in range(0, frame.height, PIPE_SLICE):
            piece = frame.slice(start, PIPE_SLICE)
            ids = piece.get_column(EVENT_ID)
            packed = member_array(ids, codec.encode_array(piece), checked=True)
            keys, scores = piece.get_column("__key").to_list(), piece.get_column("__score").to_list()
            yield keys, scores, ids.to_list(), packed

    def _scripts(
        self,
        sha: str,
        head: list[Any],
        keys_all: list[str],
        scores: list[int],
        ids: list[str],
        packed: list[bytes],
    ) -> Iterator[tuple[Any, ...]]:
        """One EVALSHA per batch of 500 entities (on a cluster, of one slot each)."""
        # per entity: its ids, then (score, member) pairs, in row order (rows of one entity
        # are usually adjacent — events come sorted by keys — so this is a few slices)
        pairs: list[Any] = [None] * (2 * len(ids))
        pairs[0::2], pairs[1::2] = scores, packed
        entities: list[tuple[str, int, int]] = []
        at = 0
        for key, length in _runs(keys_all):
            entities.append((key, at, length))
            at += length
        for batch in self.store.slot_batches([key for key, _, _ in entities], 500):
            keys: list[str] = []
            args = list(head)
            for i in batch:
                key, at, length = entities[i]
                keys += K.window_keys(key)
                args.append(length)
                args += ids[at : at + length]
                args += pairs[2 * at : 2 * (at + length)]
            yield ("EVALSHA", sha, len(keys), *keys, *args)

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands raw on the thread's connection in one round trip (hiredis packs them
        in a third of redis-py's time; `OnlineStore.send` reconnects on a dropped link)."""
        return self.store.send(commands)

    def _only(self, before: Any) -> int:
        """Nothing to write online: still send what the caller queued."""
        if before is not None:
            try:
                replies = self._send(list(before()))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                raise self.store._unreachable("appending to a stream", exc) from exc
            failed = [r for r in replies if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        return 0

    def _write_sha(self) -> str:
        if self._write_lua is None:
            source = resources.files("skewless.storage").joinpath("lua/write_events.lua").read_text()
            self._write_lua = self.store.load_script(source)
        return self._write_lua  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ reads
    def plan(
        self, group: FeatureGroup, t_us: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict, list[str]]:
        """Tiles, raw ranges, which each window uses, and the HMGET field names at `t_us`.

        Only the raw edges depend on `t_us` itself; the whole tiles depend on the finest-tile
        boundaries the windows' ends fall between, so they are computed once per such span."""
        base = T.SIZES[0]
        windows = self._windows_us(group)
        lows = [max(-1, t_us - w) for w in windows]
        key = (group.name, group.version, t_us // base, *(-(-low // base) for low in lows))
        cached = self._plans.get(key)
        if cached is None:
            if len(self._plans) > 64:
                self._plans.clear()
            per_tiles = [T.cover(-(-low // base) * base, (t_us // base) * base)[0] for low in lows]
            fields = list(dict.fromkeys(t for tiles in per_tiles for t in tiles))
            names = ["_gen", *(T.field(level, k) for level, k in fields)]
            cached = self._plans[key] = (per_tiles, fields, names)
        per_tiles, fields, names = cached
        raws: dict[tuple[int, int], None] = {}
        per_window = {}
        head = (t_us // base) * base
        for window, low, tiles in zip(windows, lows, per_tiles, strict=True):
            left = -(-low // base) * base
            # a window within one finest tile is all raw
            edges = [(low, t_us)] if left >= head else [r for r in ((low, left), (head, t_us)) if r[0] < r[1]]
            per_window[window] = (tiles, edges)
            raws.update(dict.fromkeys(edges))
        return fields, list(raws), per_window, names

    def _windows_us(self, group: FeatureGroup) -> list[int]:
        key = (group.name, group.version)
        found = self._window_lists.get(key)
        if found is None:
            spans = sorted({w for agg in group.aggregations for w in agg.window_list})
            found = self._window_lists[key] = [w // timedelta(microseconds=1) for w in spans]
        return found

    def read(self, group: FeatureGroup, bases: list[str], t_us: int) -> list[dict[str, Any]]:
        """Window feature values (before defaults) for each entity base key, as of `t_us`."""
        for _ in range(3):
            result = self._read_once(group, bases, t_us)
            if result is not None:
                return result
        return self._read_from_events(group, bases, t_us)

    def _read_once(self, group: FeatureGroup, bases: list[str], t_us: int) -> list[dict[str, Any]] | None:
        """One attempt at a consistent read; None when a concurrent write raced a tile build.

        Entities whose merged tiles for this plan are remembered (`_merged`, keyed by the
        entity's write generation) fetch only the generation and their edge events; the rest
        fetch their tiles too."""
        plan = self.plan(group, t_us)
        _, raws, per_window, _ = plan
        pkey = self._plan_key(group, t_us)
        known = [self._merged.get((base, pkey)) for base in bases]
        if not any(known):
            return self._read_full(group, bases, plan, pkey)
        commands: list[tuple[Any, ...]] = []
        for base in bases:
            commands.append(("HGET", K.tiles_key(base), "_gen"))
            commands += [("ZRANGEBYSCORE", K.events_key(base), f"({lo}", hi) for lo, hi in raws]
        replies = self.store.transaction(commands)
        step = 1 + len(raws)
        parts = self.parts(group)
        out: list[dict[str, Any] | None] = [None] * len(bases)
        hits: list[tuple[int, dict, list[list[bytes]]]] = []
        misses: list[int] = []
        for i, memo in enumerate(known):
            gen = replies[i * step]
            if gen is None:
                out[i] = self._finish(group, parts, per_window, {}, {})
            elif memo is not None and memo[0] == gen:
                hits.append((i, memo[1], replies[i * step + 1 : (i + 1) * step]))
            else:
                misses.append(i)
        if hits:
            # a window's value is a function of its merged tiles (fixed by generation and
            # plan) and the events in its edges: when every window's edge events are the ones
            # of the last read, so are the values (no decoding, no merging)
            fresh = []
            for i, merged, edge_events in hits:
                by_range = dict(zip(raws, edge_events, strict=True))
                edge_key = tuple(
                    tuple(m for r in edges for m in by_range[r]) for _, edges in per_window.values()
                )
                memo = known[i]
                if memo is not None and len(memo) > 2 and memo[2] == edge_key:
                    out[i] = dict(memo[3])
                else:
                    fresh.append((i, merged, edge_events, edge_key))
            found_all = [m for _, _, edge_events, _ in fresh for found in edge_events for m in found]
            decoded = self._lists_of(group, self.codec(group), found_all) if fresh else {}
            at = 0
            for i, merged, edge_events, edge_key in fresh:
                edges = {}
                for span, found in zip(raws, edge_events, strict=True):
                    if found:
                        edges[span] = T.partials(parts, decoded, range(at, at + len(found)))
                        at += len(found)
                values = self._finish(group, parts, per_window, merged, edges)
                gen = replies[i * step]
                self._merged[(bases[i], pkey)] = (gen, merged, edge_key, values)
                out[i] = dict(values)
        if misses:
            full = self._read_full(group, [bases[i] for i in misses], plan, pkey)
            if full is None:
                return None
            for i, values in zip(misses, full, strict=True):
                out[i] = values
        return out  # type: ignore[return-value]

    def _plan_key(self, group: FeatureGroup, t_us: int) -> tuple[Any, ...]:
        base = T.SIZES[0]
        lows = (max(-1, t_us - w) for w in self._windows_us(group))
        return (group.name, group.version, t_us // base, *(-(-low // base) for low in lows))

    def _read_full(
        self, group: FeatureGroup, bases: list[str], plan: tuple, pkey: tuple[Any, ...]
    ) -> list[dict[str, Any]] | None:
        """Tiles, generation and edges of every entity in one MULTI/EXEC; missing tiles built."""
        tiles, raws, per_window, names = plan
        commands: list[tuple[Any, ...]] = []
        for base in bases:
            commands.append(("HMGET", K.tiles_key(base), *names))
            commands += [("ZRANGEBYSCORE", K.events_key(base), f"({lo}", hi) for lo, hi in raws]
        replies = self.store.transaction(commands)
        step = 1 + len(raws)
        parts = self.parts(group)
        codec = self.codec(group)
        out: list[dict[str, Any]] = []
        missing: list[tuple[int, str, list[int]]] = []  # entity, base, tile positions
        states = []
        for i, base in enumerate(bases):
            got = replies[i * step]
            gen = got[0]
            cached: dict[tuple[int, int], list[Any]] = {}
            absent = []
            for position, (tile, raw) in enumerate(zip(tiles, got[1:], strict=True)):
                if raw is None:
                    absent.append(position)
                else:
                    cached[tile] = self._decoded(group, parts, raw)
            edge_events = [replies[i * step + 1 + j] for j in range(len(raws))]
            states.append((gen, cached, edge_events))
            if gen is not None and absent:
                missing.append((i, base, absent))
        if missing:
            filled = self._fill(
                group, [(base, [tiles[p] for p in absent], states[i][0]) for i, base, absent in missing]
            )
            if filled is None:
                return None
            for (i, _, _), tiles_done in zip(missing, filled, strict=True):
                states[i][1].update(tiles_done)
        # every entity's edge events decoded in one call, then cut per range
        found_all = [m for _, _, edge_events in states for found in edge_events for m in found]
        decoded = self._lists_of(group, codec, found_all)
        at = 0
        if len(self._merged) > MERGED_MAX:
            self._merged.clear()
        for base, (gen, cached, edge_events) in zip(bases, states, strict=True):
            if gen is None:  # no state at all for this entity
                out.append(self._finish(group, parts, per_window, {}, {}))
                continue
            edges = {}
            for (lo, hi), found in zip(raws, edge_events, strict=True):
                if found:
                    edges[(lo, hi)] = T.partials(parts, decoded, range(at, at + len(found)))
                    at += len(found)
            merged = self._merge_tiles(group, parts, per_window, cached)
            self._merged[(base, pkey)] = (gen, merged)
            out.append(self._finish(group, parts, per_window, merged, edges))
        return out

    def _merge_tiles(
        self, group: FeatureGroup, parts: list[T.Part], per_window: dict, cached: dict
    ) -> dict[int, dict[int, Any]]:
        """Per window, each of its aggregations merged over the window's whole tiles."""
        merged: dict[int, dict[int, Any]] = {}
        layout = self._layout(group)
        for window, (tiles, _) in per_window.items():
            pieces = [cached[t] for t in tiles if cached.get(t)]
            merged[window] = {
                index: T.merge_all(part, [p[index] for p in pieces]) for index, part, _ in layout[window]
            }
        return merged

    def _finish(
        self,
        group: FeatureGroup,
        parts: list[T.Part],
        per_window: dict,
        merged: dict[int, dict[int, Any]],
        edges: dict[tuple[int, int], list[Any]],
    ) -> dict[str, Any]:
        """Feature values: each window's merged tiles plus its edge events."""
        values: dict[str, Any] = {}
        for window, (_, raws) in per_window.items():
            pieces = [edges[r] for r in raws if edges.get(r)]
            body = merged.get(window, {})
            for index, part, name in self._layout(group)[window]:
                accs = [p[index] for p in pieces]
                if index in body:
                    accs.append(body[index])
                values[name] = T.finish(part, T.merge_all(part, accs))
        return values

    def _lists_of(self, group: FeatureGroup, codec: GroupCodec, found: list[bytes]) -> dict[str, list[Any]]:
        """Events as Python lists straight from the packed records (numpy `tolist`, no
        Polars frame: a read's edges hold a handful of events and a frame costs more)."""
        if not found:
            return {}
        decoded = codec.decode_arrays([unpack_member(m) for m in found])
        out: dict[str, list[Any]] = {"ts": decoded.event_us.tolist()}
        for i, feature in enumerate(codec.features):
            name = feature.name
            dtype = feature.polars_dtype
            if name in decoded.strings:
                strings = decoded.python_strings(name)
                values = strings if strings is not None else decoded.data(name).to_pylist()
            elif dtype == pl.Boolean:
                values = decoded.data(name).view(np.bool_).tolist()
            else:
                values = decoded.data(name).tolist()
            valid = decoded.validity[:, i]
            if not valid.all():
                values = [v if ok else None for v, ok in zip(values, valid.tolist(), strict=True)]
            if name in group.where_columns():
                values = [bool(v) for v in values]
            out["id" if name == EVENT_ID else name] = values
        return out

    def _partials_of(
        self, group: FeatureGroup, parts: list[T.Part], codec: GroupCodec, found: list[bytes]
    ) -> list[Any]:
        if not found:
            return []
        return T.partials(parts, self._lists_of(group, codec, found), range(len(found)))

    def _layout(self, group: FeatureGroup) -> dict[int, list[tuple[int, T.Part, str]]]:
        """Per window (µs): the aggregations computed over it and their feature names."""
        key = (group.name, group.version)
        found = self._layouts.get(key)
        if found is None:
            found = {}
            parts = self.parts(group)
            for index, agg in enumerate(group.aggregations):
                for window in agg.window_list:
                    span = window // timedelta(microseconds=1)
                    found.setdefault(span, []).append((index, parts[index], agg.feature_name(window)))
            self._layouts[key] = found
        return found

    # ------------------------------------------------------------------ cache misses
    def _fill(
        self, group: FeatureGroup, wanted: list[tuple[str, list[tuple[int, int]], bytes]]
    ) -> list[dict[tuple[int, int], list[Any]]] | None:
        """Compute missing tiles (from cached children, or from their few raw events), write
        them back if the entity's generation is unchanged. None: a write raced us, retry."""
        parts = self.parts(group)
        codec = self.codec(group)
        done: list[dict[tuple[int, int], list[Any]]] = [{} for _ in wanted]
        pending: list[dict[tuple[int, int], list[tuple[int, int]]]] = [{} for _ in wanted]
        frontier = [list(tiles) for _, tiles, _ in wanted]
        while any(frontier):
            commands: list[tuple[Any, ...]] = []
            layout = []
            for e, (base, _, _) in enumerate(wanted):
                for level, k in frontier[e]:
                    lo, hi = T.tile_range(level, k)
                    commands.append(("ZCOUNT", K.events_key(base), f"({lo}", hi))
                    kids = T.children(level, k) if level > 0 else []
                    if kids:
                        commands.append(("HMGET", K.tiles_key(base), *(T.field(*c) for c in kids)))
                    layout.append((e, (level, k), kids))
                commands.append(("HGET", K.tiles_key(base), "_gen"))
            replies = self.store.transaction(commands)
            at = 0
            next_frontier: list[list[tuple[int, int]]] = [[] for _ in wanted]
            raw_needed: list[tuple[int, tuple[int, int]]] = []
            gens = {}
            for e in range(len(wanted)):
                for level, k in frontier[e]:
                    count = replies[at]
                    at += 1
                    kids = T.children(level, k) if level > 0 else []
                    kid_raw = replies[at] if kids else []
                    if kids:
                        at += 1
                    tile = (level, k)
                    if count == 0:
                        done[e][tile] = []
                    elif count <= RAW_TILE_MAX or not kids:
                        raw_needed.append((e, tile))
                    else:
                        pending[e][tile] = kids
                        for kid, raw in zip(kids, kid_raw, strict=True):
                            if raw is None:
                                next_frontier[e].append(kid)
                            else:
                                done[e][kid] = self._decoded(group, parts, raw)
                gens[e] = replies[at]
                at += 1
            if any(gens[e] != wanted[e][2] for e in gens):
                return None
            if raw_needed:
                commands = []
                for e, (level, k) in raw_needed:
                    lo, hi = T.tile_range(level, k)
                    commands.append(("ZRANGEBYSCORE", K.events_key(wanted[e][0]), f"({lo}", hi))
                commands += [("HGET", K.tiles_key(base), "_gen") for base, _, _ in wanted]
                found = self.store.transaction(commands)
                if any(g != w[2] for g, w in zip(found[len(raw_needed) :], wanted, strict=True)):
                    return None
                for (e, tile), events in zip(raw_needed, found[: len(raw_needed)], strict=True):
                    done[e][tile] = self._partials_of(group, parts, codec, events)
            frontier = next_frontier
        for e in range(len(wanted)):
            for tile in sorted(pending[e]):  # children (lower levels) first
                acc: list[Any] = []
                for kid in pending[e][tile]:
                    piece = done[e][kid]
                    if piece:
                        acc = (
                            piece
                            if not acc
                            else [T.merge(p, a, b) for p, a, b in zip(parts, acc, piece, strict=True)]
                        )
                done[e][tile] = acc
        self._write_back(group, wanted, done)
        return [{t: done[e][t] for t in tiles} for e, (_, tiles, _) in enumerate(wanted)]

    def _write_back(
        self, group: FeatureGroup, wanted: list, done: list[dict[tuple[int, int], list[Any]]]
    ) -> None:
        if self.store.read_only:
            return  # a reader's user may not write (and must not: a cache all roles trust)
        parts = self.parts(group)
        commands: list[tuple[Any, ...]] = []
        for (base, _, gen), tiles in zip(wanted, done, strict=True):
            args: list[Any] = [gen]
            for (level, k), acc in tiles.items():
                args += [T.field(level, k), orjson.dumps(T.to_json(parts, acc)) if acc else b""]
            commands.append((K.tiles_key(base), args))
        try:
            # EVALSHA on the read connection, one round trip (a redis-py Script in a pipeline
            # asks SCRIPT EXISTS first: a second round trip on every cold read)
            if self._put_lua is None:
                self._put_lua = self._load_put_tiles()
            replies = self.store.send([("EVALSHA", self._put_lua, 1, key, *args) for key, args in commands])
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._put_lua = self._load_put_tiles()  # a restarted server
                self.store.send([("EVALSHA", self._put_lua, 1, key, *args) for key, args in commands])
        except (redis.RedisError, OnlineStoreError):
            pass  # a cache write is an optimisation: the next read computes the tile again

    def _load_put_tiles(self) -> str:
        """SCRIPT LOAD on the read connection, so a bounded read stays bounded here too."""
        self.store.remember_script(_PUT_TILES)  # a cluster node answering NOSCRIPT reloads it
        (reply,) = self.store.send([("SCRIPT", "LOAD", _PUT_TILES)])
        if isinstance(reply, Exception):
            raise reply
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def _read_from_events(self, group: FeatureGroup, bases: list[str], t_us: int) -> list[dict[str, Any]]:
        """Every window from the raw events of the longest one: one atomic read per entity.
        The last resort when writers keep racing the tile cache."""
        low = max(-1, t_us - group.max_window // timedelta(microseconds=1))
        found = self.store.transaction([("ZRANGEBYSCORE", K.events_key(b), f"({low}", t_us) for b in bases])
        parts = self.parts(group)
        per_window = self._whole(group, t_us)
        out = []
        for events in found:
            lists = self._lists_of(group, self.codec(group), events)
            edges = {}
            for _, raws in per_window.values():
                (lo, hi) = raws[0]
                rows = [r for r, ts in enumerate(lists.get("ts", [])) if lo < ts <= hi]
                edges[(lo, hi)] = T.partials(parts, lists, rows) if rows else []
            out.append(self._finish(group, parts, per_window, {}, edges))
        return out

    def _whole(self, group: FeatureGroup, t_us: int) -> dict:
        return {w: ([], [(max(-1, t_us - w), t_us)]) for w in self._windows_us(group)}


_PUT_TILES = """
local gen = redis.call('HGET', KEYS[1], '_gen')
if (not gen) or gen ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

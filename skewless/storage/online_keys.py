"""Every Redis key skewless uses, built here and nowhere else.

Why one module: the key format is the online store's layout. Readers, writers, retirement,
streams and the served log must agree on it byte for byte, and on a Redis Cluster the hash
tag decides which node a key lives on; when five modules each formatted keys, a change in
one silently made the others read nothing.

    <prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>            latest value of a row group
    <prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>:events     window state (sorted set of events)
    <prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>:ids        window state (event id -> member)
    <prefix>:{<entity>:<k1>|<k2>}:<group>:v<N>:tiles      window state (tile cache, `_gen`)
    <prefix>:_meta:<group>:v<N>                           freshness marker (a hash)
    <prefix>:_vindex:<group>:v<N>                         pushed embeddings (stream) for the index
    <prefix>:stream:<source>                              stream of a stream source
    <prefix>:stream:<source>:schema / :applied            its schema and micro-batch cursor
    <prefix>:stream:_served:<service>:v<N>                served-vector log of a service
    <prefix>:_audit                                       the audit log (one stream: one slot)

The braces are a Redis Cluster hash tag: every key of one entity (all its groups, versions
and window keys) hashes to one slot, so a per-entity script or transaction never crosses
slots. String key values are percent-escaped for `% | { }`, so no two entities share a key
and a key value can never open or close the tag. The prefix may not contain braces
(`config.validate_key_prefix`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from skewless.errors import RequestError
from skewless.language.feature_group import FeatureGroup

ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "{": "%7B", "}": "%7D"})
_ESCAPE_PAIRS = (("%", "%25"), ("|", "%7C"), ("{", "%7B"), ("}", "%7D"))

EVENTS, IDS, TILES = ":events", ":ids", ":tiles"
WINDOW_SUFFIXES: tuple[str, str, str] = (EVENTS, IDS, TILES)


# ---------------------------------------------------------------------- entity keys
def entity_head(prefix: str, entity: str) -> str:
    """The text before an entity's key values: `<prefix>:{<entity>:`."""
    return f"{prefix}:{{{entity}:"


def version_tail(name: str, version: int) -> str:
    """The text after an entity's key values: `}:<group>:v<N>`."""
    return f"}}:{name}:v{version}"


def key_expression(group: FeatureGroup, prefix: str) -> pl.Expr:
    """Vectorised online keys for a frame holding the group's join-key columns."""
    return version_key_expression(
        group.entity.name, group.entity.key_schema, group.name, group.version, prefix
    )


def version_key_expression(
    entity: str, key_schema: Mapping[str, pl.DataType], name: str, version: int, prefix: str
) -> pl.Expr:
    """`key_expression` from the parts a lock-file entry keeps (for versions no longer in code)."""
    parts: list[pl.Expr] = [pl.lit(entity_head(prefix, entity))]
    for i, (column, dtype) in enumerate(key_schema.items()):
        if i:
            parts.append(pl.lit("|"))
        if dtype == pl.String:
            part = pl.col(column)
            for char, code in _ESCAPE_PAIRS:
                part = part.str.replace_all(char, code, literal=True)
        else:
            part = pl.col(column).cast(pl.String)
        parts.append(part)
    parts.append(pl.lit(version_tail(name, version)))
    return pl.concat_str(parts)


def entity_keys(group: FeatureGroup, prefix: str, frame: pl.DataFrame) -> list[str]:
    """`key_expression` for a few rows, formatted in Python (the same strings): a Polars
    expression costs tens of microseconds a call, a push of one event formats one key."""
    parts = []
    for column, dtype in group.entity.key_schema.items():
        values = frame.get_column(column).to_list()
        if any(v is None for v in values):
            raise RequestError(f"writing feature group '{group.ref}': a row has a null join key '{column}'")
        parts.append(
            [v.translate(ESCAPES) for v in values] if dtype == pl.String else [str(v) for v in values]
        )
    head, tail = entity_head(prefix, group.entity.name), version_tail(group.name, group.version)
    return [head + "|".join(vs) + tail for vs in zip(*parts, strict=True)]


def format_keys(
    key_schema: Mapping[str, pl.DataType], head: str, tail: str, columns: Mapping[str, Sequence[Any]]
) -> list[str]:
    """Keys from request columns of already-checked Python values (the read path: one
    f-string a key, the same strings as `key_expression`)."""
    parts = []
    for column, dtype in key_schema.items():
        values = columns[column]
        parts.append([v.translate(ESCAPES) for v in values] if dtype == pl.String else values)
    if len(parts) == 1:
        return [f"{head}{v}{tail}" for v in parts[0]]
    return [f"{head}{'|'.join(map(str, vs))}{tail}" for vs in zip(*parts, strict=True)]


def key_pattern(prefix: str, group: FeatureGroup) -> str:
    """A human-readable description of a group version's keys (asset metadata)."""
    return f"{entity_head(prefix, group.entity.name)}<keys>{version_tail(group.name, group.version)}"


def scan_pattern(prefix: str, group: FeatureGroup | None = None) -> str:
    """SCAN MATCH pattern of one group version's keys, or of every key under `prefix`."""
    if group is None:
        return f"{prefix}:*"
    return f"{prefix}:*{version_tail(group.name, group.version)}" + (":*" if group.is_windowed else "")


# ---------------------------------------------------------------------- window state
def events_key(base: str) -> str:
    return base + EVENTS


def ids_key(base: str) -> str:
    return base + IDS


def tiles_key(base: str) -> str:
    return base + TILES


def window_keys(base: str) -> tuple[str, str, str]:
    """An entity's three window-state keys (same hash tag: one slot)."""
    return base + EVENTS, base + IDS, base + TILES


# ---------------------------------------------------------------------- per group version
def meta_key(prefix: str, name: str, version: int) -> str:
    """The freshness marker of a group version: newest event time written and when."""
    return f"{prefix}:_meta:{name}:v{version}"


def vector_updates_key(prefix: str, name: str, version: int) -> str:
    """The stream of pushed latest rows of a group version with a vector index: every serving
    process applies its new entries to its loaded index before searching."""
    return f"{prefix}:_vindex:{name}:v{version}"


# ---------------------------------------------------------------------- streams
def stream_key(prefix: str, source: str) -> str:
    return f"{prefix}:stream:{source}"


def stream_schema_key(prefix: str, source: str) -> str:
    return stream_key(prefix, source) + ":schema"


def stream_applied_key(prefix: str, source: str) -> str:
    return stream_key(prefix, source) + ":applied"


def served_stream(service_ref: str) -> str:
    """The stream source name of a service version's served-vector log."""
    return f"_served:{service_ref}"


# ---------------------------------------------------------------------- audit
def audit_key(prefix: str) -> str:
    """The audit log's stream (`storage.audit`): one key, so one slot on a cluster, and the
    only key the audit ACL user may append to."""
    return f"{prefix}:_audit"


# ---------------------------------------------------------------------- routing
def command_key(command: Sequence[Any]) -> Any:
    """The key a raw command routes by on a cluster (None: no key, e.g. SCRIPT LOAD).

    EVAL/EVALSHA carry theirs after the key count; every other command skewless sends
    raw names its key first.
    """
    name = command[0]
    name = name.upper() if isinstance(name, str) else bytes(name).decode().upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("SCRIPT", "PING", "MULTI", "EXEC", "INFO"):
        return None
    return command[1] if len(command) > 1 else None

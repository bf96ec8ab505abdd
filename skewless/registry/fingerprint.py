"""Fingerprints: what a group version computes, so a change without a version bump is caught.

A fingerprint covers what decides the values a version stores and serves: the
transformation's source (and the source of module-level functions it calls), the stored
schema and defaults, the window aggregations, and the source's identity (name, kind, time
and id columns, DuckDB query; not its path, which differs between machines). Descriptions,
owners, tags, checks and TTL are metadata: changing them needs no new version.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import textwrap
import types
from typing import Any

from skewless.language.feature_group import FeatureGroup
from skewless.language.source import Source


def _function_source(fn: Any, seen: set[int] | None = None) -> str:
    """The function's source, followed by the source of module-level functions it names."""
    seen = seen if seen is not None else set()
    if id(fn) in seen:
        return ""
    seen.add(id(fn))
    try:
        text = textwrap.dedent(inspect.getsource(fn)).strip()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = hashlib.sha256(code.co_code).hexdigest() if code is not None else repr(fn)
    parts = [text]
    code = getattr(fn, "__code__", None)
    module_globals = getattr(fn, "__globals__", {})
    if code is not None:
        for name in sorted(set(code.co_names)):
            helper = module_globals.get(name)
            if isinstance(helper, types.FunctionType) and helper.__module__ == fn.__module__:
                parts.append(_function_source(helper, seen))
    return "\n\n".join(p for p in parts if p)


def source_identity(source: Source) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "name": source.name,
        "kind": type(source).__name__,
        "timestamp_field": source.timestamp_field,
        "created_timestamp_field": source.created_timestamp_field,
        "id_field": getattr(source, "id_field", None),
    }
    for attribute in ("table", "query"):
        value = getattr(source, attribute, None)
        if value:
            identity[attribute] = " ".join(str(value).split())
    return identity


def components(group: FeatureGroup) -> dict[str, Any]:
    """The parts of a fingerprint, kept readable so a refusal can show what changed."""
    return {
        "transformation": _function_source(group.transformation) if group.transformation else None,
        # bookkeeping columns of the storage layout (event_seq) are not what a version computes
        "schema": {name: str(dtype) for name, dtype in group.offline_schema().items() if name != "event_seq"},
        "defaults": {f.name: repr(f.default) for f in group.features},
        "windows": [
            {
                "function": a.function,
                "column": a.column,
                "windows": [str(w) for w in a.window_list],
                "name": a.name,
                "where": str(a.where) if a.where is not None else None,
                "dtype": str(a.dtype),
            }
            for a in group.aggregations
        ],
        "source": source_identity(group.source),
    }


def digest(parts: dict[str, Any]) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fingerprint(group: FeatureGroup) -> str:
    return digest(components(group))

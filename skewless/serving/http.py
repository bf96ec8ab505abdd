"""The HTTP feature server (`skewless serve`): batched JSON online lookups.

Starlette + uvicorn: a small, well-kept ASGI stack (already shipped with dagster-webserver, so
no new runtime), with uvicorn's uvloop/httptools for throughput. Lookups run in worker threads:
the read path is a blocking redis-py call plus numpy work, and redis-py's pool is thread-safe.

    POST /features/online   {"entities": [{...}] | {"col": [...]}, "features": [...] | "service": "x:vN",
                             "full_feature_names": false}
                            -> {"features": [names...], "results": [{...}, ...]}
    GET  /features          the feature services and group versions this caller may read
    GET  /health            200 when Redis answers within the request deadline, else 503
    GET  /metrics           Prometheus text: requests, errors, latency by service/group
    POST /push              {"source": "transactions", "rows": [{...}, ...]} -> FeatureStore.push
                            (Feast's push server shape): {"source": ..., "rows": n, "written": {...}}
    GET  /openapi.json      the request/response shapes (OpenAPI 3)

Access (optional): a policy maps an API key (header `Authorization: Bearer <key>` or
`X-API-Key`) to a role. A role is either one of the feature repository's `Role`s — then the
server answers that key's lookups over a connection as the role's own Redis ACL user
(`skewless roles apply`), so Redis refuses what the role may not read even if a check here
were wrong, and a refusal is a 403 naming the role and the group — or a role of the policy
file itself (`roles`), listing the feature services and group versions it may read (fnmatch
patterns over `name:vN`, such as `fraud_model:*` or `user_*:v2`) and the sources it may push
to (`push`, fnmatch patterns over source names; none by default: a read key must not be able
to change what models see), checked here only. `/features` and `/metrics` show a key only
what its role may read. Without a policy the server is open (local use); with one, it is
validated strictly at startup, because a typo in an access policy must never silently
widen access.

Failing closed and failing fast: every request has a deadline (`SKEWLESS_REQUEST_TIMEOUT_MS`,
500 ms by default). A lookup still waiting on Redis then answers 503, and its thread is
abandoned (at most `max_outstanding` of them, after which lookups are refused at once) rather
than holding the client for the whole outage. Bodies are capped (`SKEWLESS_MAX_BODY_BYTES`,
8 MiB) before they are read. Redis addresses and connection errors are logged, never sent.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import orjson
import polars as pl
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skewless.client.feature_store import FeatureStore
from skewless.errors import (
    AccessDenied,
    DefinitionError,
    OnlineStoreError,
    OnlineStoreTimeout,
    RequestError,
    SkewlessError,
)
from skewless.language.feature_service import FeatureRef
from skewless.storage import audit

if TYPE_CHECKING:
    from skewless.repository import FeatureRepository, RoleAccess

MAX_ENTITIES = 10_000
DEFAULT_REQUEST_TIMEOUT_MS = 500
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_OUTSTANDING = 64
UNKNOWN_LABEL = "unknown"  # the one metrics label for services/groups the repository lacks
INLINE_MAX_ENTITIES = 256  # lookups of up to this many entities run on the event loop
INLINE_PAUSE_S = 5.0  # after an inline lookup timed out, threads only for this long
STORE_NAME = "the online store (Redis)"  # what clients are told; the address only goes to the log

log = logging.getLogger("skewless.serving")
T = TypeVar("T")


class PolicyError(SkewlessError):
    """The access policy file is missing, unreadable or invalid: the server must not start."""


class ServerConfigError(SkewlessError):
    """A server setting from the environment (timeout, body limit) is not a positive integer."""


@dataclass(frozen=True)
class ServerSettings:
    """Limits that keep one slow dependency or one huge request from taking the server down.

    `request_timeout_s`: deadline of every request (a lookup or health check still waiting on
    Redis then answers 503). `max_body_bytes`: larger bodies get 413 before they are read.
    `max_outstanding`: lookups allowed to be running at once, including ones abandoned at
    their deadline (their threads still wait on Redis); beyond it requests get 503 at once,
    so a hung Redis cannot make the server spawn threads without bound.
    """

    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_MS / 1000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING

    @classmethod
    def from_env(cls) -> ServerSettings:
        """`SKEWLESS_REQUEST_TIMEOUT_MS`, `SKEWLESS_MAX_BODY_BYTES`, `SKEWLESS_MAX_OUTSTANDING`."""
        return cls(
            request_timeout_s=_positive_int("SKEWLESS_REQUEST_TIMEOUT_MS", DEFAULT_REQUEST_TIMEOUT_MS) / 1000,
            max_body_bytes=_positive_int("SKEWLESS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_outstanding=_positive_int("SKEWLESS_MAX_OUTSTANDING", DEFAULT_MAX_OUTSTANDING),
        )


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ServerConfigError(f"{name} must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise ServerConfigError(f"{name} must be a positive integer, got {value}")
    return value


@dataclass
class Role:
    """What one role may read — patterns over service refs and group refs (`name:vN`) — and
    which sources it may push events to (patterns over source names)."""

    services: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    push: list[str] = field(default_factory=list)
    name: str = ""

    def may_push(self, source: str) -> bool:
        return any(fnmatch.fnmatchcase(source, p) for p in self.push)

    def may_read_service(self, ref: str) -> bool:
        return any(fnmatch.fnmatchcase(ref, p) for p in self.services)

    def may_read_group(self, ref: str) -> bool:
        return any(fnmatch.fnmatchcase(ref, p) for p in self.groups)


@dataclass
class RepositoryGrant:
    """A key whose role is one of the repository's `Role`s: what it may read and push to,
    resolved by the repository, and enforced again by Redis through the role's ACL user."""

    name: str
    access: RoleAccess
    pushable: frozenset[str]  # sources every group of which the role may write

    @classmethod
    def of(cls, repository: FeatureRepository, name: str) -> RepositoryGrant:
        access = repository.access(name)
        sources = {g.source.name for g in repository.groups}
        pushable = frozenset(
            source
            for source in sources
            if not access.not_written(g for g in repository.groups if g.source.name == source)
        )
        return cls(name, access, pushable)

    def may_push(self, source: str) -> bool:
        return source in self.pushable

    def may_read_service(self, ref: str) -> bool:
        return ref in self.access.service_refs

    def may_read_group(self, ref: str) -> bool:
        return ref in self.access.group_refs


Grant = Role | RepositoryGrant

_ROLE_FIELDS = ("services", "groups", "push")
_KIND_NAMES = {"services": "service", "groups": "group", "push": "source"}


@dataclass
class AccessPolicy:
    """API keys to roles. An empty policy (no file given) lets everyone read everything."""

    keys: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    #: keys' roles that are the repository's `Role`s (resolved by `check_against`)
    grants: dict[str, RepositoryGrant] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, repository: FeatureRepository | None = None) -> AccessPolicy:
        """Parse and strictly validate `{"keys": {"<api key>": "<role>"}, "roles": {"<role>":
        {"services": [...], "groups": [...], "push": [...]}}}`. A key may name a role of
        `repository` instead (then `roles` may be left out); a name both define is refused.

        Strict because every lenient reading of a policy widens access: a string where a list
        belongs would be iterated character by character (`"*"` matches everything), and an
        unknown top-level field such as `"Keys"` would leave no keys, i.e. an open server.
        With `repository`, every pattern must also match one of its services/group versions
        (a pattern that matches nothing is a typo, not a rule).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"access policy is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise PolicyError(f"access policy must be a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"keys", "roles"})
        if unknown:
            raise PolicyError(
                f"access policy: unknown field(s) {', '.join(map(repr, unknown))} "
                "(expected 'keys' and 'roles')"
            )
        repository_roles = {r.name for r in repository.roles} if repository is not None else set()
        if "roles" not in raw and repository_roles:
            raw["roles"] = {}  # every key names a repository role (checked below)
        for name in ("keys", "roles"):
            if name not in raw:
                raise PolicyError(f"access policy: field '{name}' is required")
            if not isinstance(raw[name], dict) or (
                not raw[name] and not (name == "roles" and repository_roles)
            ):
                raise PolicyError(f"access policy: '{name}' must be a non-empty object")
        both = sorted(set(raw["roles"]) & repository_roles)
        if both:
            raise PolicyError(
                f"access policy: role(s) {', '.join(map(repr, both))} are defined both in 'roles' and "
                "in the feature repository: rename one (which one grants access must never be a guess)"
            )
        roles: dict[str, Role] = {}
        for role_name, spec in raw["roles"].items():
            where = f"roles.{role_name}"
            if not isinstance(spec, dict):
                raise PolicyError(
                    f"access policy: '{where}' must be an object with 'services', 'groups' and/or 'push'"
                )
            extra = sorted(set(spec) - set(_ROLE_FIELDS))
            if extra:
                raise PolicyError(
                    f"access policy: '{where}' has unknown field(s) {', '.join(map(repr, extra))} "
                    "(expected 'services', 'groups', 'push')"
                )
            patterns: dict[str, list[str]] = {}
            for kind in _ROLE_FIELDS:
                value = spec.get(kind, [])
                if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
                    raise PolicyError(
                        f"access policy: '{where}.{kind}' must be a list of non-empty pattern strings, "
                        f"got {json.dumps(value)}"
                    )
                patterns[kind] = list(value)
            roles[role_name] = Role(**patterns, name=role_name)
        keys: dict[str, str] = {}
        for key, role_name in raw["keys"].items():
            # never echo a whole key: errors end up in logs
            hint = f"'keys' entry ...{key[-4:]}" if len(key) >= 12 else "a 'keys' entry"
            if not key.strip():
                raise PolicyError("access policy: 'keys' has an empty API key")
            if not isinstance(role_name, str):
                raise PolicyError(f"access policy: {hint} must name a role (a string)")
            if role_name not in roles and role_name not in repository_roles:
                also = " nor the feature repository" if repository is not None else ""
                raise PolicyError(
                    f"access policy: {hint} names role '{role_name}', which 'roles' does not define{also}"
                )
            keys[key] = role_name
        policy = cls(keys=keys, roles=roles)
        if repository is not None:
            policy.check_against(repository)
        return policy

    def check_against(self, repository: FeatureRepository) -> None:
        """Every pattern must match a service/group version/source of the repository served."""
        known = {
            "services": sorted(s.ref for s in repository.services),
            "groups": sorted(g.ref for g in repository.groups),
            "push": sorted({g.source.name for g in repository.groups}),
        }
        for role_name in set(self.keys.values()) - set(self.roles):
            try:
                self.grants[role_name] = RepositoryGrant.of(repository, role_name)
            except DefinitionError as exc:
                raise PolicyError(f"access policy: {exc}") from None
        for role_name, role in self.roles.items():
            for kind in _ROLE_FIELDS:
                over = "source names" if kind == "push" else "'name:vN'"
                for i, pattern in enumerate(getattr(role, kind)):
                    if not any(fnmatch.fnmatchcase(ref, pattern) for ref in known[kind]):
                        raise PolicyError(
                            f"access policy: 'roles.{role_name}.{kind}[{i}]' = {pattern!r} matches no "
                            f"{_KIND_NAMES[kind]} of the repository (patterns are fnmatch over "
                            f"{over}; "
                            f"known: {', '.join(known[kind]) or 'none'})"
                        )

    @property
    def open(self) -> bool:
        return not self.keys

    def role_for(self, request: Request) -> Grant | None:
        header = request.headers.get("authorization", "")
        key = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        role = self.keys.get(key) if key else None
        if not role:
            return None
        return self.roles[role] if role in self.roles else self.grants[role]


def load_policy(path: str, repository: FeatureRepository | None = None) -> AccessPolicy:
    """The policy in the file at `path`; any problem is a `PolicyError` (never an open server)."""
    if not path.strip():
        raise PolicyError("SKEWLESS_SERVER_POLICY is set but empty: name the policy file or unset it")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError(f"access policy {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return AccessPolicy.from_json(text, repository)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def entity_count(entities: Any) -> int:
    if isinstance(entities, list):
        return len(entities)
    if isinstance(entities, dict):
        return max((len(v) for v in entities.values() if isinstance(v, list)), default=0)
    raise HTTPError(400, "'entities' must be a list of objects or an object of columns")


def json_response(payload: Any, status: int = 200) -> Response:
    # orjson writes datetimes as RFC 3339 and NaN/inf as null (JSON has no NaN)
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def service_ref(text: str) -> str:
    """`name:vN` for a requested service (`name` alone means v1); 400 when it is not one."""
    try:
        ref = FeatureRef.parse(text if ":" in text else f"{text}:v1")
    except DefinitionError:
        ref = None
    if ref is None or ref.feature is not None:
        raise HTTPError(400, f"feature service reference {text!r} is invalid: expected 'name:vN'")
    return ref.group_ref


def parse_features(features: list[str]) -> list[FeatureRef]:
    """Clients repeat the same feature lists: each distinct list is parsed once (a 50-feature
    list costs as much to parse as the rest of a request's validation)."""
    return list(_parsed_features(tuple(features)))


@functools.lru_cache(maxsize=1024)
def _parsed_features(features: tuple[str, ...]) -> tuple[FeatureRef, ...]:
    refs = []
    for text in features:
        try:
            refs.append(FeatureRef.parse(text))
        except DefinitionError as exc:
            raise HTTPError(400, str(exc)) from None
    return tuple(refs)


@dataclass
class LookupRequest:
    """A validated body: what to read, for whom, and the metrics label it is counted under."""

    entities: Any
    features: list[str] | None
    service: str | None
    full_feature_names: bool
    refs: list[FeatureRef]
    rows: bool = False  # `"format": "rows"`: one array per entity instead of one object


def json_object(body: bytes, fields: set[str], hint: str = "") -> dict[str, Any]:
    """The body as a JSON object with only known fields (400 naming what is wrong)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise HTTPError(400, "request body must be a JSON object")
    unknown = set(payload) - fields
    if unknown:
        raise HTTPError(400, f"unknown request fields: {', '.join(sorted(unknown))}{hint}")
    return payload


def parse_request(body: bytes) -> LookupRequest:
    """Shape checks on the body; every failure is a 4xx naming the field at fault."""
    payload = json_object(body, {"entities", "features", "service", "full_feature_names", "format"})
    features, service = payload.get("features"), payload.get("service")
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features)
    ):
        raise HTTPError(400, "'features' must be a list of 'group:vN:feature' strings")
    if features is not None and not features:
        raise HTTPError(400, "'features' is empty: name at least one 'group:vN:feature' (or use 'service')")
    if service is not None and not isinstance(service, str):
        raise HTTPError(400, "'service' must be a string such as 'fraud_model:v1'")
    if features is not None and service is not None:
        raise HTTPError(400, "pass exactly one of 'features' or 'service'")
    full = payload.get("full_feature_names", False)
    if not isinstance(full, bool):
        raise HTTPError(400, "'full_feature_names' must be true or false")
    refs = parse_features(features) if features is not None else []
    if service is not None:
        service_ref(service)
    entities = payload.get("entities")
    if entities is None:
        raise HTTPError(400, "'entities' is required: a list of objects or an object of columns")
    count = entity_count(entities)
    if count > MAX_ENTITIES:
        raise HTTPError(413, f"at most {MAX_ENTITIES} entities per request, got {count}")
    shape = payload.get("format", "objects")
    if shape not in ("objects", "rows"):
        raise HTTPError(400, "'format' must be 'objects' (one object per entity) or 'rows' (one array each)")
    return LookupRequest(entities, features, service, full, refs, rows=shape == "rows")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`: from Content-Length
    before anything is read, else while streaming (chunked bodies), never buffering past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header") from None
        if size > limit:
            raise HTTPError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_ERROR = {"$ref": "#/components/schemas/Error"}


MAX_K = 1000


@dataclass
class SearchRequest:
    group: str
    vector: list[float] | None
    entity: dict[str, Any] | None
    k: int
    filter: dict[str, Any]
    features: list[str]


def parse_search(body: bytes) -> SearchRequest:
    """`POST /features/search`: `{"group": "g:vN", "vector": [...] | "entity": {...}, "k": 10,
    "filter": {"country": "FR" | ["FR", "DE"]}, "features": ["country", "g:vN:f"]}`.

    JSON cannot carry a Polars expression, so `filter` is equality (a value) or membership
    (a list) per scalar column, all of them required (AND): what look-alike queries use."""
    payload = json_object(body, {"group", "vector", "entity", "k", "filter", "features"})
    group = payload.get("group")
    if not isinstance(group, str):
        raise HTTPError(400, "'group' is required: the indexed group version, e.g. 'item_embeddings:v2'")
    try:
        group = FeatureRef.parse(group).group_ref
    except DefinitionError as exc:
        raise HTTPError(400, f"'group': {exc}") from None
    vector, entity = payload.get("vector"), payload.get("entity")
    if (vector is None) == (entity is None):
        raise HTTPError(400, "pass exactly one of 'vector' (a list of numbers) or 'entity' (its join keys)")
    if vector is not None and (
        not isinstance(vector, list)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector)
    ):
        raise HTTPError(400, "'vector' must be a list of numbers")
    if entity is not None and not isinstance(entity, dict):
        raise HTTPError(400, "'entity' must be an object of join keys, e.g. {\"item_id\": 7}")
    k = payload.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise HTTPError(400, f"'k' must be an integer in 1..{MAX_K}")
    filters = payload.get("filter") or {}
    if not isinstance(filters, dict):
        raise HTTPError(400, "'filter' must be an object: {\"column\": value or [values]}")
    features = payload.get("features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise HTTPError(400, "'features' must be a list of feature names or 'group:vN:feature' strings")
    return SearchRequest(group, vector, entity, k, filters, features)


def filter_expression(filters: dict[str, Any]) -> pl.Expr | None:
    """The JSON filter as one Polars expression (None without any)."""
    parts = []
    for column, value in filters.items():
        if isinstance(value, list):
            parts.append(pl.col(column).is_in(pl.Series(value).implode()))
        elif value is None or isinstance(value, dict):
            raise HTTPError(400, f"'filter.{column}' must be a value or a list of values")
        else:
            parts.append(pl.col(column) == value)
    if not parts:
        return None
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr


def _responses(*codes: str) -> dict[str, Any]:
    return {c: {"description": c, "content": {"application/json": {"schema": _ERROR}}} for c in codes}


# Written out rather than generated from docstrings: the request shape is checked by hand in
# parse_request, and a static document costs nothing per request and needs no YAML parser.
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "skewless feature server", "version": "1"},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}},
    },
    "security": [{"bearer": []}, {"apiKey": []}, {}],
    "paths": {
        "/features/online": {
            "post": {
                "summary": "Latest feature values for a batch of entities",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["entities"],
                                "properties": {
                                    "entities": {
                                        "oneOf": [
                                            {"type": "array", "items": {"type": "object"}, "maxItems": 10000},
                                            {"type": "object", "additionalProperties": {"type": "array"}},
                                        ]
                                    },
                                    "features": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                    "service": {"type": "string", "example": "fraud_model:v1"},
                                    "full_feature_names": {"type": "boolean", "default": False},
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "one result object per entity, in request order"},
                    **_responses("400", "401", "403", "404", "408", "413", "422", "503"),
                },
            }
        },
        "/push": {
            "post": {
                "summary": "Push events of a source to the online store (FeatureStore.push)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["source", "rows"],
                                "properties": {
                                    "source": {"type": "string", "example": "transactions"},
                                    "rows": {
                                        "oneOf": [
                                            {"type": "array", "items": {"type": "object"}, "maxItems": 10000},
                                            {"type": "object", "additionalProperties": {"type": "array"}},
                                        ],
                                        "description": "time columns as ISO 8601 strings with an offset",
                                    },
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "rows accepted; keys/events written per group version"},
                    **_responses("400", "401", "403", "404", "408", "413", "422", "503"),
                },
            }
        },
        "/features/search": {
            "post": {
                "summary": "Nearest entities in a group version's vector index (FeatureStore.search)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["group"],
                                "properties": {
                                    "group": {"type": "string", "example": "item_embeddings:v2"},
                                    "vector": {"type": "array", "items": {"type": "number"}},
                                    "entity": {
                                        "type": "object",
                                        "description": "join keys; use its embedding",
                                    },
                                    "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                                    "filter": {
                                        "type": "object",
                                        "description": "column: value or [values]; all must hold",
                                    },
                                    "features": {"type": "array", "items": {"type": "string"}},
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "results nearest first: join keys, distance, features"},
                    **_responses("400", "401", "403", "404", "408", "413", "422", "503"),
                },
            }
        },
        "/features": {"get": {"summary": "Services and group versions this key may read"}},
        "/health": {"get": {"summary": "200 when Redis answers within the deadline, else 503"}},
        "/metrics": {"get": {"summary": "Prometheus metrics"}},
    },
}


MAX_PUSH_ROWS = 10_000


@dataclass
class PushRequest:
    """A validated `/push` body: the source and its rows as a frame of the source's shape."""

    source: str
    rows: list[dict[str, Any]] | dict[str, list[Any]]


def parse_push(body: bytes) -> PushRequest:
    """Shape checks on a `/push` body (Feast's push server takes the same two things: a
    source name and its rows); every failure is a 4xx naming the field."""
    payload = json_object(body, {"source", "rows"}, hint=" (expected source, rows)")
    source, rows = payload.get("source"), payload.get("rows")
    if not isinstance(source, str) or not source:
        raise HTTPError(400, "'source' must name a source, e.g. 'transactions'")
    if isinstance(rows, list):
        if not all(isinstance(r, dict) for r in rows):
            raise HTTPError(400, "'rows' must be a list of objects (one per event) or an object of columns")
    elif isinstance(rows, dict):
        if not all(isinstance(v, list) for v in rows.values()):
            raise HTTPError(400, "'rows' as an object of columns needs a list per column")
    else:
        raise HTTPError(400, "'rows' is required: a list of objects (one per event) or an object of columns")
    count = entity_count(rows)
    if count > MAX_PUSH_ROWS:
        raise HTTPError(413, f"at most {MAX_PUSH_ROWS} rows per push, got {count}")
    return PushRequest(source, rows)


def _utc_times(column: str, values: list[Any]) -> pl.Series:
    """ISO 8601 strings with an offset (`Z`, `+02:00`) as UTC µs. A naive time is refused:
    reading it as UTC is exactly the silent shift that corrupts partitions."""
    out: list[datetime | None] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise RequestError(f"rows: column '{column}' row {i} is {value!r}, not an ISO 8601 time")
        if parsed.tzinfo is None:
            raise RequestError(
                f"rows: column '{column}' row {i} is {value!r}, a time without an offset; "
                "send it with one (e.g. '2026-10-01T12:00:00Z')"
            )
        out.append(parsed.astimezone(UTC))
    return pl.Series(column, out, dtype=pl.Datetime("us", "UTC"))


def push_frame(store: FeatureStore, request: PushRequest) -> pl.DataFrame:
    """The JSON rows as a frame in the source's dtypes, where JSON cannot say them itself:
    time columns from ISO 8601 strings, integers into the declared width (a value that does
    not fit is an error naming the column). Everything else — missing or extra columns, a
    dtype that could lose values — is left to `FeatureStore.push`, which names it."""
    groups = [g for g in store.repository.groups if g.source.name == request.source]
    if not groups:
        known = ", ".join(sorted({g.source.name for g in store.repository.groups}))
        raise HTTPError(404, f"unknown source '{request.source}' (sources with feature groups: {known})")
    source = groups[0].source
    rows = request.rows
    columns: dict[str, list[Any]] = (
        {k: list(v) for k, v in rows.items()}
        if isinstance(rows, dict)
        else {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    )
    series = []
    for name, values in columns.items():
        if name in source.time_columns:
            series.append(_utc_times(name, values))
            continue
        # JSON numbers: 12 and 12.5 in one column are one float column, not a type clash
        numbers = [v for v in values if v is not None]
        floats = all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) and any(
            isinstance(v, float) for v in numbers
        )
        try:
            series.append(pl.Series(name, values, dtype=pl.Float64 if floats else None, strict=True))
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            raise RequestError(
                f"rows: column '{name}' mixes value types (or a number is out of range)"
            ) from None
    frame = pl.DataFrame(series)
    # the schema push itself normalises to (cached by the store); JSON has only Int64/Float64
    reference = store._source_schema(source)
    if reference is None:
        return frame
    casts = []
    for name, dtype in reference.items():
        if name not in frame.columns or frame.schema[name] == dtype:
            continue
        actual = frame.schema[name]
        if isinstance(dtype, pl.Array) and isinstance(actual, pl.List) and actual.inner.is_numeric():
            # JSON has no fixed-size arrays: a vector arrives as a list of numbers
            values = frame.get_column(name)
            lengths = values.list.len()
            if (lengths.fill_null(dtype.size) != dtype.size).any():
                raise RequestError(
                    f"rows: column '{name}' holds lists of {sorted(set(lengths.drop_nulls()))[:5]} values, "
                    f"the source's {dtype} needs {dtype.size}"
                )
            casts.append(values.cast(pl.List(dtype.inner)).list.to_array(dtype.size))
            continue
        numeric = dtype.is_integer() or dtype.is_float()
        if ((actual.is_integer() or actual == pl.Null) and (numeric or actual == pl.Null)) or (
            actual == pl.Float64 and dtype == pl.Float32
        ):
            values = frame.get_column(name)
            cast = values.cast(dtype, strict=False)
            if (cast.is_null() & values.is_not_null()).any():
                raise RequestError(f"rows: column '{name}' has values out of range for the source's {dtype}")
            casts.append(cast)
    return frame.with_columns(casts) if casts else frame


def create_app(
    store: FeatureStore, policy: AccessPolicy | None = None, settings: ServerSettings | None = None
) -> Starlette:
    """The ASGI app; `store` is shared by all requests (its Redis pool is thread-safe).

    A given policy is checked against the store's repository here too, so an app built
    directly (tests, embedding) cannot be more open than `skewless serve` would be.
    """
    policy = policy or AccessPolicy()
    if not policy.open:
        policy.check_against(store.repository)
    # one store per repository role, connected as the role's Redis user (the offline store
    # and the served-vector log stay the server's own: a reader's user may not write the log)
    role_stores: dict[str, FeatureStore] = {}
    for name in sorted(policy.grants):
        role_store = FeatureStore(store.repository, store.config, offline=store.offline, role=name)
        role_store.monitor = store.monitor
        # the server records every request itself, under the token's role (`audit.scope`)
        role_store.audit_log = store.audit_log
        role_stores[name] = role_store
        # connections (a cluster's topology, a writer's and the audit user's) opened now,
        # not inside a role's first request deadline; `serve` repeats it and fails loudly
        try:
            role_store.warm()
        except Exception as exc:  # reported per request, and by `serve`
            log.warning("role %s: could not open its connections at start: %s", name, exc)
    audit_log = store.audit_log

    def store_for(role: Grant | None) -> FeatureStore:
        return role_stores[role.name] if isinstance(role, RepositoryGrant) else store

    settings = settings or ServerSettings()
    timeout = settings.request_timeout_s
    known_services = {s.ref for s in store.repository.services}
    known_groups = {g.ref for g in store.repository.groups}
    outstanding = threading.BoundedSemaphore(settings.max_outstanding)
    lookups = anyio.CapacityLimiter(settings.max_outstanding)

    registry = CollectorRegistry()
    requests_total = Counter(
        "skewless_requests", "Online feature requests", ["endpoint", "status"], registry=registry
    )
    latency = Histogram(
        "skewless_request_seconds",
        "Online feature request latency",
        ["target"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    )
    entities_total = Counter("skewless_entities", "Entities looked up", ["target"], registry=registry)
    group_latency = Histogram(
        "skewless_group_request_seconds",
        "Latency of successful online requests, by each feature group version they read",
        ["group"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    )

    def target_label(lookup: LookupRequest) -> str:
        """Only names the repository defines become label values: request text is unbounded."""
        if lookup.service is not None:
            ref = service_ref(lookup.service)
            return ref if ref in known_services else UNKNOWN_LABEL
        groups = {ref.group_ref for ref in lookup.refs}
        return ",".join(sorted(groups)) if groups <= known_groups else UNKNOWN_LABEL

    def request_id(request: Request) -> str:
        """The request's id in the audit log: the client's `X-Request-Id` when it is a short
        plain token (it ends up in logs), else a new one; echoed in the response."""
        found = getattr(request.state, "audit_id", None)
        if found is None:
            given = request.headers.get("x-request-id", "")
            plain = given.replace("-", "").replace("_", "").replace(".", "")
            found = given if 0 < len(given) <= 64 and plain.isascii() and plain.isalnum() else None
            found = request.state.audit_id = found or audit.new_request_id()
        return found

    def audited(request: Request, role: Grant | None) -> Any:
        """The audit scope a request's work runs in: its records carry the token's role."""
        return audit.scope(role.name if role is not None else None, request_id(request))

    def refuse(request: Request, role: Grant | None, action: str, obj: str, error: HTTPError) -> HTTPError:
        """A refusal by the policy (before any store is asked), recorded in the audit log."""
        with audit.scope(role.name if role is not None else "anonymous", request_id(request)):
            audit_log.record(action, obj, 0, audit.DENIED, detail=f"{error.status} {error.message}"[:500])
        return error

    def authorize(request: Request, action: str | None = None) -> Grant | None:
        if policy.open:
            return None
        role = policy.role_for(request)
        if role is None:
            error = HTTPError(401, "missing or unknown API key (Authorization: Bearer <key> or X-API-Key)")
            raise refuse(request, None, action, "-", error) if action else error
        return role

    def check_access(request: Request, role: Grant | None, lookup: LookupRequest) -> None:
        if role is None:
            return
        if lookup.service is not None:
            if not role.may_read_service(service_ref(lookup.service)):
                error = HTTPError(403, f"this key may not read feature service '{lookup.service}'")
                raise refuse(request, role, "http_read", lookup.service, error)
        else:
            for ref in lookup.refs:
                if not role.may_read_group(ref.group_ref):
                    error = HTTPError(403, f"this key may not read feature group '{ref.group_ref}'")
                    raise refuse(request, role, "http_read", ref.group_ref, error)
        if not isinstance(role, RepositoryGrant):
            # a policy-file role has no pii grant: pii access is declared with the features
            # (`Role(..., pii=True)` in the repository); a repository role's store checks it
            selection = store.select(lookup.features, lookup.service)
            pii = [f"{g.ref}:{f}" for g, feats in selection for f in feats if f in g.pii_features]
            if pii:
                error = HTTPError(
                    403,
                    f"this key's role '{role.name}' may not read pii features ({', '.join(pii)}): "
                    "only repository roles declared with pii=True may",
                )
                raise refuse(request, role, "http_read", lookup.service or pii[0].rsplit(":", 1)[0], error)

    def unavailable(exc: Exception, what: str) -> HTTPError:
        log.warning("%s failed: %s", what, exc)  # the address and cause stay server-side
        return HTTPError(503, f"{STORE_NAME} is unreachable")

    async def with_deadline(deadline: float, func: Callable[[], T], what: str) -> T:
        """Run `func` in a worker thread; at `deadline` stop waiting (the thread is abandoned
        and finishes on its own) and answer 503. `outstanding` counts abandoned threads too."""
        if not outstanding.acquire(blocking=False):
            raise HTTPError(503, f"{STORE_NAME} is not keeping up: too many lookups outstanding")

        # whoever takes `claim` first owns the release: the thread when it starts, or this
        # coroutine when the deadline passed before the thread started (else a slot leaks)
        claim = threading.Lock()

        def run() -> T:
            if not claim.acquire(blocking=False):
                raise HTTPError(503, "abandoned before it started")  # nobody awaits this
            try:
                return func()
            finally:
                outstanding.release()

        remaining = deadline - time.monotonic()
        with anyio.move_on_after(max(remaining, 0.0)) as scope:
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=lookups)
        assert scope.cancelled_caught
        if claim.acquire(blocking=False):
            outstanding.release()
        log.warning("%s: %s did not answer within %.0f ms", what, STORE_NAME, timeout * 1000)
        raise HTTPError(503, f"{STORE_NAME} did not answer within {timeout * 1000:.0f} ms")

    inline_paused_until = [0.0]  # the breaker: before this time, lookups go to threads

    async def lookup_within(
        deadline: float, entities: int, func: Callable[[], T], target: FeatureStore = store
    ) -> T:
        """A small lookup runs on the event loop: handing it to a thread and back costs more
        than the lookup (measured: 590 against 1,050 requests/s on `fraud_model:v1`). Its
        Redis round trips are bounded by the request timeout and never retried, so a hung
        Redis blocks the loop for at most one timeout; that trips the breaker and lookups go
        through threads (abandoned at the deadline) until `INLINE_PAUSE_S` has passed."""
        now = time.monotonic()
        # a cluster store reads several nodes through threads: no bounded inline path there
        inline = target.online.bounded_inline
        if not inline or entities > INLINE_MAX_ENTITIES or now < inline_paused_until[0]:
            return await with_deadline(deadline, func, "online lookup")
        try:
            with target.online.bounded(timeout):
                return func()
        except OnlineStoreTimeout as exc:
            inline_paused_until[0] = time.monotonic() + INLINE_PAUSE_S
            log.warning("online lookup: %s (lookups go through threads for %.0f s)", exc, INLINE_PAUSE_S)
            raise HTTPError(503, f"{STORE_NAME} did not answer within {timeout * 1000:.0f} ms") from None

    async def body_within(request: Request, deadline: float) -> bytes:
        """The request body, received before the request's deadline (408 otherwise)."""
        with anyio.move_on_after(timeout):
            body = await read_body(request, settings.max_body_bytes)
        if time.monotonic() >= deadline:
            raise HTTPError(408, f"request body not received within {timeout * 1000:.0f} ms")
        return body

    async def online_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        target = UNKNOWN_LABEL
        try:
            role = authorize(request, "http_read")
            body = await body_within(request, deadline)
            lookup = parse_request(body)
            target = target_label(lookup)
            check_access(request, role, lookup)
            reader = store_for(role)

            def work() -> tuple[list[Any], list[str], list[str]]:
                try:
                    with audited(request, role):
                        rows = reader.get_online_features(
                            lookup.entities,
                            features=lookup.features,
                            service=lookup.service,
                            full_feature_names=lookup.full_feature_names,
                            output="rows" if lookup.rows else "dicts",
                        )
                    plan = reader.read_plan(lookup.features, lookup.service, lookup.full_feature_names)
                except AccessDenied as exc:  # Redis refused the role's user (NOPERM)
                    raise HTTPError(403, str(exc)) from None
                except OnlineStoreTimeout:
                    raise  # a bounded (inline) lookup: `lookup_within` answers it
                except OnlineStoreError as exc:
                    raise unavailable(exc, "online lookup") from None
                except DefinitionError as exc:  # unresolvable names that slipped past select()
                    raise HTTPError(404 if "unknown" in str(exc) else 400, str(exc)) from None
                return rows, plan.group_refs, list(plan.schema)

            rows, group_refs, names = await lookup_within(
                deadline, entity_count(lookup.entities), work, reader
            )
            elapsed = time.perf_counter() - started
            for ref in group_refs:
                group_latency.labels(ref).observe(elapsed)
            entities_total.labels(target).inc(len(rows))
            requests_total.labels("online", "200").inc()
            if lookup.rows:
                response = json_response({"features": names, "rows": rows})
            else:
                response = json_response({"features": names if rows else [], "results": rows})
            response.headers["X-Request-Id"] = request_id(request)
            return response
        except HTTPError as exc:
            requests_total.labels("online", str(exc.status)).inc()
            return json_response({"error": exc.message}, exc.status)
        except RequestError as exc:
            status = 404 if "unknown feature" in str(exc) else 422
            requests_total.labels("online", str(status)).inc()
            return json_response({"error": str(exc)}, status)
        except Exception:
            log.exception("online lookup failed")
            requests_total.labels("online", "500").inc()
            return json_response({"error": "internal error (logged by the server)"}, 500)
        finally:
            latency.labels(target).observe(time.perf_counter() - started)

    async def push_endpoint(request: Request) -> Response:
        """`FeatureStore.push` over HTTP. With a policy, the key's role must list the source
        under `push` (reading is not writing). Pushing the same events again changes nothing,
        so a client that got 503 at the deadline (the write may still finish) can retry."""
        deadline = time.monotonic() + timeout
        try:
            role = authorize(request, "push")
            body = await body_within(request, deadline)
            push = parse_push(body)
            if role is not None and not role.may_push(push.source):
                error = HTTPError(403, f"this key may not push to source '{push.source}'")
                raise refuse(request, role, "push", push.source, error)

            pusher = store_for(role)

            def work() -> tuple[int, dict[str, int]]:
                frame = push_frame(pusher, push)
                try:
                    with audited(request, role):
                        return frame.height, pusher.push(push.source, frame)
                except AccessDenied as exc:
                    raise HTTPError(403, str(exc)) from None
                except OnlineStoreError as exc:
                    raise unavailable(exc, "push") from None

            count, written = await with_deadline(deadline, work, "push")
            requests_total.labels("push", "200").inc()
            return json_response({"source": push.source, "rows": count, "written": written})
        except HTTPError as exc:
            requests_total.labels("push", str(exc.status)).inc()
            return json_response({"error": exc.message}, exc.status)
        except SkewlessError as exc:  # the rows are refused (shape, checks): nothing was stored
            status = 404 if str(exc).startswith("unknown source") else 422
            requests_total.labels("push", str(status)).inc()
            return json_response({"error": str(exc)}, status)
        except Exception:
            log.exception("push failed")
            requests_total.labels("push", "500").inc()
            return json_response({"error": "internal error (logged by the server)"}, 500)

    async def search_endpoint(request: Request) -> Response:
        """`FeatureStore.search` over HTTP. With a policy, the key's role must be allowed to read
        the indexed group and every group the requested features come from."""
        deadline = time.monotonic() + timeout
        try:
            role = authorize(request, "search")
            body = await body_within(request, deadline)
            search = parse_search(body)
            refs = [f if ":" in f else f"{search.group}:{f}" for f in search.features]
            if role is not None:
                for ref in [search.group, *(FeatureRef.parse(r).group_ref for r in refs)]:
                    if not role.may_read_group(ref):
                        error = HTTPError(403, f"this key may not read feature group '{ref}'")
                        raise refuse(request, role, "search", ref, error)
            expr = filter_expression(search.filter)

            def work() -> pl.DataFrame:
                try:
                    with audited(request, role):
                        return store.search(
                            search.group,
                            search.vector,
                            entity=search.entity,
                            k=search.k,
                            filter=expr,
                            features=refs or None,
                        )
                except OnlineStoreError as exc:
                    raise unavailable(exc, "search") from None

            found = await with_deadline(deadline, work, "search")
            requests_total.labels("search", "200").inc()
            return json_response({"group": search.group, "results": found.to_dicts()})
        except HTTPError as exc:
            requests_total.labels("search", str(exc.status)).inc()
            return json_response({"error": exc.message}, exc.status)
        except SkewlessError as exc:
            text = str(exc)
            status = 404 if ("unknown feature group" in text or "has no VectorIndex" in text) else 422
            requests_total.labels("search", str(status)).inc()
            return json_response({"error": text}, status)
        except Exception:
            log.exception("search failed")
            requests_total.labels("search", "500").inc()
            return json_response({"error": "internal error (logged by the server)"}, 500)

    def ping() -> None:
        """PING on a client of the store's own whose socket timeout is the request deadline
        (`OnlineStore.probe`): the store's client retries and waits far longer, which made
        /health hang with Redis."""
        try:
            store.online.probe(timeout)
        except (redis.RedisError, OSError) as exc:
            raise unavailable(exc, "health check") from None

    async def health(request: Request) -> Response:
        try:
            await with_deadline(time.monotonic() + timeout, ping, "health check")
        except HTTPError as exc:
            return json_response({"status": "unavailable", "error": exc.message}, exc.status)
        except OnlineStoreError as exc:  # the embedded Redis could not be started
            message = unavailable(exc, "health check").message
            return json_response({"status": "unavailable", "error": message}, 503)
        if policy.open:
            return json_response({"status": "ok", "groups": len(store.repository.groups)})
        return json_response({"status": "ok"})  # names and counts are for key holders

    def metrics(request: Request) -> Response:
        try:
            role = authorize(request)
        except HTTPError as exc:
            return json_response({"error": exc.message}, exc.status)
        if role is None:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(_VisibleMetrics(registry, role)), media_type=CONTENT_TYPE_LATEST)

    def listing(request: Request) -> Response:
        try:
            role = authorize(request)
        except HTTPError as exc:
            return json_response({"error": exc.message}, exc.status)
        services = [s for s in store.repository.services if role is None or role.may_read_service(s.ref)]
        groups = [g for g in store.repository.groups if role is None or role.may_read_group(g.ref)]
        return json_response(
            {
                "services": [{"name": s.ref, "features": list(s.features)} for s in services],
                "groups": [
                    {
                        "name": g.ref,
                        "entity": g.entity.name,
                        "join_keys": g.entity.key_columns,
                        "features": [{"name": f.name, "dtype": str(f.dtype)} for f in g.features],
                    }
                    for g in groups
                ],
            }
        )

    app = Starlette(
        routes=[
            Route("/features/online", online_endpoint, methods=["POST"]),
            Route("/features/search", search_endpoint, methods=["POST"]),
            Route("/push", push_endpoint, methods=["POST"]),
            Route("/features", listing, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", lambda request: json_response(OPENAPI), methods=["GET"]),
        ]
    )
    app.state.role_stores = role_stores  # `serve` checks each role's Redis user answers
    return app


class _VisibleMetrics:
    """The registry as one key's role may see it: samples labelled with a service or group
    version it may not read are left out (their names and traffic are not its business)."""

    def __init__(self, registry: CollectorRegistry, role: Grant) -> None:
        self.registry = registry
        self.role = role

    def visible(self, label: str) -> bool:
        if label == UNKNOWN_LABEL:
            return True
        return all(
            self.role.may_read_service(ref) or self.role.may_read_group(ref) for ref in label.split(",")
        )

    def collect(self) -> Any:
        for family in self.registry.collect():
            samples = [
                s
                for s in family.samples
                if all(self.visible(s.labels[name]) for name in ("target", "group") if name in s.labels)
            ]
            family.samples = samples
            yield family


def startup_line(host: str, port: int, store: FeatureStore, policy_path: str | None) -> str:
    """What `skewless serve` prints once it is ready: where, what, and whether access is limited."""
    repo = store.repository
    return (
        f"skewless feature server on http://{host}:{port} — {len(repo.services)} services, "
        f"{len(repo.groups)} groups, policy: {policy_path or 'none'}"
    )


def serve(repo: str, host: str = "127.0.0.1", port: int = 6566, workers: int = 1) -> None:
    """Run the server (blocking). Roles come from `SKEWLESS_SERVER_POLICY` (a JSON file path).

    Everything that could make the server less safe than configured fails here, before the
    port opens: an invalid policy or setting, or a Redis that does not answer. With
    `workers > 1`, uvicorn runs that many processes on the port (each builds its own store
    through `app_from_env` after the checks passed here): a request's work is Python, so one
    process uses one core however many connections it has.
    """
    import uvicorn

    settings = ServerSettings.from_env()
    store = FeatureStore.from_repo(repo)
    policy_path = os.environ.get("SKEWLESS_SERVER_POLICY")
    policy = load_policy(policy_path, store.repository) if policy_path is not None else AccessPolicy()
    store.online.ping()
    # a group never written here serves only defaults: say so, naming it (a wrong state
    # folder or Redis is the usual cause), rather than let clients find out from the values
    for line in store.never_written_warnings():
        print(line, file=sys.stderr, flush=True)
    line = startup_line(host, port, store, policy_path)
    print(line + (f" ({workers} worker processes)" if workers > 1 else ""), flush=True)
    if workers <= 1:
        app = create_app(store, policy, settings)
        for role_store in app.state.role_stores.values():
            role_store.warm()  # a role whose Redis user is missing fails here, not per request
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    store.close()
    os.environ[_REPO_ENV] = repo
    uvicorn.run(
        "skewless.serving.http:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


_REPO_ENV = "SKEWLESS_SERVE_REPO"


def app_from_env() -> Starlette:
    """The app of one worker process of `serve(workers=N)`: the repository from
    `SKEWLESS_SERVE_REPO`, the policy and settings from the environment as in `serve`."""
    settings = ServerSettings.from_env()
    store = FeatureStore.from_repo(os.environ[_REPO_ENV])
    policy_path = os.environ.get("SKEWLESS_SERVER_POLICY")
    policy = load_policy(policy_path, store.repository) if policy_path is not None else AccessPolicy()
    return create_app(store, policy, settings)

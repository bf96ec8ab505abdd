"""The HTTP feature server (`skewless serve`): batched JSON online lookups.

Starlette + uvicorn: a small, well-kept ASGI stack (already shipped with dagster-webserver, so
no new runtime), with uvicorn's uvloop/httptools for throughput. Endpoints run as sync
handlers in Starlette's thread pool: the read path is a blocking redis-py call plus numpy
work, and redis-py's connection pool is thread-safe.

    POST /features/online   {"entities": [{...}] | {"col": [...]}, "features": [...] | "service": "x:vN",
                             "full_feature_names": false}
                            -> {"features": [names...], "results": [{...}, ...]}
    GET  /features          the feature services and group versions this caller may read
    GET  /health            200 when Redis answers, else 503
    GET  /metrics           Prometheus text: requests, errors, latency by service/group

Access (optional): `roles` maps an API key (header `Authorization: Bearer <key>` or
`X-API-Key`) to a role, and each role lists the feature services and group versions it may
read (fnmatch patterns such as `fraud_model:*` or `user_*:v2`). Without roles the server is open.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skewless.client.feature_store import FeatureStore
from skewless.errors import OnlineStoreError, RequestError
from skewless.language.feature_service import FeatureRef

MAX_ENTITIES = 10_000


@dataclass
class Role:
    """What one role may read: patterns over service refs and group refs (`name:vN`)."""

    services: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def may_read_service(self, ref: str) -> bool:
        return any(fnmatch.fnmatchcase(ref, p) for p in self.services)

    def may_read_group(self, ref: str) -> bool:
        return any(fnmatch.fnmatchcase(ref, p) for p in self.groups)


@dataclass
class AccessPolicy:
    """API keys to roles. An empty policy lets everyone read everything (local use)."""

    keys: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> AccessPolicy:
        """`{"keys": {"<api key>": "<role>"}, "roles": {"<role>": {"services": [...], "groups": [...]}}}`"""
        raw = json.loads(text)
        roles = {name: Role(**spec) for name, spec in raw.get("roles", {}).items()}
        for key, role in raw.get("keys", {}).items():
            if role not in roles:
                raise ValueError(f"access policy: key ...{key[-4:]} names unknown role '{role}'")
        return cls(keys=dict(raw.get("keys", {})), roles=roles)

    @property
    def open(self) -> bool:
        return not self.keys

    def role_for(self, request: Request) -> Role | None:
        header = request.headers.get("authorization", "")
        key = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        role = self.keys.get(key)
        return self.roles[role] if role else None


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


def create_app(store: FeatureStore, policy: AccessPolicy | None = None) -> Starlette:
    """The ASGI app; `store` is shared by all requests (its Redis pool is thread-safe)."""
    policy = policy or AccessPolicy()
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

    def authorize(request: Request) -> Role | None:
        if policy.open:
            return None
        role = policy.role_for(request)
        if role is None:
            raise HTTPError(401, "missing or unknown API key (Authorization: Bearer <key> or X-API-Key)")
        return role

    def check_access(role: Role | None, features: list[str] | None, service: str | None) -> None:
        if role is None:
            return
        if service is not None:
            ref = service if ":" in service else f"{service}:v1"
            if not role.may_read_service(ref):
                raise HTTPError(403, f"this key may not read feature service '{service}'")
            return
        for text in features or []:
            try:
                ref = FeatureRef.parse(text)
            except Exception:
                continue  # reported as a 400 by the lookup
            if not role.may_read_group(ref.group_ref):
                raise HTTPError(403, f"this key may not read feature group '{ref.group_ref}'")

    def online(request: Request, body: bytes) -> Response:
        started = time.perf_counter()
        target = "?"
        try:
            role = authorize(request)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise HTTPError(400, f"request body is not JSON: {exc}") from None
            if not isinstance(payload, dict):
                raise HTTPError(400, "request body must be a JSON object")
            unknown = set(payload) - {"entities", "features", "service", "full_feature_names"}
            if unknown:
                raise HTTPError(400, f"unknown request fields: {', '.join(sorted(unknown))}")
            features, service = payload.get("features"), payload.get("service")
            if features is not None and (
                not isinstance(features, list) or not all(isinstance(f, str) for f in features)
            ):
                raise HTTPError(400, "'features' must be a list of 'group:vN:feature' strings")
            if service is not None and not isinstance(service, str):
                raise HTTPError(400, "'service' must be a string such as 'fraud_model:v1'")
            entities = payload.get("entities")
            if entities is None:
                raise HTTPError(400, "'entities' is required: a list of objects or an object of columns")
            count = entity_count(entities)
            if count > MAX_ENTITIES:
                raise HTTPError(413, f"at most {MAX_ENTITIES} entities per request, got {count}")
            check_access(role, features, service)
            target = service or ",".join(sorted({FeatureRef.parse(f).group_ref for f in features or []}))
            rows = store.get_online_features(
                entities,
                features=features,
                service=service,
                full_feature_names=bool(payload.get("full_feature_names", False)),
                output="dicts",
            )
            names = list(rows[0]) if rows else []
            elapsed = time.perf_counter() - started
            full = bool(payload.get("full_feature_names", False))
            for ref in store.read_plan(features, service, full).group_refs:
                group_latency.labels(ref).observe(elapsed)
            entities_total.labels(target).inc(len(rows))
            requests_total.labels("online", "200").inc()
            return json_response({"features": names, "results": rows})
        except HTTPError as exc:
            requests_total.labels("online", str(exc.status)).inc()
            return json_response({"error": exc.message}, exc.status)
        except RequestError as exc:
            status = 404 if "unknown feature" in str(exc) else 422
            requests_total.labels("online", str(status)).inc()
            return json_response({"error": str(exc)}, status)
        except OnlineStoreError as exc:
            requests_total.labels("online", "503").inc()
            return json_response({"error": str(exc)}, 503)
        finally:
            latency.labels(target).observe(time.perf_counter() - started)

    async def online_endpoint(request: Request) -> Response:
        body = await request.body()
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(online, request, body)

    def health(request: Request) -> Response:
        try:
            store.online.ping()
        except OnlineStoreError as exc:
            return json_response({"status": "unavailable", "error": str(exc)}, 503)
        return json_response({"status": "ok", "groups": len(store.repository.groups)})

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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

    return Starlette(
        routes=[
            Route("/features/online", online_endpoint, methods=["POST"]),
            Route("/features", listing, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def serve(repo: str, host: str = "127.0.0.1", port: int = 6566, workers: int = 1) -> None:
    """Run the server (blocking). Roles come from `SKEWLESS_SERVER_POLICY` (a JSON file path)."""
    import uvicorn

    store = FeatureStore.from_repo(repo)
    policy_path = os.environ.get("SKEWLESS_SERVER_POLICY")
    policy = AccessPolicy.from_json(Path(policy_path).read_text()) if policy_path else AccessPolicy()
    store.online.ping()
    uvicorn.run(create_app(store, policy), host=host, port=port, log_level="warning", access_log=False)

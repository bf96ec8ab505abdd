"""The HTTP feature server: batched JSON lookups, access by role, health, metrics, clear 4xx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from skewless import FeatureRepository, FeatureService, FeatureStore
from skewless.compute.rows import compute_rows, latest_per_entity
from skewless.config import StoreConfig
from skewless.serving.http import AccessPolicy, create_app
from tests.helpers import small_repo

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def store(tmp_path: Path, store_config: StoreConfig):
    events = pl.DataFrame(
        {
            "user_id": [1, 1, 2],
            "ts": [NOW - timedelta(hours=3), NOW - timedelta(hours=1), NOW - timedelta(minutes=5)],
            "created": [NOW, NOW, NOW],
            "amount": [1.0, float("nan"), 3.0],
            "channel": ["pos", "atm", "online"],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    base = small_repo(tmp_path / "data", events)
    repo = FeatureRepository(base.groups, [*base.services, FeatureService("other", ["user_stats:v1:online"])])
    group = repo.groups[0]
    rows = compute_rows(group, NOW - timedelta(days=1), NOW + timedelta(days=1))
    store = FeatureStore(repo, store_config)
    store.online.write_latest(group, latest_per_entity(group, rows))
    yield store
    store.close()


def test_lookup_by_service_and_by_features(store: FeatureStore) -> None:
    client = TestClient(create_app(store))
    response = client.post(
        "/features/online", json={"service": "svc:v1", "entities": [{"user_id": 2}, {"user_id": 9}]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["features"] == ["user_id", "amount", "channel"]
    assert body["results"] == [
        {"user_id": 2, "amount": 3.0, "channel": "online"},
        {"user_id": 9, "amount": 0.0, "channel": "none"},
    ]
    response = client.post(
        "/features/online",
        json={
            "features": ["user_stats:v1:amount", "user_stats:v1:online"],
            "entities": {"user_id": [1]},
            "full_feature_names": True,
        },
    )
    # NaN has no JSON spelling: it is served as null
    assert response.json()["results"] == [
        {"user_id": 1, "user_stats__v1__amount": None, "user_stats__v1__online": False}
    ]


def test_rows_format_serves_the_same_values_as_objects(store: FeatureStore) -> None:
    """`"format": "rows"`: one array per entity in `features` order, the same values as the
    objects (built for many entities: no object per row on either side)."""
    client = TestClient(create_app(store))
    features = ["user_stats:v1:amount", "user_stats:v1:channel"]
    body = {"features": features, "entities": {"user_id": [2, 9, 2, 1]}}
    objects = client.post("/features/online", json=body).json()
    rows = client.post("/features/online", json={**body, "format": "rows"}).json()
    assert rows["features"] == objects["features"] == ["user_id", "amount", "channel"]
    assert rows["rows"] == [[r[name] for name in rows["features"]] for r in objects["results"]]
    assert rows["rows"][:2] == [[2, 3.0, "online"], [9, 0.0, "none"]]
    # the same rows from Python, as tuples
    tuples = store.get_online_features({"user_id": [2, 9]}, features=features, output="rows")
    assert tuples == [(2, 3.0, "online"), (9, 0.0, "none")]
    bad = client.post("/features/online", json={**body, "format": "columns"})
    assert bad.status_code == 400 and "'format' must be 'objects'" in bad.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"service": "svc:v1"}, 400, "'entities' is required"),
        ({"service": "svc:v1", "entities": "x"}, 400, "'entities' must be a list"),
        ({"features": "user_stats:v1:amount", "entities": []}, 400, "'features' must be a list"),
        (
            {"features": ["user_stats:v1:nope"], "entities": [{"user_id": 1}]},
            404,
            "unknown feature 'user_stats:v1:nope'",
        ),
        ({"service": "nope:v1", "entities": [{"user_id": 1}]}, 404, "unknown feature service 'nope:v1'"),
        ({"service": "svc:v1", "entities": [{"uid": 1}]}, 422, "entities has no join key column 'user_id'"),
        ({"service": "svc:v1", "entities": [{"user_id": "x"}]}, 422, "join key 'user_id' row 0 is 'x'"),
        ({"service": "svc:v1", "entities": [], "extra": 1}, 400, "unknown request fields: extra"),
        ({"service": "svc:v1", "entities": [{"user_id": 1}] * 10_001}, 413, "at most 10000 entities"),
    ],
)
def test_bad_requests_get_clear_4xx(store: FeatureStore, body, status: int, message: str) -> None:
    response = TestClient(create_app(store)).post("/features/online", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_json(store: FeatureStore) -> None:
    response = TestClient(create_app(store)).post("/features/online", content=b"{nope")
    assert response.status_code == 400 and "not JSON" in response.json()["error"]


def test_roles_limit_what_a_key_reads(store: FeatureStore) -> None:
    policy = AccessPolicy.from_json(
        json.dumps(
            {
                "keys": {"k-fraud": "fraud", "k-other": "other"},
                "roles": {
                    "fraud": {"services": ["svc:*"], "groups": ["user_stats:v1"]},
                    "other": {"services": ["other:v1"], "groups": []},
                },
            }
        )
    )
    client = TestClient(create_app(store, policy))
    request = {"service": "svc:v1", "entities": [{"user_id": 2}]}
    assert client.post("/features/online", json=request).status_code == 401
    assert client.post("/features/online", json=request, headers={"X-API-Key": "wrong"}).status_code == 401
    assert (
        client.post("/features/online", json=request, headers={"Authorization": "Bearer k-fraud"}).status_code
        == 200
    )
    denied = client.post("/features/online", json=request, headers={"X-API-Key": "k-other"})
    assert denied.status_code == 403 and "may not read feature service 'svc:v1'" in denied.json()["error"]
    by_feature = {"features": ["user_stats:v1:amount"], "entities": [{"user_id": 2}]}
    assert (
        client.post("/features/online", json=by_feature, headers={"X-API-Key": "k-other"}).status_code == 403
    )
    listing = client.get("/features", headers={"X-API-Key": "k-other"}).json()
    assert [s["name"] for s in listing["services"]] == ["other:v1"] and listing["groups"] == []


def test_health_and_metrics(store: FeatureStore, tmp_path: Path) -> None:
    client = TestClient(create_app(store))
    assert client.get("/health").json()["status"] == "ok"
    client.post("/features/online", json={"service": "svc:v1", "entities": [{"user_id": 2}]})
    client.post("/features/online", json={"service": "svc:v1"})
    metrics = client.get("/metrics").text
    assert 'skewless_requests_total{endpoint="online",status="200"} 1.0' in metrics
    assert 'skewless_requests_total{endpoint="online",status="400"} 1.0' in metrics
    assert 'skewless_request_seconds_count{target="svc:v1"} 1.0' in metrics
    assert 'skewless_group_request_seconds_count{group="user_stats:v1"} 1.0' in metrics
    down = FeatureStore(store.repository, StoreConfig(str(tmp_path), "redis://127.0.0.1:1/0", str(tmp_path)))
    response = TestClient(create_app(down)).get("/health")
    assert response.status_code == 503 and "unreachable" in response.json()["error"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("workers", [1, 2])
def test_skewless_serve_over_a_real_socket(tmp_path: Path, redis_url: str, workers: int) -> None:
    """The CLI server on loopback, against the example repository and a real Redis; with
    `--workers 2`, two server processes answer on the one port and stop with the parent."""
    port = free_port()
    env = {
        **os.environ,
        "SKEWLESS_HOME": str(tmp_path),
        "SKEWLESS_REDIS_URL": redis_url,
        "SKEWLESS_KEY_PREFIX": f"sktest:serve{port}",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "skewless"),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        proc.stdout.read().decode() if proc.poll() is not None else "no answer"
                    ) from None
                time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/features/online",
            data=json.dumps(
                {"service": "fraud_model:v1", "entities": [{"user_id": 1, "merchant_id": 2}]}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
        # nothing materialized under this prefix: every feature is its declared default
        assert body["results"][0]["segment"] == "unknown" and body["results"][0]["last_amount"] == 0.0
        children = _children(proc.pid)
        if workers > 1:
            # uvicorn's supervisor: worker processes (and its own helper) under the parent
            assert len(children) >= workers, children
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    for child in children:  # no worker outlives the server
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists(), f"worker {child} still running"
    # ... and the server said so at startup, naming each group version (issue 12 item 3)
    output = proc.stdout.read().decode()
    assert "warning: feature group 'user_profile:v1' was never written to the online store" in output
    assert "lookups return only its defaults" in output

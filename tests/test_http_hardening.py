"""The HTTP server fails closed and fast: strict policies, deadlines, body limits, no leaks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis
import uvicorn
from starlette.testclient import TestClient

from skewless import FeatureRepository, FeatureService, FeatureStore
from skewless.compute.rows import compute_rows, latest_per_entity
from skewless.config import StoreConfig
from skewless.serving.http import AccessPolicy, PolicyError, ServerSettings, create_app, load_policy
from skewless.storage.embedded_redis import redis_server_binary
from tests.helpers import small_repo

NOW = datetime.now(UTC).replace(microsecond=0)
LOOKUP = {"service": "svc:v1", "entities": [{"user_id": 2}]}


def build_store(tmp_path: Path, config: StoreConfig) -> FeatureStore:
    events = pl.DataFrame(
        {
            "user_id": [1, 2],
            "ts": [NOW - timedelta(hours=1), NOW - timedelta(minutes=5)],
            "created": [NOW, NOW],
            "amount": [1.0, 3.0],
            "channel": ["pos", "online"],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    base = small_repo(tmp_path / "data", events)
    repo = FeatureRepository(base.groups, [*base.services, FeatureService("other", ["user_stats:v1:online"])])
    store = FeatureStore(repo, config)
    group = repo.groups[0]
    rows = compute_rows(group, NOW - timedelta(days=1), NOW + timedelta(days=1))
    store.online.write_latest(group, latest_per_entity(group, rows))
    return store


@pytest.fixture
def store(tmp_path: Path, store_config: StoreConfig) -> Iterator[FeatureStore]:
    store = build_store(tmp_path, store_config)
    yield store
    store.close()


def policy_text(**overrides: object) -> str:
    policy: dict[str, object] = {
        "keys": {"key-fraud-0001": "fraud", "key-other-0002": "other"},
        "roles": {
            "fraud": {"services": ["svc:*"], "groups": ["user_*:v1"]},
            "other": {"services": ["other:v1"], "groups": []},
        },
    }
    policy.update(overrides)
    return json.dumps(policy)


# ----------------------------------------------------------------- 14: policy
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (policy_text(roles={"fraud": {"groups": "user_stats:*"}}), "'roles.fraud.groups' must be a list"),
        (json.dumps({"Keys": {"k": "r"}, "roles": {}}), "unknown field(s) 'Keys'"),
        (json.dumps({"roles": {"r": {"services": ["svc:v1"]}}}), "field 'keys' is required"),
        (policy_text(keys={}), "'keys' must be a non-empty object"),
        (policy_text(keys={"key-fraud-0001": "admin"}), "names role 'admin', which 'roles' does not define"),
        (policy_text(roles={"fraud": {"services": ["svc:v1"], "group": []}}), "unknown field(s) 'group'"),
        (policy_text(roles={"fraud": {"services": [""]}}), "'roles.fraud.services' must be a list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_policies_are_refused(policy: str, message: str) -> None:
    with pytest.raises(PolicyError) as failure:
        AccessPolicy.from_json(policy)
    assert message in str(failure.value)


def test_patterns_must_match_the_repository(store: FeatureStore) -> None:
    text = policy_text(roles={"fraud": {"services": ["svc:*"], "groups": ["user_stat:v1"]}, "other": {}})
    with pytest.raises(PolicyError, match=r"'roles.fraud.groups\[0\]' = 'user_stat:v1' matches no group"):
        AccessPolicy.from_json(text, store.repository)
    # create_app checks too: an app built by hand is never more open than `skewless serve`
    with pytest.raises(PolicyError, match="matches no group"):
        create_app(store, AccessPolicy.from_json(text))


def test_a_given_policy_file_must_load(tmp_path: Path, store: FeatureStore) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(str(tmp_path / "missing.json"), store.repository)
    with pytest.raises(PolicyError, match="set but empty"):
        load_policy("", store.repository)
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"Keys": {}}))
    with pytest.raises(PolicyError, match=f"{bad}: access policy: unknown field"):
        load_policy(str(bad), store.repository)


def test_serve_refuses_to_start_with_a_bad_policy(
    tmp_path: Path, store: FeatureStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from skewless import cli

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    monkeypatch.setattr(FeatureStore, "from_repo", classmethod(lambda cls, repo: store))
    monkeypatch.setattr(store, "close", lambda: None)
    policy = tmp_path / "policy.json"
    policy.write_text(policy_text(roles={"fraud": {"groups": "user_stats:*"}}))
    monkeypatch.setenv("SKEWLESS_SERVER_POLICY", str(policy))
    assert cli.main(["serve", "repo.py", "--port", "7001"]) == 1
    assert "'roles.fraud.groups' must be a list" in capsys.readouterr().err and not started
    policy.write_text(policy_text())
    assert cli.main(["serve", "repo.py", "--port", "7001"]) == 0
    out = capsys.readouterr().out
    assert f"skewless feature server on http://127.0.0.1:7001 — 2 services, 1 groups, policy: {policy}" in out
    assert started and started[0]["port"] == 7001  # type: ignore[index]


def test_wildcard_patterns_grant_what_they_match(store: FeatureStore) -> None:
    client = TestClient(create_app(store, AccessPolicy.from_json(policy_text(), store.repository)))
    fraud = {"X-API-Key": "key-fraud-0001"}
    assert client.post("/features/online", json=LOOKUP, headers=fraud).status_code == 200
    by_features = {"features": ["user_stats:v1:amount"], "entities": [{"user_id": 2}]}
    assert client.post("/features/online", json=by_features, headers=fraud).status_code == 200
    other = {"X-API-Key": "key-other-0002"}
    assert client.post("/features/online", json=by_features, headers=other).status_code == 403
    # a wildcard in the request is not a reference: 400, not 500 and not a grant
    wild = client.post("/features/online", json={**LOOKUP, "service": "svc:*"}, headers=fraud)
    assert wild.status_code == 400 and "'svc:*' is invalid" in wild.json()["error"]


# ----------------------------------------------------------------- 16: HTTP edges
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"features": ["user_stats:amount"], "entities": [{"user_id": 1}]},
            400,
            "'user_stats:amount' is invalid",
        ),
        (
            {"features": ["user_*:v1:amount"], "entities": [{"user_id": 1}]},
            400,
            "'user_*:v1:amount' is invalid",
        ),
        ({"features": [], "entities": [{"user_id": 1}]}, 400, "'features' is empty"),
        ({**LOOKUP, "features": ["user_stats:v1:amount"]}, 400, "exactly one of 'features' or 'service'"),
        ({**LOOKUP, "full_feature_names": "yes"}, 400, "'full_feature_names' must be true or false"),
    ],
)
def test_bad_references_are_400(store: FeatureStore, body: dict, status: int, message: str) -> None:
    response = TestClient(create_app(store)).post("/features/online", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text


def test_body_limit(store: FeatureStore) -> None:
    client = TestClient(create_app(store, settings=ServerSettings(max_body_bytes=1024)))
    assert client.post("/features/online", json=LOOKUP).status_code == 200
    big = json.dumps({**LOOKUP, "entities": [{"user_id": i} for i in range(200)]}).encode()
    response = client.post("/features/online", content=big)
    assert response.status_code == 413 and "limit of 1024 bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while streaming
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    assert client.post("/features/online", content=chunks()).status_code == 413


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_huge_content_length_is_refused_before_the_body_is_read(store: FeatureStore) -> None:
    """Over a real socket: headers announcing 257 MiB get 413 while no body byte was sent."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(
                b"POST /features/online HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {257 * 1024 * 1024}\r\n\r\n".encode()
            )
            reply = conn.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413"), reply
        assert "exceeds the limit of 8388608 bytes" in reply
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_503_does_not_reveal_the_redis_address(tmp_path: Path, store: FeatureStore) -> None:
    config = StoreConfig(str(tmp_path), "redis://127.0.0.1:1/0", str(tmp_path), key_prefix="sktest:down")
    down = FeatureStore(store.repository, config)
    client = TestClient(create_app(down))
    for response in (client.post("/features/online", json=LOOKUP), client.get("/health")):
        assert response.status_code == 503
        error = response.json()["error"]
        assert "online store (Redis)" in error and "127.0.0.1" not in error and ":1" not in error
    down.close()


def test_metric_labels_are_bounded_to_known_names(store: FeatureStore) -> None:
    client = TestClient(create_app(store))
    for i in range(20):
        client.post("/features/online", json={**LOOKUP, "service": f"made-up-{i}:v1"})
    client.post("/features/online", json={"features": ["nogroup:v3:x"], "entities": [{"user_id": 1}]})
    client.post("/features/online", json=LOOKUP)
    metrics = client.get("/metrics").text
    assert "made-up" not in metrics and "nogroup" not in metrics
    assert 'skewless_request_seconds_count{target="unknown"} 21.0' in metrics
    assert 'skewless_request_seconds_count{target="svc:v1"} 1.0' in metrics


def test_with_a_policy_names_need_a_key(store: FeatureStore) -> None:
    client = TestClient(create_app(store, AccessPolicy.from_json(policy_text(), store.repository)))
    assert client.get("/metrics").status_code == 401
    assert client.get("/features").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "key-other-0002"}).status_code == 200
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


# ----------------------------------------------------------------- 15: deadlines
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own (it gets SIGSTOPped), always resumed and killed."""
    binary = shutil.which("redis-server") or redis_server_binary()
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=0.2).ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


def test_a_hung_redis_gets_503_within_the_deadline(
    tmp_path: Path, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = own_redis
    store = build_store(
        tmp_path, StoreConfig(str(tmp_path / "o"), url, str(tmp_path / "s"), key_prefix="skt")
    )
    client = TestClient(create_app(store, settings=ServerSettings(request_timeout_s=0.3, max_outstanding=2)))
    try:
        assert client.post("/features/online", json=LOOKUP).status_code == 200
        assert client.get("/health").status_code == 200
        os.kill(proc.pid, signal.SIGSTOP)
        for call in (lambda: client.post("/features/online", json=LOOKUP), lambda: client.get("/health")):
            started = time.monotonic()
            response = call()
            assert time.monotonic() - started < 1.5
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert "online store (Redis) did not answer within 300 ms" in error
            assert url.split("//")[1].split("/")[0] not in error
        # the first lookup ran on the event loop and timed out there, which sends the next
        # ones to threads; abandoned lookup threads still wait on Redis (the health ping
        # times out by itself): with two of them outstanding, the next lookup is shed at once
        for _ in range(2):
            started = time.monotonic()
            assert client.post("/features/online", json=LOOKUP).status_code == 503
            assert time.monotonic() - started < 1.0
        started = time.monotonic()
        busy = client.post("/features/online", json=LOOKUP)
        assert busy.status_code == 503 and "too many lookups outstanding" in busy.json()["error"]
        assert time.monotonic() - started < 0.2
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while client.post("/features/online", json=LOOKUP).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after SIGCONT"
            time.sleep(0.05)
        assert client.get("/health").status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        client.close()
        store.close()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.serving.http import ServerConfigError

    assert ServerSettings.from_env() == ServerSettings(0.5, 8 * 1024 * 1024, 64)
    monkeypatch.setenv("SKEWLESS_REQUEST_TIMEOUT_MS", "250")
    monkeypatch.setenv("SKEWLESS_MAX_BODY_BYTES", "4096")
    assert ServerSettings.from_env() == ServerSettings(0.25, 4096, 64)
    monkeypatch.setenv("SKEWLESS_REQUEST_TIMEOUT_MS", "-1")
    with pytest.raises(ServerConfigError, match="SKEWLESS_REQUEST_TIMEOUT_MS must be a positive integer"):
        ServerSettings.from_env()


def test_openapi_document(store: FeatureStore) -> None:
    document = TestClient(create_app(store)).get("/openapi.json").json()
    assert document["openapi"].startswith("3.") and "/features/online" in document["paths"]

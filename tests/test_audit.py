"""The audit log (issue 15 item 4): every access path writes a record; sampling; compaction
through the real asset (Parquet written, stream trimmed, a re-run adds no duplicates); the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import redis

from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.feature_assets.audit_log import build_audit_asset
from skewless.feature_assets.definitions import store_resources
from skewless.storage import audit
from skewless.storage import online_keys as K
from tests.helpers import small_repo


def _config(store_config: StoreConfig, sample: float) -> StoreConfig:
    import dataclasses

    return dataclasses.replace(store_config, audit_sample=sample)


def _push(store: FeatureStore, user: int = 1) -> None:
    now = datetime.now(UTC)
    rows = {"user_id": [user], "ts": [now], "created": [now], "amount": [1.0], "channel": ["pos"]}
    store.push("events", rows)


def test_every_client_path_is_recorded(tmp_path: Path, store_config: StoreConfig) -> None:
    repo = small_repo(tmp_path / "data")
    with FeatureStore(repo, _config(store_config, 1.0)) as store:
        _push(store)
        store.get_online_features([{"user_id": 1}], service="svc:v1", output="dicts")
        store.get_online_features([{"user_id": 1}, {"user_id": 2}], features=["user_stats:v1:amount"])
        store.get_training_dataset(
            pl.DataFrame({"user_id": [1], "event_timestamp": [datetime(2026, 3, 3, tzinfo=UTC)]}),
            service="svc:v1",
            allow_missing=True,
        )
        store.erase("user", [{"user_id": 1}])
        found = store.audit("1h")
    actions = found.select("action", "object", "rows", "outcome").rows()
    assert ("push", "events", 1, "ok") in actions
    assert ("online_read", "svc:v1", 1, "ok") in actions
    assert ("online_read", "user_stats:v1", 2, "ok") in actions
    assert ("training_set", "svc:v1", 1, "ok") in actions
    assert any(a[0] == "erase" and a[1] == "user" and a[2] == 1 for a in actions)
    assert set(found["role"]) == {"default"} and set(found["channel"]) == {"python"}
    assert found["request_id"].n_unique() == found.height


def test_sample_zero_records_no_reads_but_writes(tmp_path: Path, store_config: StoreConfig) -> None:
    repo = small_repo(tmp_path / "data")
    with FeatureStore(repo, _config(store_config, 0.0)) as store:
        _push(store)
        for _ in range(20):
            store.get_online_features([{"user_id": 1}], service="svc:v1", output="dicts")
        found = store.audit("1h")
    assert found["action"].to_list() == ["push"]


def test_compaction_asset_writes_parquet_trims_and_is_idempotent(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    repo = small_repo(tmp_path / "data")
    config = _config(store_config, 1.0)
    with FeatureStore(repo, config) as store:
        _push(store)
        store.get_online_features([{"user_id": 1}], service="svc:v1", output="dicts")
        before = store.audit("1h")
        key = K.audit_key(config.key_prefix)
        # a crash between writing and trimming: the pieces exist, the stream still has them
        assert store.online.client.xlen(key) == 2
        # a crash between writing the piece and trimming the stream
        client = store.online.client
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(client, "xtrim", lambda *a, **k: (_ for _ in ()).throw(SystemExit("crash")))
            with pytest.raises(SystemExit):
                audit.compact(store.online, store.offline)
        pieces = store.offline.list_keys("_audit")
        assert len(pieces) == 1 and "/piece-" in pieces[0] and pieces[0].startswith("_audit/date=")
        assert client.xlen(key) == 2
        # the asset's re-run writes nothing twice and trims what the piece holds
        result = dg.materialize([build_audit_asset()], resources=store_resources(config))
        assert result.success
        assert client.xlen(key) == 0
        assert store.offline.list_keys("_audit") == pieces
        assert store.offline.read_parquet(store.offline.location(pieces[0])).height == 2
        after = store.audit("1h")
        assert after.sort("stream_id").equals(before.sort("stream_id"))
        # a new access shows at once, before the next compaction
        _push(store, 2)
        assert store.audit("1h", action="push").height == 2


def test_appends_are_acknowledged_later_in_order_and_failures_still_counted(
    tmp_path: Path, store_config: StoreConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A push does not wait for its audit record's reply (it was a second round trip on
    every push): the reply is read before the next append, or by `flush`. Records still
    reach the stream in order, once each; a refused append is still counted and logged
    (later); the push it records is never broken by it; an erasure's record (`required`)
    is acknowledged before `erase` returns."""
    repo = small_repo(tmp_path / "data")
    config = _config(store_config, 1.0)
    key = K.audit_key(config.key_prefix)
    with FeatureStore(repo, config) as store:
        admin = store.online.client
        for user in range(5):
            _push(store, user)
        store.audit_log.flush()
        entries = admin.xrange(key)
        assert [e[1][b"action"] for e in entries] == [b"push"] * 5
        assert store.audit_log.written == 5 and store.audit_log.failures == 0
        # the stream key replaced by a string: XADD is refused (WRONGTYPE) after the push
        admin.delete(key)
        admin.set(key, "not a stream")
        try:
            _push(store, 7)  # the push itself succeeds
            assert store.get_online_features(
                [{"user_id": 7}], features=["user_stats:v1:amount"], output="dicts"
            )
            with caplog.at_level("WARNING", logger="skewless.audit"):
                store.audit_log.flush()
            # the push's record and the read's (sampled at 1.0), each refused
            assert store.audit_log.failures == 2 and store.audit_log.written == 5
            assert any("could not be written" in r.message for r in caplog.records)
        finally:
            admin.delete(key)
        # a required record is never deferred: its failure raises at once
        admin.set(key, "not a stream")
        try:
            with pytest.raises(Exception, match="audit record of erase"):
                store.erase("user", [{"user_id": 7}])
        finally:
            admin.delete(key)
    # a store closed after pushing has had every record acknowledged
    with FeatureStore(repo, config) as store:
        _push(store, 8)
    assert [e[1][b"action"] for e in redis.Redis.from_url(config.redis_url or "").xrange(key)] == [b"push"]


def test_a_process_that_exits_without_closing_its_store_keeps_its_records(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """The last deferred append of a process that never closes its store: flushed at exit."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "data").mkdir()
    small_repo(tmp_path / "data")
    script = textwrap.dedent(
        f"""
        from datetime import UTC, datetime
        from pathlib import Path
        from skewless.client.feature_store import FeatureStore
        from skewless.config import StoreConfig
        from tests.helpers import small_repo
        config = StoreConfig({store_config.offline_root!r}, {store_config.redis_url!r},
                             {store_config.state_dir!r}, {store_config.key_prefix!r})
        store = FeatureStore(small_repo(Path({str(tmp_path / "data")!r})), config)
        now = datetime.now(UTC)
        for user in range(3):
            store.push("events", {{"user_id": [user], "ts": [now], "created": [now],
                                   "amount": [1.0], "channel": ["pos"]}})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    client = redis.Redis.from_url(store_config.redis_url or "")
    try:
        assert [e[1][b"action"] for e in client.xrange(K.audit_key(store_config.key_prefix))] == [b"push"] * 3
    finally:
        client.delete(K.audit_key(store_config.key_prefix))


def test_cli_lists_by_role_and_since(tmp_path: Path, store_config: StoreConfig, monkeypatch) -> None:
    from skewless import cli

    repo_file = tmp_path / "repo.py"
    repo_file.write_text(
        "from pathlib import Path\nfrom tests.helpers import small_repo\n"
        "repository = small_repo(Path(__file__).parent / 'data')\n"
    )
    monkeypatch.setenv("SKEWLESS_HOME", store_config.state_dir)
    monkeypatch.setenv("SKEWLESS_REDIS_URL", store_config.redis_url or "")
    monkeypatch.setenv("SKEWLESS_KEY_PREFIX", store_config.key_prefix)
    monkeypatch.setenv("SKEWLESS_OFFLINE_ROOT", store_config.offline_root)
    repo = small_repo(tmp_path / "data")
    with FeatureStore(repo, _config(store_config, 1.0)) as store:
        _push(store)
    out = tmp_path / "out.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert (
            cli.main(["audit", "--repo", str(repo_file), "--role", "default", "--since", "1d", "--json"]) == 0
        )
    out.write_text(buffer.getvalue())
    rows = json.loads(out.read_text())
    assert [r["action"] for r in rows] == ["push"] and rows[0]["role"] == "default"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["audit", "--repo", str(repo_file), "--role", "nobody", "--json"]) == 0
    assert json.loads(buffer.getvalue()) == []


def test_audit_user_may_only_append_to_the_audit_stream(store_config: StoreConfig, tmp_path: Path) -> None:
    from skewless.storage.acl import apply_users, audit_credentials, audit_user

    admin = redis.Redis.from_url(store_config.redis_url or "")
    prefix = store_config.key_prefix
    user = audit_user(prefix)
    try:
        apply_users([admin], [user], prefix + ".__none__", store_config.state_dir)
        name, password = audit_credentials(prefix, store_config.state_dir)
        client = redis.Redis.from_url(store_config.redis_url or "", username=name, password=password)
        assert client.xadd(K.audit_key(prefix), {"action": "x"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xadd(f"{prefix}:{{user:9}}:user_stats:v1", {"a": "b"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xrange(K.audit_key(prefix))
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xtrim(K.audit_key(prefix), maxlen=0)
    finally:
        admin.execute_command("ACL", "DELUSER", user.name)


def _roles_repo(tmp_path: Path):
    from skewless import Feature, FeatureGroup, FeatureRepository
    from skewless.language.role import Role

    base = small_repo(tmp_path / "data")
    group = base.groups[0]
    other = FeatureGroup("other_stats", group.entity, group.source, [Feature("amount", pl.Float64)])
    return FeatureRepository(
        groups=[group, other], services=base.services, roles=[Role("analyst", read=["user_stats:v1"])]
    )


def test_denied_read_by_a_role_and_http_lookup_with_a_token(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    from starlette.testclient import TestClient

    from skewless.errors import AccessDenied
    from skewless.registry.roles import apply_roles
    from skewless.serving.http import AccessPolicy, create_app

    repo = _roles_repo(tmp_path)
    config = _config(store_config, 1.0)
    admin = redis.Redis.from_url(config.redis_url or "")
    apply_roles(repo, config)
    try:
        with FeatureStore(repo, config) as owner:
            _push(owner)
        with FeatureStore(repo, config, role="analyst") as analyst:
            analyst.get_online_features([{"user_id": 1}], features=["user_stats:v1:amount"])
            with pytest.raises(AccessDenied):
                analyst.get_online_features([{"user_id": 1}], features=["other_stats:v1:amount"])
            assert analyst.audit_log.failures == 0
        with FeatureStore(repo, config) as server_store:
            policy = AccessPolicy.from_json(json.dumps({"keys": {"k1": "analyst"}}), repo)
            client = TestClient(create_app(server_store, policy))
            body = {"entities": [{"user_id": 1}], "features": ["user_stats:v1:amount"]}
            answer = client.post(
                "/features/online", json=body, headers={"X-API-Key": "k1", "X-Request-Id": "req-42"}
            )
            assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-42"
            refused = client.post(
                "/features/online",
                json={"entities": [{"user_id": 1}], "features": ["other_stats:v1:amount"]},
                headers={"X-API-Key": "k1"},
            )
            assert refused.status_code == 403
            found = server_store.audit("1h", role="analyst")
        rows = found.select("action", "object", "outcome", "channel").rows()
        assert ("online_read", "user_stats:v1", "ok", "python") in rows
        assert ("online_read", "other_stats:v1", "denied", "python") in rows
        assert ("http_read", "user_stats:v1", "ok", "http") in rows
        assert ("http_read", ["other_stats:v1", "amount"][0], "denied", "http") in rows
        assert "req-42" in found["request_id"].to_list()
    finally:
        users = [u.decode() for u in admin.execute_command("ACL", "USERS")]
        mine = [u for u in users if u.startswith(config.key_prefix + ".")]
        if mine:
            admin.execute_command("ACL", "DELUSER", *mine)


def test_materialize_records_offline_and_online(tmp_path: Path, store_config: StoreConfig) -> None:
    from tests.helpers import materialize_days

    repo = small_repo(tmp_path / "data")
    config = _config(store_config, 1.0)
    with dg.DagsterInstance.ephemeral() as instance:
        materialize_days(repo, config, instance, "2026-03-01", "2026-03-02", with_checks=False)
    with FeatureStore(repo, config) as store:
        found = store.audit("1h", action="materialize")
    details = sorted(found["detail"].to_list())
    assert details == ["offline 2026-03-01..2026-03-02", "online 2026-03-01..2026-03-02"]
    assert set(found["channel"]) == {"dagster"} and found["rows"].min() > 0

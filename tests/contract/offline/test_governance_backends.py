"""Governance on the scale-out backends: roles, audit, erasure and retention with the offline store on
S3 (the moto server) and the online store on the embedded Redis 6.2 or a Redis Cluster.

The single-Redis, local-disk paths are tested in tests/test_roles_acl.py, test_audit.py
and test_erasure.py; this runs one whole governed life on the other backends: materialize
through Dagster, apply roles, a role's allowed and refused reads, an erasure, the audit
log compacted by its asset into Parquet on S3 and read back by role and action.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import Feature, FeatureGroup, FeatureRepository
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.errors import AccessDenied
from skewless.feature_assets.audit_log import build_audit_asset
from skewless.feature_assets.definitions import store_resources
from skewless.feature_assets.retention import build_retention_asset
from skewless.language.role import Role
from skewless.registry.roles import apply_roles
from skewless.storage import online_keys as K
from skewless.storage.embedded_redis import stop_embedded_redis
from skewless.storage.online import open_online_store
from tests.contract.offline.conftest import BUCKET
from tests.helpers import delete_keys, materialize_days, small_repo


def _repository(data: Path) -> FeatureRepository:
    base = small_repo(data)
    group = base.groups[0]
    other = FeatureGroup("other_stats", group.entity, group.source, [Feature("amount", pl.Float64)])
    kept_a_week = FeatureGroup(
        "old_stats", group.entity, group.source, [Feature("amount", pl.Float64)], retention="7d"
    )
    return FeatureRepository(
        groups=[group, other, kept_a_week],
        services=base.services,
        roles=[Role("analyst", read=["user_stats:v1"]), Role("ops", admin=True)],
    )


@pytest.fixture(params=["embedded-6.2", "cluster"])
def config(request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str) -> Iterator[StoreConfig]:
    url = request.getfixturevalue("redis_cluster_url") if request.param == "cluster" else None
    config = StoreConfig(
        offline_root=f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}",
        redis_url=url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"skgov:{uuid.uuid4().hex[:8]}",
        audit_sample=1.0,
    )
    try:
        yield config
    finally:
        online = open_online_store(config)
        try:
            for server in online.servers():
                users = [u.decode() for u in server.execute_command("ACL", "USERS")]
                mine = [u for u in users if u.startswith(config.key_prefix + ".")]
                if mine:
                    server.execute_command("ACL", "DELUSER", *mine)
        finally:
            online.close()
        delete_keys(config)
        if url is None:
            stop_embedded_redis(config.state_dir)


def test_roles_audit_and_erasure_on_s3_with_the_embedded_62_or_a_cluster(
    config: StoreConfig, tmp_path: Path
) -> None:
    repo = _repository(tmp_path / "data")
    with dg.DagsterInstance.ephemeral() as instance:
        # old_stats' days are past its retention: the backfill refuses them (below)
        materialize_days(repo, config, instance, "2026-03-01", "2026-03-02", with_checks=False)
    done = apply_roles(repo, config)
    assert done["servers"] == (1 if config.redis_url is None else 3)
    with FeatureStore(repo, config, role="analyst") as analyst:
        found = analyst.get_online_features(
            [{"user_id": 1}], features=["user_stats:v1:amount"], output="dicts"
        )
        assert found[0]["amount"] not in (None, 0.0)
        with pytest.raises(AccessDenied, match="role 'analyst' may not read feature group 'other_stats:v1'"):
            analyst.get_online_features([{"user_id": 1}], features=["other_stats:v1:amount"])
        assert analyst.audit_log.failures == 0  # appended as the audit user, on this backend
    with FeatureStore(repo, config, role="ops") as ops:
        erased = ops.erase("user", [{"user_id": 1}])
        assert erased["entities"] == 1 and erased["keys_deleted"] >= 1 and erased["rows_removed"] > 0, erased
        # nothing of user 1 is left offline (on S3) or online
        for group in (repo.group("user_stats", 1), repo.group("other_stats", 1)):
            kept = ops.offline.scan(group).collect()
            assert kept.height > 0 and kept.filter(pl.col("user_id") == 1).height == 0, group.ref
        assert (
            ops.get_online_features([{"user_id": 1}], features=["user_stats:v1:amount"], output="dicts")[0][
                "amount"
            ]
            == 0.0
        )  # the default
        # the audit asset compacts the stream into Parquet pieces on S3; reading merges both
        result = dg.materialize([build_audit_asset()], resources=store_resources(config))
        assert result.success
        assert ops.online.client.xlen(K.audit_key(config.key_prefix)) == 0
        pieces = ops.offline.list_keys("_audit")
        assert pieces and all(p.startswith("_audit/date=") for p in pieces)
        # retention on S3: a partition past old_stats' 7 days (as an older deployment wrote
        # it) is deleted by the scheduled asset; the others are untouched
        old, other = repo.group("old_stats", 1), repo.group("other_stats", 1)
        assert ops.offline.partitions(old) == []  # the backfill skipped expired days
        day = date(2026, 3, 2)
        ops.offline.write_partition(old, day, ops.offline.read_partition(other, day))
        assert ops.offline.partitions(old) == [day]
        retention = build_retention_asset(repo)
        assert retention is not None
        assert dg.materialize([retention], resources=store_resources(config)).success
        assert ops.offline.partitions(old) == [] and ops.offline.partitions(other) == [date(2026, 3, 1), day]
        log = ops.audit(datetime(2026, 1, 1, tzinfo=UTC))
    rows = set(log.select("role", "action", "object", "outcome").rows())
    assert ("analyst", "online_read", "user_stats:v1", "ok") in rows
    assert ("analyst", "online_read", "other_stats:v1", "denied") in rows
    assert ("ops", "erase", "user", "ok") in rows
    assert {d for d in log.filter(pl.col("action") == "materialize")["detail"]} >= {
        "offline 2026-03-01..2026-03-02",
        "online 2026-03-01..2026-03-02",
    }

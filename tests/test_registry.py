"""Registry, versions, lineage and impact: on the example repository and on repositories
written to disk, so the lock file beside them is exercised the way a user's would be."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.errors import DefinitionError, RequestError
from skewless.feature_assets.definitions import build_definitions
from skewless.feature_assets.impact import impact
from skewless.registry.lock import LockRewrittenWarning, entry_for, read_lock
from skewless.repository import load_repository
from tests.helpers import START, make_events, materialize_days

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "card_fraud" / "features.py"

GROUP = """
{name} = FeatureGroup(
    name="user_stats",
    version={version},
    entity=user,
    source=events,
    transformation=lambda f: f.with_columns((pl.col("amount") * {factor}).alias("amount_x")),
    features=[Feature("amount_x", pl.{dtype}, default=0.0), Feature("channel", pl.String)],
    description="{description}",
)
"""


def write_repo(folder: Path, *groups: dict) -> Path:
    """A repository module on disk: one source, one entity, the given group versions."""
    folder.mkdir(parents=True, exist_ok=True)
    events = folder / "events.parquet"
    if not events.exists():
        make_events().write_parquet(events)
    body = textwrap.dedent(
        f"""
        import polars as pl
        from skewless import Entity, Feature, FeatureGroup, FileSource

        user = Entity("user", {{"user_id": pl.Int64}})
        events = FileSource("events", {str(events)!r}, "ts", created_timestamp_field="created",
                            start_date={START!r})
        """
    )
    for g in groups:
        body += GROUP.format(
            name=f"stats_v{g['version']}",
            version=g["version"],
            factor=g.get("factor", 2),
            dtype=g.get("dtype", "Float64"),
            description=g.get("description", "amounts"),
        )
    path = folder / "features.py"
    path.write_text(body)
    return path


# ------------------------------------------------------------------------------ versions
def test_a_changed_definition_without_a_version_bump_is_refused(
    tmp_path: Path, store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SKEWLESS_OFFLINE_ROOT", raising=False)
    path = write_repo(tmp_path, {"version": 1, "factor": 5})
    repo = load_repository(path)
    lock = read_lock(tmp_path / "skewless.lock.json")
    assert list(lock["groups"]) == ["user_stats:v1"] and repo.lock_path == tmp_path / "skewless.lock.json"

    # never materialized: editing it while developing rewrites its entry, no bump needed
    write_repo(tmp_path, {"version": 1, "factor": 2})
    with pytest.warns(LockRewrittenWarning, match="'user_stats:v1' changed; it was never materialized"):
        repo = load_repository(path)
    assert (
        read_lock(tmp_path / "skewless.lock.json")["groups"]["user_stats:v1"]["fingerprint"]
        == (entry_for(repo.groups[0])["fingerprint"])
    )
    # once materialized (into the offline store the repository uses), the definition is frozen
    config = dataclasses.replace(store_config, offline_root=str(tmp_path / "state" / "offline"))
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, config, instance, START, START).success
    assert (tmp_path / "state" / "offline" / "user_stats" / "v1").is_dir()
    # now the transformation changes, the version does not: refused, showing the change
    write_repo(tmp_path, {"version": 1, "factor": 3})
    with pytest.raises(DefinitionError) as info:
        load_repository(path)
    message = str(info.value)
    assert "feature group 'user_stats:v1' changed without a version bump" in message
    assert 'pl.col("amount") * 2' in message and 'pl.col("amount") * 3' in message
    assert "version=2" in message

    # a dtype change is shown as such
    write_repo(tmp_path, {"version": 1, "dtype": "Float32"})
    with pytest.raises(DefinitionError, match=r"schema changed: 'amount_x' Float64 -> Float32"):
        load_repository(path)

    # metadata (a description) is not a new definition
    write_repo(tmp_path, {"version": 1, "description": "doubled amounts"})
    load_repository(path)

    # bumping: the old version as it was, the new one beside it; both recorded
    write_repo(tmp_path, {"version": 1, "description": "doubled amounts"}, {"version": 2, "factor": 3})
    repo = load_repository(path)
    assert [g.ref for g in repo.groups] == ["user_stats:v1", "user_stats:v2"]
    assert sorted(read_lock(tmp_path / "skewless.lock.json")["groups"]) == ["user_stats:v1", "user_stats:v2"]


def test_the_example_lock_file_matches_the_code() -> None:
    repo = load_repository(EXAMPLE)  # refuses if a definition changed without a bump
    lock = read_lock(EXAMPLE.parent / "skewless.lock.json")
    assert sorted(lock["groups"]) == sorted(g.ref for g in repo.groups)


def test_retiring_a_version_removes_exactly_its_keys(tmp_path: Path, store_config: StoreConfig) -> None:
    path = write_repo(tmp_path / "repo", {"version": 1}, {"version": 2, "factor": 3})
    repo = load_repository(path)
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, store_config, instance, START, "2026-03-04").success
    store = FeatureStore(repo, store_config)
    v1, v2 = repo.groups
    before_v1 = sorted(store.online.keys(v1))
    before_v2 = sorted(store.online.keys(v2))
    assert len(before_v1) == len(before_v2) == 25
    assert store.online.freshness(v1) is not None
    with pytest.raises(RequestError, match="still defined in the code"):
        store.retire("user_stats:v1")
    store.close()

    # v1 leaves the code; its keys are found from its offline partitions, not a SCAN
    write_repo(tmp_path / "repo", {"version": 2, "factor": 3})
    repo = load_repository(path)
    store = FeatureStore(repo, store_config)
    result = store.retire("user_stats:v1")
    assert result == {"ref": "user_stats:v1", "entities": 25, "keys_deleted": 26, "partitions_kept": 4}
    assert sorted(store.online.keys(v1)) == [] and store.online.freshness(v1) is None
    assert sorted(store.online.keys(v2)) == before_v2  # the other version untouched
    assert store.get_online_features([{"user_id": 3}], features=["user_stats:v2:amount_x"]).height == 1
    lock = read_lock(tmp_path / "repo" / "skewless.lock.json")
    assert "user_stats:v1" in lock["retired"] and "user_stats:v1" not in lock["groups"]
    store.close()
    # a retired version cannot come back under the same number
    write_repo(tmp_path / "repo", {"version": 1}, {"version": 2, "factor": 3})
    with pytest.raises(DefinitionError, match="user_stats:v1' was retired"):
        load_repository(path)


# ------------------------------------------------------------------------------ search, describe
@pytest.fixture(scope="module")
def example() -> FeatureStore:
    store = FeatureStore.from_repo(
        EXAMPLE, StoreConfig("/nonexistent-offline", "redis://127.0.0.1:1/0", "/tmp")
    )
    yield store
    store.online.close()


def test_search_ranks_names_then_groups_then_descriptions(example: FeatureStore) -> None:
    found = example.search("amount")["ref"].to_list()
    # feature names containing the word and descriptions mentioning it first; newest version first
    assert found[:3] == [
        "user_last_txn:v2:last_amount",
        "user_last_txn:v2:last_amount_log",
        "user_merchant_last_txn:v1:last_amount_here",
    ]
    assert found.index("user_last_txn:v2:last_amount") < found.index("user_last_txn:v1:last_amount")
    assert example.search("risk score")["ref"][0] == "merchant_risk:v1:risk_score"
    assert example.search("segment")["ref"].to_list() == ["user_profile:v1:segment"]
    assert example.search("team:accounts")["ref"].to_list() == [
        "user_profile:v1:credit_limit",
        "user_profile:v1:segment",
    ]
    assert example.search("nothing-like-this").is_empty()


def test_describe_group_version_and_feature(example: FeatureStore) -> None:
    group = example.describe("user_last_txn:v2")
    assert group["entity"] == "user" and group["owner"] == "team:fraud" and group["ttl"] == "30d"
    assert group["consumers"] == ["fraud_model:v1", "model fraud_classifier"]
    assert [f["name"] for f in group["features"]][:2] == ["last_amount", "last_channel"]
    assert group["features"][1]["allowed_values"] == ["pos", "online", "atm"]
    assert len(group["fingerprint"]) == 16 and "error" in group["online"]  # Redis unreachable here
    both = example.describe("user_last_txn")
    assert [v["ref"] for v in both["versions"]] == ["user_last_txn:v1", "user_last_txn:v2"]
    assert both["versions"][0]["consumers"] == []
    feature = example.describe("user_txn_windows:v1:amount_mean_7d")
    assert feature["window"] == "mean of amount over 7d" and feature["consumers"] == [
        "fraud_model:v1",
        "model fraud_classifier",
    ]
    with pytest.raises(DefinitionError, match="did you mean user_last_txn"):
        example.describe("last_txn")


# ------------------------------------------------------------------------------ impact, lineage
def test_impact_on_the_example_graph(example: FeatureStore) -> None:
    assert impact(example.repository, "transactions") == {
        "target": "transactions",
        "group_versions": [
            "user_last_txn:v1",
            "user_last_txn:v2",
            "user_merchant_last_txn:v1",
            "user_txn_windows:v1",
            "user_txn_windows:v2",
        ],
        "online_assets": [
            "user_last_txn:v1",
            "user_last_txn:v2",
            "user_merchant_last_txn:v1",
            "user_txn_windows:v1",
            "user_txn_windows:v2",
        ],
        "training_sets": ["fraud_model:v1"],
        "feature_services": ["fraud_model:v1"],
        "models": ["fraud_classifier"],
        "served_logs": ["fraud_model:v1"],
        "sql_views": ["offline_views"],
    }
    v1 = impact(example.repository, "user_last_txn:v1")  # no service pins v1: only its own online asset
    assert v1["online_assets"] == ["user_last_txn:v1"] and v1["feature_services"] == [] and v1["models"] == []
    unused = impact(example.repository, "merchant_risk:v1:category")  # the service reads risk_score only
    assert unused["online_assets"] == ["merchant_risk:v1"] and unused["feature_services"] == []
    used = impact(example.repository, "merchant_risk:v1:risk_score")
    assert used["feature_services"] == ["fraud_model:v1"] and used["models"] == ["fraud_classifier"]
    with pytest.raises(DefinitionError, match="neither a source nor a feature group"):
        impact(example.repository, "nope")


def test_every_asset_carries_metadata_and_services_and_models_are_assets() -> None:
    repo = load_repository(EXAMPLE)
    defs = build_definitions(repo, StoreConfig("/tmp/x", None, "/tmp/x"))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"services/fraud_model_v1_service", "models/fraud_classifier"} <= keys
    model = graph.get(dg.AssetKey(["models", "fraud_classifier"]))
    assert model.parent_keys == {dg.AssetKey(["services", "fraud_model_v1_service"])}
    service = graph.get(dg.AssetKey(["services", "fraud_model_v1_service"]))
    assert dg.AssetKey(["features", "user_last_txn_v2_offline"]) in service.parent_keys
    assert dg.AssetKey(["online", "user_last_txn_v2_online"]) in service.parent_keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.kinds, key
        assert node.tags, key
    for group in repo.groups:
        node = graph.get(dg.AssetKey(["features", f"{group.name}_v{group.version}_offline"]))
        assert node.owners == [group.owner] and "dagster/column_schema" in node.metadata
        online = graph.get(dg.AssetKey(["online", f"{group.name}_v{group.version}_online"]))
        schema = online.metadata["dagster/column_schema"]
        columns = [c.name for c in getattr(schema, "schema", schema).columns]
        assert columns == [*group.entity.key_columns, *group.feature_names]


def test_column_lineage_is_recorded_on_materialization(tmp_path: Path, store_config: StoreConfig) -> None:
    path = write_repo(tmp_path / "repo", {"version": 1})
    repo = load_repository(path)
    with dg.instance_for_test() as instance:
        result = materialize_days(repo, store_config, instance, START, START)
    by_key = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    offline = by_key["features/user_stats_v1_offline"]["dagster/column_lineage"].value
    source = dg.AssetKey(["sources", "events"])
    assert offline.deps_by_column["amount_x"] == [dg.TableColumnDep(asset_key=source, column_name="amount")]
    assert offline.deps_by_column["channel"] == [dg.TableColumnDep(asset_key=source, column_name="channel")]
    assert offline.deps_by_column["event_timestamp"] == [
        dg.TableColumnDep(asset_key=source, column_name="ts")
    ]
    online = by_key["online/user_stats_v1_online"]["dagster/column_lineage"].value
    assert online.deps_by_column["amount_x"] == [
        dg.TableColumnDep(
            asset_key=dg.AssetKey(["features", "user_stats_v1_offline"]), column_name="amount_x"
        )
    ]


def test_registry_snapshot_asset_keeps_history(tmp_path: Path) -> None:
    repo = load_repository(EXAMPLE)
    config = StoreConfig(str(tmp_path / "offline"), None, str(tmp_path))
    defs = build_definitions(repo, config)
    with dg.instance_for_test() as instance:
        for _ in range(2):
            assert defs.resolve_job_def("registry").execute_in_process(instance=instance).success
    snapshots = sorted((tmp_path / "offline" / "_registry").iterdir())
    assert len(snapshots) == 2
    data = json.loads((snapshots[0] / "registry.json").read_text())
    assert {g["ref"] for g in data["groups"]} == {g.ref for g in repo.groups}
    assert data["services"][0]["models"] == ["fraud_classifier"]
    features = pl.read_parquet(snapshots[1] / "features.parquet")
    assert features.filter(pl.col("ref") == "merchant_risk:v1:risk_score")["consumers"][0] == (
        "fraud_model:v1, model fraud_classifier"
    )


# ------------------------------------------------------------------------------ CLI
CLI_ENV: dict[str, str] = {}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The installed `skewless` command, from the repository root, with the state folder and
    Redis of the test (`CLI_ENV`): with the defaults it would start an embedded Redis in
    `<repo>/.skewless` that outlives the test."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "skewless"), *args],
        cwd=ROOT,
        env={**os.environ, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CLI_ENV, "SKEWLESS_HOME", str(tmp_path / "state"))
    monkeypatch.setitem(CLI_ENV, "SKEWLESS_REDIS_URL", redis_url)
    monkeypatch.setitem(CLI_ENV, "SKEWLESS_KEY_PREFIX", f"sktest:cli{uuid.uuid4().hex[:8]}")


@pytest.mark.usefixtures("cli_env")
def test_cli_end_to_end() -> None:
    listed = cli("features", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(row["ref"] == "user_profile:v1:segment" for row in json.loads(listed.stdout))
    found = cli("features", "search", "amount", "--json")
    assert json.loads(found.stdout)[0]["ref"] == "user_last_txn:v2:last_amount"
    described = cli("features", "describe", "merchant_risk:v1")
    assert described.returncode == 0 and "feature group merchant_risk:v1" in described.stdout
    assert "risk_score" in described.stdout and "[0.0, 1.0]" in described.stdout
    impact = cli("impact", "transactions")
    assert impact.returncode == 0 and "downstream of transactions" in impact.stdout
    assert "fraud_classifier" in impact.stdout
    assert json.loads(cli("impact", "user_profile:v1", "--json").stdout)["models"] == ["fraud_classifier"]
    bad = cli("features", "describe", "no_such_group")
    assert bad.returncode == 1 and "unknown feature group 'no_such_group'" in bad.stderr

"""Asset checks on real materializations: schema, expectations, drift, freshness, agreement, skew.

Every failing case is crafted data run through the real assets into a real Dagster instance,
Parquet store and Redis; blocking is verified by comparing the stored bytes and values before
and after the blocked run.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from skewless import (
    Drift,
    Entity,
    Expectation,
    Feature,
    FeatureGroup,
    FeatureRepository,
    FeatureService,
    FileSource,
)
from skewless.checks.drift import EPSILON, ks_statistic, psi_categorical, psi_numeric
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.feature_assets.offline import offline_key
from skewless.feature_assets.online import online_key
from skewless.serving.agreement import check_agreement
from skewless.storage.online import entity_keys
from tests.helpers import START, materialize_days

DAY0 = date.fromisoformat(START)


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def daily_scores(days: int, per_day: int = 200, seed: int = 3, shift_from: int | None = None) -> pl.DataFrame:
    """One score per merchant per day; from day `shift_from` on, scores move up by 0.5."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(days):
        score = rng.beta(2, 8, size=per_day)
        if shift_from is not None and d >= shift_from:
            score = np.clip(score + 0.5, 0, 1)
        frames.append(
            pl.DataFrame(
                {
                    "merchant_id": np.arange(1, per_day + 1, dtype=np.int64),
                    "score": score,
                    "kind": rng.choice(["a", "b", "c"], size=per_day),
                    "ts": [
                        datetime.combine(DAY0 + timedelta(days=d), datetime.min.time(), UTC)
                        + timedelta(hours=1)
                    ]
                    * per_day,
                }
            )
        )
    return pl.concat(frames).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def scores_repo(
    data_dir: Path,
    frame: pl.DataFrame,
    *,
    drift: Drift | None = None,
    expectations: tuple = (),
    freshness: str | None = None,
) -> FeatureRepository:
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(data_dir / "scores.parquet")
    merchant = Entity("merchant", {"merchant_id": pl.Int64})
    source = FileSource("scores", data_dir / "scores.parquet", "ts", start_date=START)
    group = FeatureGroup(
        "risk",
        merchant,
        source,
        [
            Feature("score", pl.Float64, default=0.0, nullable=False, min_value=0.0, max_value=1.0),
            Feature("kind", pl.String, allowed_values=["a", "b", "c"]),
        ],
        drift=drift,
        expectations=expectations,
        freshness=freshness,
    )
    return FeatureRepository(groups=[group], services=[FeatureService("scorer", ["risk:v1"])])


def day(n: int) -> str:
    return (DAY0 + timedelta(days=n)).isoformat()


def check_events(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def snapshot(store: FeatureStore, group: FeatureGroup) -> tuple[dict[str, str], list[dict]]:
    files = {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.offline.files(group)}
    values = store.get_online_features(
        {"merchant_id": list(range(1, 201))}, features=["risk:v1:score", "risk:v1:kind"], output="dicts"
    )
    return files, values


def rerun_online(
    defs: dg.Definitions, instance: dg.DagsterInstance, partition: str
) -> dg.ExecuteInProcessResult:
    """Push one partition to Redis again: its online checks run right after the write."""
    key = dg.AssetKey(["online", "risk_v1_online"])
    return defs.resolve_job_def("daily_features").execute_in_process(
        instance=instance, partition_key=partition, asset_selection=[key], raise_on_error=False
    )


# ------------------------------------------------------------------------------------- PSI by hand
def test_psi_and_ks_match_a_hand_computation() -> None:
    reference = pl.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    current = pl.Series([1.0, 1.5, 2.0, 2.5, 3.0, 9.0, 9.5, 10.0, None, None])
    # two bins split at the reference median 5.5: reference 5 | 5 | 0 nulls; current 5 | 3 | 2 nulls
    p_ref = [0.5, 0.5, EPSILON]
    p_cur = [0.5, 0.3, 0.2]
    expected = sum((c - r) * math.log(c / r) for r, c in zip(p_ref, p_cur, strict=True))
    assert psi_numeric(reference, current, bins=2) == pytest.approx(expected, rel=1e-12)
    assert psi_numeric(reference, reference, bins=4) == pytest.approx(0.0)

    ref_cat = pl.Series(["a"] * 6 + ["b"] * 4)
    cur_cat = pl.Series(["a"] * 3 + ["b"] * 5 + ["c"] * 2)
    p_ref = {"a": 0.6, "b": 0.4, "c": EPSILON}
    p_cur = {"a": 0.3, "b": 0.5, "c": 0.2}
    expected = sum((p_cur[k] - p_ref[k]) * math.log(p_cur[k] / p_ref[k]) for k in p_ref)
    assert psi_categorical(ref_cat, cur_cat) == pytest.approx(expected, rel=1e-12)

    # KS: the largest CDF gap; at x=3 the reference CDF is 0.3, the current one 5/8
    assert ks_statistic(reference, current) == pytest.approx(5 / 8 - 0.3)


# ------------------------------------------------------------------------------------- schema
def test_schema_check_passes_then_blocks_a_bad_partition(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    good = daily_scores(3)
    repo = scores_repo(tmp_path / "data", good)
    result = materialize_days(repo, store_config, instance, day(0), day(2))
    assert result.success
    checks = check_events(result)
    assert checks["schema"].passed and checks["schema"].blocking
    assert checks["online_offline_agreement"].passed
    group = repo.groups[0]
    store = FeatureStore(repo, store_config)
    before = snapshot(store, group)

    # day 2 re-delivered with an out-of-range score, a null score and an unknown kind
    on_day2 = pl.col("ts").dt.date() == DAY0 + timedelta(days=2)
    bad = good.with_columns(
        pl.when(on_day2 & (pl.col("merchant_id") == 7)).then(1.5).otherwise(pl.col("score")).alias("score"),
        pl.when(on_day2 & (pl.col("merchant_id") == 8))
        .then(pl.lit("zzz"))
        .otherwise(pl.col("kind"))
        .alias("kind"),
    ).with_columns(
        pl.when(on_day2 & (pl.col("merchant_id") == 9)).then(None).otherwise(pl.col("score")).alias("score")
    )
    bad.write_parquet(tmp_path / "data" / "scores.parquet")
    result = materialize_days(repo, store_config, instance, day(2), day(2), raise_on_error=False)
    assert not result.success
    schema = check_events(result)["schema"]
    assert not schema.passed and schema.severity == dg.AssetCheckSeverity.ERROR
    text = schema.metadata["failures"].value
    assert "score" in text and "in_range" in text and "1.5" in text
    assert "not_nullable" in text and "kind" in text and "zzz" in text
    assert "merchant_id" not in schema.description or "7" in text  # rows are located by key
    assert "7 @ " in text  # the failing row's entity and event time
    # nothing written: same partition bytes, same online values, online asset never ran
    assert snapshot(store, group) == before
    assert not [e for e in result.get_asset_materialization_events() if e.asset_key == online_key(group)]
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "blocked by the schema check" in failure.event_specific_data.error.to_string()
    store.close()


def test_wrong_dtype_from_the_source_fails_the_schema_check(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    frame = daily_scores(1).with_columns(pl.col("score").cast(pl.Float32))
    repo = scores_repo(tmp_path / "data", frame)
    result = materialize_days(repo, store_config, instance, day(0), day(0), raise_on_error=False)
    schema = check_events(result)["schema"]
    assert not schema.passed
    assert "column 'score' has dtype Float32, declared Float64" in schema.description


# ------------------------------------------------------------------------------------- expectations
def test_expectations_report_details_and_block(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    expectations = (
        Expectation("expect_column_mean_to_be_between", "score", min_value=0.1, max_value=0.35),
        Expectation("expect_column_values_to_be_unique", "merchant_id"),
    )
    frame = daily_scores(2)
    repo = scores_repo(tmp_path / "data", frame, expectations=expectations)
    result = materialize_days(repo, store_config, instance, day(0), day(1))
    check = check_events(result)["expectations"]
    assert check.passed, check.description
    assert "expect_column_mean_to_be_between" in check.metadata["results"].value

    # a day whose scores are all high: its mean leaves the band, and a merchant appears twice
    shifted = daily_scores(3, shift_from=2)
    dup = shifted.filter((pl.col("ts").dt.date() == DAY0 + timedelta(days=2)) & (pl.col("merchant_id") == 1))
    pl.concat([shifted, dup.with_columns(pl.col("ts") + timedelta(minutes=5))]).write_parquet(
        tmp_path / "data" / "scores.parquet"
    )
    result = materialize_days(repo, store_config, instance, day(2), day(2), raise_on_error=False)
    assert not result.success
    check = check_events(result)["expectations"]
    assert not check.passed
    table = check.metadata["results"].value
    assert "expect_column_mean_to_be_between" in table and "expect_column_values_to_be_unique" in table
    assert check.metadata["failed"].value == 2
    assert not FeatureStore(repo, store_config).offline.files(repo.groups[0], DAY0 + timedelta(days=2))


def test_an_unknown_expectation_is_named(tmp_path: Path) -> None:
    from skewless.checks.expectations import run_expectations
    from skewless.errors import DefinitionError

    repo = scores_repo(
        tmp_path,
        daily_scores(1),
        expectations=(Expectation("expect_column_to_be_lovely", "score"),),
    )
    with pytest.raises(DefinitionError, match="no expectation 'expect_column_to_be_lovely'"):
        run_expectations(repo.groups[0], daily_scores(1).rename({"ts": "event_timestamp"}))


# ------------------------------------------------------------------------------------- drift
def test_drift_scores_each_day_against_the_previous_days_and_blocks_a_shift(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    policy = Drift(warn=0.1, error=0.25, reference="3d")
    frame = daily_scores(5, per_day=1000)  # PSI's sampling noise is about (bins - 1) * (1/n + 1/m)
    repo = scores_repo(tmp_path / "data", frame, drift=policy)
    result = materialize_days(repo, store_config, instance, day(0), day(4))
    drift = check_events(result)["drift"]
    assert drift.passed, drift.description
    assert drift.metadata["days_scored"].value == 4  # the first day has no reference
    assert "| feature | kind | psi | ks | status | day |" in drift.metadata["scores"].value

    shifted = daily_scores(6, per_day=1000, shift_from=5)
    shifted.write_parquet(tmp_path / "data" / "scores.parquet")
    result = materialize_days(repo, store_config, instance, day(5), day(5), raise_on_error=False)
    assert not result.success
    drift = check_events(result)["drift"]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert "score" in drift.description and drift.metadata["max_psi"].value > 0.25
    scores = drift.metadata["scores"].value
    assert "| score | numeric |" in scores and "error" in scores
    # the reference was the three stored days before it: compute the PSI independently
    stored = pl.concat(
        pl.read_parquet(p)
        for p in FeatureStore(repo, store_config).offline.files(repo.groups[0], DAY0 + timedelta(days=2))
    )
    new = shifted.filter(pl.col("ts").dt.date() == DAY0 + timedelta(days=5))
    assert drift.metadata["max_psi"].value == pytest.approx(psi_numeric(stored["score"], new["score"]))


# ------------------------------------------------------------------------------------- freshness
def test_freshness_policies_and_the_online_freshness_check(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    # events from START (months ago): written to Redis, but older than the 2-day limit
    repo = scores_repo(tmp_path / "data", daily_scores(1), freshness="2d")
    defs = build_definitions(repo, store_config)
    group = repo.groups[0]
    for key in (offline_key(group), online_key(group)):
        policy = defs.resolve_assets_def(key).specs_by_key[key].freshness_policy
        assert policy is not None and policy.fail_window.to_timedelta() == timedelta(days=2)
    result = materialize_days(repo, store_config, instance, day(0), day(0))
    freshness = check_events(result)["online_freshness"]
    assert not freshness.passed and "old (limit 2.0 d)" in freshness.description
    assert freshness.metadata["limit_hours"].value == 48

    # a value pushed now is fresh
    store = FeatureStore(repo, store_config)
    now = datetime.now(UTC).replace(microsecond=0)
    store.online.write_latest(
        group, pl.DataFrame({"merchant_id": [1], "event_timestamp": [now], "score": [0.2], "kind": ["a"]})
    )
    run = rerun_online(defs, instance, day(0))
    freshness = check_events(run)["online_freshness"]
    assert freshness.passed, freshness.description
    store.close()


# ------------------------------------------------------------------------------------- agreement
def test_online_offline_agreement_fails_when_redis_disagrees(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    repo = scores_repo(tmp_path / "data", daily_scores(2))
    result = materialize_days(repo, store_config, instance, day(0), day(1))
    agreement = check_events(result)["online_offline_agreement"]
    assert agreement.passed and agreement.metadata["entities_compared"].value == 200
    group = repo.groups[0]
    store = FeatureStore(repo, store_config)
    # a racing writer: a push of an event newer than the offline store reached Redis first.
    # Redis is right (the newest event wins), so the check skips that entity instead of failing
    newer = datetime.combine(DAY0 + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=30)
    pushed = store.push(
        "scores",
        pl.DataFrame({"merchant_id": [17], "score": [0.99], "kind": ["c"], "ts": [newer]}).with_columns(
            pl.col("ts").cast(pl.Datetime("us", "UTC"))
        ),
    )
    assert pushed == {"risk:v1": 1}
    run = rerun_online(build_definitions(repo, store_config), instance, day(1))
    assert run.success
    agreement = check_events(run)["online_offline_agreement"]
    assert agreement.passed, agreement.description
    assert agreement.metadata["skipped_newer_online"].value == 1
    assert agreement.metadata["entities_compared"].value == 199
    # a genuinely wrong online value: older than what the offline store holds for the entity
    # (a write that never reached Redis, then a stale value): compared, and the run fails
    stale = datetime.combine(DAY0, datetime.min.time(), UTC)
    entity = pl.DataFrame({"merchant_id": [17]})
    store.online.client.delete(*entity_keys(group, store_config.key_prefix, entity))
    store.online.write_latest(
        group, pl.DataFrame({"merchant_id": [17], "event_timestamp": [stale], "score": [0.99], "kind": ["c"]})
    )
    run = check_agreement(store, group, days=[DAY0 + timedelta(days=1)])
    assert not run.passed
    assert "score (1)" in run.description and "kind" in run.description
    assert run.values["skipped_newer_online"] == 0
    table = run.tables["mismatches"]
    assert table["entity"].to_list()[0] == "merchant_id=17" and "0.99" in table["online"].to_list()
    store.close()


def test_blocking_agreement_fails_the_run(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    """A wrong online value for an event time the offline store covers blocks the run."""
    repo = scores_repo(tmp_path / "data", daily_scores(2))
    materialize_days(repo, store_config, instance, day(0), day(1))
    group = repo.groups[0]
    store = FeatureStore(repo, store_config)
    # the same event time as the offline row, another value, a later created time: the write
    # guard keeps it through the rerun, and the check must see it (its event time is covered)
    covered = datetime.combine(DAY0 + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=1)
    store.online.write_latest(
        group,
        pl.DataFrame(
            {
                "merchant_id": [17],
                "event_timestamp": [covered],
                "created_timestamp": [covered + timedelta(days=365)],
                "score": [0.99],
                "kind": ["c"],
            }
        ),
    )
    run = rerun_online(build_definitions(repo, store_config), instance, day(1))
    assert not run.success  # the check is blocking: a disagreement fails the run
    agreement = check_events(run)["online_offline_agreement"]
    assert not agreement.passed and "score (1)" in agreement.description
    assert "merchant_id=17" in agreement.metadata["mismatches"].value
    store.close()


# ------------------------------------------------------------------------------------- skew + latency
def test_served_vectors_are_logged_flushed_and_checked_for_skew(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    repo = scores_repo(tmp_path / "data", daily_scores(2))
    materialize_days(repo, store_config, instance, day(0), day(1))
    defs = build_definitions(repo, store_config)
    store = FeatureStore(repo, store_config)
    offline_latest = store.get_online_features({"merchant_id": list(range(1, 201))}, service="scorer:v1")
    # the training set: the same distribution the store serves, as the pinned service saw it
    store.offline.write_training_set("scorer", 1, offline_latest)

    store.monitor.log_rate = 1.0
    for start in range(1, 201, 50):
        store.get_online_features({"merchant_id": list(range(start, start + 50))}, service="scorer:v1")
    store.get_online_features({"merchant_id": [1]}, features=["risk:v1:score"])  # not by service: not logged
    store.monitor.flush()
    run = defs.resolve_job_def("serving_logs").execute_in_process(instance=instance)
    assert run.success
    mat = run.get_asset_materialization_events()[0].materialization
    assert mat.metadata["rows_logged"].value == 200
    skew = check_events(run)["training_serving_skew"]
    assert skew.passed, skew.description
    # a retry with nothing new appends nothing
    again = defs.resolve_job_def("serving_logs").execute_in_process(instance=instance)
    assert again.get_asset_materialization_events()[0].materialization.metadata["rows_logged"].value == 200

    # a training set from another world: scores shifted up, kinds all "a"
    store.offline.write_training_set(
        "scorer",
        1,
        offline_latest.with_columns((pl.col("score") * 0 + 0.9).alias("score"), pl.lit("a").alias("kind")),
    )
    run = defs.resolve_job_def("serving_logs").execute_in_process(instance=instance)
    skew = check_events(run)["training_serving_skew"]
    assert not skew.passed and "score" in skew.description and "kind" in skew.description

    latency = store.monitor.latency_summary()
    assert latency["group"].to_list() == ["risk:v1"]
    assert latency["requests"][0] == 6 and latency["p50_ms"][0] > 0
    store.close()


def test_drift_against_the_training_set_of_a_pinned_service(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    policy = Drift(reference_service="scorer:v1")
    repo = scores_repo(tmp_path / "data", daily_scores(2, per_day=1000), drift=policy)
    store = FeatureStore(repo, store_config)
    result = materialize_days(repo, store_config, instance, day(0), day(0))
    drift = check_events(result)["drift"]
    assert drift.passed and "not materialized yet" in drift.description  # nothing to compare yet
    # the service's training set: scores as the model saw them
    reference = daily_scores(1, per_day=1000, seed=11).select("score", "kind")
    store.offline.write_training_set("scorer", 1, reference)
    result = materialize_days(repo, store_config, instance, day(1), day(1))
    drift = check_events(result)["drift"]
    assert drift.passed and drift.metadata["reference"].value == "the training set of scorer:v1"
    assert drift.metadata["reference_rows"].value == 1000
    # a training set from a different world blocks the day
    store.offline.write_training_set("scorer", 1, reference.with_columns(pl.col("score") + 0.5))
    result = materialize_days(repo, store_config, instance, day(1), day(1), raise_on_error=False)
    assert not result.success and not check_events(result)["drift"].passed
    store.close()


def test_a_drift_reference_must_be_a_service_pinning_the_group(tmp_path: Path) -> None:
    from skewless.errors import DefinitionError

    with pytest.raises(DefinitionError, match="drift reference: unknown feature service 'nope:v1'"):
        scores_repo(tmp_path, daily_scores(1), drift=Drift(reference_service="nope:v1"))

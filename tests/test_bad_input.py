"""Bad input gets a clear error naming what is at fault, and loses nothing already stored."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FileSource
from skewless.config import StoreConfig
from skewless.errors import OnlineStoreError, SourceDataError, TransformationError
from skewless.storage.offline import OfflineStore
from skewless.storage.online import OnlineStore, RedisOnlineStore
from tests.helpers import START, make_events, materialize_days, small_repo

DAY1, DAY2 = "2026-03-01", "2026-03-02"


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def snapshot(config: StoreConfig, online: OnlineStore) -> tuple[dict, list]:
    files = {p: p.read_bytes() for p in Path(config.offline_root).rglob("*.parquet")}
    keys = sorted(online.keys())
    return files, list(zip(keys, online.client.mget(keys) if keys else [], strict=True))


@pytest.fixture
def stored(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store: OnlineStore
):
    """A repository with two days already materialized; returns (repo, snapshot before)."""
    repo = small_repo(tmp_path / "data")
    assert materialize_days(repo, store_config, instance, DAY1, DAY2).success
    before = snapshot(store_config, online_store)
    assert before[0] and before[1]
    return repo, before


def rewrite_source(repo: FeatureRepository, frame: pl.DataFrame) -> None:
    frame.write_parquet(repo.groups[0].source.path)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (
            lambda f: f.with_columns(pl.col("ts").dt.replace_time_zone(None)),
            SourceDataError,
            r"source 'events': column 'ts' is timezone-naive",
        ),
        (
            lambda f: f.with_columns(pl.when(pl.col("amount") > 60).then(pl.col("ts")).alias("ts")),
            SourceDataError,
            r"source 'events': \d+ rows have no event time in 'ts'",
        ),
        (lambda f: f.drop("ts"), SourceDataError, r"source 'events': timestamp column 'ts' is missing"),
        (
            lambda f: f.drop("channel"),
            TransformationError,
            r"feature group 'user_stats:v1': transformation is invalid: unable to find column \"channel\"",
        ),
        (
            lambda f: f.with_columns(pl.col("channel").cast(pl.Categorical)),
            TransformationError,
            r"feature group 'user_stats:v1'.*column 'channel' has dtype Categorical.*, declared String",
        ),
        (
            lambda f: f.with_columns(pl.col("user_id").cast(pl.String)),
            TransformationError,
            r"column 'user_id' has dtype String, declared Int64",
        ),
    ],
    ids=[
        "naive-times",
        "null-times",
        "missing-time-column",
        "missing-feature",
        "mistyped-feature",
        "mistyped-key",
    ],
)
def test_bad_source_fails_clearly_and_keeps_stored_data(
    stored,
    store_config: StoreConfig,
    instance: dg.DagsterInstance,
    online_store: OnlineStore,
    mutate,
    error,
    message,
) -> None:
    repo, before = stored
    rewrite_source(repo, mutate(make_events()))
    with pytest.raises(error, match=message):
        materialize_days(repo, store_config, instance, DAY1, DAY2)
    assert snapshot(store_config, online_store) == before


def test_transformation_with_wrong_schema(tmp_path: Path, store_config: StoreConfig, instance) -> None:
    repo = small_repo(tmp_path / "data")
    good = repo.groups[0]
    bad = FeatureGroup(
        name=good.name,
        entity=good.entity,
        source=good.source,
        features=good.features,
        transformation=lambda f: f.select("user_id", "ts", "amount", pl.col("channel").alias("chan")),
    )
    with pytest.raises(TransformationError) as info:
        materialize_days(FeatureRepository([bad]), store_config, instance, DAY1, DAY1)
    text = str(info.value)
    assert "feature group 'user_stats:v1': its transformation's output does not match" in text
    assert "feature 'amount_x2' is missing" in text and "feature 'channel' is missing" in text
    assert not list(Path(store_config.offline_root).rglob("*.parquet"))


def test_transformation_that_raises_names_the_group(
    tmp_path: Path, store_config: StoreConfig, instance
) -> None:
    repo = small_repo(tmp_path / "data")
    good = repo.groups[0]
    bad = FeatureGroup(
        name="exploding",
        entity=good.entity,
        source=good.source,
        features=good.features,
        transformation=lambda f: f.with_columns(pl.col("no_such_column") + 1),
    )
    with pytest.raises(TransformationError, match=r"feature group 'exploding:v1': transformation is invalid"):
        materialize_days(FeatureRepository([bad]), store_config, instance, DAY1, DAY1)


def test_naive_source_before_anything_is_stored(tmp_path: Path, store_config: StoreConfig, instance) -> None:
    events = make_events().with_columns(pl.col("ts").dt.replace_time_zone(None))
    repo = small_repo(tmp_path / "data", events)
    with pytest.raises(SourceDataError, match="timezone-naive"):
        materialize_days(repo, store_config, instance, DAY1, DAY1)
    assert not list(Path(store_config.offline_root).rglob("*.parquet"))


def test_redis_unreachable_fails_clearly_then_retry_completes(
    tmp_path: Path, store_config: StoreConfig, instance, online_store: OnlineStore
) -> None:
    repo = small_repo(tmp_path / "data")
    down = StoreConfig(
        offline_root=store_config.offline_root,
        redis_url="redis://127.0.0.1:1/0",
        state_dir=store_config.state_dir,
        key_prefix=store_config.key_prefix,
    )
    with pytest.raises(
        OnlineStoreError,
        match=r"Redis at redis://127.0.0.1:1/0 is unreachable while writing feature group 'user_stats:v1'",
    ):
        materialize_days(repo, down, instance, DAY1, DAY2)
    # the offline partitions were written; the retry against a live Redis completes
    assert len(OfflineStore(store_config.offline_root).files(repo.groups[0])) == 2
    assert materialize_days(repo, store_config, instance, DAY1, DAY2).success
    assert sum(1 for _ in online_store.keys(repo.groups[0])) > 0


def test_redis_url_password_is_not_printed(tmp_path: Path) -> None:
    store = RedisOnlineStore("redis://user:s3cret@127.0.0.1:1/0")
    with pytest.raises(OnlineStoreError) as info:
        store.ping()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_source_with_no_files(tmp_path: Path, store_config: StoreConfig, instance) -> None:
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource("nothing", tmp_path / "nowhere", "ts", start_date=START)
    group = FeatureGroup("g", user, source, [Feature("x", pl.Int64)])
    with pytest.raises(SourceDataError, match=r"source 'nothing': no Parquet files found"):
        materialize_days(FeatureRepository([group]), store_config, instance, DAY1, DAY1)

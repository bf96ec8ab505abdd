"""Streaming: pushed events -> Redis Stream -> sensor -> micro-batch run, exactly once, both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.compute.coverage import MissingPartitionsWarning
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from tests.helpers import materialize_days

NOW = datetime.now(UTC).replace(microsecond=0)


def repo_for(path: Path) -> FeatureRepository:
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource(
        "clicks",
        path,
        "ts",
        id_field="eid",
        stream=True,
        start_date=(NOW - timedelta(days=3)).date().isoformat(),
    )
    windows = FeatureGroup(
        "click_windows",
        user,
        source,
        aggregations=[Aggregation("count", windows=["1h", "1d"]), Aggregation("sum", "value", ["1d"])],
    )
    latest = FeatureGroup("last_click", user, source, [Feature("value", pl.Float64, default=0.0)])
    return FeatureRepository([windows, latest])


def clicks(rows: list[tuple[int, str, float, timedelta]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "eid": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "ts": [NOW - r[3] for r in rows],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None):
    sensor = defs.resolve_sensor_def("stream_clicks_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        return sensor.evaluate_tick(context)


def test_sensor_microbatch_updates_both_stores_exactly_once(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    repo = repo_for(tmp_path / "clicks.parquet")
    clicks([(0, "seed", 0.0, timedelta(days=2))]).write_parquet(tmp_path / "clicks.parquet")
    store = FeatureStore(repo, store_config)
    defs = build_definitions(repo, store_config)
    refs = [
        "click_windows:v1:count_1h",
        "click_windows:v1:count_1d",
        "click_windows:v1:value_sum_1d",
        "last_click:v1:value",
    ]
    # pushed through the stream only: nothing online until a micro-batch runs
    store.push(
        "clicks",
        clicks([(1, "a", 1.5, timedelta(minutes=10)), (1, "b", 2.25, timedelta(hours=5))]),
        direct=False,
    )
    assert store.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0]["count_1d"] == 0
    with dg.instance_for_test() as instance:
        result = tick(defs, instance, None)
        (request,) = result.run_requests
        cursor = result.cursor
        # the cursor is the requested range; the run key names it
        pending = json.loads(cursor)
        assert pending["after"] == "0" and request.run_key == f"clicks:0:{pending['until']}"
        job = defs.resolve_job_def("stream_clicks")
        assert job.execute_in_process(run_config=request.run_config, instance=instance).success
        first = store.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0]
        assert first == {"user_id": 1, "count_1h": 1, "count_1d": 2, "value_sum_1d": 3.75, "value": 1.5}
        offline_rows = store.sql("SELECT count(*) AS n FROM click_windows_v1")["n"][0]
        assert offline_rows == 2
        # a retried (or crashed and re-run) batch changes nothing
        assert job.execute_in_process(run_config=request.run_config, instance=instance).success
        assert store.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0] == first
        assert store.sql("SELECT count(*) AS n FROM click_windows_v1")["n"][0] == 2
        # nothing new: the next tick skips; new events: one run for exactly those
        assert tick(defs, instance, cursor).run_requests == []
        store.push(
            "clicks",
            clicks([(1, "c", 10.0, timedelta(minutes=1)), (1, "a", 1.5, timedelta(minutes=10))]),
            direct=False,
        )
        later = tick(defs, instance, cursor)
        (request2,) = later.run_requests
        # the next range starts at the applied marker: what the first run finished
        assert request2.run_config["ops"]["apply_clicks_stream"]["config"]["after"] == pending["until"]
        assert job.execute_in_process(run_config=request2.run_config, instance=instance).success
    got = store.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0]
    assert got == {"user_id": 1, "count_1h": 2, "count_1d": 3, "value_sum_1d": 13.75, "value": 10.0}
    # the offline store saw the events too: a training set at now agrees with the online read
    labels = pl.DataFrame({"user_id": [1], "t": [NOW]}, schema_overrides={"t": pl.Datetime("us", "UTC")})
    # (the seed file's day was never materialized: the client says so, and is allowed here)
    with pytest.warns(MissingPartitionsWarning, match=r"'last_click:v1'.*source 'clicks' has events"):
        offline = store.get_training_dataset(
            labels, features=refs, timestamp_column="t", allow_missing=True
        ).to_dicts()[0]
    # re-materializing the days from the source keeps the pushed events (they live with it)
    with dg.instance_for_test() as instance:
        first_day, today = (NOW - timedelta(days=2)).date().isoformat(), NOW.date().isoformat()
        assert materialize_days(repo, store_config, instance, first_day, today).success
    assert store.sql("SELECT count(*) AS n FROM click_windows_v1 WHERE user_id = 1")["n"][0] == 3
    assert {k: offline[k] for k in got if k != "user_id"} == {
        k: v
        for k, v in store.get_online_features({"user_id": [1]}, features=refs, output="dicts", at=NOW)[
            0
        ].items()
        if k != "user_id"
    }
    store.close()


def test_landed_files_are_applied_by_a_sensor_run(tmp_path: Path, store_config: StoreConfig) -> None:
    folder = tmp_path / "clicks"
    folder.mkdir()
    clicks([(0, "seed", 0.0, timedelta(days=2))]).write_parquet(folder / "part-000.parquet")
    repo = repo_for(folder)
    defs = build_definitions(repo, store_config)
    store = FeatureStore(repo, store_config)
    sensor = defs.resolve_sensor_def("landed_clicks_sensor")
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance) as context:
            first = sensor.evaluate_tick(context)
        assert first.run_requests == []  # files already there belong to the batch path
        clicks([(5, "x", 4.0, timedelta(minutes=3)), (5, "y", 6.0, timedelta(minutes=2))]).write_parquet(
            folder / "part-001.parquet"
        )
        with dg.build_sensor_context(instance=instance, cursor=first.cursor) as context:
            second = sensor.evaluate_tick(context)
        (request,) = second.run_requests
        assert request.run_config["ops"]["apply_clicks_files"]["config"]["files"] == [
            str(folder / "part-001.parquet")
        ]
        job = defs.resolve_job_def("landed_clicks")
        assert job.execute_in_process(run_config=request.run_config, instance=instance).success
        with dg.build_sensor_context(instance=instance, cursor=second.cursor) as context:
            assert sensor.evaluate_tick(context).run_requests == []
    got = store.get_online_features(
        {"user_id": [5]}, features=["click_windows:v1:count_1h", "last_click:v1:value"], output="dicts"
    )
    assert got == [{"user_id": 5, "count_1h": 2, "value": 6.0}]
    assert store.sql("SELECT count(*) AS n FROM click_windows_v1 WHERE user_id = 5")["n"][0] == 2
    store.close()


def test_a_large_direct_push_appends_the_rows_it_was_given_to_the_stream(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """A push of more than 1,000 rows encodes its stream entry in a worker thread while it
    computes its events: the entry must still hold exactly the pushed rows, once, before the
    window state it rides with; a push refused by a later check appends nothing."""
    from skewless.storage import online_keys as K
    from skewless.storage import streams

    repo = repo_for(tmp_path / "clicks")
    rows = clicks([(u % 40, f"big-{u}", float(u), timedelta(seconds=u + 1)) for u in range(1_500)])
    with FeatureStore(repo, store_config) as store:
        key = K.stream_key(store_config.key_prefix, "clicks")
        try:
            written = store.push("clicks", rows)
            assert written["click_windows:v1"] == 1_500
            ((_, fields),) = store.online.client.xrange(key, "-", "+")
            assert streams.entry_frame(fields).equals(rows.select(streams.entry_frame(fields).columns))
            # a null id is found while computing events, after the entry's encoding started
            bad = rows.with_columns(
                pl.when(pl.col("eid") == "big-7").then(None).otherwise("eid").alias("eid")
            )
            with pytest.raises(Exception, match="null id"):
                store.push("clicks", bad)
            assert store.online.client.xlen(key) == 1
        finally:
            store.online.delete_all()

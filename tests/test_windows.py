"""Window aggregations: one declaration, batch and push paths agreeing to the last bit."""

from __future__ import annotations

import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless import Aggregation, Entity, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.compute.rows import compute_rows
from skewless.config import StoreConfig
from skewless.errors import DefinitionError, RequestError
from skewless.storage.offline import days_between
from tests.helpers import RUN

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
BASE = NOW - timedelta(days=4)
ok = pl.col("status") == "ok"


def window_group(path: Path) -> FeatureGroup:
    source = FileSource("txns", path, "ts", id_field="eid", stream=True, start_date=BASE.date().isoformat())
    return FeatureGroup(
        "user_windows",
        Entity("user", {"user_id": pl.Int64}),
        source,
        aggregations=[
            Aggregation("count", windows=["1h", "1d"]),
            Aggregation("count", windows=["1d"], where=ok, name="ok_count"),
            Aggregation("sum", "amount", ["1h", "1d", "3d"], where=ok),
            Aggregation("mean", "amount", ["1d"]),
            Aggregation("min", "amount", ["1d"]),
            Aggregation("max", "amount", ["3d"]),
            Aggregation("last", "amount", ["3d"], name="last_amount"),
            Aggregation("distinct_count", "merchant", ["1d"], dtype=pl.Int64),
        ],
    )


def events_frame(events: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        events,
        schema={
            "user_id": pl.Int64,
            "ts": pl.Datetime("us", "UTC"),
            "eid": pl.String,
            "amount": pl.Float64,
            "status": pl.String,
            "merchant": pl.Int64,
        },
    )


def batch_materialize(store: FeatureStore, group: FeatureGroup) -> None:
    """What the offline asset does for each day: compute the events and write the partition."""
    first, last = BASE.date(), (NOW + timedelta(days=1)).date()
    for day in days_between(first, last + timedelta(days=1)):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        store.offline.write_partition(group, day, compute_rows(group, start, start + timedelta(days=1)))


amounts = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.1, 0.2, 0.3, 1e16, -1e16, 1.0, -0.0]), st.none()
)
event = st.fixed_dictionaries(
    {
        "user_id": st.integers(1, 3),
        "minute": st.integers(0, 4 * 24 * 60 + 30),
        "amount": amounts,
        "status": st.sampled_from(["ok", "ok", "declined"]),
        "merchant": st.integers(1, 4),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.lists(event, min_size=1, max_size=40),
    redelivered=st.lists(st.integers(0, 39), max_size=8),
    chunks=st.integers(1, 4),
    seed=st.integers(0, 1000),
    offset=st.integers(0, 600),
    via=st.sampled_from(["direct push", "stream micro-batch"]),
)
def test_stream_and_batch_agree_exactly(raw, redelivered, chunks, seed, offset, via, redis_url) -> None:
    events = [
        {
            "user_id": e["user_id"],
            "ts": BASE + timedelta(minutes=e["minute"]),
            "eid": f"e{i:04d}",
            "amount": e["amount"],
            "status": e["status"],
            "merchant": e["merchant"],
        }
        for i, e in enumerate(raw)
    ]
    # the stream sees late events (shuffled) and duplicate deliveries
    stream = events + [events[i] for i in redelivered if i < len(events)]
    random.Random(seed).shuffle(stream)
    with tempfile.TemporaryDirectory() as tmp:
        events_frame(events).write_parquet(Path(tmp) / "txns.parquet")
        group = window_group(Path(tmp) / "txns.parquet")
        config = StoreConfig(str(Path(tmp) / "offline"), redis_url, tmp, f"sktest:{RUN}:win{seed}")
        store = FeatureStore(FeatureRepository([group]), config)
        try:
            # the streaming path as it stands at time t (events "after" t arrive early and
            # must be ignored by both paths)
            t = NOW - timedelta(minutes=offset)
            size = max(1, len(stream) // chunks)
            for i in range(0, len(stream), size):
                store.push("txns", events_frame(stream[i : i + size]), at=t, direct=via == "direct push")
            if via == "stream micro-batch":
                from skewless.sensors.microbatch import apply_stream_batch
                from skewless.storage import streams

                until = streams.newest_id(store.online, "txns")
                # the batch path below rewrites the partitions from the files; here the stream
                # is applied online only as of t, like a sensor run at time t
                apply_stream_batch(store.repository, store.offline, store.online, "txns", "0", until, at=t)
            batch_materialize(store, group)
            refs = [f"user_windows:v1:{name}" for name in group.feature_names]
            for _ in (0,):
                online = store.get_online_features({"user_id": [1, 2, 3, 4]}, features=refs, at=t)
                labels = pl.DataFrame(
                    {"user_id": [1, 2, 3, 4], "t": [t] * 4}, schema_overrides={"t": pl.Datetime("us", "UTC")}
                )
                offline = store.get_training_dataset(labels, features=refs, timestamp_column="t")
                for name in group.feature_names:
                    a, b = online[name].to_list(), offline[name].to_list()
                    assert a == b or all(x == y or (x != x and y != y) for x, y in zip(a, b, strict=True)), (
                        name,
                        t,
                        a,
                        b,
                    )
                # floats agree to the last bit, not approximately
                for name in ("amount_sum_1h", "amount_sum_1d", "amount_sum_3d", "amount_mean_1d"):
                    assert online[name].to_numpy().tobytes() == offline[name].to_numpy().tobytes()
        finally:
            store.online.delete_all()
            store.close()


def test_window_values_drop_as_events_leave(tmp_path: Path, store_config: StoreConfig) -> None:
    events = [
        {
            "user_id": 1,
            "ts": NOW - timedelta(days=1, hours=1),
            "eid": "a",
            "amount": 5.0,
            "status": "ok",
            "merchant": 1,
        },
        {
            "user_id": 1,
            "ts": NOW - timedelta(minutes=30),
            "eid": "b",
            "amount": 7.0,
            "status": "ok",
            "merchant": 2,
        },
    ]
    events_frame(events).write_parquet(tmp_path / "txns.parquet")
    group = window_group(tmp_path / "txns.parquet")
    store = FeatureStore(FeatureRepository([group]), store_config)
    store.push("txns", events_frame(events))
    got = store.get_online_features(
        [{"user_id": 1}, {"user_id": 9}],
        features=[
            "user_windows:v1:count_1h",
            "user_windows:v1:count_1d",
            "user_windows:v1:amount_sum_3d",
            "user_windows:v1:amount_mean_1d",
            "user_windows:v1:last_amount_3d",
        ],
        output="dicts",
    )
    assert got[0] == {
        "user_id": 1,
        "count_1h": 1,
        "count_1d": 1,
        "amount_sum_3d": 12.0,
        "amount_mean_1d": 7.0,
        "last_amount_3d": 7.0,
    }
    assert got[1] == {
        "user_id": 9,
        "count_1h": 0,
        "count_1d": 0,
        "amount_sum_3d": 0.0,
        "amount_mean_1d": None,
        "last_amount_3d": None,
    }
    # two hours later the 1h window is empty again: no stale count
    later = store.get_online_features(
        [{"user_id": 1}], features=["user_windows:v1:count_1h"], at=NOW + timedelta(hours=2), output="dicts"
    )
    assert later[0]["count_1h"] == 0
    store.close()


def test_bad_pushed_event_is_rejected_and_nothing_stored(tmp_path: Path, store_config: StoreConfig) -> None:
    group = window_group(tmp_path / "txns.parquet")
    store = FeatureStore(FeatureRepository([group]), store_config)
    bad = events_frame([{"user_id": 1, "ts": NOW, "eid": "x", "amount": 1.0, "status": "ok", "merchant": 1}])
    with pytest.raises(RequestError, match="rows pushed to source 'txns': column 'ts' is timezone-naive"):
        store.push("txns", bad.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(Exception, match="column 'amount' has dtype String, declared Float64"):
        store.push("txns", bad.with_columns(pl.col("amount").cast(pl.String)))
    with pytest.raises(RequestError, match="unknown source 'nope'"):
        store.push("nope", bad)
    assert list(store.online.keys()) == []
    store.close()


def test_bad_window_definitions() -> None:
    with pytest.raises(DefinitionError, match="function must be one of"):
        Aggregation("median", "x", ["1d"])
    with pytest.raises(DefinitionError, match="needs a column"):
        Aggregation("sum", windows=["1d"])
    with pytest.raises(DefinitionError, match="sum needs a numeric column"):
        Aggregation("sum", "x", ["1d"], dtype=pl.String)
    with pytest.raises(DefinitionError, match="windows must be a non-empty list"):
        Aggregation("count", windows="1d")
    with pytest.raises(DefinitionError, match="row features or window aggregations, not both"):
        from skewless import Feature

        FeatureGroup(
            "g",
            Entity("u", {"u": pl.Int64}),
            FileSource("s", "/x", "ts"),
            [Feature("f", pl.Int64)],
            aggregations=[Aggregation("count", windows=["1d"])],
        )


def test_window_values_equal_with_and_without_row_pruning(tmp_path: Path, monkeypatch) -> None:
    """Row pruning for window groups keeps events from `min label - longest window` to the
    last label time: events exactly on the lower edge (outside every window), just inside
    it, exactly at the last label time and after it give the same values pruned or not, on
    both engines."""
    from skewless.client import training_set

    first, last = NOW - timedelta(days=1), NOW - timedelta(hours=2)
    us = timedelta(microseconds=1)
    stamps = [
        first - timedelta(days=3) - us,
        first - timedelta(days=3),  # the lower edge: outside the 3d window of the first label
        first - timedelta(days=3) + us,
        first - timedelta(hours=1),
        last,  # exactly at the last label time
        last + us,  # after every label
        NOW - timedelta(minutes=5),
    ]
    events = [
        {"user_id": 1 + k % 2, "ts": t, "eid": f"e{k}", "amount": float(k), "status": "ok", "merchant": k % 3}
        for k, t in enumerate(stamps)
    ]
    events_frame(events).write_parquet(tmp_path / "txns.parquet")
    group = window_group(tmp_path / "txns.parquet")
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=None,
        state_dir=str(tmp_path),
        key_prefix="sktest:wprune",
    )
    store = FeatureStore(FeatureRepository([group]), config)
    batch_materialize(store, group)
    labels = pl.DataFrame(
        {"user_id": [1, 2, 1, 2, 3], "t": [first, first, last, last, last]},
        schema={"user_id": pl.Int64, "t": pl.Datetime("us", "UTC")},
    )
    refs = [
        f"user_windows:v1:{name}" for name in ("count_1d", "amount_sum_3d", "amount_max_3d", "last_amount_3d")
    ]
    results = []
    for engine in ("memory", "partitioned"):
        for prune in (True, False):
            monkeypatch.setattr(training_set, "PRUNE_ROWS", prune)
            results.append(
                store.get_training_dataset(labels, features=refs, timestamp_column="t", engine=engine)
            )
    for other in results[1:]:
        assert other.equals(results[0])
    # user 1: e2 just inside (e0 just outside); user 2: e3 only, e1 on the edge is outside
    assert results[0]["amount_sum_3d"].to_list()[:2] == [2.0, 3.0]
    store.close()

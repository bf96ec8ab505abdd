"""The online store over a real Redis: exact round trips, the write guard, TTL expiry."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless import Entity, Feature, FeatureGroup, FileSource
from skewless.storage.online import OnlineStore, open_online_store

user = Entity("user", {"user_id": pl.Int64})
pair = Entity("pair", {"name": pl.String, "n": pl.Int32})
source = FileSource("events", "/tmp/unused.parquet", "ts", created_timestamp_field="created")

ALL_TYPES = FeatureGroup(
    "all_types",
    user,
    source,
    [
        Feature("i64", pl.Int64),
        Feature("i8", pl.Int8),
        Feature("u32", pl.UInt32),
        Feature("f64", pl.Float64),
        Feature("f32", pl.Float32),
        Feature("flag", pl.Boolean),
        Feature("text", pl.String),
        Feature("when", pl.Datetime("us", "UTC")),
        Feature("day", pl.Date),
        Feature("vec", pl.Array(pl.Float32, 3)),
        Feature("text2", pl.String),
    ],
)

floats = st.floats(allow_nan=True, allow_infinity=True)
row = st.fixed_dictionaries(
    {
        "i64": st.none() | st.integers(-(2**63), 2**63 - 1),
        "i8": st.none() | st.integers(-128, 127),
        "u32": st.none() | st.integers(0, 2**32 - 1),
        "f64": st.none() | floats,
        "f32": st.none() | st.floats(width=32, allow_nan=True),
        "flag": st.none() | st.booleans(),
        "text": st.none() | st.text(max_size=20),
        "when": st.none()
        | st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        ),
        "day": st.none() | st.dates(min_value=date(1800, 1, 1)),
        "vec": st.none() | st.lists(st.floats(width=32, allow_nan=True), min_size=3, max_size=3),
        "text2": st.none() | st.text(alphabet="|{}%ab€", max_size=5),
    }
)


def frame_of(rows: list[dict], start: int = 0) -> pl.DataFrame:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame(rows, schema=dict(ALL_TYPES.offline_schema()) | {"user_id": pl.Int64}, strict=False)
    return frame.with_columns(
        pl.Series("user_id", range(start, start + len(rows)), dtype=pl.Int64),
        pl.Series("event_timestamp", [base] * len(rows), dtype=pl.Datetime("us", "UTC")),
        pl.Series("created_timestamp", [base] * len(rows), dtype=pl.Datetime("us", "UTC")),
    )


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=8))
def test_every_type_round_trips_exactly(online_store: OnlineStore, rows: list[dict]) -> None:
    online_store.delete_all()
    frame = frame_of(rows)
    online_store.write_latest(ALL_TYPES, frame)
    got = online_store.read(ALL_TYPES, frame.select("user_id"))
    for feature in ALL_TYPES.feature_names:
        expected, actual = frame[feature], got[feature]
        assert actual.dtype == expected.dtype, feature
        for e, a in zip(expected.to_list(), actual.to_list(), strict=True):
            assert same(e, a), (feature, e, a)
    # bit-exact floats, signed zeros included
    valid = frame["f64"].is_not_null()
    assert got["f64"].filter(valid).to_numpy().tobytes() == frame["f64"].filter(valid).to_numpy().tobytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=40))
def test_client_reads_every_type_exactly(store_config, online_store: OnlineStore, rows: list[dict]) -> None:
    """Through `FeatureStore.get_online_features`: Polars output (small and large requests) and dicts."""
    from skewless import FeatureRepository, FeatureStore

    online_store.delete_all()
    frame = frame_of(rows)
    online_store.write_latest(ALL_TYPES, frame)
    store = FeatureStore(FeatureRepository([ALL_TYPES]), store_config)
    refs = [f"all_types:v1:{name}" for name in ALL_TYPES.feature_names]
    request = {"user_id": [*frame["user_id"].to_list(), 10**6]}  # plus one unknown entity
    got = store.get_online_features(request, features=refs)
    dicts = store.get_online_features(request, features=refs, output="dicts")
    store.close()
    assert got.height == frame.height + 1 and len(dicts) == frame.height + 1
    for feature in ALL_TYPES.feature_names:
        assert got[feature].dtype == frame[feature].dtype, feature
        expected = [*frame[feature].to_list(), None]
        for e, a, d in zip(expected, got[feature].to_list(), [r[feature] for r in dicts], strict=True):
            assert same(e, a) and same(e, d), (feature, e, a, d)


@pytest.mark.parametrize("dtype", [pl.Float64, pl.Int32, pl.UInt8])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_dtype_groups_read_the_same_in_every_output(
    store_config, online_store: OnlineStore, dtype: pl.DataType, data: st.DataObject
) -> None:
    """A group whose features all share one numeric type is read as one (n, k) matrix (the
    fast path of wide groups). More than 16 entities in random order with repeats, unknown
    ones, null values, a declared default and a TTL some rows are past: Polars, rows and dicts
    outputs all equal what an oracle computes from the written rows."""
    from skewless import FeatureRepository, FeatureStore

    k = data.draw(st.integers(2, 6), label="features")
    defaults = [data.draw(st.none() | st.integers(0, 9), label=f"default {j}") for j in range(k)]
    group = FeatureGroup(
        "one_dtype",
        user,
        source,
        [Feature(f"x{j}", dtype, default=defaults[j]) for j in range(k)],
        ttl="1h",
    )
    n = data.draw(st.integers(17, 60), label="entities")
    values = st.none() | st.integers(0, 200)
    table = [[data.draw(values) for _ in range(k)] for _ in range(n)]
    stale = [data.draw(st.booleans()) for _ in range(n)]
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(hours=2 if s else 0, minutes=1) for s in stale]
    frame = pl.DataFrame(
        {
            "user_id": list(range(n)),
            **{f"x{j}": [r[j] for r in table] for j in range(k)},
            "event_timestamp": times,
            "created_timestamp": times,
        },
        schema={
            "user_id": pl.Int64,
            **{f"x{j}": dtype for j in range(k)},
            "event_timestamp": pl.Datetime("us", "UTC"),
            "created_timestamp": pl.Datetime("us", "UTC"),
        },
    )
    online = open_online_store(store_config)  # its codecs are per definition name: a fresh one
    online.delete_all()
    online.write_latest(group, frame)
    asked = data.draw(st.lists(st.integers(0, n + 5), min_size=17, max_size=80), label="request")
    refs = [f"one_dtype:v1:x{j}" for j in range(k)]
    store = FeatureStore(FeatureRepository([group]), store_config, online=online)
    got = store.get_online_features({"user_id": asked}, features=refs)
    rows = store.get_online_features({"user_id": asked}, features=refs, output="rows")
    dicts = store.get_online_features({"user_id": asked}, features=refs, output="dicts")
    online.delete_all()
    online.close()
    for j in range(k):
        assert got[f"x{j}"].dtype == dtype
    for i, entity in enumerate(asked):
        known = entity < n and not stale[entity]
        # a missing or expired entity gets the defaults, and so does a stored null
        stored = table[entity] if known else [None] * k
        want = [defaults[j] if stored[j] is None else stored[j] for j in range(k)]
        assert list(got.row(i))[1:] == want, (entity, known)
        assert list(rows[i])[1:] == want
        assert [dicts[i][f"x{j}"] for j in range(k)] == want


def test_missing_keys_decode_as_nulls(online_store: OnlineStore) -> None:
    frame = frame_of([{"i64": 5, "text": "x"}])
    online_store.write_latest(ALL_TYPES, frame)
    got = online_store.read(ALL_TYPES, pl.DataFrame({"user_id": [404, 0, 405]}))
    assert got["i64"].to_list() == [None, 5, None]
    assert got["event_timestamp"].null_count() == 2


def test_composite_and_string_keys_do_not_collide(online_store: OnlineStore) -> None:
    group = FeatureGroup("g", pair, source, [Feature("x", pl.Int64)])
    names = ["a|1", "a", "a}", "{a", "%7C", "|"]
    ns = [2, 1, 1, 1, 1, 1]
    t = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {"name": names, "n": ns, "event_timestamp": [t] * 6, "x": list(range(6))},
        schema_overrides={"n": pl.Int32, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    assert online_store.write_latest(group, frame)["written"] == 6
    assert len(list(online_store.keys(group))) == 6
    got = online_store.read(group, frame.select("name", "n"))
    assert got["x"].to_list() == list(range(6))


def write_one(
    store: OnlineStore, group: FeatureGroup, value: int, event: datetime, created: datetime | None = None
):
    frame = frame_of([{"i64": value}], start=1).with_columns(
        pl.lit(event).cast(pl.Datetime("us", "UTC")).alias("event_timestamp"),
        pl.lit(created or event).cast(pl.Datetime("us", "UTC")).alias("created_timestamp"),
    )
    return store.write_latest(
        group, frame.select(["user_id", "event_timestamp", "created_timestamp", *group.feature_names])
    )


def test_older_event_never_overwrites_newer(online_store: OnlineStore) -> None:
    t = datetime(2026, 1, 2, tzinfo=UTC)
    assert write_one(online_store, ALL_TYPES, 2, t)["written"] == 1
    assert write_one(online_store, ALL_TYPES, 1, t - timedelta(seconds=1))["skipped_older"] == 1
    assert online_store.read(ALL_TYPES, pl.DataFrame({"user_id": [1]}))["i64"].to_list() == [2]
    # same event time, later created time: a correction wins
    assert write_one(online_store, ALL_TYPES, 3, t, t + timedelta(hours=1))["written"] == 1
    # same event time, earlier created time: superseded
    assert write_one(online_store, ALL_TYPES, 4, t, t - timedelta(hours=1))["skipped_older"] == 1
    assert write_one(online_store, ALL_TYPES, 5, t + timedelta(microseconds=1))["written"] == 1
    assert online_store.read(ALL_TYPES, pl.DataFrame({"user_id": [1]}))["i64"].to_list() == [5]


def test_ttl_sets_key_expiry_from_event_time(online_store: OnlineStore) -> None:
    group = FeatureGroup("short", user, source, [Feature("i64", pl.Int64)], ttl="1h")
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "user_id": [1, 2],
            "event_timestamp": [now - timedelta(minutes=30), now - timedelta(hours=2)],
            "i64": [1, 2],
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    stats = online_store.write_latest(group, frame)
    assert stats == {"written": 1, "skipped_older": 0, "expired": 1, "keys": 1}
    (key,) = list(online_store.keys(group))
    remaining_ms = online_store.client.pttl(key)
    assert 29 * 60_000 < remaining_ms <= 30 * 60_000 + 1000


def test_event_times_before_1970_are_refused(online_store: OnlineStore) -> None:
    from skewless.errors import RequestError

    with pytest.raises(RequestError, match="between 1970 and 5138"):
        write_one(online_store, ALL_TYPES, 1, datetime(1960, 1, 1, tzinfo=UTC))


def test_client_reconnects_after_connection_drop(online_store: OnlineStore) -> None:
    write_one(online_store, ALL_TYPES, 7, datetime(2026, 1, 1, tzinfo=UTC))
    online_store.client.client_kill_filter(_id=online_store.client.client_id())
    time.sleep(0.05)
    assert online_store.read(ALL_TYPES, pl.DataFrame({"user_id": [1]}))["i64"].to_list() == [7]

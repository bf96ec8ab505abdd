"""The online store contract: the same tests against every backend (embedded, single Redis,
Redis Cluster). What a backend must do is what these say; a new backend passes them
unchanged (add it to `conftest.BACKENDS`)."""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.config import StoreConfig
from skewless.storage import online_keys
from skewless.storage.online import (
    EmbeddedRedisOnlineStore,
    OnlineStore,
    RedisClusterOnlineStore,
    RedisOnlineStore,
    open_online_store,
)

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
        Feature("text2", pl.String, default="none"),
    ],
)
PAIRS = FeatureGroup("pairs", pair, source, [Feature("value", pl.Int64)])
BASE = datetime(2026, 1, 1, tzinfo=UTC)

floats = st.floats(allow_nan=True, allow_infinity=True)
row = st.fixed_dictionaries(
    {
        "i64": st.none() | st.integers(-(2**63), 2**63 - 1),
        "i8": st.none() | st.integers(-128, 127),
        "u32": st.none() | st.integers(0, 2**32 - 1),
        "f64": st.none() | floats,
        "f32": st.none() | st.floats(width=32, allow_nan=True),
        "flag": st.none() | st.booleans(),
        "text": st.none() | st.text(max_size=12),
        "when": st.none()
        | st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        ),
        "day": st.none() | st.dates(min_value=date(1800, 1, 1)),
        "vec": st.none() | st.lists(st.floats(width=32, allow_nan=True), min_size=3, max_size=3),
        "text2": st.none() | st.text(alphabet="|{}%ab€", max_size=5),
    }
)


def frame_of(rows: list[dict], start: int = 0, when: datetime = BASE) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=dict(ALL_TYPES.offline_schema()) | {"user_id": pl.Int64}, strict=False)
    return frame.with_columns(
        pl.Series("user_id", range(start, start + len(rows)), dtype=pl.Int64),
        pl.Series("event_timestamp", [when] * len(rows), dtype=pl.Datetime("us", "UTC")),
        pl.Series("created_timestamp", [when] * len(rows), dtype=pl.Datetime("us", "UTC")),
    )


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


EDGE_ROWS = [
    {
        "i64": -(2**63),
        "i8": -128,
        "u32": 2**32 - 1,
        "f64": -0.0,
        "f32": float("inf"),
        "flag": True,
        "text": "a|b{c}%d",
        "when": datetime(1900, 1, 1, tzinfo=UTC),
        "day": date(1800, 1, 1),
        "vec": [1.5, float("nan"), -0.0],
        "text2": "€",
    },
    {"i64": 2**63 - 1, "f64": float("nan"), "flag": False, "text": "", "vec": None},
    {},  # every feature null
]


# ---------------------------------------------------------------------- the backend chosen
def test_configuration_chooses_the_backend(backend, config: StoreConfig, store: OnlineStore) -> None:
    expected = {
        "embedded": EmbeddedRedisOnlineStore,
        "redis": RedisOnlineStore,
        "cluster": RedisClusterOnlineStore,
    }[backend.name]
    assert type(store) is expected
    assert isinstance(store, OnlineStore)
    assert store.bounded_inline is (backend.name != "cluster")
    store.probe(2.0)  # the health check's path answers


# ---------------------------------------------------------------------- round trips
def check_round_trip(
    store: OnlineStore, config: StoreConfig, frame: pl.DataFrame, group: FeatureGroup = ALL_TYPES
) -> None:
    store.write_latest(group, frame)
    got = store.read(group, frame.select("user_id"))
    client = FeatureStore(FeatureRepository([group]), config, online=store)
    refs = [f"{group.name}:v1:{name}" for name in group.feature_names]
    request = {"user_id": [*frame["user_id"].to_list(), 10**9]}  # plus an unknown entity
    polars_out = client.get_online_features(request, features=refs)
    dicts = client.get_online_features(request, features=refs, output="dicts")
    for feature in group.feature_names:
        expected = frame[feature]
        assert got[feature].dtype == expected.dtype and polars_out[feature].dtype == expected.dtype, feature
        default = group.feature(feature).default
        for e, a in zip(expected.to_list(), got[feature].to_list(), strict=True):
            assert same(e, a), (feature, e, a)
        served = [default if e is None else e for e in expected.to_list()] + [default]
        for e, a, d in zip(served, polars_out[feature].to_list(), [r[feature] for r in dicts], strict=True):
            assert same(e, a) and same(e, d), (feature, e, a, d)
    valid = frame["f64"].is_not_null()
    assert got["f64"].filter(valid).to_numpy().tobytes() == frame["f64"].filter(valid).to_numpy().tobytes()


def test_every_type_round_trips_exactly(store: OnlineStore, config: StoreConfig) -> None:
    check_round_trip(store, config, frame_of(EDGE_ROWS))


# every type but the vector sealed (AES-GCM, storage/sealed.py); the vector stays in clear
PII_TYPES = FeatureGroup(
    "pii_types",
    user,
    source,
    [
        Feature(f.name, f.dtype, default=f.default, pii=f.vector is None and f.name != "f32")
        for f in ALL_TYPES.features
    ],
)


def test_pii_values_are_sealed_and_round_trip_on_every_backend(
    store: OnlineStore, config: StoreConfig, tmp_path: Path
) -> None:
    from skewless.storage.keys import KeyRing

    store.encryption_keys = KeyRing.init(tmp_path / "keys")
    check_round_trip(store, config, frame_of(EDGE_ROWS), PII_TYPES)
    marker = "private-" + "x" * 40
    many = frame_of([{"text": marker, "i64": i} for i in range(2000)], start=100)  # every cluster node
    check_round_trip(store, config, many, PII_TYPES)
    keys = online_keys.entity_keys(PII_TYPES, config.key_prefix, many.select("user_id"))
    raw = store.mget(keys)
    assert all(v is not None and v[:1] == b"2" and marker.encode() not in v for v in raw)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=30))
def test_random_rows_round_trip_exactly(store: OnlineStore, config: StoreConfig, rows: list[dict]) -> None:
    check_round_trip(store, config, frame_of(rows))


def test_string_and_composite_keys_round_trip(store: OnlineStore) -> None:
    names = ["a", "a|b", "{x}", "%7C", "é", "a}b{", ""]
    frame = pl.DataFrame(
        {
            "name": names * 2,
            "n": [1] * len(names) + [2] * len(names),
            "value": list(range(2 * len(names))),
            "event_timestamp": [BASE] * (2 * len(names)),
        },
        schema_overrides={"n": pl.Int32, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    store.write_latest(PAIRS, frame)
    got = store.read(PAIRS, frame.select("name", "n"))
    assert got["value"].to_list() == frame["value"].to_list()


# ---------------------------------------------------------------------- the event-time guard
def test_racing_writers_keep_the_newest_event_time(store: OnlineStore, make_store) -> None:
    """Threads write older and newer rows for overlapping entities in random orders; each
    entity ends with the row of its newest event time, whichever writer came last."""
    group = FeatureGroup("race", user, source, [Feature("value", pl.Int64)])
    entities = list(range(300))  # spans every node of a cluster
    versions = list(range(40))

    def writer(seed: int) -> None:
        online = make_store()
        rng = random.Random(seed)
        mine = [v for v in versions if v % 4 == seed]
        rng.shuffle(mine)
        for v in mine:
            ids = [*rng.sample(entities, 200), 0, 299]  # overlapping subsets, always 0 and 299
            frame = pl.DataFrame(
                {
                    "user_id": ids,
                    "value": [v] * len(ids),
                    "event_timestamp": [BASE + timedelta(seconds=v)] * len(ids),
                },
                schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
            )
            online.write_latest(group, frame)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the oracle: every entity's newest version among those written to it
    expected: dict[int, int] = {}
    for seed in range(4):
        rng = random.Random(seed)
        mine = [v for v in versions if v % 4 == seed]
        rng.shuffle(mine)
        for v in mine:
            for i in [*rng.sample(entities, 200), 0, 299]:
                expected[i] = max(expected.get(i, -1), v)
    got = store.read(group, pl.DataFrame({"user_id": entities}))
    assert got["value"].to_list() == [expected.get(i) for i in entities]
    assert expected[0] == expected[299] == versions[-1]
    # an older row written after changes nothing; an equal one rewrites (idempotent)
    stats = store.write_latest(
        group,
        pl.DataFrame(
            {"user_id": [0], "value": [-1], "event_timestamp": [BASE]},
            schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
        ),
    )
    assert stats["skipped_older"] == 1 and store.read(group, pl.DataFrame({"user_id": [0]}))["value"][0] == 39


# ---------------------------------------------------------------------- TTL
def test_ttl_expires_keys_when_values_stop_being_servable(store: OnlineStore, config: StoreConfig) -> None:
    group = FeatureGroup("ttl", user, source, [Feature("value", pl.Int64, default=-1)], ttl="1h")
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "user_id": [1, 2, 3],
            "value": [10, 20, 30],
            # 1: expires in ~1.5 s; 2: servable for an hour; 3: already too old (not written)
            "event_timestamp": [
                now - timedelta(hours=1) + timedelta(seconds=1.5),
                now,
                now - timedelta(hours=2),
            ],
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    stats = store.write_latest(group, frame)
    assert stats["expired"] == 1 and stats["written"] == 2
    key = online_keys.entity_keys(group, store.key_prefix, frame.head(1))[0]
    assert 0 < store.client.pttl(key) <= 1500
    client = FeatureStore(FeatureRepository([group]), config, online=store)
    first = client.get_online_features({"user_id": [1, 2, 3]}, features=["ttl:v1:value"], output="dicts")
    assert [r["value"] for r in first] == [10, 20, -1]
    time.sleep(1.6)
    assert store.mget([key]) == [None]  # Redis expired it
    later = client.get_online_features({"user_id": [1, 2, 3]}, features=["ttl:v1:value"], output="dicts")
    assert [r["value"] for r in later] == [-1, 20, -1]


# ---------------------------------------------------------------------- retire without SCAN
def window_group(path: Path, name: str = "user_windows") -> FeatureGroup:
    src = FileSource("txns", path, "ts", id_field="eid", stream=True)
    return FeatureGroup(
        name,
        user,
        src,
        aggregations=[
            Aggregation("count", windows=["1h", "1d"]),
            Aggregation("sum", "amount", ["1d"]),
            Aggregation("max", "amount", ["1d"]),
            Aggregation("last", "amount", ["1d"], name="last_amount"),
        ],
    )


def events(users: list[int], now: datetime, minutes: list[int]) -> pl.DataFrame:
    rows = [
        {"user_id": u, "ts": now - timedelta(minutes=m), "eid": f"e{u}-{m}", "amount": float(u + m)}
        for u in users
        for m in minutes
    ]
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "eid": pl.String, "amount": pl.Float64},
    )


def test_delete_version_removes_exactly_its_keys(
    store: OnlineStore, config: StoreConfig, tmp_path: Path
) -> None:
    """Retiring a group version deletes its keys, found from its entities (no SCAN), window
    keys and freshness marker included; other versions stay."""
    v1 = FeatureGroup("retire", user, source, [Feature("value", pl.Int64)])
    v2 = FeatureGroup("retire", user, source, [Feature("value", pl.Int64)], version=2)
    ids = list(range(200))
    frame = pl.DataFrame(
        {"user_id": ids, "value": ids, "event_timestamp": [BASE] * len(ids)},
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    store.write_latest(v1, frame)
    store.write_latest(v2, frame)
    windows = window_group(tmp_path / "txns.parquet", "retire_windows")
    now = datetime.now(UTC)
    pushed = events(ids[:50], now, [1, 5])
    pushed.write_parquet(tmp_path / "txns.parquet")
    client = FeatureStore(FeatureRepository([windows]), config, online=store)
    client.push("txns", pushed)
    assert store.freshness(v1) is not None and store.freshness(windows) is not None
    entities = pl.DataFrame({"user_id": ids}).lazy()
    deleted = store.delete_version("user", {"user_id": pl.Int64}, "retire", 1, False, entities)
    assert deleted == len(ids) + 1  # values + the marker
    assert store.read(v1, frame.select("user_id"))["value"].null_count() == len(ids)
    assert store.read(v2, frame.select("user_id"))["value"].to_list() == ids
    assert store.freshness(v1) is None and store.freshness(v2) is not None
    deleted = store.delete_version("user", {"user_id": pl.Int64}, "retire_windows", 1, True, entities)
    assert deleted == 50 * 3 + 1  # events, ids, tiles of each entity + the marker
    assert list(store.keys(windows)) == []


# ---------------------------------------------------------------------- windows, push, micro-batch
def test_window_features_from_pushes_and_micro_batches(
    store: OnlineStore, config: StoreConfig, tmp_path: Path
) -> None:
    """Push events (direct, and through the stream + micro-batch), read the windows of
    many entities at once; values are the exact aggregates of each entity's events."""
    from skewless.sensors.microbatch import apply_stream_batch
    from skewless.storage import streams

    group = window_group(tmp_path / "txns.parquet")
    now = datetime.now(UTC).replace(microsecond=0)
    users = list(range(1, 121))
    direct = events(users[:60], now, [2, 30, 90])
    streamed = events(users[60:], now, [3, 45, 600])
    pl.concat([direct, streamed]).write_parquet(tmp_path / "txns.parquet")
    client = FeatureStore(FeatureRepository([group]), config, online=store)
    client.push("txns", direct)
    client.push("txns", direct.head(10))  # a re-delivery changes nothing
    client.push("txns", streamed, direct=False)
    until = streams.newest_id(store, "txns")
    assert until is not None
    applied = apply_stream_batch(client.repository, client.offline, store, "txns", "0", until)
    assert applied
    refs = [f"user_windows:v1:{name}" for name in group.feature_names]
    got = client.get_online_features({"user_id": [*users, 9999]}, features=refs, output="dicts")
    for entity, found in zip([*users, 9999], got, strict=True):
        minutes = [2, 30, 90] if entity <= 60 else [3, 45, 600] if entity != 9999 else []
        hour = [m for m in minutes if m < 60]
        assert found["count_1h"] == len(hour), (entity, found)
        assert found["count_1d"] == len(minutes)
        assert found["amount_sum_1d"] == float(sum(entity + m for m in minutes))
        assert found["amount_max_1d"] == (max(entity + m for m in minutes) if minutes else None)
        assert found["last_amount_1d"] == (float(entity + min(minutes)) if minutes else None)
    # a second (warm) read gives the same values
    assert client.get_online_features({"user_id": [*users, 9999]}, features=refs, output="dicts") == got


# ---------------------------------------------------------------------- many entities, one request
def test_many_entities_in_one_request(backend, store: OnlineStore, config: StoreConfig) -> None:
    """Entities spread over every slot range (every node of a cluster): one round trip per
    node touched, the round trips and nodes reported in the client's read stats."""
    ids = list(range(2000))
    frame = frame_of([{"i64": i, "text": f"t{i}"} for i in ids])
    store.write_latest(ALL_TYPES, frame)
    client = FeatureStore(FeatureRepository([ALL_TYPES]), config, online=store)
    got = client.get_online_features({"user_id": ids}, features=["all_types:v1:i64", "all_types:v1:text"])
    assert got["i64"].to_list() == ids and got["text"].to_list() == [f"t{i}" for i in ids]
    stats = client.last_online_stats
    assert stats["keys"] == len(ids)
    if backend.name == "cluster":
        slots = {
            RedisClusterOnlineStore.slot_of(k)
            for k in frame.select(online_keys.key_expression(ALL_TYPES, store.key_prefix)).to_series()
        }
        assert stats["nodes"] == 3 and stats["round_trips"] == 3, stats
        assert stats["commands"] == len(slots)  # one MGET per slot, pipelined per node
    else:
        assert stats["nodes"] == 1 and stats["round_trips"] == 1, stats


def test_a_large_push_in_pipelined_slices_equals_the_oracle(
    store: OnlineStore, config: StoreConfig, tmp_path: Path
) -> None:
    """A push of more events than one slice is encoded and sent slice by slice while the
    server runs the earlier slices: entities cut between slices, an id re-pushed with a new
    amount in a later slice (latest row wins), rows in random order. The window values must
    equal a brute-force count/sum/max/last over the latest version of each id, whatever the
    order of the rows."""
    from skewless.storage import window_state

    group = window_group(tmp_path / "txns.parquet", "sliced_windows")
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(7)
    n = window_state.PIPE_SLICE * 2 + 517
    rows = [
        {
            "user_id": rng.randrange(40),
            "ts": now - timedelta(seconds=rng.randrange(1, 80_000)),
            "eid": f"e{i}",
            "amount": float(rng.randrange(1000)),
        }
        for i in range(n)
    ]
    # the same ids again near the end (corrections: new amount and time), and exact re-deliveries
    for i in rng.sample(range(n // 2), 300):
        moved = rows[i]["ts"] - timedelta(seconds=3)
        rows.append({**rows[i], "amount": rows[i]["amount"] + 0.5, "ts": moved})
    rows += [dict(rows[i]) for i in rng.sample(range(n), 200)]
    schema = {"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "eid": pl.String, "amount": pl.Float64}
    pushed = pl.DataFrame(rows, schema=schema)
    pl.DataFrame(schema=schema).write_parquet(tmp_path / "txns.parquet")
    latest: dict[tuple[int, str], dict] = {}
    for row in rows:  # later rows win; identity is (entity keys, event id)
        latest[(row["user_id"], row["eid"])] = row
    expected = {}
    for user in range(40):
        mine = [r for (u, _), r in latest.items() if u == user and r["ts"] > now - timedelta(days=1)]
        mine.sort(key=lambda r: (r["ts"], r["eid"]))
        expected[user] = (len(mine), sum(r["amount"] for r in mine), max(r["amount"] for r in mine))
    try:
        client = FeatureStore(FeatureRepository([group]), config, online=store)
        client.push("txns", pushed, at=now)
        refs = [f"sliced_windows:v1:{f}" for f in ("count_1d", "amount_sum_1d", "amount_max_1d")]
        got = client.get_online_features({"user_id": list(range(40))}, features=refs, output="dicts")
        values = {r["user_id"]: (r["count_1d"], r["amount_sum_1d"], r["amount_max_1d"]) for r in got}
        assert values == expected
    finally:
        store.delete_all()


@pytest.mark.parametrize("others", [0, 60], ids=["small-write", "arrow-write"])
def test_an_id_repeated_within_one_write_counts_once_with_its_last_version(
    store: OnlineStore, config: StoreConfig, tmp_path: Path, others: int
) -> None:
    """The write script relies on one version per identity per batch; `write_events` keeps
    the last row of each id itself (a push has already done so, a direct caller may not), in
    both write paths (few events from Python values, many through Arrow), also when the id
    is already stored."""
    from skewless.compute.rows import transform_rows

    group = window_group(tmp_path / "txns.parquet", "repeat_windows")
    now = datetime.now(UTC).replace(microsecond=0)
    schema = {"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "eid": pl.String, "amount": pl.Float64}
    pl.DataFrame(schema=schema).write_parquet(tmp_path / "txns.parquet")
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))

    def as_events(*versions: tuple[str, float, int]) -> pl.DataFrame:
        """Each version transformed on its own (the transform would keep only the last)."""
        filler = [
            {"user_id": 2 + i % 7, "ts": now - timedelta(minutes=i + 1), "eid": f"f{i}", "amount": 1.0}
            for i in range(others)
        ]
        frames = [
            transform_rows(group, group.source.checked(pl.DataFrame(rows, schema=schema).lazy()), *far)
            for rows in (
                *(
                    [{"user_id": 1, "ts": now - timedelta(minutes=m), "eid": e, "amount": a}]
                    for e, a, m in versions
                ),
                filler,
            )
            if rows
        ]
        return pl.concat(frames)

    refs = [f"repeat_windows:v1:{f}" for f in ("count_1d", "amount_sum_1d", "last_amount_1d")]
    try:
        client = FeatureStore(FeatureRepository([group]), config, online=store)
        written = store.write_events(
            group, as_events(("a", 10.0, 30), ("b", 1.0, 20), ("a", 20.0, 10), ("a", 5.0, 40))
        )
        assert written == 2 + others
        got = client.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0]
        assert (got["count_1d"], got["amount_sum_1d"], got["last_amount_1d"]) == (2, 6.0, 1.0)
        # stored now: a write repeating it corrects it once more, the last row again winning
        assert store.write_events(group, as_events(("a", 7.0, 5), ("a", 8.0, 3))) == 0
        got = client.get_online_features({"user_id": [1]}, features=refs, output="dicts")[0]
        assert (got["count_1d"], got["amount_sum_1d"], got["last_amount_1d"]) == (2, 9.0, 8.0)
    finally:
        store.delete_all()


def test_one_entity_with_thousands_of_events_in_one_write(
    store: OnlineStore, config: StoreConfig, tmp_path: Path
) -> None:
    """An entity with more events in one script call than one HMGET chunk (1,000 ids) or
    one ZADD/HSET chunk: every event counted once, a re-write of the same events changes
    nothing, and a re-write with corrected amounts replaces every one of them."""
    group = window_group(tmp_path / "txns.parquet", "dense_windows")
    now = datetime.now(UTC).replace(microsecond=0)
    schema = {"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "eid": pl.String, "amount": pl.Float64}
    pl.DataFrame(schema=schema).write_parquet(tmp_path / "txns.parquet")
    n = 2_600

    def rows(amount: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "user_id": [5] * n,
                "ts": [now - timedelta(seconds=10 * i + 1) for i in range(n)],
                "eid": [f"d{i}" for i in range(n)],
                "amount": [amount] * n,
            },
            schema=schema,
        )

    refs = [f"dense_windows:v1:{f}" for f in ("count_1d", "amount_sum_1d")]
    try:
        client = FeatureStore(FeatureRepository([group]), config, online=store)
        assert client.push("txns", rows(1.0), at=now) == {"dense_windows:v1": n}
        got = client.get_online_features({"user_id": [5]}, features=refs, output="dicts")[0]
        assert (got["count_1d"], got["amount_sum_1d"]) == (n, float(n))
        assert client.push("txns", rows(1.0), at=now) == {"dense_windows:v1": 0}
        assert client.push("txns", rows(2.0), at=now) == {"dense_windows:v1": 0}
        got = client.get_online_features({"user_id": [5]}, features=refs, output="dicts")[0]
        assert (got["count_1d"], got["amount_sum_1d"]) == (n, 2.0 * n)
    finally:
        store.delete_all()


# ---------------------------------------------------------------------- restarts
def test_store_reconnects_after_a_restart(backend, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Requests before and after the server restarts (a cluster: one master) on the same
    store object: it reconnects, reloads its scripts where they were lost, and serves.

    The single-Redis backend restarts a private server of its own (the shared one on 6379
    is not ours to restart); the embedded one restarts its server in its state folder."""
    from examples.scale.servers import RedisProcess, free_ports, server_binary
    from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis

    private = None
    prefix = "skcontract:restart"
    if backend.name == "embedded":
        state = tmp_path / "state"
        ensure_embedded_redis(state)
        config = StoreConfig(str(tmp_path / "offline"), None, str(state), prefix)

        def restart() -> None:
            stop_embedded_redis(state)
            ensure_embedded_redis(state)
    elif backend.name == "redis":
        binary = server_binary()
        if binary is None:
            pytest.skip("no redis-server binary to run a private single Redis")
        private = RedisProcess(binary, tmp_path / "redis", free_ports(1)[0])
        private.start()
        config = StoreConfig(str(tmp_path / "offline"), private.url, str(tmp_path), prefix)
        restart = private.restart
    else:
        cluster = request.getfixturevalue("redis_cluster")
        config = StoreConfig(str(tmp_path / "offline"), backend.redis_url, str(tmp_path), prefix + ":c")
        restart = lambda: cluster.restart(cluster.nodes[1])  # noqa: E731
    store = open_online_store(config)
    group = window_group(tmp_path / "txns.parquet", "restart_windows")
    now = datetime.now(UTC)
    pushed = events(list(range(60)), now, [1])
    pushed.write_parquet(tmp_path / "txns.parquet")
    try:
        client = FeatureStore(FeatureRepository([ALL_TYPES, group]), config, online=store)
        ids = list(range(300))
        frame = frame_of([{"i64": i} for i in ids])
        store.write_latest(ALL_TYPES, frame)
        client.push("txns", pushed)
        assert (
            client.get_online_features({"user_id": ids}, features=["all_types:v1:i64"])["i64"].to_list()
            == ids
        )
        restart()
        if backend.name == "cluster":
            # the restarted master lost its script cache: the window write's cached sha gets
            # NOSCRIPT there, and the store loads the script on that node
            sha = store.windows._write_sha()
            with cluster.nodes[1].client() as node:
                assert node.script_exists(sha) == [False]
        # writes after the restart (window scripts by their cached sha: NOSCRIPT reloads)
        client.push("txns", pushed)
        if backend.name == "cluster":
            with cluster.nodes[1].client() as node:
                assert node.script_exists(sha) == [True]
        store.write_latest(ALL_TYPES, frame)
        assert (
            client.get_online_features({"user_id": ids}, features=["all_types:v1:i64"])["i64"].to_list()
            == ids
        )
        counts = client.get_online_features(
            {"user_id": list(range(60))}, features=["restart_windows:v1:count_1h"], output="dicts"
        )
        assert [r["count_1h"] for r in counts] == [1] * 60
    finally:
        store.delete_all()
        store.close()
        if private is not None:
            private.stop()
        if backend.name == "embedded":
            stop_embedded_redis(tmp_path / "state")

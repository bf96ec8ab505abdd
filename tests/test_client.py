"""`FeatureStore`: point-in-time training sets against a brute-force oracle, and online lookups."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.config import StoreConfig
from skewless.errors import RequestError
from skewless.storage.offline import OfflineStore
from skewless.storage.online_keys import audit_key
from tests.helpers import RUN, make_events, materialize_days, small_repo

BASE = datetime(2026, 3, 1, tzinfo=UTC)
user = Entity("user", {"user_id": pl.Int64})
pair = Entity("pair", {"user_id": pl.Int64, "shop": pl.String})
src = FileSource("s", "/tmp/unused", "ts", created_timestamp_field="created", start_date="2026-03-01")


def oracle(
    labels: list[dict], rows: list[dict], keys: list[str], ttl: timedelta | None, feature: str, default
):
    """Plain loops: for each label, the latest row (by event, then created, then position) at or before t."""
    out = []
    for label in labels:
        best = None
        for position, r in enumerate(rows):
            if any(r[k] != label[k] for k in keys):
                continue
            if r["event_timestamp"] > label["t"]:
                continue
            if ttl is not None and r["event_timestamp"] < label["t"] - ttl:
                continue
            rank = (r["event_timestamp"], r["created_timestamp"], position)
            if best is None or rank > best[0]:
                best = (rank, r[feature])
        value = None if best is None else best[1]
        out.append(default if value is None else value)
    return out


def write_rows(offline: OfflineStore, group: FeatureGroup, rows: list[dict]) -> None:
    """Store rows the way the offline asset does: one sorted file per day of their span."""
    frame = (
        pl.DataFrame(rows, schema=group.offline_schema())
        if rows
        else pl.DataFrame(schema=group.offline_schema())
    )
    frame = (
        frame.with_row_index("__pos")
        .sort([*group.entity.key_columns, "event_timestamp", "created_timestamp", "__pos"])
        .drop("__pos")
    )
    if frame.height == 0:
        return
    # every day of the span, empty ones too, as a materialized range leaves them
    days = frame.get_column("event_timestamp").dt.date()
    day = days.min()
    while day <= days.max():
        offline.write_partition(group, day, frame.filter(days == day))
        day += timedelta(days=1)


minutes = st.integers(0, 60 * 24 * 3)
feature_row = st.fixed_dictionaries(
    {
        "user_id": st.integers(1, 4),
        "shop": st.sampled_from(["a", "b"]),
        "e": minutes,
        "c": st.integers(0, 3),
        "x": st.none() | st.integers(-5, 5),
    }
)
label_row = st.fixed_dictionaries(
    {"user_id": st.integers(0, 5), "shop": st.sampled_from(["a", "b", "z"]), "t": minutes}
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(feature_row, max_size=25),
    labels=st.lists(label_row, min_size=1, max_size=25),
    ttl_minutes=st.none() | st.integers(1, 60 * 24),
    composite=st.booleans(),
    default=st.none() | st.just(-99),
    engine=st.sampled_from(["memory", "partitioned"]),
)
def test_training_set_matches_brute_force_oracle(
    rows, labels, ttl_minutes, composite, default, engine, redis_url
) -> None:
    ttl = None if ttl_minutes is None else timedelta(minutes=ttl_minutes)
    entity = pair if composite else user
    group = FeatureGroup("g", entity, src, [Feature("x", pl.Int64, default=default)], ttl=ttl)
    keys = entity.key_columns
    feature_rows = [
        {
            "user_id": r["user_id"],
            "shop": r["shop"],
            "event_timestamp": BASE + timedelta(minutes=r["e"]),
            "created_timestamp": BASE + timedelta(minutes=r["e"] + r["c"]),
            "x": r["x"],
        }
        for r in rows
    ]
    if not composite:
        feature_rows = [{k: v for k, v in r.items() if k != "shop"} for r in feature_rows]
    label_dicts = [
        {"user_id": lab["user_id"], "shop": lab["shop"], "t": BASE + timedelta(minutes=lab["t"])}
        for lab in labels
    ]
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"sktest:{RUN}:pit"
        config = StoreConfig(offline_root=tmp, redis_url=redis_url, state_dir=tmp, key_prefix=prefix)
        store = FeatureStore(FeatureRepository([group]), config)
        write_rows(store.offline, group, feature_rows)
        entity_df = pl.DataFrame(
            label_dicts, schema={"user_id": pl.Int64, "shop": pl.String, "t": pl.Datetime("us", "UTC")}
        )
        result = store.get_training_dataset(
            entity_df, features=["g:v1:x"], timestamp_column="t", engine=engine
        )
        assert store.last_training_stats.engine == engine
        store.online.unlink([audit_key(prefix)])  # the training sets' audit records
        store.close()
    assert result.height == len(labels)
    assert result.select(entity_df.columns).equals(entity_df)  # order, duplicates, columns kept
    # rows sorted the way the store sorts them; ties on (event, created) resolved by that order
    ordered = sorted(
        enumerate(feature_rows),
        key=lambda p: (*[p[1][k] for k in keys], p[1]["event_timestamp"], p[1]["created_timestamp"], p[0]),
    )
    assert result["x"].to_list() == oracle(label_dicts, [r for _, r in ordered], keys, ttl, "x", default)


@settings(max_examples=60, deadline=None)
@given(
    user_rows=st.lists(feature_row, max_size=15),
    pair_rows=st.lists(feature_row, max_size=15),
    labels=st.lists(label_row, min_size=1, max_size=15),
    engine=st.sampled_from(["memory", "partitioned"]),
)
def test_several_groups_and_entities_in_one_call(user_rows, pair_rows, labels, engine) -> None:
    by_user = FeatureGroup("by_user", user, src, [Feature("x", pl.Int64)], ttl="6h")
    by_pair = FeatureGroup("by_pair", pair, src, [Feature("x", pl.Int64, default=0)])

    def as_rows(rows, composite):
        out = []
        for r in rows:
            row = {
                "user_id": r["user_id"],
                "event_timestamp": BASE + timedelta(minutes=r["e"]),
                "created_timestamp": BASE + timedelta(minutes=r["e"] + r["c"]),
                "x": r["x"],
            }
            if composite:
                row["shop"] = r["shop"]
            out.append(row)
        return out

    u_rows, p_rows = as_rows(user_rows, False), as_rows(pair_rows, True)
    label_dicts = [
        {"user_id": lab["user_id"], "shop": lab["shop"], "t": BASE + timedelta(minutes=lab["t"])}
        for lab in labels
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = StoreConfig(offline_root=tmp, redis_url=None, state_dir=tmp, key_prefix="sktest:pit2")
        store = FeatureStore(FeatureRepository([by_user, by_pair]), config)
        write_rows(store.offline, by_user, u_rows)
        write_rows(store.offline, by_pair, p_rows)
        entity_df = pl.DataFrame(
            label_dicts, schema={"user_id": pl.Int64, "shop": pl.String, "t": pl.Datetime("us", "UTC")}
        )
        result = store.get_training_dataset(
            entity_df,
            features=["by_user:v1:x", "by_pair:v1:x"],
            timestamp_column="t",
            full_feature_names=True,
            engine=engine,
        )

    def ordered(rows, keys):
        pairs = sorted(
            enumerate(rows),
            key=lambda p: (
                *[p[1][k] for k in keys],
                p[1]["event_timestamp"],
                p[1]["created_timestamp"],
                p[0],
            ),
        )
        return [r for _, r in pairs]

    assert result.columns == ["user_id", "shop", "t", "by_user__v1__x", "by_pair__v1__x"]
    assert result["by_user__v1__x"].to_list() == oracle(
        label_dicts, ordered(u_rows, ["user_id"]), ["user_id"], timedelta(hours=6), "x", None
    )
    assert result["by_pair__v1__x"].to_list() == oracle(
        label_dicts, ordered(p_rows, ["user_id", "shop"]), ["user_id", "shop"], None, "x", 0
    )


@pytest.fixture
def materialized(tmp_path: Path, store_config: StoreConfig):
    events = make_events()
    repo = small_repo(tmp_path / "data", events, ttl="1d")
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, store_config, instance, "2026-03-01", "2026-03-04").success
    store = FeatureStore(repo, store_config)
    yield store, events
    store.close()


def test_training_set_over_materialized_partitions(materialized) -> None:
    store, events = materialized
    labels = pl.DataFrame(
        {
            "user_id": [3, 3, 1, 999, 2, 3],
            "t": [
                BASE + timedelta(days=2),
                BASE + timedelta(days=2),
                BASE + timedelta(hours=30),
                BASE + timedelta(days=1),
                BASE - timedelta(days=1),
                BASE + timedelta(days=9),
            ],
            "label": [1, 1, 0, 0, 1, 0],
        },
        schema_overrides={"t": pl.Datetime("us", "UTC")},
    )
    ds = store.get_training_dataset(labels, service="svc:v1", timestamp_column="t")
    assert ds.columns == ["user_id", "t", "label", "amount", "channel"]
    assert ds.height == 6
    assert ds.row(0) == ds.row(1)  # duplicates stay duplicates
    assert ds.row(3)[3:] == (0.0, "none")  # unknown entity: defaults
    assert ds.row(4)[3:] == (0.0, "none")  # before any feature row: defaults
    assert ds.row(5)[3:] == (0.0, "none")  # older than the 1d TTL: defaults
    # label 0: the latest row at or before t for user 3, independently computed
    t = labels["t"][0]
    latest = events.filter((pl.col("user_id") == 3) & (pl.col("ts") <= t)).sort(["ts", "created"]).tail(1)
    assert ds["amount"][0] == latest["amount"][0]
    # pandas and arrow on request
    assert store.get_training_dataset(labels, service="svc", timestamp_column="t", output="pandas").shape == (
        6,
        5,
    )
    assert store.get_training_dataset(labels.to_pandas(), service="svc", timestamp_column="t").height == 6
    assert store.get_training_dataset(labels.to_arrow(), service="svc", timestamp_column="t").height == 6


def test_training_set_errors_name_the_problem(materialized) -> None:
    store, _ = materialized
    good = pl.DataFrame({"user_id": [1], "t": [BASE]}, schema_overrides={"t": pl.Datetime("us", "UTC")})
    cases = [
        (good, {"features": ["user_stats:v1:nope"]}, "unknown feature 'user_stats:v1:nope'"),
        (
            good,
            {"features": ["user_stats:v9:amount"]},
            r"unknown feature group 'user_stats:v9' \(known versions: user_stats:v1\)",
        ),
        (good, {"service": "nope:v1"}, "unknown feature service 'nope:v1'"),
        (good.rename({"user_id": "uid"}), {"service": "svc"}, "entity_df has no join key column 'user_id'"),
        (good.drop("t"), {"service": "svc"}, "label frame has no timestamp column 't'"),
        (
            good.with_columns(pl.col("t").dt.replace_time_zone(None)),
            {"service": "svc"},
            "label column 't' is timezone-naive",
        ),
        (
            good.with_columns(pl.col("user_id").cast(pl.String)),
            {"service": "svc"},
            "join key 'user_id' has dtype String, but entity 'user' declares Int64",
        ),
        (good, {}, "pass exactly one of"),
    ]
    for frame, kwargs, message in cases:
        with pytest.raises(RequestError, match=message):
            store.get_training_dataset(frame, timestamp_column="t", **kwargs)


def test_online_features_in_request_order_with_defaults(materialized, redis_url) -> None:
    store, events = materialized
    latest = events.sort(["ts", "created"]).group_by("user_id").last()
    import redis as redis_lib

    probe = redis_lib.Redis.from_url(store.online.url)
    # MGET calls are counted Redis-wide, and other clients of a shared Redis add to them: the
    # least increase over a few tries is this read's own (others can only add, never remove)
    deltas = []
    for _ in range(5):
        before = probe.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        got = store.get_online_features(
            [{"user_id": 5}, {"user_id": 424242}, {"user_id": 1}],
            features=["user_stats:v1:amount", "user_stats:v1:online"],
        )
        deltas.append(probe.info("commandstats").get("cmdstat_mget", {}).get("calls", 0) - before)
        if deltas[-1] == 1:
            break
    probe.close()
    assert min(deltas) == 1, deltas  # one round trip
    assert store.last_online_stats["round_trips"] == 1
    assert got["user_id"].to_list() == [5, 424242, 1]
    # the newest events are from 2026-03 — long past the 1d TTL — so every value is expired: defaults
    assert got["amount"].to_list() == [0.0, 0.0, 0.0]
    assert got["online"].to_list() == [False, False, False]
    assert latest.height > 0


def test_online_features_fresh_values_and_errors(tmp_path: Path, store_config: StoreConfig) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = pl.DataFrame(
        {
            "user_id": [1, 1, 2],
            "ts": [now - timedelta(hours=3), now - timedelta(hours=1), now - timedelta(minutes=5)],
            "created": [now, now, now],
            "amount": [1.0, 2.0, 3.0],
            "channel": ["pos", "atm", "online"],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    from skewless.compute.rows import compute_rows, latest_per_entity

    rows = compute_rows(group, now - timedelta(days=1), now + timedelta(days=1))
    store = FeatureStore(repo, store_config)
    store.online.write_latest(group, latest_per_entity(group, rows))
    got = store.get_online_features({"user_id": [2, 1, 3]}, service="svc", output="dicts")
    assert got == [
        {"user_id": 2, "amount": 3.0, "channel": "online"},
        {"user_id": 1, "amount": 2.0, "channel": "atm"},
        {"user_id": 3, "amount": 0.0, "channel": "none"},
    ]
    with pytest.raises(RequestError, match="entities has no join key column 'user_id'"):
        store.get_online_features([{"uid": 1}], service="svc")
    with pytest.raises(RequestError, match="unknown feature 'user_stats:v1:nope'"):
        store.get_online_features([{"user_id": 1}], features=["user_stats:v1:nope"])
    store.close()


@pytest.mark.parametrize("engine", ["memory", "partitioned"])
def test_row_pruning_keeps_every_reachable_row(tmp_path: Path, engine, monkeypatch) -> None:
    """The scatter's and the in-memory engine's row pruning (`time_range`) at its edges: a
    row exactly one TTL before the first label, one exactly at the last label time, rows
    just outside either side and after every label — the same values pruned or not."""
    from skewless.client import training_set

    group = FeatureGroup("g", user, src, [Feature("x", pl.Int64, default=-1)], ttl="1h")
    first, last = BASE + timedelta(hours=2), BASE + timedelta(hours=30)
    us = timedelta(microseconds=1)
    rows = [  # (user, event time, value)
        (1, first - timedelta(hours=1) - us, 10),  # just older than the first label's TTL
        (1, first - timedelta(hours=1), 11),  # exactly on it: still fresh
        (2, first - timedelta(hours=1) - us, 20),  # only row of user 2: stale for its label
        (3, last, 30),  # exactly at the last label time
        (3, last + us, 31),  # after every label
        (4, first, 40),
        (4, last + timedelta(hours=5), 41),  # after every label, a later day
    ]
    feature_rows = [{"user_id": u, "event_timestamp": t, "created_timestamp": t, "x": x} for u, t, x in rows]
    labels = pl.DataFrame(
        {"user_id": [1, 2, 3, 4, 4, 5], "t": [first, first, last, last - us, first, last]},
        schema={"user_id": pl.Int64, "t": pl.Datetime("us", "UTC")},
    )
    expected = [11, -1, 30, -1, 40, -1]  # user 4 at last - 1us: its row at `first` is 28h old
    config = StoreConfig(
        offline_root=str(tmp_path), redis_url=None, state_dir=str(tmp_path), key_prefix="sktest:prune"
    )
    store = FeatureStore(FeatureRepository([group]), config)
    write_rows(store.offline, group, feature_rows)
    for prune in (True, False):
        monkeypatch.setattr(training_set, "PRUNE_ROWS", prune)
        got = store.get_training_dataset(labels, features=["g:v1:x"], timestamp_column="t", engine=engine)
        assert got["x"].to_list() == expected, prune
    if engine == "partitioned":  # pruned: only the rows some label reaches were scattered
        monkeypatch.setattr(training_set, "PRUNE_ROWS", True)
        store.get_training_dataset(labels, features=["g:v1:x"], timestamp_column="t", engine=engine)
        assert store.last_training_stats.groups["g:v1"]["rows_joined"] == 3  # values 11, 30, 40
    store.close()

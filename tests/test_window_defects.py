"""Regressions for issue 11: window features read online in another order, repeated entities,
aggregations that differ only by `where=`, and pushes whose columns differ from the source's."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.compute.rows import compute_rows
from skewless.config import StoreConfig
from skewless.errors import RequestError, SourceDataError
from skewless.storage import streams
from skewless.storage.offline import days_between
from tests.helpers import materialize_days

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
START = NOW - timedelta(days=8)
ok = pl.col("status") == "ok"
SCHEMA = {
    "user_id": pl.Int64,
    "ts": pl.Datetime("us", "UTC"),
    "eid": pl.String,
    "amount": pl.Float64,
    "status": pl.String,
}


def repo_for(path: Path) -> FeatureRepository:
    """A window group with two counts that differ only by `where=`, and a row group."""
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource("txns", path, "ts", id_field="eid", stream=True, start_date=START.date().isoformat())
    windows = FeatureGroup(
        "user_windows",
        user,
        source,
        aggregations=[
            Aggregation("count", windows=["1h", "1d", "7d"]),
            Aggregation("count", windows=["1h", "1d", "7d"], where=ok, name="ok_count"),
            Aggregation("sum", "amount", ["1d", "7d"]),
            Aggregation("mean", "amount", ["7d"]),
        ],
    )
    latest = FeatureGroup("last_txn", user, source, [Feature("amount", pl.Float64, default=-1.0)])
    return FeatureRepository([windows, latest])


WINDOW_FEATURES = [
    "count_1h",
    "count_1d",
    "count_7d",
    "ok_count_1h",
    "ok_count_1d",
    "ok_count_7d",
    "amount_sum_1d",
    "amount_sum_7d",
    "amount_mean_7d",
]


def make_events(users: int = 20, per_user: int = 12, seed: int = 3) -> pl.DataFrame:
    """Events within the last 7 days, each user with a different mix of statuses and times."""
    rng = random.Random(seed)
    rows = []
    for user in range(1, users + 1):
        for i in range(per_user):
            rows.append(
                {
                    "user_id": user,
                    "ts": NOW - timedelta(minutes=rng.randint(1, 7 * 24 * 60 - 5)),
                    "eid": f"{user}-{i}",
                    "amount": float(rng.randint(1, 500)) / 4,
                    "status": rng.choice(["ok", "ok", "declined"]),
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def batch_materialize(store: FeatureStore) -> None:
    """What the offline asset does for each day (as in tests/test_windows.py)."""
    for group in store.repository.groups:
        for day in days_between(START.date(), NOW.date() + timedelta(days=1)):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            store.offline.write_partition(group, day, compute_rows(group, start, start + timedelta(days=1)))


@pytest.fixture
def loaded(tmp_path: Path, store_config: StoreConfig) -> tuple[FeatureStore, pl.DataFrame]:
    events = make_events()
    events.write_parquet(tmp_path / "txns.parquet")
    store = FeatureStore(repo_for(tmp_path / "txns.parquet"), store_config)
    store.push("txns", events, at=NOW)
    batch_materialize(store)
    yield store, events
    store.close()


def training(store: FeatureStore, users: list[int], refs: list[str], full: bool = False) -> list[dict]:
    labels = pl.DataFrame(
        {"user_id": users, "t": [NOW] * len(users)},
        schema={"user_id": pl.Int64, "t": pl.Datetime("us", "UTC")},
    )
    frame = store.get_training_dataset(labels, features=refs, timestamp_column="t", full_feature_names=full)
    return frame.drop("t").to_dicts()


def expected_counts(events: pl.DataFrame, user: int) -> dict[str, int]:
    """An independent computation of the counts, for the values being right, not just equal."""
    mine = events.filter(pl.col("user_id") == user)
    out = {}
    for label, window in (("1h", timedelta(hours=1)), ("1d", timedelta(days=1)), ("7d", timedelta(days=7))):
        inside = mine.filter(pl.col("ts") > NOW - window)
        out[f"count_{label}"] = inside.height
        out[f"ok_count_{label}"] = inside.filter(ok).height
    return out


# ---------------------------------------------------------------------- 1: names follow the request
@pytest.mark.parametrize("n", [3, 20])
@pytest.mark.parametrize("full", [False, True])
def test_window_features_in_any_order_keep_their_names(loaded, n: int, full: bool) -> None:
    store, events = loaded
    declared = [f"user_windows:v1:{f}" for f in WINDOW_FEATURES]
    shuffled = declared[::-1]
    random.Random(7).shuffle(shuffled)
    # a row feature interleaved, so the output assembly across groups is exercised too
    requested = [*shuffled[:4], "last_txn:v1:amount", *shuffled[4:]]
    users = list(range(1, n + 1))
    entities = {"user_id": users}

    def name(ref: str) -> str:
        group, version, feature = ref.split(":")
        return f"{group}__{version}__{feature}" if full else feature

    # columns come group by group (groups in order of first mention, as in training sets),
    # each group's features in the order they were requested
    names = ["user_id", *[name(r) for r in shuffled], name("last_txn:v1:amount")]
    reference = store.get_online_features(
        entities, features=[*declared, "last_txn:v1:amount"], full_feature_names=full, output="dicts", at=NOW
    )
    offline = training(store, users, requested, full)
    for output in ("polars", "dicts", "numpy", "pandas"):
        got = store.get_online_features(
            entities, features=requested, full_feature_names=full, output=output, at=NOW
        )
        if output == "polars":
            assert got.columns == names
            rows = got.to_dicts()
        elif output == "pandas":
            assert list(got.columns) == names
            rows = pl.from_pandas(got).to_dicts()
        elif output == "numpy":
            assert list(got) == names
            rows = pl.DataFrame({k: v for k, v in got.items()}).to_dicts()
        else:
            assert all(list(row) == names for row in got)
            rows = got
        for row, ref_row, off_row in zip(rows, reference, offline, strict=True):
            for column in names:
                want = ref_row[column]
                assert row[column] == want or (row[column] != row[column] and want is None), (output, column)
                assert off_row[column] == want, (output, column)
    for user, row in zip(users, reference, strict=True):
        expected = expected_counts(events, user)
        assert {k: row[name(f"user_windows:v1:{k}")] for k in expected} == expected


# ---------------------------------------------------------------------- 2: repeated entities
@pytest.mark.parametrize("n", [6, 24])
@pytest.mark.parametrize("output", ["polars", "dicts"])
def test_repeated_entity_gets_a_single_requests_values(loaded, n: int, output: str) -> None:
    store, events = loaded
    refs = [f"user_windows:v1:{f}" for f in WINDOW_FEATURES]
    others = [u for u in range(1, 21) if u != 5] + [101, 102]  # two with no events at all
    users = [*others[: n - 3]]
    for position in (0, len(users) // 2, len(users)):
        users.insert(position, 5)
    assert users.count(5) == 3 and len(users) == n
    got = store.get_online_features({"user_id": users}, features=refs, output=output, at=NOW)
    rows = got.to_dicts() if output == "polars" else got
    single = {
        u: store.get_online_features([{"user_id": u}], features=refs, output="dicts", at=NOW)[0]
        for u in set(users)
    }
    assert [r["user_id"] for r in rows] == users
    for row in rows:
        assert row == single[row["user_id"]]
    assert {k: single[5][k] for k in expected_counts(events, 5)} == expected_counts(events, 5)


# ---------------------------------------------------------------------- 3: where= only difference
def test_aggregations_equal_but_for_where(tmp_path: Path, store_config: StoreConfig) -> None:
    plain = Aggregation("count", windows=["1h", "1d", "7d"])
    filtered = Aggregation("count", windows=["1h", "1d", "7d"], where=ok, name="ok_count")
    assert plain != filtered and plain == Aggregation("count", windows=["1h", "1d", "7d"])
    assert filtered == Aggregation("count", windows=["1h", "1d", "7d"], where=ok, name="ok_count")
    assert len({plain, filtered, Aggregation("count", windows=["1h", "1d", "7d"])}) == 2
    group = repo_for(tmp_path / "x.parquet").group("user_windows", 1)
    assert group.aggregations.index(filtered) == 1
    assert group == repo_for(tmp_path / "x.parquet").group("user_windows", 1)  # groups compare too

    events = make_events(users=4, per_user=15)
    events.write_parquet(tmp_path / "txns.parquet")
    repo = repo_for(tmp_path / "txns.parquet")
    with dg.instance_for_test() as instance:
        assert materialize_days(
            repo, store_config, instance, START.date().isoformat(), NOW.date().isoformat()
        ).success
    store = FeatureStore(repo, store_config)
    refs = [f"user_windows:v1:count_{w}" for w in ("1h", "1d", "7d")]
    refs += [f"user_windows:v1:ok_count_{w}" for w in ("1h", "1d", "7d")]
    users = [1, 2, 3, 4]
    online = store.get_online_features({"user_id": users}, features=refs, output="dicts", at=NOW)
    offline = training(store, users, refs)
    for user, on, off in zip(users, online, offline, strict=True):
        expected = expected_counts(events, user)
        assert {k: on[k] for k in expected} == expected
        assert {k: off[k] for k in expected} == expected
    # the filter matters: with a third of the events declined the two counts differ
    assert any(on["count_7d"] != on["ok_count_7d"] for on in online)
    store.close()


# ---------------------------------------------------------------------- 4: pushed rows at the door
def test_push_is_checked_and_normalised_to_the_source_schema(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    from skewless.sensors.microbatch import apply_stream_batch

    seed = make_events(users=1, per_user=1).with_columns(pl.col("ts") - timedelta(days=6))
    seed.write_parquet(tmp_path / "txns.parquet")
    store = FeatureStore(repo_for(tmp_path / "txns.parquet"), store_config)
    key = streams.stream_key(store.online, "txns")
    rows = pl.DataFrame(
        [
            {"user_id": 7, "ts": NOW - timedelta(minutes=5), "eid": "p1", "amount": 2.5, "status": "ok"},
            {"user_id": 7, "ts": NOW - timedelta(hours=3), "eid": "p2", "amount": 4.0, "status": "declined"},
        ],
        schema=SCHEMA,
    )
    with pytest.raises(RequestError, match="extra column 'note'") as caught:
        store.push("txns", rows.with_columns(pl.lit("x").alias("note")))
    assert "txns" in str(caught.value)
    with pytest.raises(RequestError, match="column 'amount' has dtype String, the source has Float64"):
        store.push("txns", rows.with_columns(pl.col("amount").cast(pl.String)))
    with pytest.raises(RequestError, match="missing column 'status'"):
        store.push("txns", rows.drop("status"))
    assert store.online.client.xlen(key) == 0
    assert list(store.online.keys()) == []

    odd = rows.select("status", "amount", "eid", "ts", "user_id").with_columns(
        pl.col("user_id").cast(pl.Int32)
    )
    store.push("txns", odd, direct=False)
    assert store.online.client.xlen(key) == 1
    until = streams.newest_id(store.online, "txns")
    assert until is not None
    stored, _ = streams.read(store.online, "txns", "0", until)
    assert stored is not None and stored.schema == pl.Schema(SCHEMA)
    apply_stream_batch(store.repository, store.offline, store.online, "txns", "0", until, at=NOW)
    got = store.get_online_features(
        {"user_id": [7]},
        features=[
            "user_windows:v1:count_1h",
            "user_windows:v1:ok_count_1d",
            "user_windows:v1:amount_sum_1d",
            "last_txn:v1:amount",
        ],
        output="dicts",
        at=NOW,
    )[0]
    assert got == {"user_id": 7, "count_1h": 1, "ok_count_1d": 1, "amount_sum_1d": 6.5, "amount": 2.5}
    # the pushed rows were kept with the source in its schema: the source still scans
    assert store.repository.group("user_windows", 1).source.scan().collect().height == 3
    store.close()


def raw_append(store: FeatureStore, frame: pl.DataFrame) -> str:
    """An entry as appended before pushes were checked: rows only, no recorded schema."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    entry = store.online.client.xadd(streams.stream_key(store.online, "txns"), {"rows": buffer.getvalue()})
    return entry.decode()


def test_stream_with_odd_entries_still_reads(tmp_path: Path, store_config: StoreConfig) -> None:
    """Entries appended before the push checked columns: aligned, or named in the error."""
    seed = make_events(users=1, per_user=1).with_columns(pl.col("ts") - timedelta(days=6))
    seed.write_parquet(tmp_path / "txns.parquet")
    store = FeatureStore(repo_for(tmp_path / "txns.parquet"), store_config)
    good = pl.DataFrame([{"user_id": 1, "ts": NOW, "eid": "a", "amount": 1.0, "status": "ok"}], schema=SCHEMA)
    raw_append(store, good)
    raw_append(store, good.select(reversed(good.columns)).with_columns(pl.lit(1).alias("x")))
    raw_append(store, good.with_columns(pl.col("user_id").cast(pl.Int32)))
    until = streams.newest_id(store.online, "txns")
    assert until is not None
    # no reference recorded yet: aligned by column name, widened to a common dtype
    rows, entries = streams.read(store.online, "txns", "0", until)
    assert entries == 3 and rows is not None and rows.height == 3
    assert rows.columns[:5] == list(SCHEMA) and rows["user_id"].dtype == pl.Int64
    # a checked push records the source's schema: from then on entries are normalised to it
    store.push("txns", good.with_columns(pl.lit("b").alias("eid")), direct=False)
    until = streams.newest_id(store.online, "txns")
    assert until is not None
    rows, entries = streams.read(store.online, "txns", "0", until)
    assert entries == 4 and rows is not None and rows.schema == pl.Schema(SCHEMA)
    # an entry that cannot be normalised fails with its id, in every form of read
    bad = raw_append(store, good.with_columns(pl.col("amount").cast(pl.String)))
    with pytest.raises(SourceDataError, match=f"entry {bad} does not match"):
        streams.read(store.online, "txns", "0", bad)
    with pytest.raises(SourceDataError, match=f"entry {bad} does not match"):
        streams.read(store.online, "txns", until, bad, schema=pl.Schema(SCHEMA))
    store.close()

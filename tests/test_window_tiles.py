"""Tiles and event identity: online window reads from cached tiles agree to the bit with
training sets computed from raw events, through late events, corrections, re-deliveries,
repeated entities, any feature order and cache invalidation.

The oracle here is independent of both paths: a brute-force Python computation over the
latest version of each event (`fractions.Fraction` sums, correctly rounded once).
"""

from __future__ import annotations

import itertools
import math
import random
import tempfile
import warnings
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from skewless import Aggregation, Entity, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.compute import tiles as T
from skewless.compute.coverage import MissingPartitionsWarning
from skewless.compute.rows import compute_rows
from skewless.config import StoreConfig
from skewless.errors import SkewlessError
from skewless.sensors.microbatch import apply_stream_batch
from skewless.storage import streams, window_state
from skewless.storage.offline import days_between
from tests.helpers import RUN

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
BASE = NOW - timedelta(days=35)
W = ["1h", "1d", "7d", "30d", "lifetime"]
ok = pl.col("status") == "ok"
SCHEMA = {
    "user_id": pl.Int64,
    "ts": pl.Datetime("us", "UTC"),
    "eid": pl.String,
    "amount": pl.Float64,
    "status": pl.String,
    "merchant": pl.Int64,
}


def group_for(path: Path) -> FeatureGroup:
    source = FileSource("txns", path, "ts", id_field="eid", stream=True, start_date=BASE.date().isoformat())
    return FeatureGroup(
        "tiled",
        Entity("user", {"user_id": pl.Int64}),
        source,
        aggregations=[
            Aggregation("count", windows=W),
            Aggregation("count", windows=["1d", "30d"], where=ok, name="ok_count"),
            Aggregation("sum", "amount", W),
            Aggregation("mean", "amount", ["1d", "lifetime"]),
            Aggregation("min", "amount", ["7d", "30d"]),
            Aggregation("max", "amount", ["1h", "lifetime"]),
            Aggregation("last", "amount", ["30d", "lifetime"], name="last_amount"),
            Aggregation("distinct_count", "merchant", ["7d", "lifetime"], dtype=pl.Int64),
        ],
    )


def frame(events: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(events, schema=SCHEMA)


def oracle(events: list[dict], user: int, t: datetime, window: str, function: str, where: bool = False):
    """Brute force over the latest version of each (user, eid): the contract, written plainly."""
    latest: dict[tuple[int, str], dict] = {}
    for e in events:  # arrival order: the last version of an id wins
        latest[(e["user_id"], e["eid"])] = e
    span = timedelta(days=100_000) if window == "lifetime" else _span(window)
    inside = [e for e in latest.values() if e["user_id"] == user and t - span < e["ts"] <= t]
    if where:
        inside = [e for e in inside if e["status"] == "ok"]
    if function == "count":
        return len(inside)
    values = [e["amount"] for e in inside if e["amount"] is not None]
    if function in ("sum", "mean"):
        if any(math.isnan(v) for v in values):
            total = math.nan
        else:
            total = float(sum((Fraction(v) for v in values), Fraction(0))) + 0.0
        if function == "sum":
            return total
        return total / len(values) if values else None
    if function == "min":
        return min((v + 0.0 for v in values), default=None)
    if function == "max":
        return max((v + 0.0 for v in values), default=None)
    if function == "last":
        present = sorted((e for e in inside if e["amount"] is not None), key=lambda e: (e["ts"], e["eid"]))
        return present[-1]["amount"] if present else None
    return len({e["merchant"] for e in inside if e["merchant"] is not None})


def _span(window: str) -> timedelta:
    unit = {"h": "hours", "d": "days"}[window[-1]]
    return timedelta(**{unit: int(window[:-1])})


EXPECTED = {
    "count_1h": ("1h", "count", False),
    "count_30d": ("30d", "count", False),
    "count_lifetime": ("lifetime", "count", False),
    "ok_count_1d": ("1d", "count", True),
    "amount_sum_1d": ("1d", "sum", False),
    "amount_sum_7d": ("7d", "sum", False),
    "amount_sum_lifetime": ("lifetime", "sum", False),
    "amount_mean_lifetime": ("lifetime", "mean", False),
    "amount_min_30d": ("30d", "min", False),
    "amount_max_lifetime": ("lifetime", "max", False),
    "last_amount_30d": ("30d", "last", False),
    "merchant_distinct_count_7d": ("7d", "distinct", False),
}

amounts = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.1, 0.2, 0.3, 1e16, -1e16, 5e-324, -0.0, 2.5]),
    st.none(),
)
event = st.fixed_dictionaries(
    {
        "user_id": st.integers(1, 3),
        # spread over 35 days, with bursts inside single minutes and hours
        "minute": st.one_of(st.integers(0, 35 * 24 * 60), st.integers(35 * 24 * 60 - 90, 35 * 24 * 60)),
        "second": st.integers(0, 59),
        "amount": amounts,
        "status": st.sampled_from(["ok", "ok", "declined"]),
        "merchant": st.integers(1, 4),
    }
)


# no shrinking phase: a failure still reports its example, and a shrink of this test can
# take minutes of real Redis round trips
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    raw=st.lists(event, min_size=1, max_size=50),
    corrections=st.lists(st.tuples(st.integers(0, 49), amounts, st.integers(-3000, 3000)), max_size=6),
    redelivered=st.lists(st.integers(0, 49), max_size=6),
    seed=st.integers(0, 10_000),
    offsets=st.lists(st.integers(0, 24 * 60), min_size=2, max_size=3),
    via=st.sampled_from(["direct", "stream"]),
    raw_tile_max=st.sampled_from([0, 2, 256]),
)
def test_tiles_agree_with_training_sets_and_an_oracle(
    raw, corrections, redelivered, seed, offsets, via, raw_tile_max, redis_url, monkeypatch
) -> None:
    monkeypatch.setattr(window_state, "RAW_TILE_MAX", raw_tile_max)  # exercise the children path
    rng = random.Random(seed)
    first = [
        {
            "user_id": e["user_id"],
            "ts": BASE + timedelta(minutes=e["minute"], seconds=e["second"]),
            "eid": f"e{i:03d}",
            "amount": e["amount"],
            "status": e["status"],
            "merchant": e["merchant"],
        }
        for i, e in enumerate(raw)
    ]
    # corrections: a re-pushed id with a new amount and a time moved by up to ±50 hours
    fixes = []
    for index, amount, minutes in corrections:
        if index < len(first):
            fixes.append(
                {**first[index], "amount": amount, "ts": first[index]["ts"] + timedelta(minutes=minutes)}
            )
    again = [first[i] for i in redelivered if i < len(first)]
    arrivals = first + again
    rng.shuffle(arrivals)
    arrivals += fixes  # corrections arrive after what they correct
    times = sorted(NOW - timedelta(minutes=m) for m in offsets)
    with tempfile.TemporaryDirectory() as tmp:
        frame(first).write_parquet(Path(tmp) / "txns.parquet")
        group = group_for(Path(tmp) / "txns.parquet")
        config = StoreConfig(str(Path(tmp) / "offline"), redis_url, tmp, f"sktest:{RUN}:tiles{seed}")
        store = FeatureStore(FeatureRepository([group]), config)
        refs = [f"tiled:v1:{name}" for name in group.feature_names]
        rng.shuffle(refs)  # any order
        users = [3, 1, 2, 1, 9, 3]  # repeated and unknown entities
        try:
            half = len(arrivals) // 2
            for t_index, t in enumerate(times):
                part = arrivals[:half] if t_index == 0 else arrivals[half:] if t_index == 1 else []
                if part:
                    store.push("txns", frame(part), at=t, direct=via == "direct")
                    if via == "stream":
                        until = streams.newest_id(store.online, "txns")
                        after = streams.applied(store.online, "txns") or "0"
                        apply_stream_batch(
                            store.repository, store.offline, store.online, "txns", after, until, at=t
                        )
                seen = arrivals[:half] if t_index == 0 else arrivals
                online = store.get_online_features({"user_id": users}, features=refs, at=t, output="dicts")
                for row, user in zip(online, users, strict=True):
                    for name, (window, function, where) in EXPECTED.items():
                        expected = oracle(seen, user, t, window, function, where)
                        got = row[name]
                        if function in ("sum", "count", "distinct") and expected is None:
                            expected = 0
                        assert _same(got, expected), (name, user, t, got, expected)
                if via == "stream":
                    # training sets from the micro-batch's offline pieces agree to the bit
                    labels = pl.DataFrame(
                        {"user_id": users, "t": [t] * len(users)},
                        schema_overrides={"t": pl.Datetime("us", "UTC")},
                    )
                    # the source file stands in for history never materialized: only the
                    # pieces are compared (the client would otherwise refuse the days)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MissingPartitionsWarning)
                        offline = store.get_training_dataset(
                            labels, features=refs, timestamp_column="t", allow_missing=True
                        )
                    for name in group.feature_names:
                        a = [r[name] for r in online]
                        b = offline[name].to_list()
                        assert all(_same(x, y) for x, y in zip(a, b, strict=True)), (name, a, b)
        finally:
            store.online.delete_all()
            store.close()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def test_cover_is_exact_and_bounded() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        high = rng.randrange(0, 2**51)
        low = max(
            -1, high - rng.choice([1, 59_999_999, 3600 * 10**6, 7 * 86400 * 10**6, 30 * 86400 * 10**6, 2**52])
        )
        tiles, raws = T.cover(low, high)
        pieces = sorted([T.tile_range(*t) for t in tiles] + raws)
        assert pieces[0][0] == low and pieces[-1][1] == high
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous, disjoint
        assert len(raws) <= 2 and all(hi - lo < T.SIZES[0] for lo, hi in raws)
        assert len(tiles) <= 2 * sum(r - 1 for r in T.RATIOS[1:]) + 2 * 10 + 100


def test_identity_corrections_shared_ids_and_null_ids(tmp_path: Path, store_config: StoreConfig) -> None:
    """Identity is (entity keys, event id); a re-pushed id is a correction on both paths;
    null ids are refused with nothing stored."""
    t0 = NOW - timedelta(minutes=30)
    base = [
        {"user_id": 1, "ts": t0, "eid": "a", "amount": 10.0, "status": "ok", "merchant": 1},
        {
            "user_id": 2,
            "ts": t0,
            "eid": "a",
            "amount": 7.0,
            "status": "ok",
            "merchant": 1,
        },  # same id, other user
    ]
    frame(base[:1]).write_parquet(tmp_path / "txns.parquet")
    group = group_for(tmp_path / "txns.parquet")
    store = FeatureStore(FeatureRepository([group]), store_config)
    refs = ["tiled:v1:count_1h", "tiled:v1:amount_sum_7d", "tiled:v1:count_lifetime"]
    with pytest.raises(SkewlessError, match="null id"):
        store.push("txns", frame([{**base[0], "eid": None}, {**base[0], "eid": None}]))
    assert list(store.online.keys()) == []
    store.push("txns", frame(base + base), direct=False)  # re-delivered in the same push
    # the correction: user 1's event "a" had the wrong amount and happened two days earlier
    store.push("txns", frame([{**base[0], "amount": 25.0, "ts": t0 - timedelta(days=2)}]), direct=False)
    until = streams.newest_id(store.online, "txns")
    apply_stream_batch(store.repository, store.offline, store.online, "txns", "0", until)
    labels = pl.DataFrame(
        {"user_id": [1, 2], "t": [NOW, NOW]}, schema_overrides={"t": pl.Datetime("us", "UTC")}
    )
    want = [
        {"count_1h": 0, "amount_sum_7d": 25.0, "count_lifetime": 1},
        {"count_1h": 1, "amount_sum_7d": 7.0, "count_lifetime": 1},
    ]
    online = store.get_online_features({"user_id": [1, 2]}, features=refs, at=NOW, output="dicts")
    assert [{k: r[k] for k in want[0]} for r in online] == want
    offline = store.get_training_dataset(labels, features=refs, timestamp_column="t")
    assert offline.select(list(want[0])).to_dicts() == want
    # the batch path from the source files (+ the pushed file) says the same
    first, last = BASE.date(), (NOW + timedelta(days=1)).date()
    for day in days_between(first, last):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        store.offline.write_partition(group, day, compute_rows(group, start, start + timedelta(days=1)))
        store.offline.delete_pieces(store.offline.pieces(group, day))
    again = store.get_training_dataset(labels, features=refs, timestamp_column="t")
    assert again.select(list(want[0])).to_dicts() == want
    # a null id in the source's own files is refused by the batch path too
    frame([{**base[0], "eid": None}]).write_parquet(tmp_path / "txns.parquet")
    day = t0.date()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with pytest.raises(SkewlessError, match="null id in 'eid'"):
        compute_rows(group, start, start + timedelta(days=1))
    store.close()


@settings(max_examples=60, deadline=None)
@given(raw=st.lists(event, min_size=1, max_size=40), dup=st.booleans())
def test_push_shortcut_builds_the_same_events_as_the_batch_code(raw, dup) -> None:
    """`pushed_events` (few rows, no Polars query) must equal `event_rows` exactly."""
    from skewless.compute.rows import transform_rows
    from skewless.compute.windows import pushed_events

    group = group_for(Path("/nonexistent/txns.parquet"))
    rows = frame(
        [
            {
                "user_id": e["user_id"],
                "ts": BASE + timedelta(minutes=e["minute"], seconds=e["second"]),
                "eid": f"e{i % 3 if dup else i}",
                "amount": e["amount"],
                "status": e["status"],
                "merchant": e["merchant"],
            }
            for i, e in enumerate(raw)
        ]
    )
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    expected = transform_rows(group, rows.lazy(), *far)
    fast = pushed_events(group, rows)
    if fast is not None:
        assert fast.equals(expected, null_equal=True) and fast.schema == expected.schema
    else:
        assert rows.height > 32 or dup


def test_push_applies_the_declared_checks(tmp_path: Path, store_config: StoreConfig) -> None:
    """Issue 12.13: a value the batch path blocks (min_value=0) is refused by push too, with
    nothing stored online or in the stream; a valid push still goes through."""
    from skewless import Feature

    source = FileSource("pays", tmp_path / "pays.parquet", "ts", id_field="eid", stream=True)
    group = FeatureGroup(
        "last_pay",
        Entity("user", {"user_id": pl.Int64}),
        source,
        [
            Feature("amount", pl.Float64, min_value=0.0),
            Feature("status", pl.String, allowed_values=["ok", "no"]),
        ],
        transformation=lambda f: f.select("user_id", "ts", "amount", "status"),
    )
    rows = frame([{"user_id": 1, "ts": NOW, "eid": "a", "amount": -5.0, "status": "ok", "merchant": 1}])
    rows.write_parquet(tmp_path / "pays.parquet")
    store = FeatureStore(FeatureRepository([group]), store_config)
    with pytest.raises(SkewlessError, match=r"amount.*-5\.0"):
        store.push("pays", rows)
    with pytest.raises(SkewlessError, match="status"):
        store.push("pays", rows.with_columns(pl.lit(1.0).alias("amount"), pl.lit("maybe").alias("status")))
    assert list(store.online.keys()) == []
    assert streams.newest_id(store.online, "pays") is None
    store.push("pays", rows.with_columns(pl.lit(2.5).alias("amount")))
    got = store.get_online_features({"user_id": [1]}, features=["last_pay:v1:amount"], output="dicts")
    assert got[0]["amount"] == 2.5
    store.close()


def test_remembered_values_follow_events_leaving_and_entering_the_edges(
    tmp_path: Path, redis_url: str
) -> None:
    """A warm read reuses the last values when every window's edge events are unchanged; as
    time moves inside one 10 s plan, events leave the windows' tails (and future-dated ones
    enter the head): each read must equal a read by a store that remembers nothing."""
    t0 = datetime.fromtimestamp((int(NOW.timestamp()) // 10) * 10 + 1, tz=UTC)  # 1 s into a span
    offsets = [timedelta(hours=1) - timedelta(seconds=s) for s in (2, 4, 6)]  # in 1h's tail edge
    offsets += [timedelta(days=1) - timedelta(seconds=3), timedelta(days=7) - timedelta(seconds=5)]
    offsets += [timedelta(minutes=m) for m in (1, 30, 300)]
    offsets += [-timedelta(seconds=4)]  # 4 s in the future: enters the head edge
    events = [
        {
            "user_id": 1,
            "ts": t0 - o,
            "eid": f"x{i}",
            "amount": 1.5 * (i + 1),
            "status": "ok",
            "merchant": i % 3,
        }
        for i, o in enumerate(offsets)
    ]
    frame(events).write_parquet(tmp_path / "txns.parquet")
    group = group_for(tmp_path / "txns.parquet")
    config = StoreConfig(
        str(tmp_path / "offline"), redis_url, str(tmp_path), f"sktest:{RUN}:memo{t0.timestamp():.0f}"
    )
    repo = FeatureRepository([group])
    store = FeatureStore(repo, config)
    refs = [f"tiled:v1:{name}" for name in group.feature_names]
    try:
        store.push("txns", frame(events), at=t0)
        for step in range(8):  # 0..7 s after t0: one plan, edges changing
            t = t0 + timedelta(seconds=step)
            first = store.get_online_features({"user_id": [1]}, features=refs, at=t, output="dicts")
            again = store.get_online_features({"user_id": [1]}, features=refs, at=t, output="dicts")
            fresh = FeatureStore(repo, config)
            try:
                expected = fresh.get_online_features({"user_id": [1]}, features=refs, at=t, output="dicts")
            finally:
                fresh.close()
            assert first == again == expected, (step, first, expected)
            seen = [e for e in events if e["ts"] <= t]
            assert first[0]["count_1h"] == oracle(seen, 1, t, "1h", "count"), step
    finally:
        store.online.delete_all()
        store.close()


def test_a_write_in_slices_stores_what_one_write_stores(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backfills write window events in slices (bounded memory); entities cut between slices
    must end up exactly as with one write."""
    rng = random.Random(5)
    events = [
        {
            "user_id": rng.choice([1, 2, 3]),
            "ts": NOW - timedelta(minutes=rng.randrange(0, 60 * 24 * 40)),
            "eid": f"s{i}",
            "amount": rng.choice([0.1, 2.5, -0.0, 1e16, 3.0]),
            "status": rng.choice(["ok", "declined"]),
            "merchant": rng.randrange(5),
        }
        for i in range(120)
    ]
    frame(events).write_parquet(tmp_path / "txns.parquet")
    group = group_for(tmp_path / "txns.parquet")
    repo = FeatureRepository([group])
    refs = [f"tiled:v1:{name}" for name in group.feature_names]
    computed = compute_rows(group, BASE - timedelta(days=30), NOW + timedelta(days=1))
    results = []
    for chunk in (7, window_state.WRITE_CHUNK):
        monkeypatch.setattr(window_state, "WRITE_CHUNK", chunk)
        prefix = f"sktest:{RUN}:slices{chunk}"
        config = StoreConfig(str(tmp_path / "offline"), redis_url, str(tmp_path), prefix)
        store = FeatureStore(repo, config)
        try:
            added = store.online.write_events(group, computed, now=NOW)
            assert added == len(events)
            results.append(
                store.get_online_features({"user_id": [1, 2, 3]}, features=refs, at=NOW, output="dicts")
            )
        finally:
            store.online.delete_all()
            store.close()
    assert results[0] == results[1]

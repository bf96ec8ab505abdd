"""The single-event push shortcuts give exactly what the general path gives.

A push of a few rows is stored as JSON columns instead of Arrow IPC, and the `where` flags
of a one-row push are remembered by the values they read. Both exist for latency only, so
both are checked against the general path: the stream entry must read back bit for bit,
and remembered flags must equal a fresh Polars evaluation — also for two definitions that
share a name and version (a memo keyed by name would hand one the other's flags).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from skewless import Aggregation, Entity, FeatureGroup, FileSource
from skewless.compute.windows import _where_flags
from skewless.storage import streams
from skewless.storage.online import OnlineStore

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_floats = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
_times = st.one_of(
    st.none(),
    st.integers(-(10**15), 10**16).map(lambda us: EPOCH + timedelta(microseconds=us)),
)


@st.composite
def plain_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, streams.SMALL_ENTRY))

    def column(values: st.SearchStrategy) -> list:
        return draw(st.lists(values, min_size=n, max_size=n))

    return pl.DataFrame(
        [
            pl.Series("i64", column(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))), pl.Int64),
            pl.Series("u64", column(st.one_of(st.none(), st.integers(0, 2**64 - 1))), pl.UInt64),
            pl.Series("i8", column(st.one_of(st.none(), st.integers(-128, 127))), pl.Int8),
            pl.Series("f64", column(_floats), pl.Float64),
            pl.Series(
                "f32",
                column(st.one_of(st.none(), st.floats(width=32, allow_nan=False, allow_infinity=False))),
                pl.Float32,
            ),
            pl.Series("s", column(st.one_of(st.none(), st.text(max_size=8))), pl.String),
            pl.Series("b", column(st.one_of(st.none(), st.booleans())), pl.Boolean),
            pl.Series(
                "d", column(st.one_of(st.none(), st.dates(date(1, 1, 1), date(9999, 12, 31)))), pl.Date
            ),
            pl.Series("ts", column(_times), pl.Datetime("us", "UTC")),
        ]
    )


@settings(max_examples=150, deadline=None)
@given(frame=plain_frames())
def test_small_entries_read_back_bit_for_bit(frame: pl.DataFrame) -> None:
    fields = streams.entry_fields(frame)
    assert set(fields) == {"cols"}
    back = streams.entry_frame({k.encode(): v for k, v in fields.items()})
    assert_frame_equal(back, frame, check_exact=True)
    # -0.0 and 0.0 compare equal: check the bits too
    for name in ("f64", "f32"):
        for a, b in zip(back[name].to_list(), frame[name].to_list(), strict=True):
            assert (a is None and b is None) or math.copysign(1, a) == math.copysign(1, b)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_values_json_cannot_spell_use_arrow(value: float) -> None:
    frame = pl.DataFrame({"x": [1.0, value]})
    fields = streams.entry_fields(frame)
    assert set(fields) == {"rows"}
    back = streams.entry_frame({k.encode(): v for k, v in fields.items()})
    assert_frame_equal(back, frame)


def test_other_dtypes_and_big_pushes_use_arrow() -> None:
    assert set(streams.entry_fields(pl.DataFrame({"x": [[1, 2]]}))) == {"rows"}
    assert set(streams.entry_fields(pl.DataFrame({"x": pl.Series([1], dtype=pl.Decimal(10, 2))}))) == {"rows"}
    assert set(streams.entry_fields(pl.DataFrame({"x": [datetime(2026, 1, 1)]}))) == {"rows"}  # naive
    big = pl.DataFrame({"x": list(range(streams.SMALL_ENTRY + 1))})
    assert set(streams.entry_fields(big)) == {"rows"}


def test_mixed_entries_read_back_through_redis_in_order(online_store: OnlineStore) -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    small = pl.DataFrame({"k": [1], "ts": [t], "amount": [-0.0], "note": ["é"]})
    big = pl.DataFrame(
        {
            "k": list(range(40)),
            "ts": [t + timedelta(microseconds=i) for i in range(40)],
            "amount": [float(i) for i in range(40)],
            "note": [None] * 40,
        },
        schema=small.schema,
    )
    odd = small.with_columns(pl.lit(float("nan")).alias("amount"))
    for frame in (small, big, odd):
        streams.append(online_store, "src", frame)
    rows, count = streams.read(online_store, "src", "0", "+")
    assert count == 3
    assert_frame_equal(rows, pl.concat([small, big, odd]), check_exact=True)


def _group(where: pl.Expr) -> FeatureGroup:
    source = FileSource("txns", "/nonexistent.parquet", "ts", id_field="eid", stream=True)
    return FeatureGroup(
        "g",
        Entity("user", {"user_id": pl.Int64}),
        source,
        aggregations=[Aggregation("count", windows=["1h"], where=where, name="n")],
        version=1,
    )


def test_two_definitions_of_one_name_never_share_flags() -> None:
    row = pl.DataFrame({"user_id": [1], "amount": [5.0], "status": ["ok"]})
    high = _group(pl.col("amount") > 3)
    low = _group(pl.col("amount") > 7)
    for _ in range(2):  # the second round is served from the memo
        assert _where_flags(high, high.where_columns(), row).row(0) == (True,)
        assert _where_flags(low, low.where_columns(), row).row(0) == (False,)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(
        st.one_of(st.none(), st.floats(allow_infinity=True, allow_nan=True)), min_size=1, max_size=30
    ),
    statuses=st.lists(st.sampled_from(["ok", "declined", None]), min_size=30, max_size=30),
)
def test_remembered_flags_equal_a_fresh_evaluation(amounts: list, statuses: list) -> None:
    where = ((pl.col("amount") >= 0) & (pl.col("status") == "ok")) | pl.col("amount").is_nan()
    group = _group(where)
    exprs = [e.fill_null(False).alias(n) for n, e in group.where_columns().items()]
    for amount, status in zip(amounts * 2, statuses, strict=False):  # repeats hit the memo
        row = pl.DataFrame(
            {"user_id": [1], "amount": [amount], "status": [status]},
            schema={"user_id": pl.Int64, "amount": pl.Float64, "status": pl.String},
        )
        assert_frame_equal(_where_flags(group, group.where_columns(), row), row.select(exprs))

"""The offline store contract: the same tests on every backend (local folder, S3 on moto).

Real Parquet files and, for S3, a real S3-compatible HTTP server (see conftest.py): nothing
here replaces a store class. A backend passes when it round-trips every feature type, never
shows a reader half a partition, keeps the old partition when a write fails, and runs the
whole pipeline (Dagster materialization, pushed pieces, both training-set engines, SQL)
to the same frames as the local store.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.config import StoreConfig
from skewless.language.feature_group import CREATED_TIMESTAMP, EVENT_ID, EVENT_TIMESTAMP
from skewless.storage import offline_layout as layout
from skewless.storage.offline import OfflineStore, S3OfflineStore, dedupe_and_sort
from skewless.storage.sql import create_views
from tests.helpers import START, make_events, materialize_days, small_repo

DAY = date(2026, 3, 1)

ALL_TYPES: dict[str, pl.DataType] = {
    "i8": pl.Int8(),
    "i16": pl.Int16(),
    "i32": pl.Int32(),
    "i64": pl.Int64(),
    "u8": pl.UInt8(),
    "u16": pl.UInt16(),
    "u32": pl.UInt32(),
    "u64": pl.UInt64(),
    "f32": pl.Float32(),
    "f64": pl.Float64(),
    "flag": pl.Boolean(),
    "day": pl.Date(),
    "text": pl.String(),
    "at": pl.Datetime("us", "UTC"),
    "vec32": pl.Array(pl.Float32, 3),
    "vec64": pl.Array(pl.Float64, 2),
}


def typed_group(tmp: Path) -> FeatureGroup:
    source = FileSource(
        "typed", tmp / "typed.parquet", "ts", created_timestamp_field="created", start_date=START
    )
    return FeatureGroup(
        "typed",
        Entity("thing", {"thing_id": pl.Int64, "region": pl.String}),
        source,
        features=[Feature(name, dtype) for name, dtype in ALL_TYPES.items()],
    )


def typed_rows() -> pl.DataFrame:
    """Extremes, nulls, NaN, ±inf, -0.0, non-ASCII text: what a round trip must keep exactly."""
    t0 = datetime(2026, 3, 1, 1, tzinfo=UTC)
    n = 5
    return pl.DataFrame(
        {
            "thing_id": [1, 1, 2, 3, 4],
            "region": ["eu", "eu", "us", "é|{x}", ""],
            EVENT_TIMESTAMP: [t0 + timedelta(minutes=i) for i in range(n)],
            CREATED_TIMESTAMP: [t0 + timedelta(minutes=i, seconds=1) for i in range(n)],
            "i8": [-128, 127, 0, None, 1],
            "i16": [-32768, 32767, 0, None, 1],
            "i32": [-(2**31), 2**31 - 1, 0, None, 1],
            "i64": [-(2**63), 2**63 - 1, 0, None, 1],
            "u8": [0, 255, 1, None, 2],
            "u16": [0, 65535, 1, None, 2],
            "u32": [0, 2**32 - 1, 1, None, 2],
            "u64": [0, 2**64 - 1, 1, None, 2],
            "f32": [float("nan"), float("inf"), -0.0, None, 1.5],
            "f64": [float("nan"), float("-inf"), -0.0, None, 1e308],
            "flag": [True, False, None, True, False],
            "day": [date(1970, 1, 1), date(2262, 4, 11), None, date(2026, 3, 1), date(1, 1, 1)],
            "text": ["", "ünïcødé ✓", None, "x" * 1000, "a,b\nc"],
            "at": [t0, None, datetime(1970, 1, 1, tzinfo=UTC), t0 + timedelta(microseconds=1), t0],
            "vec32": [[1.0, 2.0, 3.0], None, [0.0, -0.0, float("inf")], [1.5, 2.5, 3.5], [0.0, 0.0, 0.0]],
            "vec64": [[1e-300, 2.0], [3.0, 4.0], None, [float("nan"), 1.0], [0.0, 1.0]],
        },
        schema={"thing_id": pl.Int64, "region": pl.String, EVENT_TIMESTAMP: pl.Datetime("us", "UTC"),
                CREATED_TIMESTAMP: pl.Datetime("us", "UTC"), **ALL_TYPES},
    )  # fmt: skip


def test_every_feature_type_round_trips_through_a_partition(offline: OfflineStore, tmp_path: Path) -> None:
    group = typed_group(tmp_path)
    rows = typed_rows().select(list(group.offline_schema()))
    path = offline.write_partition(group, DAY, rows)
    assert layout.day_of(path) == DAY and layout.is_partition(path)
    for back in (offline.read_partition(group, DAY), offline.scan(group).collect()):
        assert back is not None
        assert back.schema == rows.schema
        assert back.equals(rows, null_equal=True)  # NaN == NaN, -0.0 kept (bitwise compare below)
    back = offline.scan(group).collect()
    assert back["f64"].to_numpy().tobytes() == rows["f64"].to_numpy().tobytes()
    assert offline.footer_rows(path) == rows.height


def test_layout_is_the_same_on_every_backend(offline: OfflineStore, tmp_path: Path) -> None:
    group = typed_group(tmp_path)
    rows = typed_rows().select(list(group.offline_schema()))
    offline.write_partition(group, DAY, rows)
    offline.write_piece(group, DAY, "s1", rows.head(1))
    offline.write_training_set("svc", 2, rows.head(2))
    offline.write_served_log("svc", 2, "1-0", "5-3", rows.head(1))
    offline.write_registry_snapshot("20260301T000000Z", "{}", pl.DataFrame({"a": [1]}))
    assert offline.list_keys("") == sorted(
        [
            "_registry/20260301T000000Z/features.parquet",
            "_registry/20260301T000000Z/registry.json",
            "_served/svc/v2/log-1_0-5_3.parquet",
            "_training_sets/svc/v2/data.parquet",
            "typed/v1/date=2026-03-01/data.parquet",
            "typed/v1/date=2026-03-01/piece-s1.parquet",
        ]
    )
    # what a caller sees is the root joined with the same keys
    root = str(offline.root)
    assert str(offline.partition_path(group, DAY)) == f"{root}/typed/v1/date=2026-03-01/data.parquet"
    assert str(offline.training_set_path("svc", 2)) == f"{root}/_training_sets/svc/v2/data.parquet"


def test_the_same_rows_give_the_same_bytes_however_they_were_chunked(
    offline: OfflineStore, tmp_path: Path
) -> None:
    """Workers compute a partition in chunks that depend on threads and load; the stored
    bytes must not (a 2-worker backfill is compared byte for byte with a 1-process one)."""
    group = typed_group(tmp_path)
    one = typed_rows().select(list(group.offline_schema()))
    rows = pl.concat([one] * 60_000, rechunk=True)  # 300k rows: several row groups
    stored = []
    for size in (rows.height, 7_919, 100_000):
        parts = [rows.slice(i, size) for i in range(0, rows.height, size)]
        chunked = pl.concat(parts, rechunk=False)
        assert chunked.n_chunks() == len(parts)
        offline.write_partition(group, DAY, chunked)
        stored.append(offline.read_bytes(offline.key_of(offline.partition_path(group, DAY))))
    assert stored[0] == stored[1] == stored[2]


def test_list_and_delete_partitions(offline: OfflineStore, tmp_path: Path) -> None:
    group = typed_group(tmp_path)
    rows = typed_rows().select(list(group.offline_schema()))
    days = [DAY + timedelta(days=i) for i in range(3)]
    assert offline.partitions(group) == [] and offline.files(group) == [] and not offline.in_use(group)
    assert offline.scan(group).collect().height == 0  # empty frame of the schema
    for day in days:
        offline.write_partition(group, day, rows)
    assert offline.partitions(group) == days
    assert offline.in_use(group)
    assert [layout.day_of(f) for f in offline.files(group, days[1], days[2])] == days[1:]
    assert offline.scan(group, days[1], days[1]).collect().height == rows.height
    assert offline.delete_partition(group, days[1]) == 1
    assert offline.partitions(group) == [days[0], days[2]]
    assert offline.read_partition(group, days[1]) is None
    assert offline.delete_partition(group, days[1]) == 0  # idempotent
    assert len(offline.version_files("typed", 1)) == 2


def test_mark_in_use_before_any_partition(offline: OfflineStore, tmp_path: Path) -> None:
    group = typed_group(tmp_path)
    offline.mark_in_use(group)
    assert offline.in_use(group)
    assert offline.partitions(group) == [] and offline.files(group) == []


def test_a_racing_reader_never_sees_a_half_or_mixed_partition(offline: OfflineStore, tmp_path: Path) -> None:
    """A writer alternates two versions of a day (different sizes); readers, by scan and by
    single read, only ever see one version whole."""
    group = typed_group(tmp_path)
    base = typed_rows().select(list(group.offline_schema()))
    versions = [
        pl.concat([base.with_columns(pl.lit(v, pl.Int64).alias("i64"))] * (1 + 40 * v)) for v in (1, 2)
    ]
    offline.write_partition(group, DAY, versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            i = 0
            while not stop.is_set():
                offline.write_partition(group, DAY, versions[i % 2])
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen = set()
    try:
        for i in range(40):
            frame = offline.scan(group).collect() if i % 2 else offline.read_partition(group, DAY)
            assert frame is not None
            values = frame["i64"].unique().to_list()
            assert len(values) == 1, f"mixed partition: {values}"
            assert frame.height == versions[values[0] - 1].height, "half a partition"
            seen.add(values[0])
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert seen  # read something whole every time (both versions are usually seen)


def test_a_failed_write_leaves_the_old_partition(offline: OfflineStore, tmp_path: Path) -> None:
    group = typed_group(tmp_path)
    rows = typed_rows().select(list(group.offline_schema()))
    offline.write_partition(group, DAY, rows)
    unwritable = rows.with_columns(pl.Series("i64", [object()] * rows.height, dtype=pl.Object))
    with pytest.raises(Exception):  # noqa: B017 - whatever the writer raises, it must raise
        offline.write_partition(group, DAY, unwritable)
    back = offline.read_partition(group, DAY)
    assert back is not None and back.equals(rows, null_equal=True)
    assert offline.list_keys("typed") == ["typed/v1/date=2026-03-01/data.parquet"]  # no temp left visible


def window_group(tmp: Path) -> FeatureGroup:
    source = FileSource("clicks", tmp / "clicks.parquet", "ts", id_field="eid", stream=True, start_date=START)
    return FeatureGroup(
        "clicks_w",
        Entity("user", {"user_id": pl.Int64}),
        source,
        aggregations=[Aggregation("count", windows=["1d"]), Aggregation("sum", "amount", ["1d"])],
    )


def window_events(group: FeatureGroup, ids: list[str], amounts: list[float], seq: int) -> pl.DataFrame:
    schema = group.offline_schema()
    t0 = datetime(2026, 3, 1, 2, tzinfo=UTC)
    data = {
        "user_id": [1] * len(ids),
        EVENT_TIMESTAMP: [t0 + timedelta(minutes=i) for i in range(len(ids))],
        EVENT_ID: ids,
        "amount": amounts,
    }
    frame = pl.DataFrame(data)
    columns = {}
    for name, dtype in schema.items():
        if name in frame.columns:
            columns[name] = frame[name].cast(dtype)
        else:  # event sequence / ingestion columns: the arrival order
            columns[name] = pl.Series(name, [seq] * len(ids)).cast(dtype)
    return dedupe_and_sort(group, pl.DataFrame(columns).lazy()).collect()


def test_pushed_events_round_trip_as_pieces_merged_with_the_day(
    offline: OfflineStore, tmp_path: Path
) -> None:
    """Window event state: the day's partition plus micro-batch pieces read as one merged day;
    a re-pushed event id is counted once; compaction deletes pieces after the new partition."""
    group = window_group(tmp_path)
    partition = window_events(group, ["a", "b"], [1.0, 2.0], 1)
    offline.write_partition(group, DAY, partition)
    offline.write_piece(group, DAY, "s000001_000002", window_events(group, ["c"], [3.0], 2))
    offline.write_piece(group, DAY, "s000002_000003", window_events(group, ["a", "c"], [1.0, 3.0], 1))
    assert offline.has_pieces(group)
    assert [layout.base_name(p) for p in offline.pieces(group, DAY)] == [
        "piece-s000001_000002.parquet",
        "piece-s000002_000003.parquet",
    ]
    assert layout.base_name(offline.day_files(group, DAY)[0]) == "data.parquet"
    merged = offline.scan(group).collect()
    assert sorted(merged[EVENT_ID].to_list()) == ["a", "b", "c"]
    assert merged["amount"].sum() == 6.0
    # compaction: the recomputed day first, then the pieces it folded in
    compacted = offline.scan(group).collect()
    pieces = offline.pieces(group, DAY)
    offline.write_partition(group, DAY, compacted)
    assert offline.delete_pieces(pieces) == 2
    assert not offline.has_pieces(group)
    assert offline.scan(group).collect().equals(merged)


def test_training_set_registry_snapshot_and_served_log(offline: OfflineStore) -> None:
    frame = pl.DataFrame({"user_id": [1, 2], "score": [0.5, None]})
    assert offline.read_training_set("svc", 1) is None and not offline.has_training_set("svc", 1)
    path = offline.write_training_set("svc", 1, frame)
    assert offline.has_training_set("svc", 1)
    back = offline.read_training_set("svc", 1)
    assert back is not None and back.equals(frame, null_equal=True)
    assert offline.scan_parquet([path]).collect().equals(frame, null_equal=True)

    snapshot = {"groups": [{"name": "g", "version": 1}]}
    offline.write_registry_snapshot("20260301T000000000000Z", json.dumps(snapshot), frame)
    offline.write_registry_snapshot("20260302T000000000000Z", json.dumps({}), frame)
    assert offline.registry_snapshots() == ["20260301T000000000000Z", "20260302T000000000000Z"]
    assert json.loads(offline.read_registry_snapshot("20260301T000000000000Z") or "") == snapshot

    assert offline.served_logs("svc", 1) == []
    offline.write_served_log("svc", 1, "1-0", "2-0", frame)
    offline.write_served_log("svc", 1, "3-0", "4-1", frame)
    offline.write_served_log("svc", 1, "3-0", "4-1", frame)  # a retry rewrites the same file
    logs = offline.served_logs("svc", 1)
    assert [layout.base_name(p) for p in logs] == ["log-1_0-2_0.parquet", "log-3_0-4_1.parquet"]
    assert offline.scan_parquet(logs).select(pl.len()).collect().item() == 4


def test_sql_views_read_partitions_and_pieces(offline: OfflineStore, tmp_path: Path) -> None:
    group = window_group(tmp_path)
    offline.write_partition(group, DAY, window_events(group, ["a", "b"], [1.0, 2.0], 1))
    offline.write_piece(group, DAY, "s1", window_events(group, ["b", "c"], [2.0, 3.0], 1))
    repo = FeatureRepository(groups=[group])
    with duckdb.connect() as conn:
        assert create_views(conn, repo.groups, offline) == ["clicks_w_v1", "clicks_w"]
        rows = conn.sql("SELECT date, count(*), sum(amount) FROM clicks_w GROUP BY date").fetchall()
    assert rows == [(DAY, 3, 6.0)]


# -- the whole pipeline on object storage, compared with the local store ------------------


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def _labels() -> pl.DataFrame:
    start = datetime.fromisoformat(START + "T00:00:00+00:00")
    times = [start + timedelta(hours=7 * i + 3) for i in range(14)]
    return pl.DataFrame(
        {"user_id": [(i * 7) % 25 + 1 for i in range(len(times))], "label_ts": times},
        schema={"user_id": pl.Int64, "label_ts": pl.Datetime("us", "UTC")},
    )


def _pipeline(repo: FeatureRepository, config: StoreConfig, instance: dg.DagsterInstance) -> dict:
    """Materialize through Dagster, add pushed rows as pieces, then read everything back."""
    from skewless.sensors.microbatch import apply_rows

    assert materialize_days(repo, config, instance, "2026-03-01", "2026-03-04").success
    store = FeatureStore(repo, config)
    try:
        late = make_events(n=30, days=2, seed=7)
        apply_rows(repo, store.offline, store.online, "events", late)  # micro-batch: pieces
        group = repo.groups[0]
        out = {
            "partitions": store.offline.partitions(group),
            "pieces": sum(len(store.offline.pieces(group, d)) for d in store.offline.partitions(group)),
            "rows": store.offline.scan(group).collect(),
            "sql": store.sql(
                "SELECT date, count(*) AS n, sum(amount) AS s FROM user_stats GROUP BY 1 ORDER BY 1"
            ),
        }
        for engine in ("memory", "partitioned"):
            out[engine] = store.get_training_dataset(
                _labels(), features=["user_stats:v1:amount", "user_stats:v1:channel"],
                timestamp_column="label_ts", engine=engine,
            )  # fmt: skip
        return out
    finally:
        store.close()


def test_full_pipeline_on_s3_matches_local(
    tmp_path: Path, s3_endpoint: str, redis_url: str, instance: dg.DagsterInstance
) -> None:
    import uuid

    results = {}
    for backend, root in (
        ("local", str(tmp_path / "offline")),
        ("s3", f"s3://skewless-contract/e2e-{uuid.uuid4().hex[:8]}"),
    ):
        repo = small_repo(tmp_path / f"data-{backend}")
        config = StoreConfig(
            root, redis_url, str(tmp_path / f"state-{backend}"), key_prefix=f"skc:{uuid.uuid4().hex[:10]}"
        )
        try:
            results[backend] = _pipeline(repo, config, instance)
            if backend == "s3":
                assert isinstance(OfflineStore(root), S3OfflineStore)
                # nothing of the offline store landed on the local disk
                assert not (tmp_path / f"state-{backend}" / "offline").exists()
        finally:
            from skewless.storage.online import open_online_store

            online = open_online_store(config)
            online.delete_all()
            online.close()
    local, s3 = results["local"], results["s3"]
    assert s3["partitions"] == local["partitions"] and len(local["partitions"]) == 4
    assert s3["pieces"] == local["pieces"] > 0
    assert s3["rows"].equals(local["rows"])
    # DuckDB sums in parallel: the same rows, summed in another order, may differ in the last bit
    assert_frame_equal(s3["sql"], local["sql"], check_exact=False, rel_tol=1e-12)
    for engine in ("memory", "partitioned"):
        assert s3[engine].equals(local[engine], null_equal=True), engine
        assert s3[engine].equals(local["memory"], null_equal=True)


def test_sql_views_in_a_database_file_outlive_the_connection(offline: OfflineStore, tmp_path: Path) -> None:
    """The `sql/offline_views` asset's database: views (local) or tables (object storage, a
    snapshot: no httpfs) that a later connection can query."""
    group = window_group(tmp_path)
    offline.write_partition(group, DAY, window_events(group, ["a", "b"], [1.0, 2.0], 1))
    repo = FeatureRepository(groups=[group])
    database = str(tmp_path / "offline.duckdb")
    for _ in range(2):  # re-materializing replaces what the last run created
        with duckdb.connect(database) as conn:
            create_views(conn, repo.groups, offline, persistent=True)
    with duckdb.connect(database) as conn:
        assert conn.sql("SELECT count(*), sum(amount) FROM clicks_w_v1").fetchall() == [(2, 3.0)]


def test_registry_sql_and_served_log_assets_on_s3(
    tmp_path: Path, s3_endpoint: str, redis_url: str, instance: dg.DagsterInstance
) -> None:
    """The assets that write beside the partitions, run by Dagster against the bucket."""
    import uuid

    from skewless import asset_keys
    from skewless.feature_assets.definitions import build_definitions
    from skewless.storage.online import open_online_store

    root = f"s3://skewless-contract/assets-{uuid.uuid4().hex[:8]}"
    repo = small_repo(tmp_path / "data")
    config = StoreConfig(
        root,
        redis_url,
        str(tmp_path / "state"),
        key_prefix=f"skc:{uuid.uuid4().hex[:10]}",
        serving_log_rate=1.0,
    )
    try:
        assert materialize_days(repo, config, instance, "2026-03-01", "2026-03-02").success
        store = FeatureStore(repo, config)
        store.get_online_features(pl.DataFrame({"user_id": [1, 2, 3]}), service="svc:v1")
        store.close()  # flushes the sampled served vectors to their stream
        defs = build_definitions(repo, config)
        service = repo.service("svc:v1")
        keys = [
            asset_keys.registry_snapshot_key(),
            asset_keys.sql_views_key(),
            asset_keys.served_key(service),
        ]
        result = dg.materialize(
            [*(defs.assets or []), *(defs.asset_checks or [])],
            selection=dg.AssetSelection.assets(*keys),
            resources=defs.resources,
            instance=instance,
        )
        assert result.success
        offline = OfflineStore(root)
        stamps = offline.registry_snapshots()
        assert len(stamps) == 1
        assert "user_stats" in (offline.read_registry_snapshot(stamps[0]) or "")
        logs = offline.served_logs("svc", 1)
        assert len(logs) == 1 and offline.scan_parquet(logs).collect().height == 3
        with duckdb.connect(str(tmp_path / "state" / "offline.duckdb")) as conn:
            stored = conn.sql("SELECT count(*) FROM user_stats").fetchall()[0][0]
        assert stored == offline.scan(repo.groups[0]).collect().height > 0
        assert not (tmp_path / "state" / "offline").exists()
    finally:
        online = open_online_store(config)
        online.delete_all()
        online.close()


def test_configuration_selects_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from skewless.storage.offline import LocalOfflineStore, S3Settings, open_offline_store

    monkeypatch.delenv("SKEWLESS_HOME", raising=False)
    monkeypatch.setenv("SKEWLESS_OFFLINE_ROOT", "s3://bucket-name/some/prefix/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    config = StoreConfig.from_env(tmp_path)
    assert config.offline_root == "s3://bucket-name/some/prefix"
    store = open_offline_store(config)
    assert isinstance(store, S3OfflineStore)
    assert (store.bucket, store.prefix, store.root) == ("bucket-name", "some/prefix", config.offline_root)
    settings = S3Settings.from_env()
    assert settings.endpoint_url == "http://s3-only:2" and settings.region == "eu-west-3"
    assert settings.allow_http  # an http:// endpoint implies it
    assert settings.polars_options()["aws_endpoint_url"] == "http://s3-only:2"
    monkeypatch.delenv("SKEWLESS_OFFLINE_ROOT")
    local = open_offline_store(StoreConfig.from_env(tmp_path))
    assert isinstance(local, LocalOfflineStore) and local.root == (tmp_path / "offline").resolve()


def test_stream_micro_batch_stores_pieces_on_the_backend(
    offline_root: str, tmp_path: Path, redis_url: str
) -> None:
    """Push to a stream source, run the micro-batch: pieces land in the offline store (local
    or bucket), the pushed rows beside the (local) source file, and scans merge them."""
    import uuid

    from skewless.sensors.microbatch import apply_stream_batch
    from skewless.storage import streams
    from skewless.storage.online import open_online_store

    group = window_group(tmp_path)
    pl.DataFrame(
        schema={"user_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "eid": pl.String, "amount": pl.Float64}
    ).write_parquet(tmp_path / "clicks.parquet")
    repo = FeatureRepository(groups=[group])
    config = StoreConfig(
        offline_root, redis_url, str(tmp_path / "state"), key_prefix=f"skc:{uuid.uuid4().hex[:10]}"
    )
    store = FeatureStore(repo, config)
    try:
        at = datetime(2026, 3, 1, 12, tzinfo=UTC)
        events = pl.DataFrame(
            {
                "user_id": [1, 1, 2],
                "ts": [at - timedelta(hours=3), at - timedelta(hours=2), at - timedelta(hours=1)],
                "eid": ["e1", "e2", "e3"],
                "amount": [1.0, 2.0, 4.0],
            },
            schema={
                "user_id": pl.Int64,
                "ts": pl.Datetime("us", "UTC"),
                "eid": pl.String,
                "amount": pl.Float64,
            },
        )
        store.push("clicks", events, at=at, direct=False)
        until = streams.newest_id(store.online, "clicks")
        apply_stream_batch(repo, store.offline, store.online, "clicks", "0", until, at=at)
        assert len(store.offline.pieces(group, DAY)) == 1
        assert sorted(store.offline.scan(group).collect()[EVENT_ID].to_list()) == ["e1", "e2", "e3"]
        assert list((tmp_path / "clicks.parquet.pushed").glob("entries-*.parquet"))  # beside the source
        assert store.offline.in_use(group)
    finally:
        store.close()
        online = open_online_store(config)
        online.delete_all()
        online.close()


def test_files_and_folders_round_trip_and_delete_tree(offline: OfflineStore, tmp_path: Path) -> None:
    """The distributed training set's work area: whole folders of any files up and down
    (streamed), then removed with one call that refuses to touch anything above its folder."""
    local = tmp_path / "up"
    (local / "g0" / "labels" / "00001").mkdir(parents=True)
    (local / "g0" / "labels" / "00001" / "0.arrow").write_bytes(b"\x00\x01arrow")
    (local / "g0" / "labels" / "00001" / "1.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 64)
    (local / "g1" / "features").mkdir(parents=True)
    (local / "g1" / "features" / "blob").write_bytes(b"")
    (local / "g1" / "features" / ".x.tmp").write_bytes(b"temp")  # a writer's temp: never copied
    work = layout.work_key("run-1")
    assert work == "_work/run-1"
    assert offline.upload_tree(local, f"{work}/buckets") == 3
    offline.write("_work/run-2/keep.json", b"{}")  # another run's area
    keys = offline.list_keys(work)
    assert keys == [
        f"{work}/buckets/g0/labels/00001/0.arrow",
        f"{work}/buckets/g0/labels/00001/1.parquet",
        f"{work}/buckets/g1/features/blob",
    ]
    down = tmp_path / "down"
    assert offline.download_tree(f"{work}/buckets/g0", down) == 2
    for name in ("0.arrow", "1.parquet"):
        assert (down / "labels" / "00001" / name).read_bytes() == (
            local / "g0" / "labels" / "00001" / name
        ).read_bytes()
    # one listing of the whole area serves several folders
    again = tmp_path / "again"
    assert offline.download_tree(f"{work}/buckets/g1", again, keys=keys) == 1
    assert (again / "features" / "blob").read_bytes() == b""
    assert offline.get_file(f"{work}/nothing", tmp_path / "nothing") is False
    assert not (tmp_path / "nothing").exists()
    single = tmp_path / "single.bin"
    single.write_bytes(b"one")
    assert str(offline.put_file(f"{work}/one.bin", single)).endswith(f"{work}/one.bin")
    assert offline.read_bytes(f"{work}/one.bin") == b"one"

    for bad in ("", "/", "_work/..", "../x", "a//b"):
        with pytest.raises(ValueError):
            offline.delete_tree(bad)
    assert offline.delete_tree(work) == 4
    assert offline.list_keys(work) == []
    assert offline.list_keys("_work") == ["_work/run-2/keep.json"]
    assert offline.delete_tree(work) == 0  # already gone: nothing to do


def test_pii_columns_are_encrypted_on_every_backend(offline: OfflineStore, tmp_path: Path) -> None:
    """Every type in an encrypted column round-trips (pyarrow writes and reads what Polars
    otherwise does); the stored object is unreadable without the key, also to the store's
    own plain reader; rotation leaves old objects readable; erasure keeps them encrypted."""
    import pyarrow.parquet as pq

    from skewless.storage.keys import KeyRing
    from skewless.storage.offline import encrypted_columns

    plain = typed_group(tmp_path)
    group = FeatureGroup(  # every type but the vectors (embeddings cannot be pii)
        "typed_pii",
        plain.entity,
        plain.source,
        features=[Feature(n, d) for n, d in ALL_TYPES.items() if not isinstance(d, pl.Array)],
        tags=["pii"],
    )
    offline.encryption_keys = KeyRing.init(tmp_path / "state")
    rows = typed_rows().select(list(group.offline_schema()))
    path = offline.write_partition(group, DAY, rows)
    offline.write_piece(group, DAY, "s1", rows.head(1).with_columns(pl.lit(9).alias("thing_id")))
    data = offline.read_bytes(offline.key_of(path))
    assert data is not None and b"x" * 1000 not in data and "ünïcødé".encode() not in data
    assert encrypted_columns(data) == ("k1", list(group.pii_features))
    with pytest.raises(OSError, match="decrypt"):
        pq.read_table(io.BytesIO(data))
    with pytest.raises(Exception, match=r"(?i)encrypt"):
        offline.read_parquet(path)  # the plain reader refuses too: never ciphertext
    back = offline.read_partition(group, DAY)
    assert back is not None and back.schema == rows.schema and back.equals(rows, null_equal=True)
    merged = offline.scan(group).collect()
    assert merged.height == rows.height + 1 and 9 in merged["thing_id"].to_list()
    assert offline.footer_rows(path) == rows.height  # the plaintext footer still plans training sets
    offline.encryption_keys.rotate()
    later = DAY + timedelta(days=1)
    moved = rows.with_columns(pl.col(EVENT_TIMESTAMP) + timedelta(days=1))
    second = offline.write_partition(group, later, moved)
    assert encrypted_columns(offline.read_bytes(offline.key_of(second)))[0] == "k2"
    assert offline.read_bytes(offline.key_of(path)) == data  # history not rewritten
    assert offline.scan(group).collect().height == 2 * rows.height + 1
    rewritten, removed = offline.erase_rows([path], pl.DataFrame({"thing_id": [1], "region": ["eu"]}))
    assert (rewritten, removed) == (1, 2)
    after = offline.read_bytes(offline.key_of(path))
    assert after is not None and encrypted_columns(after)[1] == list(group.pii_features)

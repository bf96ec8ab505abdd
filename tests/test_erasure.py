"""Erasure (right to be forgotten): no trace of an entity in either store, and no way back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless.client.feature_store import FeatureStore
from skewless.compute.rows import latest_per_entity
from skewless.config import StoreConfig
from skewless.errors import RequestError
from skewless.storage.online_keys import entity_keys, meta_key
from tests.helpers import RUN, delete_entity_keys, expected_rows, make_events, materialize_days, small_repo

DAYS = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]

ERASED = [3, 5]


@pytest.fixture
def quick_config(tmp_path: Path, redis_url: str) -> Iterator[StoreConfig]:
    """`store_config` whose clean-up deletes this test's keys by name, not by SCAN."""
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=redis_url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"sktest:{RUN}:{uuid.uuid4().hex[:8]}",
    )
    yield config
    delete_entity_keys(config, small_repo(tmp_path / "keys").groups)


def _offline_users(root: Path) -> set[int]:
    """Every user id in every Parquet file under the offline root (whatever its role), but
    the erasure list itself: it must hold the erased keys to keep them out of backfills."""
    found: set[int] = set()
    for path in root.rglob("*.parquet"):
        if "_erasures" in path.parts:
            continue
        frame = pl.read_parquet(path)
        if "user_id" in frame.columns:
            found |= set(frame["user_id"].to_list())
    return found


def _online_users(store: FeatureStore) -> set[int]:
    """Users with any key of this prefix in Redis: every key the layout could give one of the
    test's users (1..30) and every version, asked directly (a SCAN of a shared server takes
    minutes)."""
    group = store.repository.groups[0]
    users = list(range(1, 31))
    keys = entity_keys(group, store.online.key_prefix, pl.DataFrame({"user_id": users}))
    found = store.online.client.pipeline(transaction=False)
    for key in keys:
        found.exists(key)
    return {u for u, hit in zip(users, found.execute(), strict=True) if hit}


def test_erase_leaves_no_trace_and_a_backfill_does_not_bring_it_back(
    tmp_path: Path, quick_config: StoreConfig
) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    with dg.instance_for_test() as instance:
        with FeatureStore(repo, quick_config) as store:
            # what a materialization stores (the independent computation of test_materialize)
            days = [expected_rows(events, day) for day in DAYS]
            for day, rows in zip(DAYS, days, strict=True):
                store.offline.write_partition(group, datetime.fromisoformat(day).date(), rows)
            store.online.write_latest(group, latest_per_entity(group, pl.concat(days)))
            root = Path(quick_config.offline_root)
            assert set(ERASED) <= _offline_users(root) and set(ERASED) <= _online_users(store)
            before_others = _offline_users(root) - set(ERASED)
            done = store.erase("user", [{"user_id": u} for u in ERASED])
            assert done["entities"] == 2 and done["keys_deleted"] == 2 and done["rows_removed"] > 0
            assert not set(ERASED) & _offline_users(root)
            assert not set(ERASED) & _online_users(store)
            assert _offline_users(root) == before_others  # everyone else untouched
            row = store.get_online_features(
                [{"user_id": 3}, {"user_id": 4}], service="svc:v1", output="dicts"
            )
            assert row[0]["amount"] == 0.0 and row[1]["amount"] != 0.0  # erased: the default
            # a push of the erased user's events stores nothing for it
            pushed = (
                events.filter(pl.col("user_id") == 3)
                .head(1)
                .with_columns(pl.lit(datetime.now(UTC)).alias("ts"))
            )
            store.push("events", pushed)
            assert not set(ERASED) & _online_users(store)
            assert store.erase("user", {"user_id": [3]})["rows_removed"] == 0  # repeatable
            # the erasure list holds the join keys and nothing else of the entity
            listed = pl.concat([pl.read_parquet(p) for p in (root / "_erasures" / "user").glob("*.parquet")])
            assert listed.columns == ["user_id"] and set(listed["user_id"]) == set(ERASED)
        # the source still holds them: a backfill must leave them out
        assert materialize_days(
            repo, quick_config, instance, "2026-03-01", "2026-03-04", with_checks=False
        ).success
        with FeatureStore(repo, quick_config) as store:
            assert not set(ERASED) & _offline_users(Path(quick_config.offline_root) / "user_stats")
            assert not set(ERASED) & _online_users(store)


def test_erase_refuses_unknown_entities_and_bad_keys(tmp_path: Path, quick_config: StoreConfig) -> None:
    repo = small_repo(tmp_path / "data")
    with FeatureStore(repo, quick_config) as store:
        with pytest.raises(RequestError, match="unknown entity 'merchant'"):
            store.erase("merchant", [{"merchant_id": 1}])
        with pytest.raises(RequestError, match="no join key column 'user_id'"):
            store.erase("user", [{"id": 1}])
        with pytest.raises(RequestError, match="hold nulls"):
            store.erase("user", {"user_id": [1, None]})


def test_erase_reaches_versions_removed_from_the_code(tmp_path: Path, quick_config: StoreConfig) -> None:
    """A version dropped from the code (in the lock file, retired or not) keeps its partitions
    (and, until retired, its keys): erasure must reach those too."""
    import json
    from dataclasses import replace

    from skewless.registry.lock import entry_for

    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    current = repo.groups[0]
    old = replace(current, version=7)
    lock = tmp_path / "skewless.lock.json"
    lock.write_text(
        json.dumps({"groups": {current.ref: entry_for(current)}, "retired": {old.ref: entry_for(old)}})
    )
    repo.lock_path = lock
    with FeatureStore(repo, quick_config) as store:
        store.offline.write_partition(old, datetime(2026, 3, 1).date(), expected_rows(events, "2026-03-01"))
        store.online.write_latest(old, latest_per_entity(old, expected_rows(events, "2026-03-01")))
        key = entity_keys(old, quick_config.key_prefix, pl.DataFrame({"user_id": [3]}))[0]
        assert store.online.client.exists(key)
        done = store.erase("user", [{"user_id": 3}])
        assert done["rows_removed"] > 0 and done["keys_deleted"] >= 1
        assert not store.online.client.exists(key)
        assert 3 not in set(store.offline.scan(old).collect()["user_id"])
        store.online.unlink(
            [
                *entity_keys(old, quick_config.key_prefix, pl.DataFrame({"user_id": list(range(1, 31))})),
                meta_key(quick_config.key_prefix, old.name, old.version),
            ]
        )


def _stream_rows(store: FeatureStore, key: str) -> pl.DataFrame:
    """Every row of every entry of a Redis Stream, read raw (XRANGE)."""
    from skewless.storage.streams import entry_frame

    frames = [entry_frame(fields) for _, fields in store.online.client.xrange(key, "-", "+")]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def test_erase_reaches_stream_entries_and_micro_batches_never_bring_it_back(
    tmp_path: Path, quick_config: StoreConfig
) -> None:
    """Events pushed before the erasure and still in the stream: the applied entry that held
    them is gone, the unapplied one keeps only the others' rows, and the micro-batch that
    applies it (or one that had already read the old entries) stores nothing of the
    erased entities, online or offline (pieces, the pushed-rows file)."""
    from datetime import timedelta

    from skewless.sensors.microbatch import apply_stream_batch
    from skewless.storage import streams
    from tests.helpers import clicks_frame, landing_repo

    now = datetime.now(UTC).replace(microsecond=0)
    folder = tmp_path / "clicks"
    folder.mkdir()
    repo = landing_repo(folder, (now - timedelta(days=2)).date().isoformat())
    group = repo.groups[0]
    with FeatureStore(repo, quick_config) as store:
        try:
            key = streams.stream_key(store.online, "clicks")
            first = clicks_frame([(3, "a1", 1.0, now - timedelta(minutes=9)), (4, "a2", 2.0, now)])
            store.push("clicks", first, direct=False)
            applied_until = streams.newest_id(store.online, "clicks")
            assert applied_until is not None
            old_rows, _ = streams.read(store.online, "clicks", "0", applied_until)  # a batch mid-way
            apply_stream_batch(repo, store.offline, store.online, "clicks", "0", applied_until)
            later = clicks_frame(
                [(3, "b1", 3.0, now), (5, "b2", 5.0, now), (6, "b3", 6.0, now - timedelta(minutes=1))]
            )
            store.push("clicks", later, direct=False)
            assert set(_stream_rows(store, key)["user_id"]) == {3, 4, 5, 6}

            done = store.erase("user", {"user_id": [3, 5]})
            assert done["stream_entries_rewritten"] == 2
            remaining = _stream_rows(store, key)
            assert set(remaining["user_id"]) == {6}  # the applied entry went; 6 waits for its batch
            assert not set(ERASED) & set(store.offline.scan(group).collect()["user_id"])

            newest = streams.newest_id(store.online, "clicks")
            assert newest is not None
            apply_stream_batch(repo, store.offline, store.online, "clicks", applied_until, newest)
            # a batch that read its entries before the erasure and writes after it: its read
            # is replayed (the stream no longer holds those rows)
            assert old_rows is not None and 3 in set(old_rows["user_id"])
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(streams, "read", lambda *args, **kwargs: (old_rows, 1))
                apply_stream_batch(repo, store.offline, store.online, "clicks", "0", applied_until)
            values = store.get_online_features(
                {"user_id": [3, 4, 5, 6]}, features=["last_click:v1:value"], output="dicts"
            )
            assert [v["value"] for v in values] == [None, 2.0, None, 6.0]
            assert set(store.offline.scan(group).collect()["user_id"]) == {4, 6}
            pushed = [pl.read_parquet(p) for p in folder.rglob("*.parquet")]
            assert pushed and not {3, 5} & set(pl.concat(pushed)["user_id"])
        finally:
            store.online.delete_all()


def test_erase_reaches_vector_indexes(tmp_path: Path, redis_url: str) -> None:
    """An indexed group: the erased item is never found again (searches of a process that
    loaded the old build drop it at once), the index is rebuilt without it, and no build
    file on the offline store holds its keys or its vector any more."""
    import numpy as np

    from skewless.feature_assets.definitions import build_definitions
    from tests.helpers import delete_keys
    from tests.vector_helpers import item_events, vector_repo

    config = StoreConfig(
        str(tmp_path / "offline"), redis_url, str(tmp_path / "state"), f"sktest:{RUN}:{uuid.uuid4().hex[:8]}"
    )
    events = item_events()
    repo = vector_repo(tmp_path / "data", events)
    defs = build_definitions(repo, config)
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    try:
        with dg.instance_for_test() as instance:
            assert dg.materialize(
                assets,
                selection=dg.AssetSelection.key_prefixes(["features"], ["online"]),
                resources=defs.resources,
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": "2026-03-01",
                    "dagster/asset_partition_range_end": "2026-03-03",
                },
            ).success
            assert dg.materialize(
                assets, selection=dg.AssetSelection.key_prefixes(["indexes"]), resources=defs.resources,
                instance=instance,
            ).success  # fmt: skip
        latest = events.sort("ts").group_by("item_id").last()
        query = np.asarray(latest.filter(pl.col("item_id") == 7)["embedding"][0], dtype=np.float32)
        with FeatureStore(repo, config) as serving, FeatureStore(repo, config) as admin:
            assert serving.search("item_embeddings:v1", query, k=1)["item_id"].to_list() == [7]
            done = admin.erase("item", {"item_id": [7]})
            assert done["indexes_rebuilt"] == 1
            # the serving process still maps the old build: the removal reaches it first
            assert 7 not in serving.search("item_embeddings:v1", query, k=10)["item_id"].to_list()
            with FeatureStore(repo, config) as fresh:
                assert 7 not in fresh.search("item_embeddings:v1", query, k=10)["item_id"].to_list()
        builds = list((tmp_path / "offline" / "_indexes").rglob("rows.parquet"))
        assert len(builds) == 1 and 7 not in set(pl.read_parquet(builds[0])["item_id"])
        vectors = [np.load(p) for p in (tmp_path / "offline" / "_indexes").rglob("vectors.npy")]
        assert len(vectors) == 1 and not np.isclose(vectors[0] @ query, 1.0, atol=1e-5).any()
    finally:
        delete_keys(config)

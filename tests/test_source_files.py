"""Every source file is checked before anything is computed (issue 12, items 12 and 18).

One multi-file Polars scan takes its types from the first file, so a naive file after an
aware one would be read as UTC, and a corrupt file would fail with an error naming no file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import FeatureGroup, FeatureRepository, FileSource
from skewless.config import StoreConfig
from skewless.errors import SourceDataError
from skewless.language import source as source_module
from skewless.storage.offline import OfflineStore
from tests.helpers import START, make_events, materialize_days, small_repo

DAY1, DAY2 = "2026-03-01", "2026-03-02"


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def folder_repo(tmp_path: Path, folder: Path) -> FeatureRepository:
    """The helpers' small repository, reading a folder of Parquet files instead of one file."""
    group = small_repo(tmp_path / "unused").groups[0]
    source = FileSource("events", folder, "ts", created_timestamp_field="created", start_date=START)
    return FeatureRepository(
        [
            FeatureGroup(
                name=group.name,
                entity=group.entity,
                source=source,
                features=group.features,
                transformation=group.transformation,
            )
        ]
    )


def offline_bytes(config: StoreConfig) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in Path(config.offline_root).rglob("*.parquet")}


def day(events: pl.DataFrame, name: str) -> pl.DataFrame:
    start = datetime.fromisoformat(name + "T00:00:00+00:00")
    return events.filter(pl.col("ts").dt.date() == start.date())


def as_naive_berlin(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Times as a UTC+1/+2 producer writes them without a zone: Berlin wall clock, naive."""
    return frame.with_columns(pl.col(column).dt.convert_time_zone("Europe/Berlin").dt.replace_time_zone(None))


@pytest.mark.parametrize("column", ["ts", "created"])
def test_naive_later_file_fails_before_any_partition_is_rewritten(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, column: str
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    events = make_events()
    events.write_parquet(folder / "a.parquet")
    repo = folder_repo(tmp_path, folder)
    assert materialize_days(repo, store_config, instance, DAY1, DAY2).success
    before = offline_bytes(store_config)
    assert before

    late = as_naive_berlin(day(events, DAY2).head(20), column)
    late.write_parquet(folder / "b.parquet")  # sorts after a.parquet: the aware file is first
    with pytest.raises(SourceDataError) as info:
        materialize_days(repo, store_config, instance, DAY1, DAY2)
    text = str(info.value)
    assert "source 'events'" in text and f"column '{column}' is timezone-naive" in text
    assert str(folder / "b.parquet") in text
    assert offline_bytes(store_config) == before


def test_aware_files_in_other_zones_keep_their_instants(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    events = make_events()
    first, second = events.head(200), events.slice(200)
    first.write_parquet(folder / "a.parquet")
    second.with_columns(pl.col("ts", "created").dt.convert_time_zone("Europe/Berlin")).write_parquet(
        folder / "b.parquet"
    )
    source = FileSource("events", folder, "ts", created_timestamp_field="created", start_date=START)
    got = source.scan().collect()
    assert got.schema["ts"] == pl.Datetime("us", "UTC")
    assert got.equals(events)


def test_mixed_time_units_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    events = make_events()
    events.head(10).write_parquet(folder / "a.parquet")
    events.slice(10).with_columns(pl.col("ts").dt.cast_time_unit("ms")).write_parquet(folder / "b.parquet")
    source = FileSource("events", folder, "ts", start_date=START)
    with pytest.raises(SourceDataError, match=r"column 'ts' is timestamp\[ms, tz=UTC\] in file .*b\.parquet"):
        source.scan()


@pytest.mark.parametrize("content", [b"", b"not a parquet file at all"], ids=["zero-byte", "garbage"])
def test_unreadable_file_is_named(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, content: bytes
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    make_events().write_parquet(folder / "a.parquet")
    bad = folder / "b.parquet"
    bad.write_bytes(content)
    repo = folder_repo(tmp_path, folder)
    with pytest.raises(SourceDataError) as info:
        materialize_days(repo, store_config, instance, DAY1, DAY1)
    text = str(info.value)
    assert text.startswith(f"source 'events': file {bad} is not a readable Parquet file: ")
    assert "\n" not in text
    assert not list(Path(store_config.offline_root).rglob("*.parquet"))


def test_corrupt_file_in_date_folder_fails_only_its_day(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    folder = tmp_path / "data"
    events = make_events()
    for name in (DAY1, "2026-03-03"):
        (folder / f"date={name}").mkdir(parents=True)
        day(events, name).write_parquet(folder / f"date={name}" / "part-0.parquet")
    (folder / f"date={DAY2}").mkdir()
    bad = folder / f"date={DAY2}" / "part-0.parquet"
    bad.write_bytes(b"")
    repo = folder_repo(tmp_path, folder)

    assert materialize_days(repo, store_config, instance, DAY1, DAY1).success
    assert materialize_days(repo, store_config, instance, "2026-03-03", "2026-03-03").success
    offline = OfflineStore(store_config.offline_root)
    group = repo.groups[0]
    stored = offline.scan(group, datetime(2026, 3, 1).date(), datetime(2026, 3, 3).date()).collect()
    assert stored.height == day(events, DAY1).height + day(events, "2026-03-03").height

    with pytest.raises(SourceDataError, match=f"file {bad} is not a readable Parquet file"):
        materialize_days(repo, store_config, instance, DAY2, DAY2)
    # scans of other days leave the corrupt file out; an open-ended scan cannot
    source = group.source
    assert isinstance(source, FileSource)
    assert source.scan(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)).collect().height
    with pytest.raises(SourceDataError, match="is not a readable Parquet file"):
        source.scan()


def test_footers_are_cached_per_file_version(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    make_events().head(5).write_parquet(path)
    first = source_module.read_footer(str(path))
    hits = source_module._read_footer.cache_info().hits
    assert source_module.read_footer(str(path)) is first
    assert source_module._read_footer.cache_info().hits == hits + 1
    make_events().head(7).write_parquet(path)  # a rewrite (new size) is read again
    assert source_module.read_footer(str(path)).rows == 7
    assert source_module.hive_day("/x/date=2026-03-02/part.parquet") == datetime(2026, 3, 2).date()
    assert source_module.hive_day("/x/mandate=2026-03-02/part.parquet") is None


def test_landed_files_are_checked_one_by_one(tmp_path: Path) -> None:
    """The landing micro-batch reads new files itself: the same checks name the bad one."""
    folder = tmp_path / "data"
    folder.mkdir()
    events = make_events()
    good, naive, empty = folder / "a.parquet", folder / "b.parquet", folder / "c.parquet"
    events.write_parquet(good)
    as_naive_berlin(events, "ts").write_parquet(naive)
    empty.write_bytes(b"")
    source = FileSource("events", folder, "ts", start_date=START, stream=True)
    source.check_files([str(good)])
    with pytest.raises(SourceDataError, match=f"column 'ts' is timezone-naive .* in file {naive}"):
        source.check_files([str(good), str(naive)])
    with pytest.raises(SourceDataError, match=f"file {empty} is not a readable Parquet file"):
        source.check_files([str(empty)])

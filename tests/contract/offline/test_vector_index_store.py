"""Index builds on every offline backend and of both kinds: build, check, save, publish, map.

The index store's contract (skewless/vectors/index_store.py): what a build writes on the
offline store is enough for any process to map and search it (on S3 through a local cache
copy), an IVF build's probes are tuned to the declared recall on its own vectors and
recorded, and a build with too few probes is refused by the recall check. Exact search over
the same vectors (numpy, written here) is the reference.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from skewless import Entity, Feature, FeatureGroup, FileSource, Vector, VectorIndex
from skewless.errors import DefinitionError
from skewless.language.feature_group import EVENT_TIMESTAMP
from skewless.storage.offline import OfflineStore
from skewless.vectors import index_store
from skewless.vectors.checks import tuning_target

DAY = date(2026, 3, 1)
DIM = 16
N = 4000


def clustered(n: int, seed: int = 11) -> np.ndarray:
    """Unit vectors around n/200 centres, noise high enough that neighbours are not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), DIM))
    points = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def group_with(index: VectorIndex, tmp: Path) -> FeatureGroup:
    source = FileSource("things", tmp / "things.parquet", "ts", start_date=DAY.isoformat())
    return FeatureGroup(
        "things",
        Entity("thing", {"thing_id": pl.Int64}),
        source,
        features=[Feature("embedding", Vector(DIM, normalized=True)), Feature("colour", pl.String)],
        index=index,
    )


def stored(offline: OfflineStore, group: FeatureGroup, vectors: np.ndarray) -> None:
    t0 = datetime(2026, 3, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "thing_id": np.arange(len(vectors), dtype=np.int64),
            EVENT_TIMESTAMP: [t0 + timedelta(seconds=i) for i in range(len(vectors))],
            "embedding": vectors,
            "colour": np.array(["red", "blue", "green", "black"])[np.arange(len(vectors)) % 4],
        },
        schema_overrides={"embedding": pl.Array(pl.Float32, DIM), EVENT_TIMESTAMP: pl.Datetime("us", "UTC")},
    )
    offline.write_partition(group, DAY, frame.select(list(group.offline_schema())))


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(vectors @ query), kind="stable")[:k].tolist()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_a_saved_build_is_mapped_and_searched_by_another_process(
    offline: OfflineStore, tmp_path: Path, kind: str
) -> None:
    group = group_with(VectorIndex("embedding", kind=kind, recall_queries=100), tmp_path)
    vectors = clustered(N)
    stored(offline, group, vectors)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    built = index_store.build(offline, group, now=now)
    assert not built.blocked, built.outcomes
    assert built.meta["kind"] == kind and built.meta["entities"] == N
    index_store.save(offline, group, built)
    index_store.publish(offline, group, built)

    current = index_store.read_current(offline, group)
    assert current is not None and current["build"] == built.build_id
    meta = index_store.read_meta(offline, group, built.build_id)
    assert meta is not None and meta["width"] == built.meta["width"]
    searcher = index_store.open_searcher(offline, group, built.build_id, cache_dir=tmp_path / "cache")
    assert searcher.kind == kind and searcher.n == N and searcher.width == meta["width"]
    if kind == "ivf":
        assert isinstance(searcher.vectors, np.memmap)  # label-ordered vectors mapped, not read
        assert meta["lists"] == min(round(4 * np.sqrt(N)), N // 39) and meta["tuning"]
    # the mapped build answers like exact search on most queries, and exactly for a filter
    # narrow enough to be searched exactly
    rng = np.random.default_rng(3)
    hits = 0
    for label in rng.choice(N, 50, replace=False):
        found = searcher.search(vectors[label], 10).keys.get_column("thing_id").to_list()
        hits += len(set(found) & set(exact_top(vectors, vectors[label], 10)))
    assert hits / 500 >= 0.95
    reds = np.flatnonzero(np.arange(N) % 4 == 0)
    query = vectors[7]
    found = searcher.search(query, 10, pl.col("colour") == "red").keys.get_column("thing_id").to_list()
    assert len(found) == 10 and all(f % 4 == 0 for f in found)
    expected = reds[exact_top(vectors[reds], query, 10)].tolist()
    assert len(set(found) & set(expected)) >= 9


def test_ivf_probes_are_tuned_to_the_declared_recall(offline: OfflineStore, tmp_path: Path) -> None:
    vectors = clustered(N)
    for min_recall in (0.5, 0.99):
        group = group_with(VectorIndex("embedding", min_recall=min_recall, recall_queries=100), tmp_path)
        stored(offline, group, vectors)
        built = index_store.build(offline, group, now=datetime(2026, 3, 2, tzinfo=UTC))
        ladder = built.meta["tuning"]
        # powers of two, stopping at the first to reach the target (or at every cell)
        assert [step["probes"] for step in ladder] == [2**i for i in range(len(ladder))]
        assert (
            ladder[-1]["recall"] >= tuning_target(min_recall) or ladder[-1]["probes"] >= built.meta["lists"]
        )
        assert all(step["recall"] < tuning_target(min_recall) for step in ladder[:-1])
        assert built.meta["width"] == min(2 * ladder[-1]["probes"], built.meta["lists"])
        recall = next(o for o in built.outcomes if o.name == "recall")
        assert recall.passed and recall.values["recall"] >= min_recall
    # a stricter recall needs more probes
    loose = index_store.build(offline, group_with(VectorIndex("embedding", min_recall=0.5), tmp_path))
    strict = index_store.build(offline, group_with(VectorIndex("embedding", min_recall=0.99), tmp_path))
    assert loose.meta["width"] < strict.meta["width"]


def test_too_few_probes_declared_is_refused_by_the_recall_check(
    offline: OfflineStore, tmp_path: Path
) -> None:
    group = group_with(VectorIndex("embedding", lists=200, probes=1, recall_queries=100), tmp_path)
    stored(offline, group, clustered(N))
    built = index_store.build(offline, group, now=datetime(2026, 3, 2, tzinfo=UTC))
    recall = next(o for o in built.outcomes if o.name == "recall")
    assert built.meta["width"] == 1 and built.meta["tuning"] == []
    assert not recall.passed and built.blocked and recall.values["recall"] < 0.95


def test_tiny_and_empty_groups_still_build(offline: OfflineStore, tmp_path: Path) -> None:
    group = group_with(VectorIndex("embedding", recall_queries=20), tmp_path)
    stored(offline, group, clustered(30))  # fewer than 39 per cell: one cell, scanned exactly
    built = index_store.build(offline, group, now=datetime(2026, 3, 2, tzinfo=UTC))
    assert built.meta["lists"] == 1 and not built.blocked
    index_store.save(offline, group, built)
    searcher = index_store.open_searcher(offline, group, built.build_id, cache_dir=tmp_path / "cache")
    assert searcher.search(clustered(30)[0], 5).keys.height == 5


def test_index_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="kind 'annoy' is not one of ivf, hnsw"):
        VectorIndex("embedding", kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="probes must be a positive integer or None"):
        VectorIndex("embedding", probes=0)
    with pytest.raises(DefinitionError, match="lists must be a positive integer or None"):
        VectorIndex("embedding", lists=True)  # type: ignore[arg-type]

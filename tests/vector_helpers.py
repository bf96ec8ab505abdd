"""A small embedding repository over hand-made item events, for the vector tests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FileSource, Vector, VectorIndex

START = "2026-03-01"
DIM = 8
COUNTRIES = ["FR", "DE", "ES", "IT"]


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def item_events(n_items: int = 60, per_item: int = 3, days: int = 3, seed: int = 3) -> pl.DataFrame:
    """Each item gets `per_item` embeddings at random times over `days` days (so training
    sets must pick the one as of each label time), clustered around 6 centres."""
    rng = np.random.default_rng(seed)
    n = n_items * per_item
    centres = rng.standard_normal((6, DIM))
    vectors = unit(centres[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, DIM)))
    start_us = int(datetime.fromisoformat(START + "T00:00:00+00:00").timestamp() * 1e6)
    items = np.repeat(np.arange(1, n_items + 1), per_item)
    return pl.DataFrame(
        {
            "item_id": items.astype(np.int64),
            "ts": start_us + rng.integers(0, days * 86_400_000_000, size=n),
            "embedding": vectors,
            "country": [COUNTRIES[i % len(COUNTRIES)] for i in items],
        },
        schema_overrides={"embedding": pl.Array(pl.Float32, DIM)},
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))


def vector_repo(
    data_dir: Path, events: pl.DataFrame | None = None, index: VectorIndex | None = None, stream: bool = False
) -> FeatureRepository:
    events = item_events() if events is None else events
    data_dir.mkdir(parents=True, exist_ok=True)
    events.write_parquet(data_dir / "items.parquet")
    item = Entity("item", {"item_id": pl.Int64})
    source = FileSource("items", data_dir / "items.parquet", "ts", start_date=START, stream=stream)
    group = FeatureGroup(
        name="item_embeddings",
        entity=item,
        source=source,
        features=[Feature("embedding", Vector(DIM, normalized=True)), Feature("country", pl.String)],
        index=index or VectorIndex("embedding", metric="cosine", recall_queries=40),
        owner="team:test",
    )
    return FeatureRepository(groups=[group])

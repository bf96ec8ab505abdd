"""Vector embeddings in the definition language: the `Vector` dtype and `VectorIndex`.

An embedding is a feature like any other — stored offline as a fixed-size float32 array in
Parquet, online in the packed record, joined point in time into training sets — so it gets
the same guarantees. `Vector(n)` says what a valid one is (n float32 values, finite, unit
norm when `normalized=True`), which the checks enforce on every partition and every push;
`VectorIndex` asks for an approximate nearest-neighbour index over the latest embedding per
entity, built as its own asset and checked against exact search (`recall`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import polars as pl

from skewless.errors import DefinitionError
from skewless.language.durations import parse_duration

METRICS = ("cosine", "ip", "l2")
KINDS = ("ivf", "hnsw")
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed for a `normalized=True` vector (float32 rounding)


@dataclass(frozen=True)
class Vector:
    """A fixed-size float32 embedding: `Feature("embedding", Vector(384, normalized=True))`.

    Stored as `pl.Array(pl.Float32, dim)`. Every stored vector must be finite (no NaN or
    infinity: one would poison every distance it takes part in), and with `normalized=True`
    have an L2 norm within 1e-3 of 1 — what cosine models emit, and what lets the index use
    inner products. A transformation may return a list or a float64 array column: it is cast
    after each row's length is checked, so a wrong-sized vector names its rows.
    """

    dim: int
    normalized: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or not 1 <= self.dim <= 65_536:
            raise DefinitionError(f"Vector dimension must be an integer in 1..65536, got {self.dim!r}")
        if not isinstance(self.normalized, bool):
            raise DefinitionError(f"Vector normalized must be True or False, got {self.normalized!r}")

    @property
    def dtype(self) -> pl.DataType:
        return pl.Array(pl.Float32, self.dim)

    def __str__(self) -> str:
        return f"Vector({self.dim}{', normalized=True' if self.normalized else ''})"


@dataclass(frozen=True)
class VectorIndex:
    """An approximate nearest-neighbour index over the latest value of a `Vector` feature per entity.

    `FeatureGroup(..., index=VectorIndex("embedding", metric="cosine"))` adds the asset
    `indexes/<group>_v<N>_index`, downstream of the group's offline asset.

    `kind="ivf"` (the default) is faiss' inverted file: k-means cells (`lists`, default
    4·√n, at most n/39 so each cell trains on enough points) scanned exactly, `probes` of
    them per query. `probes=None` (the default) is tuned on every build: the smallest power
    of two whose recall on a tuning sample of the build's own vectors reaches `min_recall`
    plus half the remaining gap (0.975 for 0.95), doubled once for queries that are not
    data points; the `recall` check then measures that setting on a *different* sample.
    IVF is the default because embeddings are clustered, and it builds in a minute where
    HNSW took 19 minutes at 1M × 128 and still fell short of 0.95 recall (docs/architecture.md,
    "Vector embeddings"). `kind="hnsw"` is faiss' HNSW graph: `connectivity` (M),
    `expansion_add` (efConstruction) and `expansion_search` (efSearch) trade build time and
    memory for recall.

    Either way the `recall` check measures the index against exact search on
    `recall_queries` sampled entities at k=`recall_k` on every build and refuses to publish
    an index below `min_recall`. `freshness` bounds how old the newest embedding the index
    was built from may get (default: the group's freshness).
    """

    feature: str
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    kind: Literal["ivf", "hnsw"] = "ivf"
    lists: int | None = None
    probes: int | None = None
    connectivity: int = 32
    expansion_add: int = 128
    expansion_search: int = 160
    min_recall: float = 0.95
    recall_k: int = 10
    recall_queries: int = 200
    freshness: str | timedelta | None = None

    def __post_init__(self) -> None:
        where = f"VectorIndex on '{self.feature}'"
        if not isinstance(self.feature, str) or not self.feature:
            raise DefinitionError(f"VectorIndex: feature must be a feature name, got {self.feature!r}")
        if self.metric not in METRICS:
            raise DefinitionError(f"{where}: metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.kind not in KINDS:
            raise DefinitionError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("connectivity", "expansion_add", "expansion_search", "recall_k", "recall_queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DefinitionError(f"{where}: {name} must be a positive integer, got {value!r}")
        for name in ("lists", "probes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise DefinitionError(f"{where}: {name} must be a positive integer or None, got {value!r}")
        if not isinstance(self.min_recall, int | float) or not 0.0 <= self.min_recall <= 1.0:
            raise DefinitionError(f"{where}: min_recall must be in [0, 1], got {self.min_recall!r}")
        parse_duration(self.freshness, what=f"{where} freshness")

    @property
    def freshness_limit(self) -> timedelta | None:
        return parse_duration(self.freshness, what=f"VectorIndex on '{self.feature}' freshness")

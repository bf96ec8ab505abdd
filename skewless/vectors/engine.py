"""The ANN engine: an IVF or HNSW index (faiss) over a build's vectors, a mutable overlay for
pushed ones, and filtered search that returns k results whenever k entities match.

Two kinds (`VectorIndex(kind=...)`): `ivf`, the default, an inverted file of k-means cells
scanned exactly (`lists` cells, `probes` scanned per query, tuned per build by the index
store); `hnsw`, a graph. The searcher speaks of one "width" for both: the cells probed
(IVF) or the beam (HNSW efSearch); widening it is how a filtered search that came back
short is retried.

Why faiss (docs/architecture.md, "Vector embeddings", has the figures): of the three
libraries measured (faiss-cpu, usearch, hnswlib) it built and searched fastest here, it
searches HNSW under an ID bitmap in C++ (`IDSelectorBitmap`: no Python call per candidate,
which hnswlib's filter needs and usearch's Python API lacks), it memory-maps a saved
index (`IO_FLAG_MMAP_IFC`: HNSW storage and IVF lists alike), so every serving process on a
machine shares one copy in the page cache, and it has both kinds behind one search call.

A build is immutable (it is a file several processes map); what changes between builds
lives in the overlay: the latest pushed row per entity, searched exactly (pushes between
two builds are few), while the build's copy of a pushed entity is masked out. So an update
is in place for every reader — add, replace (the newer event time wins, as in Redis) and
remove (a pushed null embedding) — without rewriting the mapped file.

Filtered search (`filter=pl.col("country") == "FR"`): the filter is evaluated on the
index's table of scalar features (a Polars expression over the build's rows, cached per
expression, and over the overlay), giving a bitmap of allowed entities; then

- few allowed (at most `exact_limit`): exact search over just those vectors, which is
  both exact and faster than walking a graph that is mostly excluded;
- otherwise ANN search restricted to the bitmap (HNSW: efSearch raised with the filter's
  selectivity; IVF: the tuned probes, the scan skipping what the bitmap excludes); should it
  come back short of k, it is retried 4x wider and, as the last resort, answered exactly
  over the allowed vectors.

So a filtered search returns min(k, matches) results, always; `last_strategy` says which
path answered (tests and the benchmark read it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

EVENT_US = "_event_us"
CREATED_US = "_created_us"
VECTOR = "_vector"
DISTANCE = "distance"


def faiss_module() -> Any:
    """faiss, imported on first use (0.3 s): clients that never search do not pay for it."""
    import faiss

    return faiss


def prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, unit length for cosine (the index then ranks by inner product)."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if metric == "cosine":
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.where(norms == 0, 1.0, norms)
    return np.ascontiguousarray(matrix, dtype=np.float32)


def build_hnsw(
    vectors: np.ndarray, metric: str, connectivity: int, expansion_add: int, threads: int | None = None
) -> Any:
    """An HNSW index over `vectors` (already `prepared`); labels are row numbers."""
    faiss = faiss_module()
    if threads:
        faiss.omp_set_num_threads(threads)
    kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexHNSWFlat(vectors.shape[1], connectivity, kind)
    index.hnsw.efConstruction = expansion_add
    if len(vectors):
        index.add(vectors)
    return index


def default_lists(n: int) -> int:
    """IVF cells for n vectors: 4·√n (faiss' rule of thumb), at most n/39 (k-means wants 39
    training points per centroid or it warns and centres cells on noise), at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def build_ivf(vectors: np.ndarray, metric: str, lists: int, threads: int | None = None, seed: int = 0) -> Any:
    """An IVF-flat index over `vectors` (already `prepared`); labels are row numbers.

    k-means trains on a seeded sample of 64 points per cell (10 iterations): enough for cell
    boundaries, since each cell is then scanned exactly, and 4x faster than faiss' 256.
    Cosine trains spherical k-means (centres on the unit sphere, like the vectors).
    """
    faiss = faiss_module()
    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = vectors.shape
    lists = max(1, min(lists, n)) if n else 1
    l2 = metric == "l2"
    quantizer = faiss.IndexFlatL2(dim) if l2 else faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.max_points_per_centroid = 64
    index.cp.spherical = metric == "cosine"
    if n:
        take = min(n, lists * 64)
        sample = np.random.default_rng(seed).choice(n, size=take, replace=False) if take < n else slice(None)
        index.train(np.ascontiguousarray(vectors[sample]))
        index.add(vectors)
    return index


def index_kind(index: Any) -> str:
    """`hnsw` or `ivf`: what an index loaded from a file is."""
    return "hnsw" if hasattr(index, "hnsw") else "ivf"


def index_vectors(index: Any) -> np.ndarray:
    """The (n, dim) float32 vectors an HNSW-flat index holds, as a view (no copy: mapped
    from the file when the index was loaded with `IO_FLAG_MMAP_IFC`)."""
    faiss = faiss_module()
    storage = faiss.downcast_index(index.storage)
    n, d = storage.ntotal, storage.d
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    return faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)


def to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores as distances, smaller is nearer: 1 - cos, -inner product, L2 distance."""
    if metric == "cosine":
        return 1.0 - scores
    if metric == "ip":
        return -scores
    return np.sqrt(np.maximum(scores, 0.0))


def exact_scores(matrix: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Distances from `query` (one prepared vector) to every row of `matrix`."""
    if metric == "l2":
        diff = matrix - query
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return to_distance(matrix @ query, metric)


def top_k(distances: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest distances, nearest first."""
    if distances.size <= k:
        return np.argsort(distances, kind="stable")
    part = np.argpartition(distances, k)[:k]
    return part[np.argsort(distances[part], kind="stable")]


@dataclass
class SearchResult:
    """Per hit its source (`base` build label or `overlay` row) and distance, nearest first."""

    keys: pl.DataFrame  # the entities' join keys
    distance: np.ndarray


class VectorSearcher:
    """One build of a group version's index plus the pushed updates since (see module doc).

    `rows` is the build's table in label order: join keys, `_event_us`, `_created_us` and
    the group's scalar features (what filters see). `width` is the search width (IVF cells
    probed, or HNSW efSearch). `vectors` are the build's prepared vectors in label order
    (exact search reads them); an HNSW index holds them in that order already, an IVF index
    keeps them by cell, so it needs them given (the build's array, or the mapped
    `vectors.npy` of a saved build).
    """

    def __init__(
        self,
        index: Any,
        rows: pl.DataFrame,
        key_columns: list[str],
        metric: str,
        width: int = 64,
        exact_limit: int | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        self.index = index
        self.rows = rows
        self.key_columns = key_columns
        self.metric = metric
        self.kind = index_kind(index)
        self.n = rows.height
        self.dim = int(index.d)
        self.width = width
        self.set_width(width)
        if vectors is None:
            if self.kind != "hnsw":
                raise ValueError("an IVF index needs its build's vectors in label order")
            vectors = index_vectors(index)
        self.vectors = vectors
        self.live = np.ones(self.n, dtype=bool)
        self.shadowed = 0
        self.exact_limit = exact_limit if exact_limit is not None else max(2048, self.n // 100)
        schema = {**rows.schema, VECTOR: pl.Array(pl.Float32, self.dim)}
        self.overlay = pl.DataFrame(schema=schema)
        self._overlay_matrix = np.zeros((0, self.dim), dtype=np.float32)
        self._overlay_with_vector = self.overlay
        self._masks: dict[bytes, np.ndarray] = {}
        self._sorted_key = (
            rows.get_column(key_columns[0]).to_numpy()
            if len(key_columns) == 1 and rows.schema[key_columns[0]].is_integer()
            else None
        )
        if self._sorted_key is not None and self.n > 1 and not bool(np.all(np.diff(self._sorted_key) > 0)):
            self._sorted_key = None
        # key columns as arrays: a hit list is a fancy index, not a DataFrame gather (~10x)
        self._key_arrays = {c: rows.get_column(c).to_numpy() for c in key_columns}
        self._key_schema = {c: rows.schema[c] for c in key_columns}
        self.last_strategy = ""

    def set_width(self, width: int) -> None:
        """The default search width: cells probed (IVF, at most the cells there are) or the
        HNSW beam (efSearch)."""
        self.width = min(width, self.lists) if self.kind == "ivf" else width
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = self.width
        else:
            self.index.nprobe = self.width

    @property
    def lists(self) -> int:
        return int(self.index.nlist) if self.kind == "ivf" else 0

    # ---------------------------------------------------------------- lookups
    def base_labels(self, keys: pl.DataFrame) -> np.ndarray:
        """The build label of each row of `keys` (-1 where the build has no such entity)."""
        if self.n == 0 or keys.height == 0:
            return np.full(keys.height, -1, dtype=np.int64)
        if self._sorted_key is not None:
            wanted = keys.get_column(self.key_columns[0]).cast(pl.Int64).to_numpy()
            pos = np.clip(np.searchsorted(self._sorted_key, wanted), 0, self.n - 1)
            return np.where(self._sorted_key[pos] == wanted, pos, -1).astype(np.int64)
        labelled = self.rows.select(self.key_columns).with_row_index("_label")
        found = keys.select(self.key_columns).join(
            labelled, on=self.key_columns, how="left", maintain_order="left"
        )
        return found.get_column("_label").fill_null(-1).cast(pl.Int64).to_numpy()

    def vector_of(self, keys: pl.DataFrame) -> np.ndarray | None:
        """The current vector of one entity (pushed or built), None if it has none."""
        if self.overlay.height:
            found = self.overlay.join(keys.select(self.key_columns), on=self.key_columns, how="semi")
            if found.height:
                vector = found.get_column(VECTOR)[0]
                return None if vector is None else np.asarray(vector, dtype=np.float32)
        label = int(self.base_labels(keys)[0])
        if label < 0 or not self.live[label]:
            return None
        return np.array(self.vectors[label])

    @property
    def size(self) -> int:
        """Entities with a searchable vector now."""
        return int(self.n - self.shadowed + self._overlay_matrix.shape[0])

    # ---------------------------------------------------------------- updates
    def apply(self, updates: pl.DataFrame) -> int:
        """Apply pushed latest rows (index layout; a null `_vector` removes the entity):
        each entity's newest by (event, created) time wins against what is already known, as
        the online write guard decides for Redis. Returns the rows applied."""
        if updates.height == 0:
            return 0
        order = [EVENT_US, CREATED_US]
        updates = (
            updates.select(self.overlay.columns)
            .cast(self.overlay.schema)  # type: ignore[arg-type]
            .sort(order, maintain_order=True)
            .unique(self.key_columns, keep="last", maintain_order=True)
        )
        labels = self.base_labels(updates)
        known_ev = np.full(updates.height, -1, dtype=np.int64)
        known_cr = np.full(updates.height, -1, dtype=np.int64)
        in_base = labels >= 0
        if in_base.any():
            base_times = self.rows.select(order)[labels[in_base]]
            known_ev[in_base] = base_times.get_column(EVENT_US).to_numpy()
            known_cr[in_base] = base_times.get_column(CREATED_US).to_numpy()
        if self.overlay.height:
            over = updates.select(self.key_columns).join(
                self.overlay.select(*self.key_columns, *order),
                on=self.key_columns,
                how="left",
                maintain_order="left",
            )
            has = over.get_column(EVENT_US).is_not_null().to_numpy()
            known_ev = np.where(has, over.get_column(EVENT_US).fill_null(-1).to_numpy(), known_ev)
            known_cr = np.where(has, over.get_column(CREATED_US).fill_null(-1).to_numpy(), known_cr)
        ev = updates.get_column(EVENT_US).to_numpy()
        cr = updates.get_column(CREATED_US).to_numpy()
        keep = (ev > known_ev) | ((ev == known_ev) & (cr >= known_cr))
        if not keep.any():
            return 0
        kept = updates.filter(pl.Series(keep))
        kept_labels = labels[keep]
        newly = kept_labels[kept_labels >= 0]
        newly = newly[self.live[newly]]
        self.live[newly] = False
        self.shadowed += int(newly.size)
        self.overlay = pl.concat(
            [self.overlay.join(kept.select(self.key_columns), on=self.key_columns, how="anti"), kept]
        )
        self._overlay_with_vector = self.overlay.filter(pl.col(VECTOR).is_not_null())
        self._overlay_matrix = (
            prepared(self._overlay_with_vector.get_column(VECTOR).to_numpy(), self.metric)
            if self._overlay_with_vector.height
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        return int(keep.sum())

    # ---------------------------------------------------------------- search
    def _base_mask(self, expr: pl.Expr | None) -> np.ndarray | None:
        """Allowed build labels: not replaced by a push, and matching the filter (the
        filter's own mask is cached: the build's rows never change)."""
        if expr is None:
            return self.live if self.shadowed else None
        cache_key = expr.meta.serialize(format="json").encode()
        mask = self._masks.get(cache_key)
        if mask is None:
            mask = self.rows.select(expr.fill_null(False)).to_series().to_numpy().astype(bool)
            if len(self._masks) >= 64:
                self._masks.pop(next(iter(self._masks)))
            self._masks[cache_key] = mask
        return mask & self.live if self.shadowed else mask

    def search(self, query: np.ndarray, k: int = 10, filter: pl.Expr | None = None) -> SearchResult:
        """The k nearest entities to `query` (matching `filter`), nearest first."""
        q = prepared(query, self.metric)[0]
        base_labels, base_dist = self._search_base(q, k, self._base_mask(filter))
        over = self._overlay_with_vector
        over_matrix = self._overlay_matrix
        if over.height and filter is not None:
            allowed = over.select(filter.fill_null(False)).to_series().to_numpy().astype(bool)
            over, over_matrix = over.filter(pl.Series(allowed)), over_matrix[allowed]
        keys = pl.DataFrame(
            {c: values[base_labels] for c, values in self._key_arrays.items()}, schema=self._key_schema
        )
        distance = base_dist
        if over.height:
            d = exact_scores(over_matrix, q, self.metric)
            pick = top_k(d, k)
            keys = pl.concat([keys, over.select(self.key_columns)[pick]])
            distance = np.concatenate([distance, d[pick]])
            order = top_k(distance, k)
            keys, distance = keys[order], distance[order]
        return SearchResult(keys, distance.astype(np.float32))

    def _search_base(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.n == 0:
            self.last_strategy = "empty"
            return empty
        if mask is None:
            self.last_strategy = self.kind
            return self._ann(q, k, None, self.width)
        allowed = int(mask.sum())
        if allowed == 0:
            self.last_strategy = "none_match"
            return empty
        want = min(k, allowed)
        if allowed <= self.exact_limit:
            self.last_strategy = "exact_subset"
            return self._exact_subset(q, k, mask)
        faiss = faiss_module()
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(bits)
        if self.kind == "hnsw":
            # a beam wide enough to meet k allowed nodes: scale efSearch with 1/selectivity
            width = int(min(4096, max(self.width, k * 2, math.ceil(self.width * self.n / allowed / 4))))
        else:
            # the probed cells are scanned exactly, skipping excluded ids: the same cells
            # hold the nearest allowed vectors unless the filter empties them
            width = self.width
        for widen in (1, 4):
            labels, dist = self._ann(q, k, selector, width * widen)
            if labels.size >= want:
                self.last_strategy = f"{self.kind}_filtered" + ("" if widen == 1 else "_wide")
                del bits
                return labels, dist
        self.last_strategy = "exact_fallback"
        return self._exact_subset(q, k, mask)

    def _ann(self, q: np.ndarray, k: int, selector: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = faiss_module()
        if selector is None and width == self.width:
            scores, labels = self.index.search(q[None, :], k)
        else:
            params: Any
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=width)
            else:
                params = faiss.SearchParametersIVF(nprobe=min(width, self.lists))
            if selector is not None:
                params.sel = selector
            scores, labels = self.index.search(q[None, :], k, params=params)
        found = labels[0] >= 0
        return labels[0][found].astype(np.int64), to_distance(scores[0][found], self.metric)

    def _exact_subset(self, q: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.flatnonzero(mask)
        d = exact_scores(self.vectors[labels], q, self.metric)
        pick = top_k(d, k)
        return labels[pick].astype(np.int64), d[pick]

    def exact(self, query: np.ndarray, k: int) -> np.ndarray:
        """Labels of the exact k nearest build vectors (the recall check's reference)."""
        q = prepared(query, self.metric)[0]
        return top_k(exact_scores(self.vectors, q, self.metric), k)

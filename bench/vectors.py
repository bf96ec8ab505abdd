"""Vector search: build time, index memory, search latency and QPS, recall against exact.

    python bench/vectors.py --size small|large [--queries 1000] [--seed 7]

`small` is 100,000 and `large` 1,000,000 vectors of 128 dimensions, seeded and clustered
(one cluster per 1,000 vectors, unit length, noise 0.35 around each centre) so that the
nearest neighbours are a meaningful target; queries are perturbed data points. The index is
what serving uses: built with `VectorIndex`'s defaults (`--kind ivf`, the default, or
`hnsw`) by the same function as the index asset (`index_store.make_index`: for IVF the
probes are tuned on the build's own vectors there, never on the bench's queries), saved,
loaded memory-mapped (`IO_FLAG_MMAP_IFC`; IVF's `vectors.npy` with numpy's mmap) and
searched through `VectorSearcher.search` one query at a time (the serving path's Python
included).
Each vector has a `country` (10 values: a filter matching 10%) and a `rare` flag (0.05%:
answered exactly over the allowed subset).

Same-run baseline: exact brute-force search in numpy (one matrix-vector product and a
partial sort per query), which also gives the ground truth for recall@10. Last line one
JSON object:

- `build_s`, `index_file_mb`, `rss_growth_mb` (process RSS after loading and searching)
- `recall_at_10`, `search_p50_ms`, `search_p99_ms`, `qps` (unfiltered, single thread)
- `exact_p50_ms`, `exact_qps`, `qps_ratio_vs_exact`
- `width_sweep`: recall@10 and p50 at other search widths of the same index (IVF probes
  or HNSW efSearch), `tuning` (the build's own ladder), `kind`, `lists`, `width`
- `filtered_recall_at_10`, `filtered_p50_ms`, `filtered_p99_ms`, `filtered_qps` (10% filter),
  `rare_recall_at_10`, `rare_p50_ms` (0.05% filter), `filtered_returns_k` (every filtered
  query with at least k matches returned k), `strategies` (which path answered)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"small": 100_000, "large": 1_000_000}
DIM = 128
K = 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around n/1000 centres (built in chunks: 1M x 128 float32 is 512 MB)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(10, n // 1000), DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk = chunk + 0.35 * rng.standard_normal(chunk.shape).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    queries_from = rng.integers(0, n, 10_000)
    return out, queries_from


def exact_top(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(seconds) * 1000, q)), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--kind", choices=["ivf", "hnsw"], default="ivf")
    args = parser.parse_args()

    from skewless.language.vectors import VectorIndex
    from skewless.vectors.engine import VectorSearcher, faiss_module
    from skewless.vectors.index_store import make_index

    faiss = faiss_module()
    spec = VectorIndex("embedding", kind=args.kind)
    n = SIZES[args.size]
    started = time.perf_counter()
    vectors, sources = clustered(n, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    queries = vectors[sources[: args.queries]] + 0.1 * rng.standard_normal((args.queries, DIM)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    countries = np.array([f"c{i}" for i in range(10)])[rng.integers(0, 10, n)]
    rare = rng.random(n) < 0.0005
    rows = pl.DataFrame(
        {
            "item_id": np.arange(n, dtype=np.int64),
            "_event_us": np.zeros(n, dtype=np.int64),
            "_created_us": np.zeros(n, dtype=np.int64),
            "country": countries,
            "rare": rare,
        }
    )
    print(f"[vectors] {n:,} x {DIM} generated in {time.perf_counter() - started:.1f}s", flush=True)

    started = time.perf_counter()
    index, built_searcher, params = make_index(vectors, rows, ["item_id"], spec, threads=args.threads)
    build_s = time.perf_counter() - started
    width = params["width"]
    del built_searcher
    print(f"[vectors] built in {build_s:.1f}s ({params})", flush=True)
    with tempfile.TemporaryDirectory(prefix="skewless-vectors-") as folder:
        path = Path(folder) / "index.faiss"
        faiss.write_index(index, str(path))
        del index
        file_mb = path.stat().st_size / 2**20
        mapped = None
        if args.kind == "ivf":
            np.save(Path(folder) / "vectors.npy", vectors)
            file_mb += (Path(folder) / "vectors.npy").stat().st_size / 2**20
        faiss.omp_set_num_threads(1)
        before = rss_bytes()
        loaded = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        if args.kind == "ivf":
            mapped = np.load(Path(folder) / "vectors.npy", mmap_mode="r")
        searcher = VectorSearcher(loaded, rows, ["item_id"], spec.metric, width, vectors=mapped)

        # exact baseline (numpy brute force, one query at a time) and ground truth
        exact_times, truth = [], []
        for q in queries:
            t = time.perf_counter()
            truth.append(exact_top(vectors, q, K))
            exact_times.append(time.perf_counter() - t)
        print(f"[vectors] exact: p50 {percentile_ms(exact_times, 50)} ms", flush=True)

        def run(expr: pl.Expr | None, allowed: np.ndarray | None):
            times, recalls, short, strategies = [], [], 0, Counter()
            subset = np.flatnonzero(allowed) if allowed is not None else None
            sub = vectors[subset] if subset is not None else None
            for i, q in enumerate(queries):
                t = time.perf_counter()
                found = searcher.search(q, K, expr)
                times.append(time.perf_counter() - t)
                strategies[searcher.last_strategy] += 1
                ids = found.keys.get_column("item_id").to_numpy()
                if allowed is None:
                    expected = truth[i]
                else:
                    assert subset is not None and sub is not None
                    expected = subset[exact_top(sub, q, min(K, subset.size))]
                    if subset.size >= K and ids.size < K:
                        short += 1
                recalls.append(len(set(ids.tolist()) & set(expected.tolist())) / max(1, len(expected)))
            return times, float(np.mean(recalls)), short, strategies

        sweep = {}
        others = [w for w in (width // 4, width // 2, width * 2) if w >= 1]
        for other in others:
            searcher.set_width(other)
            w_times, w_recall, _, _ = run(None, None)
            sweep[other] = {"recall_at_10": round(w_recall, 4), "p50_ms": percentile_ms(w_times, 50)}
        searcher.set_width(width)
        times, recall, _, plain = run(None, None)
        print(f"[vectors] ann: p50 {percentile_ms(times, 50)} ms, recall@10 {recall:.4f}", flush=True)
        f_times, f_recall, f_short, f_strategies = run(pl.col("country") == "c3", countries == "c3")
        print(
            f"[vectors] filtered 10%: p50 {percentile_ms(f_times, 50)} ms, recall {f_recall:.4f}", flush=True
        )
        r_times, r_recall, r_short, r_strategies = run(pl.col("rare"), rare)
        print(
            f"[vectors] filtered 0.05%: p50 {percentile_ms(r_times, 50)} ms, recall {r_recall:.4f}",
            flush=True,
        )
        rss_mb = (rss_bytes() - before) / 2**20

    qps = len(times) / sum(times)
    exact_qps = len(exact_times) / sum(exact_times)
    result = {
        "size": args.size,
        "vectors": n,
        "dim": DIM,
        "library": params["library"],
        "kind": params["kind"],
        "lists": params.get("lists"),
        "connectivity": params.get("connectivity"),
        "expansion_add": params.get("expansion_add"),
        "width": width,
        "tuning": params["tuning"],
        "build_s": round(build_s, 1),
        "index_file_mb": round(file_mb, 1),
        "rss_growth_mb": round(rss_mb, 1),
        "queries": len(queries),
        "recall_at_10": round(recall, 4),
        "search_p50_ms": percentile_ms(times, 50),
        "search_p99_ms": percentile_ms(times, 99),
        "qps": round(qps),
        "exact_p50_ms": percentile_ms(exact_times, 50),
        "exact_qps": round(exact_qps, 1),
        "qps_ratio_vs_exact": round(qps / exact_qps, 1),
        "filtered_recall_at_10": round(f_recall, 4),
        "filtered_p50_ms": percentile_ms(f_times, 50),
        "filtered_p99_ms": percentile_ms(f_times, 99),
        "filtered_qps": round(len(f_times) / sum(f_times)),
        "rare_recall_at_10": round(r_recall, 4),
        "rare_p50_ms": percentile_ms(r_times, 50),
        "filtered_returns_k": f_short == 0 and r_short == 0,
        "strategies": {**plain, **f_strategies, **r_strategies},
        "width_sweep": sweep,
    }
    print(
        f"[vectors] {n:,} x {DIM}: build {result['build_s']}s, file {result['index_file_mb']} MB; "
        f"recall@10 {result['recall_at_10']}, p50 {result['search_p50_ms']} ms, "
        f"{result['qps_ratio_vs_exact']}x exact QPS; filtered recall {result['filtered_recall_at_10']}, "
        f"returns k: {result['filtered_returns_k']}",
        flush=True,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

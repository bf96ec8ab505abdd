"""The ANN library comparison behind choosing faiss (docs/architecture.md, "Vector embeddings").

    python bench/vector_libraries.py [--size 100000] [--library faiss|usearch|hnswlib ...]

usearch and hnswlib are not dependencies: install them to compare
(`.venv/bin/pip install -c constraints.txt usearch==2.26.6 hnswlib==0.8.0`); a library that
is not installed is skipped with a note. Data: `--size` clustered unit vectors of 128
dimensions (one cluster per 100 vectors, noise 0.35), 500 perturbed queries; every library
gets the same HNSW parameters (M=16, efConstruction 128, 2 build threads) and is searched
one query at a time at efSearch 32, 64 and 128 against exact numpy top-10. faiss also runs a
10% bitmap-filtered search. Last line one JSON object: per library build seconds, file MB,
and p50 ms / recall@10 per efSearch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, K, QUERIES = 128, 10, 500
EFS = (32, 64, 128)


def data(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 10), DIM)).astype(np.float32)
    labels = rng.integers(0, len(centres), n)
    x = centres[labels] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, QUERIES)] + 0.1 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q, labels


def measure(search, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    times, recalls = [], []
    for i, query in enumerate(queries):
        started = time.perf_counter()
        found = search(query)
        times.append(time.perf_counter() - started)
        recalls.append(len(set(np.asarray(found).tolist()) & set(truth[i].tolist())) / K)
    return round(float(np.percentile(times, 50) * 1000), 3), round(float(np.mean(recalls)), 4)


def run_faiss(x, q, truth, labels, folder: Path) -> dict:
    import faiss

    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(x)
    result: dict = {"build_s": round(time.perf_counter() - started, 1)}
    faiss.omp_set_num_threads(1)
    for ef in EFS:
        index.hnsw.efSearch = ef
        result[f"ef{ef}"] = measure(lambda v: index.search(v[None], K)[1][0], q, truth)
    bits = np.packbits(labels % 10 == 0, bitorder="little")
    params = faiss.SearchParametersHNSW(sel=faiss.IDSelectorBitmap(bits), efSearch=64)
    times = []
    for v in q:
        started = time.perf_counter()
        index.search(v[None], K, params=params)
        times.append(time.perf_counter() - started)
    result["filtered_10pct_p50_ms"] = round(float(np.percentile(times, 50) * 1000), 3)
    path = folder / "faiss.index"
    faiss.write_index(index, str(path))
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    return result


def run_usearch(x, q, truth, labels, folder: Path) -> dict:
    from usearch.index import Index

    started = time.perf_counter()
    index = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=128)
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=2)
    result: dict = {"build_s": round(time.perf_counter() - started, 1)}
    path = folder / "usearch.index"
    index.save(str(path))
    view = Index.restore(str(path), view=True)
    for ef in EFS:
        view.expansion_search = ef
        result[f"ef{ef}"] = measure(lambda v: view.search(v, K, threads=1).keys, q, truth)
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    return result


def run_hnswlib(x, q, truth, labels, folder: Path) -> dict:
    import hnswlib

    started = time.perf_counter()
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=len(x), M=16, ef_construction=128)
    index.add_items(x, np.arange(len(x)), num_threads=2)
    result: dict = {"build_s": round(time.perf_counter() - started, 1)}
    index.set_num_threads(1)
    for ef in EFS:
        index.set_ef(ef)
        result[f"ef{ef}"] = measure(lambda v: index.knn_query(v, K)[0][0], q, truth)
    path = folder / "hnswlib.index"
    index.save_index(str(path))
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    return result


RUNNERS = {"faiss": run_faiss, "usearch": run_usearch, "hnswlib": run_hnswlib}
MODULES = {"faiss": "faiss", "usearch": "usearch", "hnswlib": "hnswlib"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--library", action="append", choices=list(RUNNERS))
    args = parser.parse_args()
    x, q, labels = data(args.size)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :K]
    results: dict = {"size": args.size, "dim": DIM, "load_average": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="skewless-ann-") as folder:
        for name in args.library or list(RUNNERS):
            if importlib.util.find_spec(MODULES[name]) is None:
                print(f"[ann] {name}: not installed, skipped", flush=True)
                continue
            results[name] = RUNNERS[name](x, q, truth, labels, Path(folder))
            print(f"[ann] {name}: {results[name]}", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

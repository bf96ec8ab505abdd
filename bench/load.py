"""Serving under load: a real `skewless serve` process driven by N keep-alive connections.

    python bench/load.py [--users 2000] [--days 7] [--connections 8] [--seconds 10] [--workers 1]

In a private state folder it generates the card-fraud example's data, adds a wide group of 50
Float64 row features over the same users, materializes everything through Dagster (the
`daily_features` job, in a child process), starts `skewless serve` on the repository and
drives it from this process with an asyncio HTTP/1.1 keep-alive client (raw streams: the
client costs little next to the server) for two requests:

- `fraud`: service `fraud_model:v1` (row features of four groups and window features), one
  (user, merchant) entity per request — what a fraud model asks at authorization time;
- `wide`: 100 entities x 50 row features of one group per request;
- `wide_rows`: the same lookups with `"format": "rows"` (one array per entity, no objects).

Each is measured idle and while a materialization of the last days runs in another process
(the same job, re-run: writes to Redis and the offline store). Same-run baselines:
- `floor_redis`: one raw MGET of exactly the 100 keys a `wide` request reads (redis-py),
  sequential, p50/p99 — the least Redis work behind that answer;
- `floor_http`: a minimal Starlette/uvicorn app (the server's own stack) answering a fixed
  JSON body, driven by the same client and connections — the least HTTP work;
- `floor_wide`: the least work behind a `wide` answer, same stack, client and connections:
  parse the request, one inline MGET of its 100 keys, answer a body of our answer's size (our
  server's own answer, captured) — no decoding or JSON building. `wide_ratio_floor_wide_rps`
  says how far ours is from it; a target above the floor cannot be met on that machine.
Prints requests/s, p50 and p99 per case; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDE_MODULE = '''
"""bench/load.py's repository: the card-fraud example plus one wide group (50 row features)."""
from pathlib import Path

import polars as pl

from examples.card_fraud.features import *  # noqa: F403  (every group and service of the example)
from examples.card_fraud.features import transactions, user
from skewless import Feature, FeatureGroup, FileSource

# the example's first day: groups of another start date would get a job of their own
# (`daily_features_from_<day>`), and the bench's `daily_features` run would skip this one
wide_events = FileSource(
    "wide_events", Path(__file__).parent / "wide.parquet", "ts", start_date=transactions.start_date
)
wide_50 = FeatureGroup(
    "wide_50", user, wide_events, [Feature(f"f{i:02d}", pl.Float64, default=0.0) for i in range(50)]
)
'''

MATERIALIZE = """
import sys, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from skewless.feature_assets.definitions import build_definitions
from skewless.repository import load_repository

defs = build_definitions(load_repository(sys.argv[1]))
print("started", flush=True)  # imports and definitions done: the run's own work starts now
quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# runs again until argv[5] seconds have passed: a fast machine must not finish the work
# before the measurement does (a restarted process would spend seconds importing instead)
import time
until = time.monotonic() + float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
with dg.DagsterInstance.get() as instance:
    while True:
        result = defs.resolve_job_def(sys.argv[4]).execute_in_process(
            instance=instance, run_config=quiet, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": sys.argv[2],
                  "dagster/asset_partition_range_end": sys.argv[3]},
        )
        if not result.success or time.monotonic() >= until:
            break
sys.exit(0 if result.success else 1)
"""

FLOOR_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = b'{"features":["x"],"results":[{"user_id":1,"x":0.5}]}'
async def online(request):
    await request.body()
    return Response(body, media_type="application/json")
app = Starlette(routes=[Route("/features/online", online, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

# the least work behind a `wide` answer: parse the request, one inline MGET of its 100 keys
# (like ours: small lookups run on the event loop), answer a body as long as ours (a fixed
# one, captured from our server): no decoding, no defaults, no JSON building
FLOOR_WIDE_APP = """
import sys, orjson, redis, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
port, url, head, tail, path = sys.argv[1:6]
client = redis.Redis.from_url(url)
answer = open(path, "rb").read()
async def online(request):
    ids = orjson.loads(await request.body())["entities"]["user_id"]
    client.mget([f"{head}{i}{tail}" for i in ids])
    return Response(answer, media_type="application/json")
app = Starlette(routes=[Route("/features/online", online, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ the load client
async def _connection(port: int, bodies: list[bytes], stop: float, out: list[int], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                "POST /features/online HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter_ns()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            out.append(time.perf_counter_ns() - started)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(status_line.decode().strip() + " " + payload[:200].decode(errors="replace"))
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"connection error: {exc!r}")
    finally:
        writer.close()


def drive(port: int, bodies: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    """`connections` keep-alive connections sending `bodies` in turn for `seconds`."""
    latencies: list[int] = []
    errors: list[str] = []

    async def main() -> float:
        stop = time.monotonic() + seconds
        started = time.monotonic()
        await asyncio.gather(
            *(_connection(port, bodies, stop, latencies, errors) for _ in range(connections))
        )
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "rps": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(latencies[n // 2] / 1e6, 3) if n else None,
        "p99_ms": round(latencies[max(0, int(n * 0.99) - 1)] / 1e6, 3) if n else None,
    }


# ------------------------------------------------------------------ processes
def start_server(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server process and return once it answers HTTP on `port` (60 s at most)."""
    server = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                text = server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                raise RuntimeError(f"server did not start: {text}") from None
            time.sleep(0.1)


def served_values(port: int, body: bytes) -> bytes:
    """Refuse to measure defaults: a group left out of the materialization (once, by a start
    date of its own) answers every lookup with its defaults, a different and cheaper path.
    Returns the answer (the wide floor answers one as long)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/features/online", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = response.read()
    if all(row["f00"] == 0.0 for row in json.loads(answer)["results"]):
        raise RuntimeError("wide_50 serves only its defaults: it was not materialized")
    return answer


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def serve_command(repo: Path, port: int, workers: int = 1) -> list[str]:
    command = [str(Path(sys.executable).parent / "skewless"), "serve", str(repo), "--port", str(port)]
    return command + (["--workers", str(workers)] if workers > 1 else [])


def materialize_command(
    repo: Path, first: str, last: str, job: str = "daily_features", min_seconds: float = 0.0
) -> list[str]:
    """Materialize days first..last, again and again until `min_seconds` have passed."""
    return [sys.executable, "-c", MATERIALIZE, str(repo), first, last, job, str(min_seconds)]


def while_running(
    port: int, bodies: list[bytes], connections: int, seconds: float, command: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """Drive the server while `command` (a materialization) runs, from the moment it prints
    `started` (its imports done); restarted if it ends early. Returns the load figures plus
    how many materializations ran and whether each succeeded."""
    runs: list[subprocess.Popen[bytes]] = []

    def launch() -> None:
        runs.append(
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        )

    launch()
    # past interpreter and Dagster start-up (seconds): measure from the run's own work on
    assert runs[0].stdout is not None
    runs[0].stdout.readline()

    import threading

    done = threading.Event()

    def keep_running() -> None:
        while not done.is_set():
            if runs[-1].poll() is not None:
                launch()
            time.sleep(0.05)

    keeper = threading.Thread(target=keep_running, daemon=True)
    keeper.start()
    try:
        result = drive(port, bodies, connections, seconds)
        result["outlasted"] = runs[0].poll() is None  # the first run covered the whole window
    finally:
        done.set()
        keeper.join(timeout=5)
        for run in runs:
            try:
                run.wait(timeout=120)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(timeout=30)
    result["materializations"] = len(runs)
    result["materializations_failed"] = sum(1 for r in runs if r.returncode != 0)
    return result


# ------------------------------------------------------------------ the benchmark
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--merchants", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="`skewless serve --workers`")
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="skewless-bench-load-"))
    os.environ["SKEWLESS_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir()
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    from bench_redis import resolve_redis

    url = resolve_redis(args.redis_url, home / "state")
    prefix = f"skbench:load{os.getpid()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SKEWLESS_REDIS_URL": url,
        "SKEWLESS_KEY_PREFIX": prefix,
    }
    import numpy as np
    import polars as pl
    import redis

    from examples.card_fraud import data

    end = data.default_end()
    first, last = (end - timedelta(days=args.days)).isoformat(), (end - timedelta(days=1)).isoformat()
    data.generate(home / "data", users=args.users, merchants=args.merchants, days=args.days, end=end)
    from skewless.storage.keys import ensure_key_ring

    ensure_key_ring(home)  # the example's pii features are encrypted at rest
    rng = np.random.default_rng(1)
    yesterday = datetime(end.year, end.month, end.day, tzinfo=UTC) - timedelta(hours=12)
    pl.DataFrame(
        {"user_id": np.arange(1, args.users + 1), **{f"f{i:02d}": rng.random(args.users) for i in range(50)}}
    ).with_columns(pl.lit(yesterday).cast(pl.Datetime("us", "UTC")).alias("ts")).write_parquet(
        home / "wide.parquet"
    )
    repo = home / "bench_repo.py"
    repo.write_text(WIDE_MODULE)
    servers: list[subprocess.Popen[bytes]] = []
    client = redis.Redis.from_url(url)
    result: dict[str, Any] = {
        "users": args.users,
        "days": args.days,
        "connections": args.connections,
        "workers": args.workers,
    }
    try:
        print(f"[load] materializing {first}..{last} ({args.users} users) in {home}", flush=True)
        started = time.perf_counter()
        subprocess.run(materialize_command(repo, first, last), env=env, cwd=ROOT, check=True, timeout=1800)
        result["materialize_s"] = round(time.perf_counter() - started, 1)

        port = free_port()
        servers.append(start_server(serve_command(repo, port, args.workers), port, env))
        ids = rng.integers(1, args.users + 1, size=(64, 100))
        merchants = rng.integers(1, args.merchants + 1, size=64)
        fraud = [
            json.dumps(
                {"service": "fraud_model:v1", "entities": [{"user_id": int(u), "merchant_id": int(m)}]}
            ).encode()
            for u, m in zip(ids[:, 0], merchants, strict=True)
        ]
        wide_refs = [f"wide_50:v1:f{i:02d}" for i in range(50)]
        wide = [
            json.dumps({"features": wide_refs, "entities": {"user_id": row.tolist()}}).encode() for row in ids
        ]
        # the same lookups answered as one array per entity (`"format": "rows"`)
        wide_rows = [json.dumps({**json.loads(body), "format": "rows"}).encode() for body in wide]
        answer = served_values(port, wide[0])
        for name, bodies in (("fraud", fraud), ("wide", wide), ("wide_rows", wide_rows)):
            drive(port, bodies, args.connections, 1.0)  # warm-up
            idle = drive(port, bodies, args.connections, args.seconds)
            again = materialize_command(repo, last, last, min_seconds=args.seconds + 1)
            busy = while_running(port, bodies, args.connections, args.seconds, again, env)
            ratio = round(busy["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] and busy["p99_ms"] else None
            for label, figures in (("idle", idle), ("materializing", busy)):
                print(
                    f"[load] {name:<9} {label:<13} {figures['rps']:>8} req/s  p50 {figures['p50_ms']} ms  "
                    f"p99 {figures['p99_ms']} ms  errors {figures['errors']}",
                    flush=True,
                )
                result.update(
                    {f"{name}_{label}_{k}": figures[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
                )
            result[f"{name}_p99_ratio_materializing_idle"] = ratio
            result[f"{name}_materializations"] = busy["materializations"]

        # same-run floors: raw MGET of a wide request's keys, and a minimal HTTP app
        from skewless.repository import load_repository
        from skewless.storage.online import entity_keys

        group = next(g for g in load_repository(repo).groups if g.name == "wide_50")
        keys = [entity_keys(group, prefix, pl.DataFrame({"user_id": row.tolist()})) for row in ids]
        samples = []
        for i in range(2000):
            t = time.perf_counter_ns()
            client.mget(keys[i % len(keys)])
            samples.append(time.perf_counter_ns() - t)
        samples.sort()
        result["floor_redis_mget100_p50_ms"] = round(samples[len(samples) // 2] / 1e6, 3)
        result["floor_redis_mget100_p99_ms"] = round(samples[int(len(samples) * 0.99) - 1] / 1e6, 3)
        floor_port = free_port()
        servers.append(start_server([sys.executable, "-c", FLOOR_APP, str(floor_port)], floor_port, env))
        drive(floor_port, [b'{"entities":[]}'], args.connections, 1.0)
        floor = drive(floor_port, [b'{"entities":[]}'], args.connections, args.seconds)
        result.update({f"floor_http_{k}": floor[k] for k in ("rps", "p50_ms", "p99_ms")})
        print(
            f"[load] floors: raw MGET of 100 keys p50 {result['floor_redis_mget100_p50_ms']} ms, "
            f"p99 {result['floor_redis_mget100_p99_ms']} ms; minimal HTTP app {floor['rps']} req/s, "
            f"p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms",
            flush=True,
        )
        for name in ("fraud", "wide", "wide_rows"):
            result[f"{name}_ratio_floor_http_rps"] = round(result[f"{name}_idle_rps"] / floor["rps"], 3)
        # the wide floor: HTTP + the MGET + a body of our answer's size (see FLOOR_WIDE_APP)
        (home / "wide_answer.json").write_bytes(answer)
        from skewless.storage import online_keys as K

        wide_port = free_port()
        head, tail = K.entity_head(prefix, "user"), K.version_tail("wide_50", 1)
        command = [
            sys.executable,
            "-c",
            FLOOR_WIDE_APP,
            str(wide_port),
            url,
            head,
            tail,
            str(home / "wide_answer.json"),
        ]
        servers.append(start_server(command, wide_port, env))
        drive(wide_port, wide, args.connections, 1.0)
        floor_wide = drive(wide_port, wide, args.connections, args.seconds)
        result.update({f"floor_wide_{k}": floor_wide[k] for k in ("rps", "p50_ms", "p99_ms")})
        result["floor_wide_answer_bytes"] = len(answer)
        result["wide_ratio_floor_wide_rps"] = round(result["wide_idle_rps"] / floor_wide["rps"], 3)
        result["wide_rows_ratio_floor_wide_rps"] = round(result["wide_rows_idle_rps"] / floor_wide["rps"], 3)
        print(
            f"[load] wide floor (HTTP + MGET of the 100 keys + a {len(answer):,}-byte answer): "
            f"{floor_wide['rps']} req/s, p50 {floor_wide['p50_ms']} ms, p99 {floor_wide['p99_ms']} ms",
            flush=True,
        )
    finally:
        for server in servers:
            stop(server)
        for key in client.scan_iter(f"{prefix}:*", count=10_000):
            client.unlink(key)
        client.close()
        if not args.redis_url and url.startswith("unix://"):
            from skewless.storage.embedded_redis import stop_embedded_redis

            stop_embedded_redis(home / "state")
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

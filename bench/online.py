"""Online serving benchmark: our client and HTTP server against a plain redis-py pipeline.

    python bench/online.py --size medium|large [--redis-url URL]

`--redis-url redis+cluster://h1:p1,h2:p2` measures a Redis Cluster (the baselines then use
redis-py's `RedisCluster`, the floor its `mget_nonatomic`); `bench/online_cluster.py` runs
this benchmark on a single Redis and on a 3-master cluster in one run and prints the ratios.

Writes N entities x 20 float features (seeded) for three group versions, then, against the
same Redis and in the same run, measures:

- reads: p50/p99 latency of `FeatureStore.get_online_features` for 1, 100 and 1,000 entities
  of one group, and 1,000 entities x 3 groups (60 features), with the default Polars output
  and with `output="dicts"`; the baseline is redis-py + hiredis doing what a hand-written
  online store does: one pipeline of HMGETs (one per entity and group) over hashes of 20
  fields (the "naive" baseline). The baseline returns raw bytes; ours returns typed,
  TTL-checked, defaulted values. The *floor* is the least any client could do for the same
  answer: one raw MGET of exactly the keys the request reads (our stored values).
- writes: entities/s of `OnlineStore.write_latest` (what the online asset runs: packed values
  through the Lua event-time guard, batched) against the naive HSET pipeline of 20-field
  hashes built row by row from the same Polars frame; the floor is a redis-py pipeline of raw
  `SET key value PXAT expiry` of exactly our encoded bytes (encoded before the clock starts).
- HTTP: `skewless`'s feature server in a second process; 4 keep-alive connections from this
  process, 100 entities per request; p50/p99 and requests/s. The floor, in the same run: a
  minimal Starlette/uvicorn app (same server stack, a third process) answering the same JSON
  from one raw MGET of pre-serialized rows.

- pii (issue 15 item 3): the cost of encryption. Group `gpii` is g0 tagged `pii` (its 20
  features sealed with AES-GCM before Redis, `storage/sealed.py`), `gplain` the same group
  without the tag; in the same run, interleaved: write time of N entities (p50 of 5 writes
  each) and read p50 of 1 and 100 entities (all 20 features, so every read decrypts), and
  offline the write and read of one N-row partition (Parquet modular encryption vs plain).
  `pii_overhead_read` / `pii_overhead_write` are pii / plain time at 100 entities / N rows.

Sizes: small = 10k, medium = 100k entities (writes 100k), large = 1M entities (writes 1M). The
last line is one JSON object; `ratio_*` are ours/naive, `ratio_floor_*` ours/floor (below 1
is faster for reads; `ratio_writes` and `ratio_floor_writes` are ours/baseline throughput,
above 1 is faster).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_redis import resolve_redis  # noqa: E402  (bench/ is the script's folder)

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource  # noqa: E402
from skewless.config import StoreConfig  # noqa: E402
from skewless.storage.online import cluster_client, entity_keys  # noqa: E402

SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}
FEATURES = [f"f{i:02d}" for i in range(20)]
GROUPS = ["g0", "g1", "g2"]
PII_GROUPS = ["gplain", "gpii"]  # the same group without and with the `pii` tag
SENTINEL_ID = 987_654_321  # an entity id to split a formatted key around


def repository() -> FeatureRepository:
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource("bench_events", "/nonexistent/bench.parquet", "ts")
    groups = [
        FeatureGroup(
            name,
            user,
            source,
            [Feature(f, pl.Float64, default=0.0) for f in FEATURES],
            ttl="30d",
            tags=["pii"] if name == "gpii" else (),
        )
        for name in GROUPS + PII_GROUPS
    ]
    return FeatureRepository(groups)


def pii_cost(store: FeatureStore, repo: FeatureRepository, n: int, state: Path) -> dict[str, Any]:
    """Encryption's cost, pii group against the same group without the tag, same run."""
    from datetime import date

    from skewless.storage.offline import LocalOfflineStore

    plain, pii = (repo.group(name, 1) for name in PII_GROUPS)
    frame = frame_for(n, 5)
    times: dict[str, list[float]] = {"plain": [], "pii": []}
    for _ in range(5):  # interleaved rounds: both see the same machine
        for label, group in (("plain", plain), ("pii", pii)):
            started = time.perf_counter()
            store.online.write_latest(group, frame)
            times[label].append(time.perf_counter() - started)
    write_ms = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    out: dict[str, Any] = {
        "plain_write_p50_ms": round(write_ms["plain"], 2),
        "pii_write_p50_ms": round(write_ms["pii"], 2),
        "pii_overhead_write": round(write_ms["pii"] / write_ms["plain"], 3),
    }
    rng = np.random.default_rng(13)
    for count, repeats in ((1, 2000), (100, 600)):
        batches = [rng.integers(0, n, count).tolist() for _ in range(64)]
        it = iter(range(1 << 62))

        def pick(batches: list[list[int]] = batches, it: Any = it) -> list[int]:
            return batches[next(it) % len(batches)]

        reads = timed_interleaved(
            [
                lambda g=g: store.get_online_features(
                    {"user_id": pick()}, features=[f"{g}:v1:{f}" for f in FEATURES]
                )
                for g in PII_GROUPS
            ],
            repeats,
        )
        out[f"plain_read_p50_ms_{count}"] = round(reads[0]["p50_ms"], 3)
        out[f"pii_read_p50_ms_{count}"] = round(reads[1]["p50_ms"], 3)
        out[f"pii_overhead_read_{count}"] = round(reads[1]["p50_ms"] / reads[0]["p50_ms"], 3)
    out["pii_overhead_read"] = out["pii_overhead_read_100"]
    check = store.get_online_features({"user_id": [0, 1]}, features=[f"gpii:v1:{f}" for f in FEATURES])
    expected = frame.filter(pl.col("user_id") < 2).select(FEATURES)
    assert check.select(FEATURES).equals(expected), "pii values did not round-trip"
    # offline: one N-row partition written and read back, plain vs Parquet modular encryption
    offline = LocalOfflineStore(state / "offline-bench")
    offline.encryption_keys = store.online.key_ring()
    rows = frame.select("user_id", "event_timestamp", *FEATURES)
    spent: dict[str, dict[str, list[float]]] = {"plain": {"w": [], "r": []}, "pii": {"w": [], "r": []}}
    for _ in range(5):
        for label, group in (("plain", plain), ("pii", pii)):
            started = time.perf_counter()
            offline.write_partition(group, date(2026, 3, 1), rows)
            middle = time.perf_counter()
            assert offline.scan(group).collect().height == n
            spent[label]["w"].append(middle - started)
            spent[label]["r"].append(time.perf_counter() - middle)
    for label in spent:
        for kind, name in (("w", "write"), ("r", "read")):
            values = sorted(spent[label][kind])
            out[f"{label}_offline_{name}_p50_ms"] = round(values[len(values) // 2] * 1000, 2)
    out["pii_overhead_offline_write"] = round(
        out["pii_offline_write_p50_ms"] / out["plain_offline_write_p50_ms"], 3
    )
    out["pii_overhead_offline_read"] = round(
        out["pii_offline_read_p50_ms"] / out["plain_offline_read_p50_ms"], 3
    )
    return out


def frame_for(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    return pl.DataFrame(
        {"user_id": np.arange(n, dtype=np.int64), **{f: rng.random(n) for f in FEATURES}}
    ).with_columns(pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("event_timestamp"))


def timed_interleaved(fns: list[Any], repeats: int) -> list[dict[str, float]]:
    """p50/p99 of each function, calling them in turn each round."""
    for _ in range(min(20, repeats)):
        for fn in fns:
            fn()
    samples: list[list[int]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            started = time.perf_counter_ns()
            fn()
            out.append(time.perf_counter_ns() - started)
    result = []
    for out in samples:
        out.sort()
        result.append({"p50_ms": out[len(out) // 2] / 1e6, "p99_ms": out[int(len(out) * 0.99) - 1] / 1e6})
    return result


def raw_client(url: str) -> Any:
    """redis-py for the baselines: `redis.Redis`, or `RedisCluster` for a `redis+cluster://`
    URL (whose pipelines split commands per node themselves)."""
    if url.split("://", 1)[0].endswith("+cluster"):
        return cluster_client(url)
    return redis.Redis.from_url(url)


def raw_mget(client: Any, keys: list[str]) -> list[Any]:
    """One MGET; on a cluster redis-py's `mget_nonatomic` (one MGET per slot, pipelined
    per node): the least a cluster client can do for the same keys."""
    if hasattr(client, "mget_nonatomic"):
        return client.mget_nonatomic(keys)  # type: ignore[no-any-return]
    return client.mget(keys)  # type: ignore[no-any-return]


def baseline_write(client: redis.Redis, prefix: str, group: str, frame: pl.DataFrame) -> float:
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(frame.select("user_id", *FEATURES).iter_rows()):
        pipe.hset(f"{prefix}:{group}:{row[0]}", mapping=dict(zip(FEATURES, row[1:], strict=True)))
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def floor_write(client: redis.Redis, keys: list[str], values: list[bytes], expires_ms: list[int]) -> float:
    """The write floor: our encoded bytes under the same keys' shape, `SET ... PXAT` (our
    values carry the TTL too), pipelined in batches; nothing computed while the clock runs."""
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, (key, value, expire) in enumerate(zip(keys, values, expires_ms, strict=True)):
        pipe.execute_command("SET", key, value, "PXAT", expire)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - started


def key_around_id(group: FeatureGroup, prefix: str) -> tuple[str, str]:
    """The text before and after the entity id in the group's online keys (formatted by our
    own key function, so the floor reads exactly our keys)."""
    head, tail = entity_keys(group, prefix, pl.DataFrame({"user_id": [SENTINEL_ID]}))[0].split(
        str(SENTINEL_ID)
    )
    return head, tail


def floor_read(client: redis.Redis, key_of: list[tuple[str, str]], ids: list[int]) -> list[Any]:
    """The read floor: one MGET of exactly the keys the request reads (`key_of`: each group's
    key head and tail around the entity id, as our store formats them)."""
    return raw_mget(client, [f"{head}{i}{tail}" for head, tail in key_of for i in ids])


def baseline_read(client: redis.Redis, prefix: str, groups: list[str], ids: list[int]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for i in ids:
        for group in groups:
            pipe.hmget(f"{prefix}:{group}:{i}", FEATURES)
    return pipe.execute()


def serve_floor(port: int, url: str, prefix: str) -> None:
    """Child mode: the HTTP floor. The same Starlette + uvicorn stack as our server, whose
    one route answers our response's JSON for group g0 from one MGET of rows stored already
    serialized (`<prefix>:json:<id>`): no parsing of values, no TTL, no defaults."""
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = raw_client(url)
    head = orjson.dumps(["user_id", *FEATURES])

    def lookup(body: bytes) -> bytes:
        ids = orjson.loads(body)["entities"]["user_id"]
        rows = raw_mget(client, [f"{prefix}:json:{i}" for i in ids])
        return b'{"features":' + head + b',"results":[' + b",".join(r or b"null" for r in rows) + b"]}"

    async def online(request: Request) -> Response:
        body = await request.body()
        payload = await anyio.to_thread.run_sync(lookup, body)  # like ours: Redis off the loop
        return Response(payload, media_type="application/json")

    import anyio

    app = Starlette(routes=[Route("/features/online", online, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve(port: int, url: str, prefix: str, state: str) -> None:
    """Child mode: the HTTP server over the same Redis and definitions."""
    import uvicorn

    from skewless.serving.http import create_app

    store = FeatureStore(repository(), StoreConfig(state, url, state, prefix))
    uvicorn.run(create_app(store), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def http_load(
    port: int, n_entities: int, per_request: int, connections: int, seconds: float
) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        while time.monotonic() < stop:
            ids = local.integers(0, n_entities, per_request).tolist()
            body = json.dumps({"features": [f"g0:v1:{f}" for f in FEATURES], "entities": {"user_id": ids}})
            started = time.perf_counter_ns()
            conn.request("POST", "/features/online", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            mine.append(time.perf_counter_ns() - started)
            if response.status != 200 or not payload:
                errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=worker, args=(int(rng.integers(1 << 30)),)) for _ in range(connections)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "http_requests": len(latencies),
        "http_errors": errors[0],
        "http_rps": round(len(latencies) / elapsed, 1),
        "http_p50_ms": round(latencies[len(latencies) // 2] / 1e6, 3),
        "http_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] / 1e6, 3),
        "http_connections": connections,
        "http_entities_per_request": per_request,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(servers: list[subprocess.Popen[bytes]], args: list[str]) -> int:
    """This script in a child mode on a free port; returns once it answers HTTP."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, args[0], str(port), *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    servers.append(server)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")  # any HTTP answer (404 included) means it is listening
            conn.getresponse().read()
            return port
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(
                    f"server did not start: {server.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                ) from None
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.redis_url, args.prefix, args.state)
        return 0
    if args.serve_floor:
        serve_floor(args.serve_floor, args.redis_url, args.prefix)
        return 0

    n = SIZES[args.size]
    state = Path(f"/tmp/skewless-bench-online-{os.getpid()}")
    url = resolve_redis(args.redis_url, state)
    prefix = f"skbench:{uuid.uuid4().hex[:8]}"
    base_prefix = f"{prefix}:base"
    repo = repository()
    from skewless.storage.keys import ensure_key_ring

    ensure_key_ring(state)  # the pii group's keys (the HTTP child reads the same state folder)
    store = FeatureStore(repo, StoreConfig(str(state), url, str(state), prefix))
    client = raw_client(url)
    servers: list[subprocess.Popen[bytes]] = []
    print(f"[online] {args.size}: {n} entities x 20 features x 3 groups, Redis {url}", flush=True)
    try:
        # ---------------------------------------------------------------- writes
        frames = [frame_for(n, seed) for seed in range(len(GROUPS))]
        ours_w = []
        base_w = []
        floor_w = []
        for group, frame in zip([repo.group(g, 1) for g in GROUPS], frames, strict=True):
            started = time.perf_counter()
            stats = store.online.write_latest(group, frame)
            ours_w.append(time.perf_counter() - started)
            assert stats["written"] == n, stats
            base_w.append(baseline_write(client, base_prefix, group.name, frame))
            values = store.online.codec(group).encode(frame)
            keys = [f"{base_prefix}:floor:{k}" for k in entity_keys(group, "", frame)]
            ttl_ms = int(group.time_to_live.total_seconds() * 1000)  # type: ignore[union-attr]
            expires = (frame["event_timestamp"].dt.epoch("ms") + ttl_ms).to_list()
            floor_w.append(floor_write(client, keys, values, expires))
        writes = n / min(ours_w)
        base_writes = n / min(base_w)
        floor_writes = n / min(floor_w)
        print(
            f"[online] writes: ours {writes:,.0f}/s, naive HSET pipeline {base_writes:,.0f}/s, "
            f"floor SET pipeline {floor_writes:,.0f}/s",
            flush=True,
        )
        # the HTTP floor's rows, serialized once (not timed): what our server answers for g0
        json_rows = frames[0].select("user_id", *FEATURES).to_dicts()
        pipe = client.pipeline(transaction=False)
        for i, row in enumerate(json_rows):
            pipe.set(f"{base_prefix}:json:{row['user_id']}", json.dumps(row, separators=(",", ":")))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

        # ---------------------------------------------------------------- reads
        rng = np.random.default_rng(11)
        one = [f"g0:v1:{f}" for f in FEATURES]
        three = [f"{g}:v1:{f}" for g in GROUPS for f in FEATURES]
        result: dict[str, Any] = {"size": args.size, "entities": n}
        for label, count, refs, groups, repeats in [
            ("1", 1, one, ["g0"], 3000),
            ("100", 100, one, ["g0"], 1000),
            ("1000", 1000, one, ["g0"], 300),
            ("3x1000", 1000, three, GROUPS, 150),
        ]:
            batches = [rng.integers(0, n, count).tolist() for _ in range(64)]
            it = iter(range(1 << 62))

            def pick(batches: list[list[int]] = batches, it: Any = it) -> list[int]:
                return batches[next(it) % len(batches)]

            full = len(groups) > 1
            by_name = {g.name: g for g in repo.groups}
            key_of = [key_around_id(by_name[g], prefix) for g in groups]
            # interleaved: each round calls ours, ours-as-dicts, the naive baseline and the
            # floor once, so all see the same machine (a VM's loopback latency drifts by 2x)
            ours, dicts, base, floor = timed_interleaved(
                [
                    lambda refs=refs, full=full: store.get_online_features(
                        {"user_id": pick()}, features=refs, full_feature_names=full
                    ),
                    lambda refs=refs, full=full: store.get_online_features(
                        {"user_id": pick()}, features=refs, output="dicts", full_feature_names=full
                    ),
                    lambda groups=groups: baseline_read(client, base_prefix, groups, pick()),
                    lambda key_of=key_of: floor_read(client, key_of, pick()),
                ],
                repeats,
            )
            check = store.get_online_features(
                {"user_id": batches[0]}, features=refs, full_feature_names=len(groups) > 1
            )
            assert check.height == count and check.null_count().sum_horizontal().item() == 0
            result.update(
                {
                    f"ours_p50_ms_{label}": round(ours["p50_ms"], 3),
                    f"ours_p99_ms_{label}": round(ours["p99_ms"], 3),
                    f"ours_dicts_p50_ms_{label}": round(dicts["p50_ms"], 3),
                    f"baseline_p50_ms_{label}": round(base["p50_ms"], 3),
                    f"baseline_p99_ms_{label}": round(base["p99_ms"], 3),
                    f"ratio_p50_{label}": round(ours["p50_ms"] / base["p50_ms"], 3),
                    f"ratio_dicts_p50_{label}": round(dicts["p50_ms"] / base["p50_ms"], 3),
                    f"floor_p50_ms_{label}": round(floor["p50_ms"], 3),
                    f"floor_p99_ms_{label}": round(floor["p99_ms"], 3),
                    f"ratio_floor_p50_{label}": round(ours["p50_ms"] / floor["p50_ms"], 3),
                    f"ratio_floor_dicts_p50_{label}": round(dicts["p50_ms"] / floor["p50_ms"], 3),
                }
            )
            print(
                f"[online] {label:>6} entities: ours p50 {ours['p50_ms']:.3f} ms "
                f"(dicts {dicts['p50_ms']:.3f}), "
                f"naive p50 {base['p50_ms']:.3f} ms -> ratio {ours['p50_ms'] / base['p50_ms']:.2f}, "
                f"floor MGET p50 {floor['p50_ms']:.3f} ms -> ratio {ours['p50_ms'] / floor['p50_ms']:.2f}",
                flush=True,
            )

        # ---------------------------------------------------------------- pii
        pii = pii_cost(store, repo, n, state)
        result.update(pii)
        print(
            f"[online] pii: write {n} entities p50 {pii['pii_write_p50_ms']} ms vs plain "
            f"{pii['plain_write_p50_ms']} ms (x{pii['pii_overhead_write']}); read 100 p50 "
            f"{pii['pii_read_p50_ms_100']} vs {pii['plain_read_p50_ms_100']} ms "
            f"(x{pii['pii_overhead_read']}), "
            f"1 entity {pii['pii_read_p50_ms_1']} vs {pii['plain_read_p50_ms_1']} ms; offline partition "
            f"write {pii['pii_offline_write_p50_ms']} vs {pii['plain_offline_write_p50_ms']} ms, "
            f"read {pii['pii_offline_read_p50_ms']} vs {pii['plain_offline_read_p50_ms']} ms",
            flush=True,
        )

        # ---------------------------------------------------------------- HTTP
        ours_args = ["--serve", "--redis-url", url, "--prefix", prefix, "--state", str(state)]
        port = start_server(servers, ours_args)
        result.update(http_load(port, n, 100, 4, args.http_seconds))
        floor_port = start_server(servers, ["--serve-floor", "--redis-url", url, "--prefix", base_prefix])
        floor_http = http_load(floor_port, n, 100, 4, args.http_seconds)
        result.update(
            {
                "http_floor_p50_ms": floor_http["http_p50_ms"],
                "http_floor_p99_ms": floor_http["http_p99_ms"],
                "http_floor_rps": floor_http["http_rps"],
                "http_floor_errors": floor_http["http_errors"],
                "ratio_floor_http_p50": round(result["http_p50_ms"] / floor_http["http_p50_ms"], 3),
                "ratio_floor_http_rps": round(result["http_rps"] / floor_http["http_rps"], 3),
            }
        )
        print(
            f"[online] HTTP: p50 {result['http_p50_ms']} ms, p99 {result['http_p99_ms']} ms, "
            f"{result['http_rps']} req/s; floor (Starlette + MGET) p50 {result['http_floor_p50_ms']} ms, "
            f"{result['http_floor_rps']} req/s",
            flush=True,
        )
        result.update(
            {
                "writes_per_s": round(writes),
                "baseline_writes_per_s": round(base_writes),
                "ratio_writes": round(writes / base_writes, 2),
                "floor_writes_per_s": round(floor_writes),
                "ratio_floor_writes": round(writes / floor_writes, 2),
            }
        )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
        store.online.delete_all()
        for key in client.scan_iter(f"{base_prefix}:*", count=10_000):
            client.unlink(key)
        store.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

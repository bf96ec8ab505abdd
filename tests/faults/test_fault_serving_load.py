"""Drill: serving under load while materializing (a short run of bench/load.py's machinery).

A real `skewless serve` process is driven by 4 keep-alive connections (100 entities per
request) for a few seconds idle, then for as long again while materializations of the same
group version run back to back in other processes (offline partitions and Redis writes).
No request may fail, and p99 while materializing must stay within 2x the idle p99 plus an
absolute slack.

Why the slack (SLACK_MS): this machine has 2 cores shared by 4 workers, and the
materialization is a CPU-heavy process of its own (Polars uses every core). The contract is
that materializing does not *block* serving (no lock, no Redis stall, no starved event
loop); what it cannot avoid is the OS giving the server a smaller share of 2 busy cores,
which adds scheduler waits of several milliseconds per request at the tail. With an idle p99
of a few ms, "2x" alone would turn those waits into a flaky failure; 50 ms is far below what
a blocked server shows (a Redis write batch or a GIL-holding read of the whole run would
add hundreds of ms) and above the scheduling noise measured here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dagster as dg
import numpy as np

from skewless.config import StoreConfig
from skewless.repository import load_repository
from tests.faults.drills import ROOT, free_port, store_env, write_repo
from tests.helpers import make_events, materialize_days

SLACK_MS = 50.0
SECONDS = 4.0


def bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_under_load_while_materializing(tmp_path: Path, store_config: StoreConfig) -> None:
    load = bench_load()
    users = 2_000
    repo_path = write_repo(tmp_path / "repo", make_events(n=400_000, days=2, users=users, seed=4))
    with dg.instance_for_test() as instance:
        assert materialize_days(
            load_repository(repo_path), store_config, instance, "2026-03-01", "2026-03-02"
        )
    env = store_env(store_config, tmp_path / "home")
    rng = np.random.default_rng(2)
    bodies = [
        json.dumps(
            {"service": "svc:v1", "entities": {"user_id": rng.integers(1, users + 1, 100).tolist()}}
        ).encode()
        for _ in range(32)
    ]
    port = free_port()
    server = load.start_server(load.serve_command(repo_path, port), port, env)
    try:
        load.drive(port, bodies, 4, 1.0)  # warm-up
        idle = load.drive(port, bodies, 4, SECONDS)
        busy = load.while_running(
            port,
            bodies,
            4,
            SECONDS,
            load.materialize_command(repo_path, "2026-03-01", "2026-03-02", min_seconds=SECONDS + 1),
            env,
        )
    finally:
        load.stop(server)
    print(f"idle {idle}\nmaterializing {busy}")
    assert idle["errors"] == 0 and busy["errors"] == 0, (idle["first_errors"], busy["first_errors"])
    assert idle["requests"] > 50 and busy["requests"] > 50
    assert busy["materializations"] >= 1 and busy["materializations_failed"] == 0, busy
    assert busy["p99_ms"] <= 2 * idle["p99_ms"] + SLACK_MS, (idle, busy)
    assert busy["outlasted"], "the materialization ended before the measurement did"

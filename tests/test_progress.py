"""Progress (issue 12 item 4): per-partition step lines in the run's log, listeners in
process, and bars only on a terminal (so captured output, like the demo test's, is stable)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from skewless import progress
from skewless.config import StoreConfig
from skewless.storage.offline import OfflineStore
from tests.helpers import START, make_events, materialize_days, small_repo


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.user_message]


def test_multi_day_runs_log_each_partition(tmp_path: Path, store_config: StoreConfig) -> None:
    repo = small_repo(tmp_path / "data", make_events(n=400, days=4))
    (group,) = repo.groups
    seen: list[progress.Step] = []
    with dg.instance_for_test() as instance, progress.listen(seen.append):
        result = materialize_days(repo, store_config, instance, START, "2026-03-04")
        assert result.success
        messages = _messages(instance, result.run_id)
        single = materialize_days(repo, store_config, instance, "2026-03-02", "2026-03-02")
        single_messages = _messages(instance, single.run_id)

    offline = OfflineStore(store_config.offline_root)
    expected = {
        day: pl.read_parquet(offline.partition_path(group, date.fromisoformat(day))).height
        for day in ("2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04")
    }
    assert min(expected.values()) > 0
    offline_lines = [m for m in messages if m.startswith("user_stats:v1 offline: day ")]
    assert offline_lines == [
        f"user_stats:v1 offline: day {i}/4 {day}: {rows:,} rows"
        for i, (day, rows) in enumerate(expected.items(), 1)
    ]
    online_lines = [m for m in messages if m.startswith("user_stats:v1 online: day ")]
    assert online_lines == [
        f"user_stats:v1 online: day {i}/4 {day}: {rows:,} rows read"
        for i, (day, rows) in enumerate(expected.items(), 1)
    ]
    assert "user_stats:v1 offline: computing 4 days 2026-03-01..2026-03-04" in messages
    # a one-day run has nothing to count: no step lines
    assert not [m for m in single_messages if re.search(r": day \d+/\d+ ", m)]
    # in process, every step also reaches the listeners (what the demo's bars follow)
    offline_steps = [s for s in seen if s.what == "user_stats:v1 offline"]
    assert [(s.done, s.total) for s in offline_steps] == [(1, 4), (2, 4), (3, 4), (4, 4), (1, 1)]


def test_long_runs_log_in_steps() -> None:
    assert [d for d in range(1, 31) if progress.logged(d, 30)] == list(range(1, 31))
    year = [d for d in range(1, 366) if progress.logged(d, 365)]
    assert len(year) <= progress.MAX_LINES + 1 and year[-1] == 365 and year[0] == 12
    assert progress.partition_line(3, 30, date(2026, 1, 3), 2914) == "day 3/30 2026-01-03: 2,914 rows"


BAR_SCRIPT = """
from skewless import progress
with progress.bar() as bars:
    task = bars.add_task("crunching partitions", total=3)
    for _ in range(3):
        bars.advance(task)
print("done")
"""


def test_bars_only_on_a_terminal() -> None:
    piped = subprocess.run(
        [sys.executable, "-c", BAR_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert piped.stdout == "done\n" and piped.stderr == ""

    main, child = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-c", BAR_SCRIPT], stdin=child, stdout=child, stderr=child, close_fds=True
    ) as proc:
        os.close(child)
        output = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 0
    os.close(main)
    assert b"crunching partitions" in output and b"done" in output

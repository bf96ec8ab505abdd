"""What the online path records about itself: latency per feature group, and served vectors.

Latency: every lookup's wall time is recorded against each group version it read (one
round trip serves them all, so a group's figure is the latency of the requests that
included it). The last `window` samples per group are kept in memory; the HTTP server also
exports them as a Prometheus histogram.

Served-vector log: with `log_rate > 0`, that fraction of lookups by feature service is
buffered and appended, as Arrow IPC, to a Redis Stream per service version
(`<prefix>:stream:_served:<service>:v<N>`), at most every `flush_seconds` or `flush_rows`.
The `served/<service>_v<N>_served_log` asset flushes the stream to Parquet and checks the served
distribution against the service's training set (training/serving skew).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from skewless.storage import online_keys as K
from skewless.storage import streams

if TYPE_CHECKING:
    from skewless.serving.reader import ReadPlan
    from skewless.storage.online import OnlineStore

SERVED_AT = "__served_at"
LATENCY_US = "__latency_us"


def served_stream(service_ref: str) -> str:
    """The stream source holding a service version's served vectors (`online_keys`)."""
    return K.served_stream(service_ref)


class ServingMonitor:
    def __init__(
        self,
        online: OnlineStore,
        log_rate: float = 0.0,
        window: int = 10_000,
        flush_rows: int = 2_000,
        flush_seconds: float = 2.0,
    ) -> None:
        if not 0.0 <= log_rate <= 1.0:
            raise ValueError(f"serving log rate must be within [0, 1], got {log_rate}")
        self.online = online
        self.log_rate = log_rate
        self.window = window
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._latency: dict[str, deque[int]] = {}
        self._buffer: dict[str, list[pl.DataFrame]] = {}
        self._buffered_rows = 0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._random = random.Random()

    def observe(self, plan: ReadPlan, service: str | None, latency_ns: int, rows: Any, output: str) -> None:
        """Called after every lookup; cheap unless this request is sampled for the log."""
        micros = latency_ns // 1000
        for ref in plan.group_refs:
            samples = self._latency.get(ref)
            if samples is None:
                samples = self._latency.setdefault(ref, deque(maxlen=self.window))
            samples.append(micros)
        if service is None or not self.log_rate or self._random.random() >= self.log_rate:
            return
        frame = rows if isinstance(rows, pl.DataFrame) else _as_frame(rows, plan, output)
        if frame is None or frame.height == 0:
            return
        if plan.pii_columns:  # the log is plain Redis stream entries and Parquet: no pii in it
            frame = frame.drop(plan.pii_columns, strict=False)
        now_us = time.time_ns() // 1000
        frame = frame.with_columns(
            pl.lit(now_us).cast(pl.Datetime("us", "UTC")).alias(SERVED_AT),
            pl.lit(micros, dtype=pl.Int64).alias(LATENCY_US),
        )
        with self._lock:
            self._buffer.setdefault(service, []).append(frame)
            self._buffered_rows += frame.height
            due = (
                self._buffered_rows >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds
            )
        if due:
            self.flush()

    def flush(self) -> int:
        """Append buffered served rows to their streams; returns rows appended."""
        with self._lock:
            buffer, self._buffer = self._buffer, {}
            self._buffered_rows = 0
            self._last_flush = time.monotonic()
        appended = 0
        for service, frames in buffer.items():
            rows = pl.concat(frames, how="diagonal_relaxed")
            streams.append(self.online, served_stream(service), rows)
            appended += rows.height
        return appended

    def latency_summary(self) -> pl.DataFrame:
        """Per group version: requests recorded, p50, p99 and max in milliseconds."""
        rows = []
        for ref, samples in sorted(self._latency.items()):
            values = np.fromiter(samples, dtype=np.int64)
            if values.size:
                p50, p99 = np.percentile(values, [50, 99])
                rows.append((ref, int(values.size), p50 / 1000, p99 / 1000, float(values.max()) / 1000))
        return pl.DataFrame(
            rows,
            schema={
                "group": pl.String,
                "requests": pl.Int64,
                "p50_ms": pl.Float64,
                "p99_ms": pl.Float64,
                "max_ms": pl.Float64,
            },
            orient="row",
        )


def _as_frame(rows: Any, plan: ReadPlan, output: str) -> pl.DataFrame | None:
    if output == "dicts":
        return pl.from_dicts(rows, schema=plan.schema) if rows else None
    if output == "rows":
        return pl.DataFrame(rows, schema=plan.schema, orient="row") if rows else None
    if output == "numpy":
        return pl.DataFrame(rows)
    if output == "pandas":
        return pl.from_pandas(rows)
    if output == "arrow":
        frame = pl.from_arrow(rows)
        return frame if isinstance(frame, pl.DataFrame) else None
    return None

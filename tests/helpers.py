"""Small feature repositories over hand-made events, for tests."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.storage.online import open_online_store

# tests that reuse a key prefix per example (hypothesis) also carry this run's id: two test
# sessions against the same Redis (two checkouts, CI and a developer) must not share keys
RUN = uuid.uuid4().hex[:8]

START = "2026-03-01"


def make_events(n: int = 400, days: int = 4, users: int = 25, seed: int = 1) -> pl.DataFrame:
    """Events over `days` days from START, with some exact duplicates of event time (corrections)."""
    rng = np.random.default_rng(seed)
    start_us = int(datetime.fromisoformat(START + "T00:00:00+00:00").timestamp() * 1e6)
    ts = start_us + rng.integers(0, days * 86_400_000_000, size=n)
    created = ts + rng.integers(0, 3_600_000_000, size=n)
    # a tenth of the rows repeat an earlier row's user and event time with a later created time
    dup = rng.integers(0, n, size=n // 10)
    user = rng.integers(1, users + 1, size=n)
    frame = pl.DataFrame(
        {
            "user_id": np.concatenate([user, user[dup]]).astype(np.int64),
            "ts": np.concatenate([ts, ts[dup]]),
            "created": np.concatenate([created, created[dup] + 1_000_000]),
            "amount": np.round(rng.normal(50, 20, size=n + len(dup)), 2),
            "channel": rng.choice(["pos", "online", "atm"], size=n + len(dup)),
        }
    )
    return frame.with_columns(
        pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.col("created").cast(pl.Datetime("us", "UTC"))
    )


def small_repo(
    data_dir: Path, events: pl.DataFrame | None = None, ttl: str | None = None
) -> FeatureRepository:
    events = make_events() if events is None else events
    data_dir.mkdir(parents=True, exist_ok=True)
    events.write_parquet(data_dir / "events.parquet")
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource(
        "events", data_dir / "events.parquet", "ts", created_timestamp_field="created", start_date=START
    )
    group = FeatureGroup(
        name="user_stats",
        entity=user,
        source=source,
        transformation=lambda f: f.with_columns(
            (pl.col("amount") * 2).alias("amount_x2"), (pl.col("channel") == "online").alias("online")
        ),
        features=[
            Feature("amount", pl.Float64, default=0.0),
            Feature("amount_x2", pl.Float64),
            Feature("online", pl.Boolean, default=False),
            Feature("channel", pl.String, default="none"),
        ],
        ttl=ttl,
        owner="team:test",
        tags=["test"],
    )
    return FeatureRepository(
        groups=[group], services=[FeatureService("svc", ["user_stats:v1:amount", "user_stats:v1:channel"])]
    )


def expected_rows(events: pl.DataFrame, day: str) -> pl.DataFrame:
    """An independent computation of one day's offline rows."""
    start = datetime.fromisoformat(day + "T00:00:00+00:00")
    end = start + timedelta(days=1)
    return (
        events.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
        .select(
            "user_id",
            pl.col("ts").alias("event_timestamp"),
            pl.col("created").alias("created_timestamp"),
            "amount",
            (pl.col("amount") * 2).alias("amount_x2"),
            (pl.col("channel") == "online").alias("online"),
            "channel",
        )
        .sort(["user_id", "event_timestamp", "created_timestamp"], maintain_order=True)
    )


def materialize_days(
    repo: FeatureRepository,
    config: StoreConfig,
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    raise_on_error: bool = True,
    with_checks: bool = True,
) -> dg.ExecuteInProcessResult:
    """`materialize()` the offline and online assets for the days `first..last` in one run,
    with their asset checks (the online ones run after the online asset, as in a job)."""
    defs = build_definitions(repo, config)
    return dg.materialize(
        [*(defs.assets or []), *((defs.asset_checks or []) if with_checks else [])],
        selection=dg.AssetSelection.key_prefixes(["features"], ["online"]),
        resources=defs.resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=raise_on_error,
    )


_STATE_VARIABLES = (
    "SKEWLESS_HOME",
    "DAGSTER_HOME",
    "SKEWLESS_REDIS_URL",
    "SKEWLESS_OFFLINE_ROOT",
    "SKEWLESS_KEY_PREFIX",
)


def fresh_env(**extra: str) -> dict[str, str]:
    """This environment without any state configured (what a user has in a fresh shell), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in _STATE_VARIABLES}, **extra}


def landing_repo(folder: Path, start_date: str) -> FeatureRepository:
    """A streamed file source (`clicks`, a folder of Parquet files) and one row group over it:
    its definitions have the landing sensor, whose cursor lists the files already seen."""
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource("clicks", folder, "ts", id_field="eid", stream=True, start_date=start_date)
    return FeatureRepository([FeatureGroup("last_click", user, source, [Feature("value", pl.Float64)])])


def clicks_frame(rows: list[tuple[int, str, float, datetime]]) -> pl.DataFrame:
    """Rows (user, event id, value, event time) of the `clicks` source."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "eid": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "ts": [r[3] for r in rows],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def delete_keys(config: StoreConfig) -> None:
    """Delete every key of `config`'s prefix (never a FLUSHDB: the server may be shared)."""
    store = open_online_store(config)
    try:
        store.delete_all()
    finally:
        store.close()


def delete_entity_keys(config: StoreConfig, groups: list[FeatureGroup], users: range = range(1, 31)) -> int:
    """Delete the keys `groups` can hold for users `users` (and their freshness markers) by
    name: on a shared server holding millions of keys, `delete_keys`' SCAN takes seconds."""
    from skewless.storage import online_keys as K

    store = open_online_store(config)
    try:
        keys: list[str] = []
        for group in groups:
            base = K.entity_keys(group, config.key_prefix, pl.DataFrame({"user_id": list(users)}))
            keys += [b + s for b in base for s in K.WINDOW_SUFFIXES] if group.is_windowed else base
            keys.append(K.meta_key(config.key_prefix, group.name, group.version))
        keys.append(K.audit_key(config.key_prefix))  # what the test's accesses recorded
        return store.unlink(keys)
    finally:
        store.close()

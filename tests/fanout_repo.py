"""A small feature repository as a Dagster code location for the fan-out tests.

Run processes (`dagster job execute -m tests.fanout_repo`) and Celery workers import it, so
everything it needs comes from the environment they inherit: the events file
(`SKEWLESS_TEST_FANOUT_DATA`, written once by the test before any process starts), the stores
(`SKEWLESS_OFFLINE_ROOT`, `SKEWLESS_REDIS_URL`, `SKEWLESS_KEY_PREFIX`, `SKEWLESS_HOME`) and the
executor (`SKEWLESS_EXECUTOR`, `SKEWLESS_PARTITIONS_PER_RUN`, `SKEWLESS_CELERY_BROKER`).
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FileSource
from skewless.feature_assets.definitions import build_definitions
from tests.helpers import START


def fanout_repo(data_dir: Path) -> FeatureRepository:
    """`tests.helpers.small_repo`'s group over an events file that already exists (two
    groups, so a run has independent steps too)."""
    user = Entity("user", {"user_id": pl.Int64})
    source = FileSource(
        "events", data_dir / "events.parquet", "ts", created_timestamp_field="created", start_date=START
    )
    stats = FeatureGroup(
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
        owner="team:test",
    )
    channel = FeatureGroup(
        name="user_channel",
        entity=user,
        source=source,
        transformation=lambda f: f.select(
            "user_id", "ts", "created", pl.col("channel").str.to_uppercase().alias("channel_upper")
        ),
        features=[Feature("channel_upper", pl.String, default="NONE")],
        owner="team:test",
    )
    return FeatureRepository(groups=[stats, channel])


_data = os.environ.get("SKEWLESS_TEST_FANOUT_DATA")
defs = build_definitions(fanout_repo(Path(_data))) if _data else None

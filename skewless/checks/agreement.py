"""Online/offline agreement and online freshness of one group version.

Agreement asks both read paths the same question: a sample of entities, as of the same
instant, through `get_training_dataset` (offline Parquet, point-in-time rules) and
`get_online_features` (Redis). Same TTL, same defaults, same encoding; any difference is a
bug or a write that never reached one store, and fails the check.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.language.feature_group import FeatureGroup

if TYPE_CHECKING:
    from skewless.client.feature_store import FeatureStore

AS_OF = "__as_of"


def sample_entities(
    store: FeatureStore, group: FeatureGroup, size: int, days: list[date] | None = None, seed: int = 0
) -> pl.DataFrame:
    """Up to `size` distinct entities of the given days (the ones just pushed), else of the
    group's three most recent partitions."""
    keys = group.entity.key_columns
    if days is None:
        stored = store.offline.partitions(group)
        days = stored[max(0, len(stored) - 3) :]
    if not days:
        return pl.DataFrame(schema=group.entity.key_schema)
    recent = store.offline.scan(group, min(days), max(days)).select(keys).unique().collect()
    if recent.height <= size:
        return recent.sort(keys)
    return recent.sample(size, seed=seed).sort(keys)


def check_agreement(
    store: FeatureStore, group: FeatureGroup, sample: int = 200, days: list[date] | None = None
) -> CheckOutcome:
    """`days`: the partitions just pushed; entities are sampled from them, and since each has
    a row on or after their first day, older partitions cannot hold its latest value."""
    entities = sample_entities(store, group, sample, days)
    if entities.height == 0:
        return CheckOutcome(
            "online_offline_agreement",
            passed=True,
            severity="WARN",
            description=f"{group.ref}: no offline partitions yet, nothing to compare",
        )
    features = [f"{group.ref}:{name}" for name in group.feature_names]
    # whole microseconds, the resolution both stores keep
    at = datetime.fromtimestamp(time.time_ns() // 1000 / 1_000_000, tz=UTC)
    labels = entities.with_columns(pl.lit(at).cast(pl.Datetime("us", "UTC")).alias(AS_OF))
    offline = store.get_training_dataset(
        labels, features=features, timestamp_column=AS_OF, partitions_from=min(days) if days else None
    ).drop(AS_OF)
    online = store.get_online_features(entities, features=features, at=at)
    keys = group.entity.key_columns
    mismatches = []
    for name in group.feature_names:
        both = pl.DataFrame({"offline": offline[name], "online": online[name]})
        # equal, or both null, or both NaN: what "the same value" means for stored features
        differs = ~(both["offline"].eq_missing(both["online"]))
        if both["offline"].dtype.is_float():
            differs = differs & ~(both["offline"].is_nan() & both["online"].is_nan()).fill_null(False)
        bad = differs.arg_true()
        if bad.len():
            rows = entities[bad]
            for i, row in enumerate(rows.head(5).iter_rows(named=True)):
                index = bad[i]
                mismatches.append(
                    {
                        "feature": name,
                        "entity": ", ".join(f"{k}={row[k]}" for k in keys),
                        "offline": str(offline[name][index]),
                        "online": str(online[name][index]),
                        "mismatching_entities": bad.len(),
                    }
                )
    values = {
        "entities_compared": entities.height,
        "features_compared": len(group.feature_names),
        "as_of": at.isoformat(),
    }
    if mismatches:
        table = pl.DataFrame(mismatches)
        counts = table.unique("feature").select("feature", "mismatching_entities")
        described = ", ".join(f"{f} ({n})" for f, n in counts.iter_rows())
        return CheckOutcome(
            "online_offline_agreement",
            passed=False,
            description=(
                f"{group.ref}: online and offline values differ for {described} "
                f"of {entities.height} sampled entities"
            ),
            tables={"mismatches": table},
            values=values,
        )
    return CheckOutcome(
        "online_offline_agreement",
        passed=True,
        description=(
            f"{group.ref}: {entities.height} sampled entities agree on all "
            f"{len(group.feature_names)} features"
        ),
        values=values,
    )


def check_online_freshness(store: FeatureStore, group: FeatureGroup) -> CheckOutcome:
    """Age of the newest event time written to Redis for this group version, against its limit."""
    limit = group.freshness_limit
    marker = store.online.freshness(group)
    if marker is None:
        return CheckOutcome(
            "online_freshness",
            passed=False,
            description=f"{group.ref}: nothing has been written to the online store yet",
            values={"limit_hours": limit / timedelta(hours=1)},
        )
    now_us = time.time_ns() // 1000
    age = timedelta(microseconds=now_us - marker["newest_event_us"])
    newest = datetime.fromtimestamp(marker["newest_event_us"] / 1e6, tz=UTC)
    written = datetime.fromtimestamp(marker["written_at_us"] / 1e6, tz=UTC)
    values = {
        "newest_event": newest.isoformat(),
        "last_write": written.isoformat(),
        "age_hours": round(age / timedelta(hours=1), 3),
        "limit_hours": limit / timedelta(hours=1),
    }
    if age > limit:
        return CheckOutcome(
            "online_freshness",
            passed=False,
            description=f"{group.ref}: newest online value is {_human(age)} old (limit {_human(limit)})",
            values=values,
        )
    return CheckOutcome(
        "online_freshness",
        passed=True,
        description=f"{group.ref}: newest online value is {_human(age)} old (limit {_human(limit)})",
        values=values,
    )


def _human(delta: timedelta) -> str:
    hours = delta / timedelta(hours=1)
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"

"""Online/offline agreement and online freshness of one group version.

A check, but one over the whole read path (client, both stores), so it lives in the serving
layer, above the stores it reads; `skewless.checks` holds the rules over frames only.

Agreement asks both read paths the same question: a sample of entities, as of the same
instant, through `get_training_dataset` (offline Parquet, point-in-time rules) and
`get_online_features` (Redis). Same TTL, same defaults, same encoding; any difference is a
bug or a write that never reached one store, and fails the check.

Only what the offline store covers is compared. Pushes (and micro-batches not yet folded into
a partition) reach Redis before Parquet, so while writers race, an entity's online value may
rightly come from an event newer than anything offline; comparing it would be a false alarm
(the newest event time wins online by design). Such entities — online newest event time later
than the entity's newest offline event time — are skipped and counted (`skipped_newer_online`);
every other entity, including one missing online, is compared.

Backfills cut into runs of N days run side by side (`BackfillPolicy.multi_run`): while a run
checks, another run may write a later partition offline and then online, between or before
this check's offline and online reads, so the two reads can see different "latest" rows — a
false disagreement that failed the step (seen with two runs at a time on 12 days). An
entity whose newest offline event lies after the checked days has its latest value in a
partition another run owns (and checks); such entities are skipped and counted too
(`skipped_later_partition`), whether or not that later value is online yet.
"""

from __future__ import annotations

import time
import warnings
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.errors import MissingPartitionsWarning
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.storage.online_keys import entity_keys, events_key

if TYPE_CHECKING:
    from skewless.client.feature_store import FeatureStore

AS_OF = "__as_of"
_OFFLINE_US = "__offline_newest_us"


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
    # a day not materialized is missing from both stores alike (Redis is written from the
    # partitions), so it cannot cause a disagreement: allowed, and not worth a warning here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPartitionsWarning)
        offline = store.get_training_dataset(
            labels,
            features=features,
            timestamp_column=AS_OF,
            partitions_from=min(days) if days else None,
            allow_missing=True,
        ).drop(AS_OF)
    online = store.get_online_features(entities, features=features, at=at)
    # which entities both stores saw the same events of, decided *after* the online read: a push
    # landing between a coverage read and the value read made a false alarm (a newer pushed
    # value compared with an older offline one). Online event times only move forward, so an
    # entity still covered now was covered when its values were read.
    covered, later = _covered_by_offline(
        store, group, entities, min(days) if days else None, max(days) if days else None
    )
    later = covered & later  # counted once: an entity with a newer online value is `skipped`
    skipped = entities.height - int(covered.sum())
    covered = covered & ~later
    skipped_later = int(later.sum())
    if skipped + skipped_later == entities.height:
        return CheckOutcome(
            "online_offline_agreement",
            passed=True,
            severity="WARN",
            description=(
                f"{group.ref}: all {entities.height} sampled entities have online events newer than "
                "the offline store, or newer offline rows after these partitions; nothing comparable yet"
            ),
            values={
                "entities_compared": 0,
                "skipped_newer_online": skipped,
                "skipped_later_partition": skipped_later,
            },
        )
    entities, offline, online = entities.filter(covered), offline.filter(covered), online.filter(covered)
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
        "skipped_newer_online": skipped,
        "skipped_later_partition": skipped_later,
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


def _covered_by_offline(
    store: FeatureStore,
    group: FeatureGroup,
    entities: pl.DataFrame,
    first_day: date | None,
    last_day: date | None = None,
) -> tuple[pl.Series, pl.Series]:
    """Per sampled entity: covered — True when its newest online event time is not later than
    its newest offline event time (or it has nothing online), i.e. both stores saw the same
    events; later — True when its newest offline event lies after `last_day` (a partition
    another run owns: its values are that run's to write and check).

    Offline: the maximum event time of the entity from `first_day` on (every sampled entity has
    a row on or after it). Online: the stored value's event time (row groups) or the newest
    event of its window state (window groups: the sorted set's top score).
    """
    keys = group.entity.key_columns
    if first_day is None:  # sampled from the three most recent partitions (sample_entities)
        stored = store.offline.partitions(group)
        first_day = stored[max(0, len(stored) - 3)] if stored else None
    newest_offline = (
        store.offline.scan(group, first_day, None)
        .join(entities.lazy(), on=keys, how="semi")
        .group_by(keys)
        .agg(pl.col(EVENT_TIMESTAMP).max().dt.epoch("us").alias(_OFFLINE_US))
    )
    newest = entities.lazy().join(newest_offline, on=keys, how="left", maintain_order="left").collect()
    if group.is_windowed:
        bases = entity_keys(group, store.online.key_prefix, entities)
        pipe = store.online.client.pipeline(transaction=False)
        for base in bases:
            pipe.zrevrange(events_key(base), 0, 0, withscores=True)
        online_us = [int(top[0][1]) if top else None for top in pipe.execute()]
    else:
        stored = store.online.read(group, entities).get_column(EVENT_TIMESTAMP)
        online_us = stored.dt.epoch("us").to_list()
    online = pl.Series("online_us", online_us, dtype=pl.Int64)
    offline_us = newest.get_column(_OFFLINE_US)
    covered = (online.is_null() | (online <= offline_us)).fill_null(True).alias("covered")
    if last_day is None:
        return covered, pl.Series("later", [False] * entities.height, dtype=pl.Boolean)
    end_us = int(datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC).timestamp() * 1e6)
    # whether or not that later row is online yet: the offline and online reads above may each
    # have seen a concurrent run's later partition or not (runs side by side), so only "has
    # none" is a stable basis for comparing; this read comes after both (files are not
    # removed, and a run writes a day online only after writing it offline)
    later = (offline_us >= end_us).fill_null(False)
    return covered, later.alias("later")


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

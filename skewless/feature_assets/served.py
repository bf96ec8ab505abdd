"""Served feature vectors of a feature service: the log flushed to Parquet, checked for skew.

The online client samples lookups by service into a Redis Stream (see
`skewless.serving.monitor`). This asset appends the stream's new entries to
`<offline root>/_served/<service>/v<N>/log-<first id>-<last id>.parquet`
(`OfflineStore.write_served_log`) and records how far it
got, so a retry rewrites the same file instead of duplicating rows. Its check compares the
served distribution with the service's training set, the skew a model would actually see.
"""

from datetime import timedelta

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from skewless.asset_keys import served_key, training_set_key
from skewless.feature_assets.checks import markdown_table, to_check_result
from skewless.language.feature_service import FeatureService
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource


def build_served_asset(repo: FeatureRepository, service: FeatureService) -> list:
    ref = service.ref

    @dg.asset(
        key=served_key(service),
        deps=[training_set_key(service)] if service.labels is not None else [],
        group_name="monitoring",
        description=f"Feature vectors served for {ref} (sampled by the online client and server)",
        owners=[service.owner] if service.owner else None,
        kinds={"redis", "parquet"},
        tags={"skewless/service": service.name, "skewless/version": f"v{service.version}"},
    )
    def _served(
        context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource
    ) -> dg.MaterializeResult:
        from skewless.serving.monitor import LATENCY_US, served_stream
        from skewless.storage import streams

        store = online.store()
        stream = served_stream(ref)
        after = streams.applied(store, stream) or "0"
        until = streams.newest_id(store, stream)
        rows, entries = streams.read(store, stream, after, until) if until else (None, 0)
        offline_store = offline.store()
        written = 0
        if rows is not None and rows.height:
            first = streams.first_id(store, stream, after, until)
            # the log file is durable (one atomic write) before the stream cursor moves on
            offline_store.write_served_log(service.name, service.version, first, until, rows)
            streams.mark_applied(store, stream, until)
            written = rows.height
        logs = offline_store.served_logs(service.name, service.version)
        total = offline_store.scan_parquet(logs).select(pl.len()).collect().item() if logs else 0
        metadata: dict = {"rows_appended": written, "stream_entries": entries, "rows_logged": total}
        if rows is not None and rows.height and LATENCY_US in rows.columns:
            latency = rows.select(
                pl.len().alias("requests"),
                (pl.col(LATENCY_US).median() / 1000).alias("p50_ms"),
                (pl.col(LATENCY_US).quantile(0.99) / 1000).alias("p99_ms"),
            )
            metadata["latency"] = dg.MetadataValue.md(markdown_table(latency))
        context.log.info(f"{ref}: {written} served rows appended ({entries} stream entries)")
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=served_key(service),
        name="training_serving_skew",
        description=(
            f"PSI / KS of the feature vectors served for {ref} in the last {service.skew.span.days} days "
            "against its training set"
        ),
    )
    def _skew(offline: OfflineStoreResource) -> dg.AssetCheckResult:
        from skewless.checks.drift import drift_outcome
        from skewless.checks.outcome import CheckOutcome
        from skewless.serving.monitor import SERVED_AT

        store = offline.store()
        training = store.read_training_set(service.name, service.version)
        files = store.served_logs(service.name, service.version)
        if training is None or not files:
            missing = "training set" if training is None else "served log"
            return to_check_result(
                CheckOutcome(
                    "training_serving_skew",
                    passed=True,
                    severity="WARN",
                    description=f"{ref}: no {missing} yet, nothing to compare",
                )
            )
        served = store.scan_parquet(files)
        newest = served.select(pl.col(SERVED_AT).max()).collect().item()
        since = newest - timedelta(days=service.skew.span.days)
        served_rows = served.filter(pl.col(SERVED_AT) > since).collect()
        columns = {
            c: dtype
            for c, dtype in served_rows.schema.items()
            if c in training.columns and not c.startswith("__") and c not in _key_columns(repo, service)
        }
        outcome = drift_outcome(
            ref,
            service.skew,
            training.select(list(columns)),
            served_rows.select(list(columns)),
            columns,
            name="training_serving_skew",
            reference_label=f"the training set of {ref}",
        )
        return to_check_result(outcome)

    return [_served, _skew]


def _key_columns(repo: FeatureRepository, service: FeatureService) -> set[str]:
    keys: set[str] = set()
    for ref in service.refs:
        group, _ = repo.resolve(ref)
        keys.update(group.entity.key_columns)
    return keys

"""Training-set assets: a feature service's labels joined point-in-time with its features."""

import warnings
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster import AssetExecutionContext

from skewless.asset_keys import offline_key, source_key, training_set_key
from skewless.compute.coverage import MissingPartitionsWarning
from skewless.feature_assets.column_lineage import training_set_column_lineage
from skewless.language.feature_service import FeatureService
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource

if TYPE_CHECKING:
    import polars as pl

    from skewless.client.feature_store import FeatureStore
    from skewless.storage.offline import Location


class TrainingSetConfig(dg.Config):
    """Run config of a training-set asset."""

    allow_missing: bool = False
    """Build from what is stored (with a warning) when offline partitions the labels need were
    never materialized; the default fails the run naming the group and the days."""


def build_training_set_asset(repo: FeatureRepository, service: FeatureService) -> dg.AssetsDefinition:
    """Not partitioned: a training set is one file, rebuilt whole (atomically) on each run.

    Missing offline partitions fail the run (`MissingPartitionsError`, naming the group and
    the days) unless the run config says `allow_missing: true`: a training set silently built
    from older values is worse than none."""
    assert service.labels is not None
    groups = {(g.name, g.version): g for ref in service.refs for g in [repo.resolve(ref)[0]]}

    @dg.asset(
        key=training_set_key(service),
        deps=[source_key(service.labels), *(offline_key(g) for g in groups.values())],
        group_name="training_sets",
        description=(
            f"Training set of feature service {service.ref}: its labels joined point-in-time "
            "with the features it pins (one Parquet file)."
            + (f"\n\n{service.description}" if service.description else "")
        ),
        code_version=_code_version(service, list(groups.values())),
        owners=[service.owner] if service.owner else None,
        kinds={"polars", "parquet"},
        tags={"skewless/service": service.name, "skewless/version": f"v{service.version}"},
        metadata={"features": ", ".join(service.features), "labels": service.labels.name},
    )
    def _training_set(
        context: AssetExecutionContext, config: TrainingSetConfig, offline: OfflineStoreResource
    ) -> dg.MaterializeResult:
        from skewless.client.feature_store import FeatureStore

        assert service.labels is not None
        labels = service.labels.scan().collect()
        # the run's offline store; training sets never touch the online one (opened lazily
        # from the environment, it is never connected, let alone started)
        store = FeatureStore(repo, offline=offline.store())
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", MissingPartitionsWarning)
            frame = store.get_training_dataset(
                labels,
                service=service.ref,
                timestamp_column=service.labels.timestamp_field,
                allow_missing=config.allow_missing,
            )
        for warning in seen:
            context.log.warning(str(warning.message))
        path = store.offline.write_training_set(
            service.name, service.version, frame, pii=store.pii_columns(service=service.ref)
        )
        stats = store.last_training_stats
        context.log.info(f"{service.ref}: {frame.height} rows with engine {stats.engine}")
        return dg.MaterializeResult(
            metadata=training_set_metadata(repo, service, store, frame, path, stats.engine, stats.groups)
        )

    return _training_set


def training_set_metadata(
    repo: FeatureRepository,
    service: FeatureService,
    store: "FeatureStore",
    frame: "pl.DataFrame",
    path: "Location",
    engine: str,
    partitions_read: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """A training set's materialization metadata, whichever job built it (this asset or the
    distributed job): rows, schema, column lineage, path, engine, partitions read."""
    groups = {(g.name, g.version) for ref in service.refs for g in [repo.resolve(ref)[0]]}
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
        ),
        "dagster/column_lineage": training_set_column_lineage(
            repo, service, store.output_names(store.select(service=service.ref), False), offline_key
        ),
        "path": dg.MetadataValue.path(str(path)),
        "engine": engine,
        "partitions_read": dg.MetadataValue.json(partitions_read),
        "feature_versions": ", ".join(sorted(f"{n}:v{v}" for n, v in groups)),
    }


def _code_version(service: FeatureService, groups: list) -> str:
    """What decides the training set's values: the selected features and the fingerprints of
    the group versions they come from (the labels are data, not code)."""
    from skewless.registry.fingerprint import digest, fingerprint

    return digest({"features": list(service.features), "groups": sorted(fingerprint(g) for g in groups)})

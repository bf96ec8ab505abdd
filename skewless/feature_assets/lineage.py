"""Lineage assets: feature services and models downstream of the versions they pin, the
registry snapshot, and column lineage metadata.

Services and models are `AssetSpec`s (nothing to compute: they are contracts and consumers)
so the asset graph, and with it impact analysis, reaches every model a change can break.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from skewless.asset_keys import (
    model_key,
    offline_key,
    online_key,
    registry_snapshot_key,
    service_key,
    training_set_key,
)
from skewless.language.feature_service import FeatureService
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource


def service_specs(repo: FeatureRepository) -> list[dg.AssetSpec]:
    specs = []
    consumers: dict[str, list[FeatureService]] = {}
    for service in repo.services:
        groups = {(g.name, g.version): g for ref in service.refs for g in [repo.resolve(ref)[0]]}
        deps = [k for g in groups.values() for k in (offline_key(g), online_key(g))]
        if service.labels is not None:
            deps.append(training_set_key(service))
        specs.append(
            dg.AssetSpec(
                key=service_key(service),
                deps=deps,
                description=service.description or f"Feature service {service.ref}",
                group_name="services",
                owners=[service.owner] if service.owner else [],
                kinds={"service"},
                tags={"skewless/service": service.name, "skewless/version": f"v{service.version}"},
                metadata={"features": ", ".join(service.features), "models": ", ".join(service.models)},
            )
        )
        for model in service.models:
            consumers.setdefault(model, []).append(service)
    for model, services in sorted(consumers.items()):
        specs.append(
            dg.AssetSpec(
                key=model_key(model),
                deps=[service_key(s) for s in services],
                description=f"Model {model}, served by {', '.join(s.ref for s in services)}",
                group_name="services",
                owners=sorted({s.owner for s in services if s.owner}),
                kinds={"model"},
                tags={"skewless/model": model},
            )
        )
    return specs


def build_registry_asset(repo: FeatureRepository) -> dg.AssetsDefinition:
    @dg.asset(
        key=registry_snapshot_key(),
        group_name="registry",
        description="The feature registry derived from the code: one JSON and one Parquet snapshot per run",
        kinds={"json", "parquet"},
        tags={"skewless/kind": "registry"},
    )
    def _registry(context: dg.AssetExecutionContext, offline: OfflineStoreResource) -> dg.MaterializeResult:
        from skewless.registry.catalog import Registry

        registry = Registry(repo)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        snapshot = registry.snapshot()
        features = registry.features()
        # both files through the store's one atomic write (local or object storage)
        folder = offline.store().write_registry_snapshot(
            stamp, json.dumps(snapshot, indent=2, default=str), features
        )
        context.log.info(f"registry snapshot {folder}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(folder)),
                "group_versions": len(snapshot["groups"]),
                "features": features.height,
                "services": len(snapshot["services"]),
                "entities": len(snapshot["entities"]),
                "sources": len(snapshot["sources"]),
            }
        )

    return _registry

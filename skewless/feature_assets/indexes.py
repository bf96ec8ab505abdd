"""The vector-index asset of a group version with a `VectorIndex`: build, check, publish.

Not partitioned: an index covers the latest embedding of every entity, whichever day it
came from, so it is rebuilt as a whole from the offline partitions (the `vector_indexes`
job, scheduled after the daily features; or selected with them). Its checks run inside the
asset, before the build is published: a `recall` below `min_recall` fails the step and
leaves the previous build serving (blocking), drift and freshness are reported.
"""

import dagster as dg
from dagster import AssetExecutionContext

from skewless.asset_keys import index_key, offline_key
from skewless.feature_assets.checks import to_check_result
from skewless.feature_assets.metadata import asset_tags
from skewless.language.feature_group import FeatureGroup
from skewless.resources.stores import OfflineStoreResource
from skewless.vectors.checks import CHECK_NAMES

DESCRIPTIONS = {
    "recall": "ANN recall@k against exact brute-force search on sampled queries; below min_recall "
    "the build is not published",
    "embedding_drift": "PSI of vector norms and of cosine to the previous build's centroid",
    "index_freshness": "Age of the newest embedding the build was made from",
}


class IndexBuildConfig(dg.Config):
    """Run config of an index asset."""

    degrade: bool = False
    """Build a deliberately broken graph (one link per node): shows the recall check failing."""


def index_code_version(group: FeatureGroup) -> str:
    from skewless.feature_assets.metadata import code_version

    spec = group.index
    assert spec is not None
    if spec.kind == "ivf":
        params = f"ivf-l{spec.lists or 'auto'}-p{spec.probes or 'auto'}-r{spec.min_recall}"
    else:
        params = f"hnsw-m{spec.connectivity}-a{spec.expansion_add}-s{spec.expansion_search}"
    return f"{code_version(group)}-{spec.feature}-{spec.metric}-{params}"


def build_index_asset(group: FeatureGroup, checks: bool = True) -> dg.AssetsDefinition:
    spec = group.index
    assert spec is not None
    key = index_key(group)
    limit = spec.freshness_limit or group.freshness_limit

    @dg.asset(
        key=key,
        deps=[offline_key(group)],
        group_name=group.name,
        description=(
            f"Vector index ({spec.kind.upper()}, faiss) over the latest '{spec.feature}' of every "
            f"entity of {group.ref}, "
            f"metric {spec.metric}; searched by FeatureStore.search and POST /features/search."
        ),
        owners=[group.owner] if group.owner else None,
        tags=asset_tags(group, "index"),
        code_version=index_code_version(group),
        kinds={"faiss"},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=limit, warn_window=limit * 0.8),
        check_specs=[
            dg.AssetCheckSpec(name, asset=key, blocking=name == "recall", description=DESCRIPTIONS[name])
            for name in CHECK_NAMES
        ]
        if checks
        else None,
    )
    def _index(context: AssetExecutionContext, config: IndexBuildConfig, offline: OfflineStoreResource):
        from skewless.errors import CheckFailedError
        from skewless.vectors import index_store

        store = offline.store()
        built = index_store.build(store, group, degrade=config.degrade)
        prefix = index_store.save(store, group, built)
        meta = built.meta
        if checks:
            for outcome in built.outcomes:
                yield to_check_result(outcome)
            if built.blocked:
                recall = next(o for o in built.outcomes if o.name == "recall")
                raise CheckFailedError(f"index of {group.ref} not published: {recall.description}")
        index_store.publish(store, group, built)
        context.log.info(f"{group.ref}: index build {built.build_id}, {meta['entities']} entities")
        recall = meta.get("checks", {}).get("recall", {})
        yield dg.MaterializeResult(
            data_version=dg.DataVersion(meta["data_version"]),
            metadata={
                "build": built.build_id,
                "data_version": meta["data_version"],
                "entities": meta["entities"],
                "dim": meta["dim"],
                "metric": meta["metric"],
                "library": meta["library"],
                "path": prefix,
                "kind": meta["kind"],
                "search_width": meta["width"],
                "index_bytes": index_store.index_bytes(built),
                "recall_at_k": float(recall.get("recall", float("nan"))),
            },
        )

    return _index

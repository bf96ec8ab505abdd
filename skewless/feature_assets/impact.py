"""Impact analysis: what is downstream of a source or a group version, from the asset graph.

The graph is the one Dagster runs (`asset_definitions`, what `build_definitions` merges with
the store resources), so the answer cannot disagree with
what the orchestrator will actually rebuild or starve: group versions, their online assets,
training sets, feature services, models, served-vector logs and SQL views.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import dagster as dg

from skewless import asset_keys
from skewless.errors import DefinitionError
from skewless.feature_assets.definitions import asset_definitions
from skewless.language.feature_service import FeatureRef
from skewless.repository import FeatureRepository

CATEGORIES = {
    asset_keys.OFFLINE: "group_versions",
    asset_keys.ONLINE: "online_assets",
    asset_keys.TRAINING_SETS: "training_sets",
    asset_keys.SERVICES: "feature_services",
    asset_keys.MODELS: "models",
    asset_keys.SERVED: "served_logs",
    asset_keys.SQL: "sql_views",
}


def start_keys(repo: FeatureRepository, target: str) -> tuple[list[Any], FeatureRef | None]:
    """Asset keys a target names: `source`, `group` (every version), `group:vN[:feature]`."""
    if target in {s.name for s in repo.sources}:
        return [asset_keys.source_key(target)], None
    if ":" not in target:
        versions = [g for g in repo.groups if g.name == target]
        if not versions:
            names = ", ".join(sorted({s.name for s in repo.sources} | {g.name for g in repo.groups}))
            raise DefinitionError(f"'{target}' is neither a source nor a feature group (known: {names})")
        return [asset_keys.offline_key(g) for g in versions], None
    ref = FeatureRef.parse(target)
    group, _ = repo.resolve(ref)
    return [asset_keys.offline_key(group)], ref


def downstream_keys(repo: FeatureRepository, keys: list[dg.AssetKey]) -> set[dg.AssetKey]:
    """Every asset key reachable from `keys` along the asset specs' declared dependencies.

    Walked over the specs rather than `Definitions.resolve_asset_graph()`, which first binds
    every asset's resources: impact analysis needs the graph, not the stores, so nothing
    has to be configured (before, it built the definitions with a placeholder offline root)."""
    children: dict[dg.AssetKey, set[dg.AssetKey]] = defaultdict(set)
    for asset in asset_definitions(repo).assets or []:
        specs = asset.specs if isinstance(asset, dg.AssetsDefinition) else [asset]
        for spec in specs:
            for dep in spec.deps:
                children[dep.asset_key].add(spec.key)
    found: set[dg.AssetKey] = set()
    frontier = list(keys)
    while frontier:
        for child in children[frontier.pop()]:
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def impact(repo: FeatureRepository, target: str) -> dict[str, Any]:
    """Every asset downstream of `target`, by kind. For `group:vN:feature`, services (and
    their models) that do not select that feature are left out: they do not read it."""
    keys, ref = start_keys(repo, target)
    downstream = downstream_keys(repo, keys)
    result: dict[str, Any] = {"target": target, **{name: [] for name in CATEGORIES.values()}}
    excluded_services: set[str] = set()
    if ref is not None and ref.feature is not None:
        for service in repo.services:
            reads = any(
                (r.group, r.version) == (ref.group, ref.version) and r.feature in (None, ref.feature)
                for r in service.refs
            )
            if not reads:
                excluded_services.add(service.name)
    keep_models = {m for s in repo.services if s.name not in excluded_services for m in s.models}
    for key in sorted(downstream, key=lambda k: k.to_user_string()):
        parsed = asset_keys.parse(key.path)
        if parsed is None:
            continue
        layer, label, name = parsed
        if layer in (asset_keys.SERVICES, asset_keys.TRAINING_SETS, asset_keys.SERVED) and (
            name in excluded_services
        ):
            continue
        if layer == asset_keys.MODELS and name not in keep_models:
            continue
        category = CATEGORIES.get(layer)
        if category is None:
            continue
        result[category].append(label)
    return result

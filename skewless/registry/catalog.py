"""The registry: everything a repository defines, derived from the loaded code (never stale).

Entities, sources, group versions, features (with dtype, description, default, window),
feature services and the models consuming them, owners, tags, TTLs, fingerprints and who
consumes each version. `snapshot()` is what the `registry/snapshot` asset writes; `search`
and `describe` back the CLI and the client.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from skewless.errors import DefinitionError
from skewless.language.durations import format_duration
from skewless.language.feature_group import FeatureGroup
from skewless.language.feature_service import FeatureRef
from skewless.registry.fingerprint import fingerprint, source_identity
from skewless.repository import FeatureRepository

FEATURES_SCHEMA = {
    "group": pl.String,
    "version": pl.Int64,
    "ref": pl.String,
    "feature": pl.String,
    "dtype": pl.String,
    "description": pl.String,
    "default": pl.String,
    "window": pl.String,
    "entity": pl.String,
    "owner": pl.String,
    "tags": pl.String,
    "ttl": pl.String,
    "latest_version": pl.Boolean,
    "consumers": pl.String,
}


class Registry:
    def __init__(self, repo: FeatureRepository) -> None:
        self.repo = repo
        self._latest = {}
        for group in repo.groups:
            self._latest[group.name] = max(self._latest.get(group.name, 0), group.version)

    # ----------------------------------------------------------------- consumers
    def consumers(self, group: FeatureGroup, feature: str | None = None) -> list[str]:
        """Feature services (and their models) that read this group version (or feature)."""
        found = []
        for service in self.repo.services:
            for ref in service.refs:
                if (ref.group, ref.version) != (group.name, group.version):
                    continue
                if feature is None or ref.feature in (None, feature):
                    found.append(service.ref)
                    found += [f"model {m}" for m in service.models]
                    break
        return found

    # ----------------------------------------------------------------- tables
    def groups(self) -> list[dict[str, Any]]:
        return [self.group_entry(g) for g in self.repo.groups]

    def group_entry(self, group: FeatureGroup) -> dict[str, Any]:
        return {
            "ref": group.ref,
            "name": group.name,
            "version": group.version,
            "latest_version": group.version == self._latest[group.name],
            "entity": group.entity.name,
            "join_keys": dict((k, str(v)) for k, v in group.entity.key_schema.items()),
            "source": group.source.name,
            "kind": "windows" if group.is_windowed else "rows",
            "transformation": getattr(group.transformation, "__name__", None),
            "description": group.description,
            "owner": group.owner,
            "tags": dict(group.tags),  # type: ignore[arg-type]
            "ttl": format_duration(group.time_to_live),
            "retention": format_duration(group.retention_period),
            "freshness": format_duration(group.freshness_limit),
            "fingerprint": fingerprint(group),
            "features": [self.feature_entry(group, f.name) for f in group.features],
            "expectations": [e.describe() for e in group.all_expectations()],
            "drift": None if group.drift is None else {"warn": group.drift.warn, "error": group.drift.error},
            "consumers": self.consumers(group),
            # who may read it (the roles whose Redis users hold its key patterns)
            "readable_by": [r.name for r in self.repo.roles if self.repo.access(r.name).may_read(group)],
            "pii_features": list(group.pii_features),
            "pii_readable_by": [
                r.name for r in self.repo.roles if self.repo.access(r.name).may_read_pii(group)
            ],
        }

    def feature_entry(self, group: FeatureGroup, name: str) -> dict[str, Any]:
        feature = group.feature(name)
        window = None
        if group.is_windowed:
            window = feature.description  # "<function> of <column> over <window>", from the aggregation
        return {
            "name": feature.name,
            "dtype": str(feature.dtype),
            "description": feature.description,
            "default": feature.default,
            "window": window,
            "nullable": feature.nullable,
            "min_value": feature.min_value,
            "max_value": feature.max_value,
            "allowed_values": list(feature.allowed_values) if feature.allowed_values else None,
            "consumers": self.consumers(group, name),
        }

    def features(self) -> pl.DataFrame:
        """One row per feature of every group version."""
        rows = []
        for group in self.repo.groups:
            # feature entries only: a group entry also fingerprints (reads source code)
            for entry in (self.feature_entry(group, f.name) for f in group.features):
                rows.append(
                    {
                        "group": group.name,
                        "version": group.version,
                        "ref": f"{group.ref}:{entry['name']}",
                        "feature": entry["name"],
                        "dtype": entry["dtype"],
                        "description": entry["description"],
                        "default": None if entry["default"] is None else repr(entry["default"]),
                        "window": entry["window"],
                        "entity": group.entity.name,
                        "owner": group.owner,
                        "tags": ",".join(group.tags),  # type: ignore[arg-type]
                        "ttl": format_duration(group.time_to_live),
                        "latest_version": group.version == self._latest[group.name],
                        "consumers": ", ".join(entry["consumers"]),
                    }
                )
        return pl.DataFrame(rows, schema=FEATURES_SCHEMA)

    def snapshot(self) -> dict[str, Any]:
        """The whole registry as JSON-able data."""
        return {
            "repository": self.repo.name,
            "entities": [
                {
                    "name": e.name,
                    "join_keys": {k: str(v) for k, v in e.key_schema.items()},
                    "description": e.description,
                }
                for e in self.repo.entities
            ],
            "sources": [
                {
                    **source_identity(s),
                    "location": s.location(),
                    "owner": s.owner,
                    "description": s.description,
                }
                for s in self.repo.sources
            ],
            "groups": [
                {**g, "features": [{**f, "default": repr(f["default"])} for f in g["features"]]}
                for g in self.groups()
            ],
            "services": [
                {
                    "ref": s.ref,
                    "features": list(s.features),
                    "owner": s.owner,
                    "description": s.description,
                    "labels": s.labels.name if s.labels is not None else None,
                    "models": list(s.models),
                }
                for s in self.repo.services
            ],
            # roles as declared and resolved to group versions (the Redis users they become
            # are `skewless roles`: they depend on the deployment's key prefix)
            "roles": [
                {
                    "name": r.name,
                    "description": r.description,
                    "admin": r.admin,
                    "read": list(r.read),
                    "write": list(r.write),
                    "reads": self.repo.access(r.name).group_refs,
                    "writes": [g.ref for g in self.repo.access(r.name).write_groups],
                }
                for r in self.repo.roles
            ],
        }

    # ----------------------------------------------------------------- search
    def search(self, text: str, limit: int = 20) -> pl.DataFrame:
        """Features ranked by where the words appear: name, then group, description, tags, owner.

        Per word: feature name equal 10, feature name contains 6, group name contains 4,
        description contains 3, tags 2, owner 1; words add up. The latest version of a group
        ranks above older ones with the same score.
        """
        words = [w for w in re.split(r"[\s,]+", text.lower()) if w]
        if not words:
            raise DefinitionError("search needs at least one word")
        frame = self.features()
        lower = {
            c: pl.col(c).fill_null("").str.to_lowercase() for c in ("feature", "group", "description", "tags")
        }
        owner = pl.col("owner").fill_null("").str.to_lowercase()
        score = pl.lit(0.0)
        for word in words:
            literal = re.escape(word)
            score = (
                score
                + pl.when(lower["feature"] == word).then(10.0).otherwise(0.0)
                + pl.when(lower["feature"].str.contains(literal)).then(6.0).otherwise(0.0)
                + pl.when(lower["group"].str.contains(literal)).then(4.0).otherwise(0.0)
                + pl.when(lower["description"].str.contains(literal)).then(3.0).otherwise(0.0)
                + pl.when(lower["tags"].str.contains(literal)).then(2.0).otherwise(0.0)
                + pl.when(owner.str.contains(literal)).then(1.0).otherwise(0.0)
            )
        return (
            frame.with_columns(score.alias("score"))
            .filter(pl.col("score") > 0)
            .sort(["score", "latest_version", "ref"], descending=[True, True, False])
            .head(limit)
            .select("score", "ref", "dtype", "description", "owner", "tags", "consumers")
        )

    # ----------------------------------------------------------------- describe
    def describe(self, target: str) -> dict[str, Any]:
        """`group` (every version), `group:vN` or `group:vN:feature`."""
        if ":" not in target:
            versions = [g for g in self.repo.groups if g.name == target]
            if not versions:
                raise DefinitionError(self._unknown(target))
            return {"group": target, "versions": [self.group_entry(g) for g in versions]}
        try:
            ref = FeatureRef.parse(target)
        except DefinitionError:
            raise DefinitionError(f"'{target}': expected group, group:vN or group:vN:feature") from None
        group = self.repo.group(ref.group, ref.version)
        entry = self.group_entry(group)
        if ref.feature is None:
            return entry
        if ref.feature not in group.feature_names:
            raise DefinitionError(
                f"unknown feature '{target}': {group.ref} has {', '.join(group.feature_names)}"
            )
        return {**self.feature_entry(group, ref.feature), "group": entry}

    def _unknown(self, name: str) -> str:
        names = sorted({g.name for g in self.repo.groups})
        close = [n for n in names if name.lower() in n.lower()]
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (groups: {', '.join(names)})"
        return f"unknown feature group '{name}'{hint}"

"""The lock file: the fingerprint each group version had when it was first loaded.

`skewless.lock.json` sits beside the repository's module and is meant to be committed, like
a package lock: a code review shows a new version appear, and a definition edited without a
version bump fails to load (on every machine, in CI, in `dagster dev`) with a message that
shows what changed. New versions are added when first loaded; `skewless features retire`
marks a version retired (its online keys deleted), after which it may leave the code.

The entry also keeps the version's entity and join-key dtypes, so a retired version's keys
can be found after its definition is gone.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skewless.errors import DefinitionError
from skewless.language.feature_group import FeatureGroup
from skewless.registry.fingerprint import components, digest
from skewless.storage.offline import atomic_write

LOCK_NAME = "skewless.lock.json"


def entry_for(group: FeatureGroup) -> dict[str, Any]:
    parts = components(group)
    return {
        "fingerprint": digest(parts),
        "entity": group.entity.name,
        "join_keys": {k: str(v) for k, v in group.entity.key_schema.items()},
        "windowed": group.is_windowed,
        "components": parts,
    }


def read_lock(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"groups": {}, "retired": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            f"lock file {path} is not valid JSON ({exc}); restore it from version control"
        ) from None
    data.setdefault("groups", {})
    data.setdefault("retired", {})
    return data


def write_lock(path: Path, data: dict[str, Any]) -> None:
    """Through the one atomic local write (temp, fsync, rename, fsync of the folder): a lock
    file cut short by a crash would refuse every later load."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() == text:
        return
    atomic_write(path, text.encode())


def describe_change(ref: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    """A readable account of what differs between two fingerprints' components."""
    lines = []
    for part in ("transformation", "schema", "defaults", "windows", "source"):
        before, after = old.get(part), new.get(part)
        if before == after:
            continue
        if part == "transformation" and isinstance(before, str) and isinstance(after, str):
            diff = difflib.unified_diff(
                before.splitlines(), after.splitlines(), "locked", "now", lineterm="", n=1
            )
            lines.append("transformation changed:\n    " + "\n    ".join(list(diff)[2:]))
        elif isinstance(before, dict) and isinstance(after, dict):
            changes = []
            for key in sorted(set(before) | set(after)):
                if key not in after:
                    changes.append(f"'{key}' removed (was {before[key]})")
                elif key not in before:
                    changes.append(f"'{key}' added ({after[key]})")
                elif before[key] != after[key]:
                    changes.append(f"'{key}' {before[key]} -> {after[key]}")
            lines.append(f"{part} changed: " + "; ".join(changes))
        else:
            lines.append(
                f"{part} changed: {json.dumps(before, default=str)} -> {json.dumps(after, default=str)}"
            )
    return f"feature group '{ref}' changed without a version bump:\n  " + "\n  ".join(lines)


class LockRewrittenWarning(UserWarning):
    """A changed definition of a never-materialized version replaced its lock entry."""


def apply_lock(
    groups: list[FeatureGroup],
    path: Path,
    *,
    update: bool = True,
    in_use: Callable[[FeatureGroup], bool] | None = None,
) -> list[str]:
    """Refuse changed versions; record new ones (returns the refs added or rewritten).

    `in_use(group)` says whether values of the version exist (it was materialized or pushed
    to). A version that is not in use has nothing that could disagree with a new definition,
    so while developing one, editing it rewrites its entry instead of demanding a bump; once
    it is in use, the entry is frozen. Without `in_use` every locked version is frozen.
    """
    data = read_lock(path)
    problems = []
    added = []
    for group in groups:
        entry = entry_for(group)
        locked = data["groups"].get(group.ref)
        if group.ref in data["retired"]:
            problems.append(
                f"feature group '{group.ref}' was retired on {data['retired'][group.ref]['retired_at']} "
                "(its online keys are gone); define a new version instead of reusing this one"
            )
        elif locked is None:
            data["groups"][group.ref] = entry
            added.append(group.ref)
        elif locked["fingerprint"] != entry["fingerprint"]:
            if in_use is not None and not in_use(group):
                data["groups"][group.ref] = entry
                added.append(group.ref)
                warnings.warn(
                    f"feature group '{group.ref}' changed; it was never materialized nor pushed to, so its "
                    f"lock entry was rewritten (lock file: {path})",
                    LockRewrittenWarning,
                    stacklevel=3,
                )
                continue
            problems.append(
                describe_change(group.ref, locked.get("components", {}), entry["components"])
                + f"\n  Bump its version (version={group.version + 1}) to keep serving v{group.version} "
                "beside the new one, or undo the change."
                + (" Its values exist already (it was materialized or pushed to)." if in_use else "")
            )
    if problems:
        raise DefinitionError("\n".join(problems) + f"\n(lock file: {path})")
    if added and update:
        write_lock(path, data)
    return added


def retire(path: Path, ref: str) -> dict[str, Any]:
    """Move a version's entry to `retired`; returns the entry (entity, join keys)."""
    data = read_lock(path)
    entry = data["groups"].pop(ref, None)
    if entry is None:
        if ref in data["retired"]:
            return data["retired"][ref]
        raise DefinitionError(f"feature group '{ref}' is not in the lock file {path}")
    entry["retired_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    data["retired"][ref] = entry
    write_lock(path, data)
    return entry

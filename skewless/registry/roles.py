"""Roles in the registry: what each role resolves to, and applying them to Redis.

`skewless roles` prints `describe_roles`; `skewless roles apply` calls `apply_roles`, which
connects with the deployment's own (configured) credentials — an admin of the Redis server —
and creates one ACL user per role (two for roles that read some groups and write others;
see `skewless.storage.acl`).
"""

from __future__ import annotations

from typing import Any

from skewless.config import StoreConfig
from skewless.errors import OnlineStoreError
from skewless.repository import FeatureRepository
from skewless.storage.acl import (
    AclUser,
    acl_users,
    apply_users,
    audit_user,
    password_file,
    password_variable,
)


def role_users(repo: FeatureRepository, prefix: str) -> list[AclUser]:
    """Every Redis user the repository's roles need under `prefix`, and (when there are
    roles) the audit user their processes append audit records as."""
    users: list[AclUser] = []
    for role in repo.roles:
        access = repo.access(role.name)
        users += acl_users(prefix, role, access.read_groups, access.write_groups)
    return [*users, audit_user(prefix)] if users else users


def describe_roles(repo: FeatureRepository, prefix: str) -> list[dict[str, Any]]:
    """Each role as declared and as resolved: patterns, the group versions and services they
    reach, and the Redis users with their key patterns and commands (for review: the key
    patterns are what Redis will enforce)."""
    described = []
    for role in repo.roles:
        access = repo.access(role.name)
        described.append(
            {
                "role": role.name,
                "description": role.description,
                "admin": role.admin,
                "reads_pii": role.reads_pii,
                "read_patterns": list(role.read),
                "write_patterns": list(role.write),
                "reads": access.group_refs,
                "writes": [g.ref for g in access.write_groups],
                "services": access.service_refs,
                "redis_users": [
                    {
                        "user": user.name,
                        "access": "admin" if role.admin else ("read-write" if user.write else "read"),
                        "keys": list(user.keys),
                        "commands": " ".join(user.commands),
                    }
                    for user in acl_users(prefix, role, access.read_groups, access.write_groups)
                ],
            }
        )
    return described


def apply_roles(repo: FeatureRepository, config: StoreConfig) -> dict[str, Any]:
    """Create or update every role's Redis users on the configured online store (idempotent)
    and delete users of this prefix that no role needs any more. Passwords: see
    `skewless.storage.acl`; where each one is kept is returned."""
    from skewless.storage.online import open_online_store

    store = open_online_store(config)
    servers: list[Any] = []
    try:
        users = role_users(repo, config.key_prefix)
        try:
            servers = store.servers()
            done = apply_users(servers, users, config.key_prefix, config.state_dir)
        except OnlineStoreError:
            raise
        except Exception as exc:  # a server without ACLs, or credentials that may not use ACL
            raise OnlineStoreError(f"applying roles to Redis failed: {exc}") from exc
    finally:
        for server in servers:
            server.close()
        store.close()
    done["passwords"] = {
        user.name: f"{password_variable(user.role, w)} or {password_file(config.state_dir, user.role, w)}"
        for user in users
        for w in [user.name.endswith(".write")]
    }
    return done

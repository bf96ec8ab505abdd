"""Roles enforced by Redis itself: one ACL user per role, allowed exactly its groups' keys.

Why in Redis and not only in our code: anyone who can reach Redis with the deployment's
credentials reads everything, whatever the HTTP server checks. A role's process (a client
built with `FeatureStore(..., role=...)`, or the HTTP server answering a token of that role)
connects as the role's own Redis user, so a read of another group's key is refused by the
server (`NOPERM`) even if our code had a bug.

The model is Redis 6.2's (the embedded server), used unchanged on 7.x so both behave alike:
a user is key patterns plus allowed commands, and in 6.2 the two are independent (no
selectors, no `%R~` read-only patterns): a user allowed `SET` on one pattern may `SET` on
all its patterns. So a role that reads some groups and writes others gets **two** users:

    <prefix>.<role>          reader: read commands only, keys of every group it may read
                             (its read and write groups)
    <prefix>.<role>.write    writer (only if the role writes): read + write commands and
                             EVALSHA/SCRIPT LOAD, keys of its write groups only
    <prefix>.<role>          admin roles: one user, every key under the prefix, every
                             command except @dangerous (+INFO)

Readers get no scripting at all. Redis checks the commands a script calls against the
caller's ACL (verified on 6.2 and 7.0), so EVALSHA of a write script by a reader would fail
inside the script anyway; but a reader allowed to run scripts could still write the window
tile cache if given HSET, and a poisoned cache would serve wrong windows to every other
role. So readers never write the tile cache (`OnlineStore.read_only`): their window reads
use tiles cached by writers, or compute them from events.

Key patterns come from `online_keys` (the one module that knows the layout): a row group's
value keys `<prefix>:{<entity>:*}:<group>:v<N>`, a window group's state keys
`<prefix>:{<entity>:*}:<group>:v<N>:*`, and its freshness marker `<prefix>:_meta:<group>:v<N>`.
The `*` cannot reach into another group's keys: key values are escaped so a key holds one
`}`, and the pattern fixes everything after it.

The audit log (`storage.audit`) gets one more user, `<prefix>._audit`, shared by every role's
process: allowed `XADD` on the audit stream's key and nothing else. Readers cannot be given
`XADD` themselves: in 6.2 commands and key patterns are independent, so a reader allowed
`XADD` on the audit key could also create streams under its group keys (an entity with no
value yet), which the write guard would then fail on. A separate user keeps "append one
audit record" apart from everything a role reads, on 6.2 and 7 alike. It may not read the
stream back, trim it or append anywhere else.

Passwords: `SKEWLESS_ROLE_PASSWORD_<ROLE>` (and `..._<ROLE>_WRITE`) when set, else a file
`<state>/roles/<role>[.write].password` (mode 0600 in a 0700 folder) that `apply` creates
with a random password. Redis is given only its SHA-256 (`#<hash>`), so `ACL LIST` and the
ACL file never hold the password itself.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skewless.config import private_dirs
from skewless.errors import OnlineStoreError
from skewless.language.feature_group import FeatureGroup
from skewless.language.role import Role
from skewless.storage import online_keys as K

#: what the read path sends (values: MGET; window state: HGET/HMGET/ZRANGEBYSCORE/ZCOUNT in
#: MULTI/EXEC; freshness markers: HGETALL; health: PING) and a client's connection set-up
READ_COMMANDS: tuple[str, ...] = (
    "mget",
    "get",
    "hget",
    "hmget",
    "hgetall",
    "zrangebyscore",
    "zcount",
    "multi",
    "exec",
    "discard",
    "ping",
    "echo",
    "select",
    # a Redis Cluster client's set-up: the slot map, and the command table redis-py routes by
    "cluster|slots",
    "command",
)
#: what the write path adds: the guarded write, the window write and the marker scripts
#: (EVALSHA, SCRIPT LOAD/EXISTS) and every command those scripts call (Redis checks them)
WRITE_COMMANDS: tuple[str, ...] = (
    *READ_COMMANDS,
    "evalsha",
    "script|load",
    "script|exists",
    "set",
    "mset",
    "pexpireat",
    "hset",
    "hdel",
    "hlen",
    "hincrby",
    "zadd",
    "zrem",
    "zremrangebyscore",
    "zscore",
    "zrange",
    "del",
    "unlink",
    "time",
    # a push to a stream source appends to its stream (and a group with a vector index to
    # its updates stream); their keys are in the writer's patterns only for such groups
    "xadd",
)
ADMIN_COMMANDS: tuple[str, ...] = ("+@all", "-@dangerous", "+info")
#: the audit user's commands: one append, and a client's connection set-up
AUDIT_COMMANDS: tuple[str, ...] = ("xadd", "ping", "echo", "select", "cluster|slots", "command")
#: the audit user's "role": not a valid role name (roles start with a letter), so no clash
AUDIT_ROLE = "_audit"


def user_name(prefix: str, role: str, write: bool = False) -> str:
    """The Redis user of a role under a key prefix (users are server-wide: two deployments
    sharing a server must not share users)."""
    return f"{prefix}.{role}" + (".write" if write else "")


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def key_patterns(prefix: str, group: FeatureGroup) -> list[str]:
    """ACL key patterns (without `~`) allowing exactly one group version's keys."""
    head = glob_escape(K.entity_head(prefix, group.entity.name)) + "*"
    tail = glob_escape(K.version_tail(group.name, group.version))
    values = head + tail + (":*" if group.is_windowed else "")
    return [values, glob_escape(K.meta_key(prefix, group.name, group.version))]


def push_patterns(prefix: str, group: FeatureGroup) -> list[str]:
    """The keys besides its own a push writing `group` touches: its source's stream and the
    schema recorded with it (a `stream=True` source), its vector index's updates stream."""
    patterns = []
    if group.source.stream:
        patterns += [K.stream_key(prefix, group.source.name), K.stream_schema_key(prefix, group.source.name)]
    if group.index is not None:
        patterns.append(K.vector_updates_key(prefix, group.name, group.version))
    return [glob_escape(p) for p in patterns]


@dataclass(frozen=True)
class AclUser:
    """One Redis user of a role: its name, the rules `ACL SETUSER` is given (without the
    password), and which groups it covers (for `skewless roles` and error messages)."""

    name: str
    role: str
    write: bool
    commands: tuple[str, ...]
    keys: tuple[str, ...]
    groups: tuple[str, ...]

    def rules(self, password_hash: str) -> list[str]:
        """Every rule from scratch (`reset`), so applying twice gives the same user and a
        group removed from the role is removed from the user."""
        return ["reset", "on", f"#{password_hash}", "resetkeys", "resetchannels", "-@all", *self.commands] + [
            f"~{pattern}" for pattern in self.keys
        ]


def acl_users(
    prefix: str, role: Role, read_groups: Sequence[FeatureGroup], write_groups: Sequence[FeatureGroup]
) -> list[AclUser]:
    """The Redis users a role needs (see the module docstring): one, or two if it writes."""
    if role.admin:
        pattern = glob_escape(prefix) + ":*"
        return [AclUser(user_name(prefix, role.name), role.name, True, ADMIN_COMMANDS, (pattern,), ("*",))]
    users = [
        AclUser(
            user_name(prefix, role.name),
            role.name,
            False,
            tuple(f"+{c}" for c in READ_COMMANDS),
            tuple(p for g in read_groups for p in key_patterns(prefix, g)),
            tuple(g.ref for g in read_groups),
        )
    ]
    if write_groups:
        users.append(
            AclUser(
                user_name(prefix, role.name, write=True),
                role.name,
                True,
                tuple(f"+{c}" for c in WRITE_COMMANDS),
                tuple(
                    dict.fromkeys(
                        p for g in write_groups for p in [*key_patterns(prefix, g), *push_patterns(prefix, g)]
                    )
                ),
                tuple(g.ref for g in write_groups),
            )
        )
    return users


def audit_user(prefix: str) -> AclUser:
    """The user every role's process appends audit records as (see the module docstring)."""
    return AclUser(
        user_name(prefix, AUDIT_ROLE),
        AUDIT_ROLE,
        False,
        tuple(f"+{c}" for c in AUDIT_COMMANDS),
        (glob_escape(K.audit_key(prefix)),),
        (),
    )


def audit_credentials(prefix: str, state_dir: str | Path) -> tuple[str, str]:
    """(user, password) of the audit user (created by `skewless roles apply`)."""
    return user_name(prefix, AUDIT_ROLE), role_password(state_dir, AUDIT_ROLE)


# ---------------------------------------------------------------------- passwords
def password_variable(role: str, write: bool = False) -> str:
    return f"SKEWLESS_ROLE_PASSWORD_{role.upper()}" + ("_WRITE" if write else "")


def password_file(state_dir: str | Path, role: str, write: bool = False) -> Path:
    return Path(state_dir) / "roles" / f"{role}{'.write' if write else ''}.password"


def role_password(state_dir: str | Path, role: str, write: bool = False, create: bool = False) -> str:
    """The password of a role's user: the environment's, else the state folder's file;
    with `create`, a new random one written there (0600) when neither exists."""
    configured = os.environ.get(password_variable(role, write))
    if configured:
        return configured
    path = password_file(state_dir, role, write)
    if path.is_file():
        text = path.read_text().strip()
        if text:
            return text
    if not create:
        raise OnlineStoreError(
            f"no password for role '{role}'{' (writer)' if write else ''}: set "
            f"{password_variable(role, write)} or run `skewless roles apply` (it writes {path})"
        )
    private_dirs(path.parent)
    password = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    os.chmod(path, 0o600)
    return password


# ---------------------------------------------------------------------- applying
def apply_users(
    servers: Sequence[Any], users: Iterable[AclUser], prefix: str, state_dir: str | Path
) -> dict[str, Any]:
    """`ACL SETUSER` every user (idempotent) and `ACL DELUSER` this prefix's users that no
    role needs any more (a removed role must lose its access), on every server in `servers`
    (`OnlineStore.servers()`: one for a single Redis; every primary and replica of a cluster,
    since Redis does not propagate ACL users between nodes and a replica that missed them
    would refuse the role, or after a failover let a dropped role in). Returns what was done."""
    wanted = list(users)
    hashes = {}
    for user in wanted:
        password = role_password(state_dir, user.role, write=user.write and not _is_admin(user), create=True)
        hashes[user.name] = hashlib.sha256(password.encode()).hexdigest()
    names = {u.name for u in wanted}
    stale: dict[str, None] = {}
    for server in servers:
        where = _server_name(server)
        for user in wanted:
            try:
                server.execute_command("ACL", "SETUSER", user.name, *user.rules(hashes[user.name]))
            except Exception as exc:
                raise OnlineStoreError(
                    f"ACL SETUSER {user.name} (role '{user.role}') was refused by {where}: {exc}"
                ) from exc
        listed = [n.decode() if isinstance(n, bytes) else n for n in server.execute_command("ACL", "USERS")]
        extra = [name for name in listed if name.startswith(f"{prefix}.") and name not in names]
        if extra:
            server.execute_command("ACL", "DELUSER", *extra)
            stale.update(dict.fromkeys(extra))
    return {"applied": [u.name for u in wanted], "deleted": list(stale), "servers": len(servers)}


def _server_name(server: Any) -> str:
    """`host:port` of a redis-py client, for messages (never its credentials)."""
    kwargs = getattr(getattr(server, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"the Redis at {kwargs['path']}"
    return f"the Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _is_admin(user: AclUser) -> bool:
    return user.commands == ADMIN_COMMANDS


def connection_user(prefix: str, state_dir: str | Path, role: Role, write: bool = False) -> tuple[str, str]:
    """(user, password) a process of `role` connects with: its writer user for writes when
    it has one, its admin user for anything when admin, else its reader."""
    if role.admin:
        return user_name(prefix, role.name), role_password(state_dir, role.name)
    if write and role.write:
        return user_name(prefix, role.name, write=True), role_password(state_dir, role.name, write=True)
    return user_name(prefix, role.name), role_password(state_dir, role.name)

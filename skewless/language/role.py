"""Roles: who may read and write which feature group versions, declared with the features.

A role is part of the feature repository (not of a server's configuration file) because the
thing it guards — a group version's values — is defined there: a new version, a renamed
group or a new service is reviewed together with who may see it, and `FeatureRepository`
refuses a pattern that matches nothing (a typo in an access rule must never pass silently).

Patterns are `fnmatch` patterns over refs `name:vN` of feature groups *and* feature
services: `"user_*:v2"` (every version-2 group whose name starts with `user_`),
`"fraud_model:*"` (every version of the service, i.e. every group version it reads). A
pattern without `:` means every version (`"user_stats"` = `"user_stats:*"`).

What a role grants is enforced by the stores themselves: `skewless roles apply` gives each
role a Redis ACL user whose key patterns allow exactly its groups' keys
(`skewless.storage.acl`), so a denied read fails at the server, not only in our code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from skewless.errors import DefinitionError

# Role names become Redis ACL user names and file names: plain, lower case, no separators
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _patterns(value: Sequence[str] | str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a str is a sequence: "x" would become the patterns x
        raise DefinitionError(f"{where} must be a list of patterns, got the string {value!r}")
    out = []
    for pattern in value:
        if not isinstance(pattern, str) or not pattern.strip() or any(c.isspace() for c in pattern):
            raise DefinitionError(f"{where}: {pattern!r} is not a pattern (non-empty, no whitespace)")
        out.append(pattern if ":" in pattern else f"{pattern}:*")
    return tuple(out)


@dataclass(frozen=True)
class Role:
    """`Role("fraud_analyst", read=["user_*:v2", "fraud_model:*"], write=[], admin=False)`.

    - `read`: group versions (or services, meaning the group versions they read) whose
      values the role may read online and in training sets;
    - `write`: group versions the role may write (materialize, push); writing implies
      reading them (the write guard compares with the stored value);
    - `admin`: every key under the deployment's prefix and every non-dangerous command
      (retirement, deleting a prefix, loading scripts), for the pipelines' own identity;
    - `pii`: the role may read, in clear, the `pii` features of the groups it reads
      (online lookups and training sets). Without it those features are refused with
      `AccessDenied` (never served as ciphertext); the group's other features stay readable.
      Admin roles read pii. A flag rather than patterns because what is personal is
      declared on the features themselves, and `read=` already says which groups.

    Roles grant whole group versions: a Redis value holds every feature of its group, so a
    role cannot be given some features of a group and not others (split the group instead).
    """

    name: str
    read: Sequence[str] = ()
    write: Sequence[str] = ()
    admin: bool = False
    description: str = ""
    pii: bool = False

    @property
    def reads_pii(self) -> bool:
        """Whether the role may read pii features in clear (granted, or admin)."""
        return self.admin or self.pii

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ROLE_RE.match(self.name):
            raise DefinitionError(
                f"role name {self.name!r} is invalid: use lower-case letters, digits and '_', "
                "starting with a letter (it becomes a Redis ACL user name)"
            )
        where = f"role '{self.name}'"
        object.__setattr__(self, "read", _patterns(self.read, f"{where} read"))
        object.__setattr__(self, "write", _patterns(self.write, f"{where} write"))
        if not isinstance(self.admin, bool):
            raise DefinitionError(f"{where}: admin must be True or False, got {self.admin!r}")
        if not isinstance(self.pii, bool):
            raise DefinitionError(f"{where}: pii must be True or False, got {self.pii!r}")
        if not (self.read or self.write or self.admin):
            raise DefinitionError(f"{where} grants nothing: give it read=[...], write=[...] or admin=True")

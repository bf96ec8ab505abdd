"""Entities: the named join keys that feature rows and label rows are matched on."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from skewless.errors import DefinitionError
from skewless.language.dtypes import is_supported_key_dtype, normalize_dtype

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_name(name: Any, what: str) -> str:
    """Names become Dagster asset keys, Redis key parts and folder names: keep them plain."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(
            f"{what} name {name!r} is invalid: use letters, digits and '_', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Entity:
    """A named join key, possibly composite: `Entity("user", {"user_id": pl.Int64})`.

    Key dtypes are declared (not inferred) so a label frame with a mistyped key column is
    refused before any join runs, instead of silently matching nothing.
    """

    name: str
    join_keys: Mapping[str, Any]
    description: str = ""
    _keys: tuple[tuple[str, pl.DataType], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name, "entity")
        if not isinstance(self.join_keys, Mapping) or not self.join_keys:
            raise DefinitionError(
                f"entity '{self.name}': join_keys must be a non-empty mapping of "
                f"column name to Polars dtype, e.g. {{'user_id': pl.Int64}}"
            )
        keys = []
        for column, dtype in self.join_keys.items():
            check_name(column, f"entity '{self.name}' join key")
            try:
                dtype = normalize_dtype(dtype)
            except TypeError:
                raise DefinitionError(
                    f"entity '{self.name}': join key '{column}' has dtype {dtype!r}, "
                    "which is not a Polars dtype"
                ) from None
            if not is_supported_key_dtype(dtype):
                raise DefinitionError(
                    f"entity '{self.name}': join key '{column}' has dtype {dtype}; "
                    "join keys must be integers or strings"
                )
            keys.append((column, dtype))
        object.__setattr__(self, "_keys", tuple(keys))

    @property
    def key_columns(self) -> list[str]:
        return [name for name, _ in self._keys]

    @property
    def key_schema(self) -> dict[str, pl.DataType]:
        return dict(self._keys)

"""Feature services: the versioned contract between a model and the feature versions it uses."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from skewless.errors import DefinitionError
from skewless.language.entity import check_name
from skewless.language.quality import Drift
from skewless.language.source import Source

_REF_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*):v?(\d+)(?::([A-Za-z][A-Za-z0-9_]*))?$")


@dataclass(frozen=True, order=True)
class FeatureRef:
    """`group:vN:feature`, or `group:vN` meaning every feature of that group version."""

    group: str
    version: int
    feature: str | None = None

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        match = _REF_RE.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise DefinitionError(
                f"feature reference {text!r} is invalid: expected 'group:vN:feature' or 'group:vN'"
            )
        return cls(match.group(1), int(match.group(2)), match.group(3))

    @property
    def group_ref(self) -> str:
        return f"{self.group}:v{self.version}"

    def __str__(self) -> str:
        return self.group_ref + (f":{self.feature}" if self.feature else "")


@dataclass(frozen=True)
class FeatureService:
    """A named, versioned list of feature references that a model is pinned to.

    With `labels` (a source whose rows carry the entities' join keys and whose
    `timestamp_field` is the label time), the service also gets a training-set asset, so the
    lineage graph shows which feature versions each training set was built from. `skew`
    holds the thresholds for comparing served feature vectors with that training set;
    `models` names the models consuming the service (they appear as assets downstream of it,
    so impact analysis reaches them).
    """

    name: str
    features: Sequence[str]
    version: int = 1
    description: str = ""
    owner: str | None = None
    labels: Source | None = None
    skew: Drift = field(default_factory=Drift)
    models: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "feature service")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise DefinitionError(
                f"feature service '{self.name}': version must be a positive integer, got {self.version!r}"
            )
        if isinstance(self.features, str) or not self.features:
            raise DefinitionError(f"feature service '{self.ref}': features must be a non-empty list")
        refs = []
        for text in self.features:
            try:
                refs.append(FeatureRef.parse(text))
            except DefinitionError as exc:
                raise DefinitionError(f"feature service '{self.ref}': {exc}") from None
        object.__setattr__(self, "features", tuple(str(r) for r in refs))
        models = [self.models] if isinstance(self.models, str) else list(self.models)
        for model in models:
            check_name(model, "model")
        object.__setattr__(self, "models", tuple(models))
        if not isinstance(self.skew, Drift):
            raise DefinitionError(f"feature service '{self.ref}': skew must be a Drift(...)")
        if self.labels is not None and not isinstance(self.labels, Source):
            raise DefinitionError(
                f"feature service '{self.ref}': labels must be a FileSource or DuckDBSource, "
                f"got {type(self.labels).__name__}"
            )

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def refs(self) -> list[FeatureRef]:
        return [FeatureRef.parse(text) for text in self.features]

"""Data-quality declarations: expectations and drift thresholds, attached to definitions.

They are plain values so a repository loads without importing Great Expectations (several
seconds); the checks that evaluate them import it only when a group declares expectations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from skewless.errors import DefinitionError
from skewless.language.durations import parse_duration

_EXPECTATION_RE = re.compile(r"^expect_[a-z0-9_]+$")


@dataclass(frozen=True)
class Expectation:
    """One Great Expectations expectation, by its snake_case type and keyword arguments.

    `Expectation("expect_column_mean_to_be_between", "amount", min_value=5, max_value=80)`.
    On a `Feature` the column may be left out: it is the feature. Any expectation Great
    Expectations knows works (`ExpectColumnMeanToBeBetween` is the class behind the example).
    """

    type: str
    column: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, type: str, column: str | None = None, **kwargs: Any) -> None:
        if not isinstance(type, str) or not _EXPECTATION_RE.match(type):
            raise DefinitionError(
                f"expectation {type!r}: give the snake_case type, e.g. 'expect_column_values_to_be_between'"
            )
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "column", column)
        object.__setattr__(self, "kwargs", dict(kwargs))

    def __hash__(self) -> int:
        return hash((self.type, self.column, repr(sorted(self.kwargs.items()))))

    def for_column(self, column: str) -> Expectation:
        if self.column not in (None, column):
            raise DefinitionError(
                f"expectation {self.type} on feature '{column}' names another column '{self.column}'"
            )
        return Expectation(self.type, column, **self.kwargs)

    @property
    def class_name(self) -> str:
        """The Great Expectations class, e.g. ExpectColumnValuesToBeBetween."""
        return "".join(part.capitalize() for part in self.type.split("_"))

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.type}({self.column or ''}{', ' if self.column and args else ''}{args})"


@dataclass(frozen=True)
class Drift:
    """Distribution-drift thresholds of a group (or a feature service's served features).

    Each new partition is compared per feature with a reference: the `reference` span of
    days before it (e.g. "7d"), or, with `reference_service="model:vN"`, the training set of
    that feature service. The score is the population stability index (PSI over `bins`
    quantile bins of the reference; categories for strings and booleans); numeric features
    also get the Kolmogorov-Smirnov statistic. Above `warn` the check warns, above `error`
    it fails and blocks the partition. PSI 0.1 / 0.25 are the customary thresholds.
    """

    warn: float = 0.1
    error: float = 0.25
    reference: str | timedelta = "7d"
    reference_service: str | None = None
    bins: int = 10
    min_rows: int = 50
    _span: timedelta = field(init=False, repr=False, compare=False, default=timedelta(days=7))

    def __post_init__(self) -> None:
        if not (0 < self.warn <= self.error):
            raise DefinitionError(
                f"drift thresholds must satisfy 0 < warn <= error, got {self.warn}, {self.error}"
            )
        if not isinstance(self.bins, int) or self.bins < 2:
            raise DefinitionError(f"drift bins must be an integer >= 2, got {self.bins!r}")
        span = parse_duration(self.reference, what="drift reference")
        if span is None or span < timedelta(days=1):
            raise DefinitionError(f"drift reference must be at least one day, got {self.reference!r}")
        object.__setattr__(self, "_span", span)

    @property
    def span(self) -> timedelta:
        return self._span

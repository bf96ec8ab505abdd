"""The result of one data-quality check, independent of Dagster.

Checks return `CheckOutcome`s so the same evaluation serves the asset (as an
`AssetCheckResult`), the CLI and tests; `feature_assets/checks.py` renders them for the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl


@dataclass
class CheckOutcome:
    """`passed` false with severity ERROR blocks publishing; WARN is shown and does not."""

    name: str
    passed: bool
    description: str
    severity: Literal["ERROR", "WARN"] = "ERROR"
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        return not self.passed and self.severity == "ERROR"

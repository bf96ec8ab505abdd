"""Terminal output of the registry commands: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

import polars as pl

DESCRIBED_FIELDS = [
    "ref",
    "entity",
    "join_keys",
    "source",
    "kind",
    "transformation",
    "description",
    "owner",
    "tags",
    "ttl",
    "freshness",
    "fingerprint",
    "expectations",
    "drift",
    "consumers",
    "offline",
    "online",
    "last_materialization",
]


def print_json(data: Any) -> None:
    if isinstance(data, pl.DataFrame):
        data = data.to_dicts()
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _console() -> Any:
    from rich.console import Console

    return Console(width=max(120, Console().width))


def print_frame(frame: pl.DataFrame, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in frame.columns:
        table.add_column(column, no_wrap=column == "ref", overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else (f"{v:g}" if isinstance(v, float) else str(v)) for v in row))
    _console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return (
            ", ".join(f"{k}={_cell(v)}" if v not in ("", None) else str(k) for k, v in value.items()) or "-"
        )
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def print_group(entry: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"feature group {entry['ref']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field in DESCRIBED_FIELDS:
        if field in entry:
            table.add_row(field, _cell(entry[field]))
    console.print(table)
    features = Table(title=f"schema of {entry['ref']}", header_style="bold")
    for column in (
        "feature",
        "dtype",
        "default",
        "nullable",
        "range / values",
        "window",
        "description",
        "consumers",
    ):
        features.add_column(column, overflow="fold")
    for feature in entry["features"]:
        bounds = ""
        if feature["min_value"] is not None or feature["max_value"] is not None:
            bounds = f"[{_cell(feature['min_value'])}, {_cell(feature['max_value'])}]"
        if feature["allowed_values"]:
            bounds = _cell(feature["allowed_values"])
        features.add_row(
            feature["name"],
            feature["dtype"],
            _cell(feature["default"]),
            str(feature["nullable"]),
            bounds,
            _cell(feature["window"]),
            feature["description"] or "",
            _cell(feature["consumers"]),
        )
    console.print(features)


def print_described(described: dict[str, Any]) -> None:
    if "versions" in described:
        for entry in described["versions"]:
            print_group(entry)
    elif "features" in described:
        print_group(described)
    else:
        from rich.table import Table

        table = Table(title=f"feature {described['group']['ref']}:{described['name']}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for field in (
            "dtype",
            "description",
            "default",
            "window",
            "nullable",
            "min_value",
            "max_value",
            "allowed_values",
            "consumers",
        ):
            table.add_row(field, _cell(described.get(field)))
        group = described["group"]
        for field in (
            "entity",
            "source",
            "owner",
            "ttl",
            "freshness",
            "fingerprint",
            "offline",
            "online",
            "last_materialization",
        ):
            table.add_row(f"group {field}", _cell(group.get(field)))
        _console().print(table)


def print_impact(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"downstream of {result['target']}", header_style="bold")
    table.add_column("kind")
    table.add_column("assets", overflow="fold")
    for kind, items in result.items():
        if kind == "target":
            continue
        table.add_row(kind.replace("_", " "), ", ".join(items) if items else "-")
    _console().print(table)

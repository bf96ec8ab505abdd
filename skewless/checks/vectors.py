"""Checks on `Vector` features: the right size, finite, unit norm when declared normalized.

Run on every partition (the `vectors` check of the offline asset, blocking) and on every push
and micro-batch (through `declared_violations`), so no write path stores a vector the index
or a model would choke on: one NaN makes every distance to it NaN, a wrong norm silently
changes what cosine-as-inner-product ranks first. The arithmetic is numpy over the column's
(rows, dim) matrix — one pass, no Python per row.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.errors import TransformationError
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.vectors import NORM_TOLERANCE


def prepare_vectors(
    group: FeatureGroup, frame: pl.LazyFrame, schema: pl.Schema
) -> tuple[pl.LazyFrame, pl.Schema, list[str]]:
    """Accept what embedding code usually returns: a float64 array (cast to float32) or a list
    column (cast once each row's length is checked, in `finish_vectors`).

    Returns the frame, the schema the declared-schema check should see, and the list columns
    still to be checked; anything else is left for the schema check to refuse by name.
    """
    casts, lists = [], []
    seen = dict(schema)
    for feature in group.vector_features:
        have = schema.get(feature.name)
        assert feature.vector is not None
        if have is None or have == feature.polars_dtype:
            continue
        if isinstance(have, pl.Array) and have.inner.is_numeric() and have.size == feature.vector.dim:
            casts.append(pl.col(feature.name).cast(feature.polars_dtype))
            seen[feature.name] = feature.polars_dtype
        elif isinstance(have, pl.List) and have.inner.is_numeric():
            casts.append(pl.col(feature.name).cast(pl.List(pl.Float32)))
            seen[feature.name] = feature.polars_dtype
            lists.append(feature.name)
    return (frame.with_columns(casts) if casts else frame), pl.Schema(seen), lists


def finish_vectors(group: FeatureGroup, rows: pl.DataFrame, lists: list[str]) -> pl.DataFrame:
    """Cast checked list columns to their declared arrays; a row of another length is a
    `TransformationError` naming the feature, the lengths found and the first rows."""
    for name in lists:
        vector = group.feature(name).vector
        assert vector is not None
        lengths = rows.get_column(name).list.len()
        bad = rows.filter((lengths != vector.dim).fill_null(False))
        if bad.height:
            found = sorted(set(bad.get_column(name).list.len().head(1000).to_list()))
            raise TransformationError(
                f"feature group '{group.ref}': feature '{name}' is {vector} but {bad.height} rows have "
                f"another length ({', '.join(map(str, found[:5]))}); first rows: {_first_rows(group, bad)}"
            )
        rows = rows.with_columns(pl.col(name).list.to_array(vector.dim))
    return rows


def _first_rows(group: FeatureGroup, rows: pl.DataFrame, n: int = 3) -> str:
    keys = [*group.entity.key_columns, EVENT_TIMESTAMP]
    label = pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=" @ ", ignore_nulls=True)
    return "; ".join(rows.head(n).select(label).to_series().to_list())


def vector_matrix(series: pl.Series) -> np.ndarray:
    """The non-null vectors of an Array column as a (rows, dim) float32 matrix (null
    elements become NaN, so they count as not finite)."""
    values = series.drop_nulls()
    if values.len() == 0:
        dim = series.dtype.size if isinstance(series.dtype, pl.Array) else 0
        return np.zeros((0, dim), dtype=np.float32)
    return np.asarray(values.to_numpy(), dtype=np.float32)


def check_vectors(group: FeatureGroup, rows: pl.DataFrame) -> CheckOutcome | None:
    """Finite values and (declared) unit norms of every Vector feature; None without any."""
    features = group.vector_features
    if not features:
        return None
    table, problems = [], []
    for feature in features:
        vector = feature.vector
        assert vector is not None
        column = rows.get_column(feature.name)
        present = column.is_not_null()
        matrix = vector_matrix(column)
        finite = np.isfinite(matrix).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(matrix), matrix, 0.0), axis=1)
        off_norm = (
            finite & (np.abs(norms - 1.0) > NORM_TOLERANCE) if vector.normalized else np.zeros_like(finite)
        )
        bad_mask = ~finite | off_norm
        n_bad = int(bad_mask.sum())
        row = {
            "feature": feature.name,
            "declared": str(vector),
            "vectors": int(matrix.shape[0]),
            "nulls": int(column.null_count()),
            "not_finite": int((~finite).sum()),
            "not_unit_norm": int(off_norm.sum()),
            "norm_min": float(norms[finite].min()) if finite.any() else None,
            "norm_mean": float(norms[finite].mean()) if finite.any() else None,
            "norm_max": float(norms[finite].max()) if finite.any() else None,
            "first_rows": "",
        }
        if n_bad:
            failing = rows.filter(present).filter(pl.Series(bad_mask))
            row["first_rows"] = _first_rows(group, failing)
            kinds = []
            if row["not_finite"]:
                kinds.append(f"{row['not_finite']} with NaN or infinite values")
            if row["not_unit_norm"]:
                kinds.append(
                    f"{row['not_unit_norm']} normalized=True vectors with a norm off 1 by more than "
                    f"{NORM_TOLERANCE} (norms {row['norm_min']:.4g}..{row['norm_max']:.4g})"
                )
            problems.append(f"{feature.name} ({vector}): {' and '.join(kinds)}; e.g. {row['first_rows']}")
        table.append(row)
    frame = pl.DataFrame(table)
    checked = int(frame["vectors"].sum())
    if problems:
        return CheckOutcome(
            "vectors",
            passed=False,
            description=f"{group.ref}: invalid vectors in {rows.height} rows: {'; '.join(problems)}",
            tables={"vectors": frame},
            values={
                "vectors_checked": checked,
                "invalid": int(frame["not_finite"].sum() + frame["not_unit_norm"].sum()),
            },
        )
    return CheckOutcome(
        "vectors",
        passed=True,
        description=f"{group.ref}: {checked} vectors finite"
        + (", unit norm" if any(f.vector and f.vector.normalized for f in features) else "")
        + f" ({', '.join(str(f.vector) for f in features)})",
        tables={"vectors": frame},
        values={"vectors_checked": checked, "invalid": 0},
    )

"""Distribution drift: population stability index and Kolmogorov-Smirnov, per feature.

PSI = sum over bins of (p_new - p_ref) * ln(p_new / p_ref). Numeric features are binned at
the reference's quantiles (so each reference bin holds about the same share), categorical
ones (strings, booleans) by value; nulls are a bin of their own in both cases, so a feature
that starts arriving null drifts. Empty bins are floored at `EPSILON` so a bin seen on one
side only gives a large but finite score. KS is the largest gap between the two empirical
CDFs (numeric features only).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from skewless.checks.outcome import CheckOutcome
from skewless.language.quality import Drift

EPSILON = 1e-4
NULL_BIN = "<null>"


def _numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and dtype != pl.Boolean


def psi_numeric(reference: pl.Series, current: pl.Series, bins: int = 10) -> float:
    ref = reference.drop_nulls().cast(pl.Float64).to_numpy()
    cur = current.drop_nulls().cast(pl.Float64).to_numpy()
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1])) if ref.size else np.array([])
    # bin i holds values in (edges[i-1], edges[i]]; values beyond the reference's range land
    # in the outer bins, which is where a shift shows up
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=edges.size + 1)
    ref_counts = np.append(ref_counts, reference.null_count())
    cur_counts = np.append(cur_counts, current.null_count())
    return _psi(ref_counts, cur_counts)


def psi_categorical(reference: pl.Series, current: pl.Series) -> float:
    def counts(s: pl.Series) -> pl.DataFrame:
        return s.cast(pl.String).fill_null(NULL_BIN).alias("value").value_counts(name="n")

    joined = counts(reference).join(counts(current), on="value", how="full", coalesce=True, suffix="_cur")
    joined = joined.fill_null(0)
    return _psi(joined["n"].to_numpy(), joined["n_cur"].to_numpy())


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    ref_total, cur_total = ref_counts.sum(), cur_counts.sum()
    if ref_total == 0 or cur_total == 0:
        return float("nan")
    p_ref = np.maximum(ref_counts / ref_total, EPSILON)
    p_cur = np.maximum(cur_counts / cur_total, EPSILON)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


def ks_statistic(reference: pl.Series, current: pl.Series) -> float:
    ref = np.sort(reference.drop_nulls().cast(pl.Float64).to_numpy())
    cur = np.sort(current.drop_nulls().cast(pl.Float64).to_numpy())
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    points = np.sort(np.concatenate([ref, cur]))  # sorted queries: searchsorted walks memory in order
    cdf_ref = np.searchsorted(ref, points, side="right") / ref.size
    cdf_cur = np.searchsorted(cur, points, side="right") / cur.size
    return float(np.max(np.abs(cdf_ref - cdf_cur)))


MAX_SAMPLE = 50_000


def _capped(frame: pl.DataFrame) -> pl.DataFrame:
    """A seeded sample of at most MAX_SAMPLE rows: the scores' sampling error at that size
    (about 0.01 for KS, 0.0003 for PSI over 10 bins) is far below any useful threshold."""
    return frame.sample(MAX_SAMPLE, seed=0) if frame.height > MAX_SAMPLE else frame


def drift_scores(
    reference: pl.DataFrame, current: pl.DataFrame, columns: dict[str, pl.DataType], bins: int = 10
) -> pl.DataFrame:
    """One row per column: PSI, and KS for numeric columns."""
    reference, current = _capped(reference), _capped(current)
    rows = []
    for column, dtype in columns.items():
        ref, cur = reference.get_column(column), current.get_column(column)
        if _numeric(dtype):
            rows.append((column, "numeric", psi_numeric(ref, cur, bins), ks_statistic(ref, cur)))
        elif dtype in (pl.String, pl.Boolean) or isinstance(dtype, pl.Categorical | pl.Enum):
            rows.append((column, "categorical", psi_categorical(ref, cur), None))
    return pl.DataFrame(
        rows,
        schema={"feature": pl.String, "kind": pl.String, "psi": pl.Float64, "ks": pl.Float64},
        orient="row",
    )


def drift_outcome(
    subject: str,
    policy: Drift,
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: dict[str, pl.DataType],
    *,
    name: str = "drift",
    reference_label: str,
) -> CheckOutcome:
    """Scores against the policy's thresholds: above `error` fails (blocking), above `warn` warns."""
    values = {"reference": reference_label, "reference_rows": reference.height, "rows": current.height}
    if reference.height < policy.min_rows or current.height < policy.min_rows:
        return CheckOutcome(
            name,
            passed=True,
            severity="WARN",
            description=(
                f"{subject}: not enough rows to score drift (reference {reference.height}, "
                f"new {current.height}, need {policy.min_rows}); {reference_label}"
            ),
            values=values,
        )
    scores = drift_scores(reference, current, columns, policy.bins).with_columns(
        pl.when(pl.col("psi") > policy.error)
        .then(pl.lit("error"))
        .when(pl.col("psi") > policy.warn)
        .then(pl.lit("warn"))
        .otherwise(pl.lit("ok"))
        .alias("status")
    )
    worst = scores.sort("psi", descending=True, nulls_last=True).head(1)
    worst_text = (
        f"worst {worst['feature'][0]} PSI {worst['psi'][0]:.3f}" if worst.height else "no features scored"
    )
    errors = scores.filter(pl.col("status") == "error")["feature"].to_list()
    warns = scores.filter(pl.col("status") == "warn")["feature"].to_list()
    values |= {
        "max_psi": float(worst["psi"][0]) if worst.height else 0.0,
        "warn": policy.warn,
        "error": policy.error,
    }
    if errors:
        return CheckOutcome(
            name,
            passed=False,
            description=(
                f"{subject}: PSI above {policy.error} for {', '.join(errors)} ({worst_text}) "
                f"vs {reference_label}"
            ),
            tables={"scores": scores},
            values=values,
        )
    if warns:
        return CheckOutcome(
            name,
            passed=False,
            severity="WARN",
            description=(
                f"{subject}: PSI above {policy.warn} for {', '.join(warns)} ({worst_text}) "
                f"vs {reference_label}"
            ),
            tables={"scores": scores},
            values=values,
        )
    return CheckOutcome(
        name,
        passed=True,
        description=f"{subject}: no drift ({worst_text}) vs {reference_label}",
        tables={"scores": scores},
        values=values,
    )

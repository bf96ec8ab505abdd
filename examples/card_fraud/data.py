"""Deterministic synthetic data for the card-fraud example.

The same seed, sizes and end date give the same bytes. Events end at the start of `end`
(UTC midnight, default today), so every generated day is a complete daily partition.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

CATEGORIES = ["grocery", "fuel", "travel", "electronics", "restaurants", "online", "pharmacy", "fashion"]
SEGMENTS = ["student", "standard", "premium", "business"]
CHANNELS = ["pos", "online", "atm"]


def default_end() -> date:
    return datetime.now(UTC).date()


def _write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    frame.write_parquet(temp)
    temp.replace(path)


def generate(
    out_dir: str | Path,
    *,
    users: int = 2_000,
    merchants: int = 300,
    days: int = 14,
    txns_per_user_day: float = 1.5,
    end: date | None = None,
    seed: int = 7,
) -> dict[str, int]:
    """Write transactions (one file per day), user profile snapshots and merchant risk scores."""
    out = Path(out_dir)
    # a fresh data set: events pushed into the previous one (kept with the source) go too
    shutil.rmtree(out / "transactions" / "_pushed", ignore_errors=True)
    end = end or default_end()
    start = end - timedelta(days=days)
    start_us = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1_000_000)
    span_us = days * 86_400_000_000
    rng = np.random.default_rng(seed)

    # Users: a segment and a credit limit, plus a few limit changes during the period; some
    # changes are corrected later (same event time, later created time).
    user_ids = np.arange(1, users + 1, dtype=np.int64)
    segments = rng.choice(len(SEGMENTS), size=users, p=[0.2, 0.5, 0.2, 0.1])
    limits = np.round(rng.lognormal(8.0, 0.5, size=users), -2)
    base = pl.DataFrame(
        {
            "user_id": user_ids,
            "segment": np.array(SEGMENTS)[segments],
            "credit_limit": limits,
            "updated_at": np.full(users, start_us, dtype=np.int64),
        }
    )
    n_changes = users // 2
    who = rng.integers(0, users, size=n_changes)
    changes = pl.DataFrame(
        {
            "user_id": user_ids[who],
            "segment": np.array(SEGMENTS)[segments[who]],
            "credit_limit": np.round(limits[who] * rng.uniform(0.5, 2.0, size=n_changes), -2),
            "updated_at": start_us + rng.integers(0, span_us, size=n_changes),
        }
    )
    corrections = changes.head(max(1, n_changes // 10)).with_columns(pl.col("credit_limit") + 100.0)
    profiles = (
        pl.concat(
            [
                base.with_columns(pl.col("updated_at").alias("created_at")),
                changes.with_columns(pl.col("updated_at").alias("created_at")),
                corrections.with_columns((pl.col("updated_at") + 3_600_000_000).alias("created_at")),
            ]
        )
        .with_columns(
            pl.col("updated_at").cast(pl.Datetime("us", "UTC")),
            pl.col("created_at").cast(pl.Datetime("us", "UTC")),
        )
        .sort(["user_id", "updated_at", "created_at"])
    )
    _write(profiles, out / "user_profiles.parquet")

    # Merchants: a daily risk score snapshot.
    merchant_ids = np.arange(1, merchants + 1, dtype=np.int64)
    category = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), size=merchants)]
    base_risk = rng.beta(2, 20, size=merchants)
    risk_rows = []
    for day in range(days):
        noise = rng.normal(0, 0.01, size=merchants)
        risk_rows.append(
            pl.DataFrame(
                {
                    "merchant_id": merchant_ids,
                    "category": category,
                    "risk_score": np.clip(base_risk + noise, 0, 1),
                    "scored_at": np.full(merchants, start_us + day * 86_400_000_000 + 3_600_000_000),
                }
            )
        )
    risk = pl.concat(risk_rows).with_columns(pl.col("scored_at").cast(pl.Datetime("us", "UTC")))
    _write(risk, out / "merchant_risk.parquet")

    # Transactions: one file per day, a fraud label, amounts by merchant category.
    n = int(users * days * txns_per_user_day)
    tx_user = rng.integers(1, users + 1, size=n)
    tx_merchant = rng.integers(1, merchants + 1, size=n)
    tx_time = np.sort(start_us + rng.integers(0, span_us, size=n))
    amount = np.round(rng.lognormal(3.5, 1.0, size=n), 2)
    foreign = rng.random(size=n) < 0.08
    channel = np.array(CHANNELS)[rng.choice(3, size=n, p=[0.6, 0.35, 0.05])]
    fraud_p = 0.004 + 0.05 * foreign + 0.3 * base_risk[tx_merchant - 1] * (amount > 200)
    is_fraud = rng.random(size=n) < fraud_p
    transactions = pl.DataFrame(
        {
            "transaction_id": np.arange(1, n + 1, dtype=np.int64),
            "user_id": tx_user.astype(np.int64),
            "merchant_id": tx_merchant.astype(np.int64),
            "amount": amount,
            "currency_foreign": foreign,
            "channel": channel,
            "is_fraud": is_fraud,
            "ts": tx_time,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    day_col = transactions["ts"].dt.date()
    for day, part in transactions.with_columns(day_col.alias("_d")).partition_by("_d", as_dict=True).items():
        (d,) = day
        _write(part.drop("_d"), out / "transactions" / f"date={d.isoformat()}" / "part-0.parquet")
    return {
        "transactions": transactions.height,
        "user_profile_rows": profiles.height,
        "merchant_risk_rows": risk.height,
        "first_day": start.toordinal(),
        "days": days,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--merchants", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--end", type=date.fromisoformat, default=None)
    args = parser.parse_args()
    print(generate(args.out_dir, users=args.users, merchants=args.merchants, days=args.days, end=args.end))


if __name__ == "__main__":
    main()

"""The card-fraud feature repository: three entities, six groups (two in two versions), one
of them an embedding with a vector index."""

from __future__ import annotations

import polars as pl

from skewless import (
    Aggregation,
    Drift,
    Entity,
    Expectation,
    Feature,
    FeatureGroup,
    FeatureService,
    FileSource,
    Vector,
    VectorIndex,
)
from skewless.config import home

DATA = home(__file__) / "data"  # the repository's state folder, wherever the command runs

user = Entity("user", {"user_id": pl.Int64}, description="A card holder")
merchant = Entity("merchant", {"merchant_id": pl.Int64}, description="A card acceptor")
user_merchant = Entity(
    "user_merchant", {"user_id": pl.Int64, "merchant_id": pl.Int64}, description="A card holder at a merchant"
)

transactions = FileSource(
    "transactions",
    path=DATA / "transactions",
    timestamp_field="ts",
    id_field="transaction_id",
    stream=True,
    start_date="2026-10-01",
    description="Card transactions, one Parquet file per day",
    owner="team:payments",
)
user_profiles = FileSource(
    "user_profiles",
    path=DATA / "user_profiles.parquet",
    timestamp_field="updated_at",
    created_timestamp_field="created_at",
    start_date="2026-10-01",
    description="Profile snapshots; corrections share the event time with a later created_at",
    owner="team:accounts",
)
merchant_scores = FileSource(
    "merchant_scores",
    path=DATA / "merchant_risk.parquet",
    timestamp_field="scored_at",
    start_date="2026-10-01",
    description="Daily merchant risk scores from the risk team",
    owner="team:risk",
)


def _last_transaction_v1(events: pl.LazyFrame) -> pl.LazyFrame:
    return events.select(
        "user_id",
        "ts",
        pl.col("amount").alias("last_amount"),
        pl.col("channel").alias("last_channel"),
        pl.col("currency_foreign").alias("last_foreign"),
    )


def _last_transaction_v2(events: pl.LazyFrame) -> pl.LazyFrame:
    # v2 adds a log amount (heavy-tailed amounts) and an hour-of-day feature.
    return _last_transaction_v1(events).with_columns(
        pl.col("last_amount").log1p().alias("last_amount_log"),
        pl.col("ts").dt.hour().cast(pl.Int8).alias("last_hour"),
    )


_last_txn_features = [
    Feature(
        "last_amount",
        pl.Float64,
        default=0.0,
        description="Amount of the latest transaction",
        nullable=False,
        min_value=0.0,
    ),
    Feature(
        "last_channel",
        pl.String,
        default="none",
        description="pos / online / atm",
        allowed_values=["pos", "online", "atm"],
    ),
    Feature(
        "last_foreign", pl.Boolean, default=False, description="Latest transaction in a foreign currency"
    ),
]

user_last_txn_v1 = FeatureGroup(
    name="user_last_txn",
    version=1,
    entity=user,
    source=transactions,
    transformation=_last_transaction_v1,
    features=_last_txn_features,
    ttl="30d",
    owner="team:fraud",
    description="The user's latest transaction",
    tags=["pii"],
)

user_last_txn_v2 = FeatureGroup(
    name="user_last_txn",
    version=2,
    entity=user,
    source=transactions,
    transformation=_last_transaction_v2,
    features=[
        *_last_txn_features,
        Feature("last_amount_log", pl.Float64, default=0.0, description="log1p of the latest amount"),
        Feature(
            "last_hour", pl.Int8, description="UTC hour of the latest transaction", min_value=0, max_value=23
        ),
    ],
    ttl="30d",
    owner="team:fraud",
    description="The user's latest transaction, with log amount and hour (v2)",
    tags=["pii"],
    freshness="30h",
    drift=Drift(warn=0.1, error=0.25, reference="7d"),
)

user_profile = FeatureGroup(
    name="user_profile",
    entity=user,
    source=user_profiles,
    features=[
        Feature(
            "segment",
            pl.String,
            default="unknown",
            description="Customer segment",
            allowed_values=["student", "standard", "premium", "business"],
        ),
        Feature("credit_limit", pl.Float64, description="Current credit limit", min_value=0.0),
    ],
    owner="team:accounts",
    description="Profile attributes as of each update (corrections resolved by created_at)",
)

merchant_risk = FeatureGroup(
    name="merchant_risk",
    entity=merchant,
    source=merchant_scores,
    features=[
        Feature(
            "risk_score",
            pl.Float64,
            default=0.05,
            description="Risk team's score in [0, 1]",
            nullable=False,
            min_value=0.0,
            max_value=1.0,
            expectations=[Expectation("expect_column_mean_to_be_between", min_value=0.0, max_value=0.3)],
        ),
        Feature("category", pl.String, default="unknown", description="Merchant category", nullable=False),
    ],
    expectations=[
        Expectation("expect_column_values_to_be_unique", "merchant_id"),  # one score per merchant a day
    ],
    drift=Drift(reference="7d"),
    freshness="2d",
    ttl="3d",
    owner="team:risk",
    description="Latest daily merchant risk score",
)


MERCHANT_CATEGORIES = [
    "grocery",
    "fuel",
    "travel",
    "electronics",
    "restaurants",
    "online",
    "pharmacy",
    "fashion",
]
PROFILE_DIM = len(MERCHANT_CATEGORIES) + 2


def _merchant_profile(scores: pl.LazyFrame) -> pl.LazyFrame:
    """A small merchant embedding from each daily score: the category (one-hot), the score and
    a fixed per-merchant offset, scaled to unit length. A stand-in for a learned embedding,
    computed in Polars, so the demo can show look-alike search with no model to download."""
    parts = [(pl.col("category") == c).cast(pl.Float32) for c in MERCHANT_CATEGORIES]
    parts += [
        (pl.col("risk_score") * 4).cast(pl.Float32),
        ((pl.col("merchant_id") * 7919 % 101) / 101).cast(pl.Float32),
    ]
    norm = pl.sum_horizontal([p * p for p in parts]).sqrt()
    return scores.select(
        "merchant_id",
        "scored_at",
        pl.concat_list([p / norm for p in parts]).alias("profile"),
        "category",
    )


merchant_profile = FeatureGroup(
    name="merchant_profile",
    entity=merchant,
    source=merchant_scores,
    transformation=_merchant_profile,
    features=[
        Feature(
            "profile", Vector(PROFILE_DIM, normalized=True), description="Merchant embedding (unit length)"
        ),
        Feature("category", pl.String, default="unknown", description="Merchant category, for filters"),
    ],
    index=VectorIndex("profile", metric="cosine", recall_queries=100),
    freshness="2d",
    owner="team:risk",
    description="A merchant embedding and its vector index: look-alike merchants",
)


def _user_at_merchant(events: pl.LazyFrame) -> pl.LazyFrame:
    return events.select(
        "user_id",
        "merchant_id",
        "ts",
        pl.col("amount").alias("last_amount_here"),
        pl.col("channel").alias("last_channel_here"),
    )


user_merchant_last_txn = FeatureGroup(
    name="user_merchant_last_txn",
    entity=user_merchant,
    source=transactions,
    transformation=_user_at_merchant,
    features=[
        Feature("last_amount_here", pl.Float64, default=0.0, description="Latest amount at this merchant"),
        Feature("last_channel_here", pl.String, description="Latest channel at this merchant"),
    ],
    ttl="90d",
    owner="team:fraud",
    description="The user's latest transaction at this merchant (composite key)",
)

user_txn_windows = FeatureGroup(
    name="user_txn_windows",
    entity=user,
    source=transactions,
    aggregations=[
        Aggregation("count", windows=["1h", "1d", "7d"], name="txn_count"),
        Aggregation("sum", "amount", ["1d", "7d"]),
        Aggregation("mean", "amount", ["7d", "14d"]),
        Aggregation("max", "amount", ["1d"]),
        Aggregation("count", windows=["7d"], where=pl.col("currency_foreign"), name="foreign_count"),
        Aggregation("distinct_count", "merchant_id", ["7d"], dtype=pl.Int64),
    ],
    owner="team:fraud",
    description="Sliding-window aggregates of the user's transactions (batch and push paths agree)",
)

# v2 adds long windows: 30 days and the whole history, read online from pre-aggregated tiles
# in constant time (however many events the window holds)
user_txn_windows_v2 = FeatureGroup(
    name="user_txn_windows",
    version=2,
    entity=user,
    source=transactions,
    aggregations=[
        Aggregation("count", windows=["1h", "1d", "7d", "30d", "lifetime"], name="txn_count"),
        Aggregation("sum", "amount", ["1d", "7d", "30d", "lifetime"]),
        Aggregation("mean", "amount", ["7d", "30d", "lifetime"]),
        Aggregation("max", "amount", ["1d", "30d"]),
        Aggregation("count", windows=["7d", "30d"], where=pl.col("currency_foreign"), name="foreign_count"),
        Aggregation("distinct_count", "merchant_id", ["7d", "30d"], dtype=pl.Int64),
    ],
    owner="team:fraud",
    description="Sliding windows up to the whole history (30d and lifetime windows read from tiles)",
)

fraud_model = FeatureService(
    name="fraud_model",
    version=1,
    features=[
        "user_last_txn:v2",
        "user_profile:v1:segment",
        "user_profile:v1:credit_limit",
        "merchant_risk:v1:risk_score",
        "user_merchant_last_txn:v1:last_amount_here",
        "user_txn_windows:v1:txn_count_1d",
        "user_txn_windows:v1:amount_mean_7d",
        "user_txn_windows:v1:foreign_count_7d",
    ],
    description="Features of the card-fraud model",
    owner="team:fraud",
    models=["fraud_classifier"],
    labels=FileSource(
        "fraud_labels",
        path=DATA / "transactions",
        timestamp_field="ts",
        start_date="2026-10-01",
        description="Transactions with their is_fraud label (the label time is the transaction time)",
        owner="team:fraud",
    ),
)

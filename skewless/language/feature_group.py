"""Feature groups (feature views): one versioned definition feeding offline and online stores."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from skewless.errors import DefinitionError
from skewless.language.aggregation import Aggregation, windowed_features
from skewless.language.dtypes import default_fits, is_supported_feature_dtype, normalize_dtype
from skewless.language.durations import parse_duration
from skewless.language.entity import Entity, check_name
from skewless.language.quality import Drift, Expectation
from skewless.language.source import Source
from skewless.language.vectors import Vector, VectorIndex

Transformation = Callable[[pl.LazyFrame], pl.LazyFrame]

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
EVENT_ID = "event_id"
# which stored version of an event is the latest: "" for rows of the source's own files,
# "<stream entry>:<row>" for pushed rows (fixed width, so it sorts in arrival order)
EVENT_SEQ = "event_seq"
RESERVED_COLUMNS = frozenset({EVENT_TIMESTAMP, CREATED_TIMESTAMP, EVENT_ID, EVENT_SEQ, "date"})

_OWNER_RE = re.compile(r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
PII_TAG = "pii"  # a group tag: every feature of the group is personal data (`Feature.pii`)


def _window_text(window: timedelta) -> str:
    """`7d`, `1h`, `30m`: the spelling windows are declared in (never weeks)."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Feature:
    """One feature column: its dtype, and the value served when no value exists.

    The default is applied identically by training sets and online lookups, so a model never
    sees a different cold-start value in production than it was trained with.

    `nullable`, `min_value`/`max_value` (inclusive) and `allowed_values` become the group's
    pandera schema, enforced on every partition before it is written; `expectations` are
    Great Expectations on this column (see `Expectation`).

    `pii=True` marks personal data: its values are encrypted at rest (Parquet modular
    encryption offline, AES-GCM online; see `skewless.storage.keys`) and only roles granted
    `pii=True` (or admin) read them in clear. Tagging the group `pii` marks every feature.
    """

    name: str
    dtype: Any
    default: Any = None
    description: str = ""
    nullable: bool = True
    min_value: Any = None
    max_value: Any = None
    allowed_values: Sequence[Any] | None = None
    expectations: Sequence[Expectation] = ()
    pii: bool = False
    vector: Vector | None = field(init=False, default=None, compare=False)
    """Set when `dtype` is a `Vector(...)`: the embedding's checks (the dtype becomes
    `pl.Array(pl.Float32, dim)`)."""

    def __post_init__(self) -> None:
        check_name(self.name, "feature")
        if isinstance(self.dtype, Vector):
            object.__setattr__(self, "vector", self.dtype)
            object.__setattr__(self, "dtype", self.dtype.dtype)
        try:
            object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        except TypeError:
            raise DefinitionError(
                f"feature '{self.name}': dtype {self.dtype!r} is not a Polars dtype"
            ) from None
        where = f"feature '{self.name}'"
        if not isinstance(self.nullable, bool):
            raise DefinitionError(f"{where}: nullable must be True or False, got {self.nullable!r}")
        if not isinstance(self.pii, bool):
            raise DefinitionError(f"{where}: pii must be True or False, got {self.pii!r}")
        if self.pii and self.vector is not None:
            raise DefinitionError(
                f"{where}: a Vector feature cannot be pii (embeddings are searched in a clear "
                "index); keep personal data in a row feature"
            )
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise DefinitionError(f"{where}: min_value {self.min_value!r} > max_value {self.max_value!r}")
        if self.allowed_values is not None:
            if isinstance(self.allowed_values, str) or not self.allowed_values:
                raise DefinitionError(f"{where}: allowed_values must be a non-empty list of values")
            object.__setattr__(self, "allowed_values", tuple(self.allowed_values))
        expectations = tuple(self.expectations)
        if not all(isinstance(e, Expectation) for e in expectations):
            raise DefinitionError(f"{where}: expectations must be Expectation objects")
        object.__setattr__(self, "expectations", tuple(e.for_column(self.name) for e in expectations))

    @property
    def polars_dtype(self) -> pl.DataType:
        assert isinstance(self.dtype, pl.DataType)
        return self.dtype


@dataclass(frozen=True)
class FeatureGroup:
    """A named, versioned set of row features over one entity and one source.

    `transformation` maps the source's LazyFrame to one carrying the entity's join keys, the
    source's event-time column (and created-time column if the source has one) and every
    declared feature. Without one, the features are read from source columns of the same name.
    """

    name: str
    entity: Entity
    source: Source
    features: Sequence[Feature] = ()
    version: int = 1
    transformation: Transformation | None = None
    ttl: str | timedelta | None = None
    owner: str | None = None
    description: str = ""
    tags: Sequence[str] | Mapping[str, str] = ()
    aggregations: Sequence[Aggregation] = ()
    expectations: Sequence[Expectation] = ()
    freshness: str | timedelta | None = None
    drift: Drift | None = None
    index: VectorIndex | None = None
    retention: str | timedelta | None = None
    _ttl: timedelta | None = field(init=False, repr=False, compare=False, default=None)
    _retention: timedelta | None = field(init=False, repr=False, compare=False, default=None)
    _freshness: timedelta | None = field(init=False, repr=False, compare=False, default=None)
    _pii: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        check_name(self.name, "feature group")
        where = f"feature group '{self.name}'"
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise DefinitionError(f"{where}: version must be a positive integer, got {self.version!r}")
        where = f"feature group '{self.ref}'"
        if not isinstance(self.entity, Entity):
            raise DefinitionError(f"{where}: entity must be an Entity, got {type(self.entity).__name__}")
        if not isinstance(self.source, Source):
            raise DefinitionError(
                f"{where}: source must be a FileSource or DuckDBSource, got {type(self.source).__name__}"
            )
        if self.transformation is not None and not callable(self.transformation):
            raise DefinitionError(f"{where}: transformation must be a callable LazyFrame -> LazyFrame")
        aggregations = list(self.aggregations)
        if aggregations:
            if self.features:
                raise DefinitionError(
                    f"{where}: declare row features or window aggregations, not both (use two groups)"
                )
            if not all(isinstance(a, Aggregation) for a in aggregations):
                raise DefinitionError(f"{where}: aggregations must be Aggregation objects")
            object.__setattr__(self, "aggregations", tuple(aggregations))
            features = [
                Feature(
                    name,
                    agg.output_dtype,
                    default=agg.default,
                    description=f"{agg.function} of {agg.column or 'events'} over {_window_text(w)}"
                    + (f" where {agg.where}" if agg.where is not None else ""),
                )
                for agg, w, name in windowed_features(aggregations)
            ]
            self._check_inputs(where)
        else:
            features = list(self.features)
        if not features:
            raise DefinitionError(f"{where}: declares no features")
        seen: set[str] = set()
        for feature in features:
            if not isinstance(feature, Feature):
                raise DefinitionError(f"{where}: features must be Feature objects, got {feature!r}")
            if feature.name in seen:
                raise DefinitionError(f"{where}: feature '{feature.name}' is declared twice")
            seen.add(feature.name)
            if feature.name in RESERVED_COLUMNS or feature.name in self.entity.join_keys:
                raise DefinitionError(
                    f"{where}: feature '{feature.name}' collides with a join key or reserved column"
                )
            if not is_supported_feature_dtype(feature.polars_dtype):
                raise DefinitionError(
                    f"{where}: feature '{feature.name}' has unsupported dtype {feature.dtype}; "
                    "use integers, floats, booleans, strings, Date, Datetime('us', 'UTC') "
                    "or Array(Float32|Float64, n)"
                )
            if not default_fits(feature.polars_dtype, feature.default):
                raise DefinitionError(
                    f"{where}: feature '{feature.name}' default {feature.default!r} "
                    f"does not fit its dtype {feature.dtype}"
                )
        object.__setattr__(self, "features", tuple(features))
        object.__setattr__(self, "_ttl", parse_duration(self.ttl, what=f"{where} ttl"))
        self._check_retention(where)
        if self.owner is not None and not _OWNER_RE.match(self.owner):
            raise DefinitionError(f"{where}: owner {self.owner!r} must be an email address or 'team:<name>'")
        tags = dict.fromkeys(self.tags, "") if not isinstance(self.tags, Mapping) else dict(self.tags)
        for tag in tags:
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise DefinitionError(f"{where}: tag {tag!r} must match [A-Za-z0-9_.-]{{1,63}}")
        object.__setattr__(self, "tags", tags)
        self._check_pii(where)
        self._check_quality(where)
        self._check_index(where)

    def _check_pii(self, where: str) -> None:
        """Which features are personal data: those declared `pii=True`, or all of them when
        the group is tagged `pii`. Window aggregations are refused rather than encrypted:
        their online state is events and tiles combined inside Redis (Lua), which cannot
        work on ciphertext; aggregate a pii column into a non-personal figure in a row group,
        or keep the raw value in a pii row group."""
        tagged = PII_TAG in self.tags
        names = tuple(f.name for f in self.features if tagged or f.pii)
        if names and self.is_windowed:
            raise DefinitionError(
                f"{where}: window aggregations cannot be pii (their online state is aggregated "
                "inside Redis, which cannot work on encrypted values); drop the 'pii' tag or "
                "move the personal data to a row feature group"
            )
        vectors = [f.name for f in self.features if f.vector is not None and f.name in names]
        if vectors:
            raise DefinitionError(
                f"{where}: Vector feature(s) {', '.join(vectors)} cannot be pii (embeddings "
                "are searched in a clear index); split them into a group without the 'pii' tag"
            )
        object.__setattr__(self, "_pii", names)

    @property
    def pii_features(self) -> tuple[str, ...]:
        """Names of the features stored encrypted (declared order); empty for most groups."""
        return self._pii

    def _check_index(self, where: str) -> None:
        if self.index is None:
            return
        if not isinstance(self.index, VectorIndex):
            raise DefinitionError(
                f"{where}: index must be a VectorIndex(...), got {type(self.index).__name__}"
            )
        names = [f.name for f in self.features if f.vector is not None]
        if self.index.feature not in names:
            raise DefinitionError(
                f"{where}: VectorIndex names feature '{self.index.feature}', which is not a Vector "
                f"feature of the group (Vector features: {', '.join(names) or 'none'})"
            )

    @property
    def vector_features(self) -> list[Feature]:
        """The features declared with a `Vector(...)` dtype."""
        return [f for f in self.features if f.vector is not None]

    def _check_retention(self, where: str) -> None:
        """Offline retention: whole days are kept or deleted, so less than a day would delete
        the day being written; a window group needs its longest window of events to compute
        the windows of a training set, so a shorter retention would silently shrink them."""
        retention = parse_duration(self.retention, what=f"{where} retention")
        if retention is not None:
            if retention < timedelta(days=1):
                raise DefinitionError(
                    f"{where}: retention {self.retention!r} is shorter than a day (partitions are days)"
                )
            if self.aggregations and retention < self.max_window:
                raise DefinitionError(
                    f"{where}: retention {self.retention!r} is shorter than its longest window "
                    f"({_window_text(self.max_window)}): training-set windows would lose events"
                )
        object.__setattr__(self, "_retention", retention)

    @property
    def retention_period(self) -> timedelta | None:
        """How long offline partitions are kept (None: forever); online values expire by `ttl`."""
        return self._retention

    def first_retained_day(self, now: datetime) -> date | None:
        """The oldest day whose partition is kept at `now`: a day is deleted once every event
        in it is older than the retention (None: every day is kept)."""
        if self._retention is None:
            return None
        return (now.astimezone(UTC) - self._retention).date()

    def _check_quality(self, where: str) -> None:
        object.__setattr__(self, "_freshness", parse_duration(self.freshness, what=f"{where} freshness"))
        if self.drift is not None and not isinstance(self.drift, Drift):
            raise DefinitionError(f"{where}: drift must be a Drift(...), got {type(self.drift).__name__}")
        expectations = tuple(self.expectations)
        columns = set(self.offline_schema())
        for expectation in expectations:
            if not isinstance(expectation, Expectation):
                raise DefinitionError(
                    f"{where}: expectations must be Expectation objects, got {expectation!r}"
                )
            if expectation.column is not None and expectation.column not in columns:
                raise DefinitionError(
                    f"{where}: expectation {expectation.type} names column '{expectation.column}', "
                    f"which the group does not store (columns: {', '.join(columns)})"
                )
        object.__setattr__(self, "expectations", expectations)

    @property
    def freshness_limit(self) -> timedelta:
        """How old the newest data may get: declared, or a day and a margin for daily runs."""
        return self._freshness or timedelta(hours=30)

    def all_expectations(self) -> list[Expectation]:
        """Group-level expectations and those declared on row features."""
        own = list(self.expectations)
        if not self.is_windowed:
            own += [e for f in self.features for e in f.expectations]
        return own

    def _check_inputs(self, where: str) -> None:
        inputs: dict[str, pl.DataType] = {}
        for agg in self.aggregations:
            if agg.column is None:
                continue
            known = inputs.setdefault(agg.column, agg.dtype)
            if known != agg.dtype:
                raise DefinitionError(
                    f"{where}: column '{agg.column}' is declared as {known} and as {agg.dtype} "
                    "by two aggregations"
                )
            if agg.column in RESERVED_COLUMNS or agg.column in self.entity.join_keys:
                raise DefinitionError(
                    f"{where}: aggregation column '{agg.column}' collides with a reserved column"
                )

    @property
    def is_windowed(self) -> bool:
        return bool(self.aggregations)

    @property
    def max_window(self) -> timedelta:
        return max(w for agg in self.aggregations for w in agg.window_list)

    def input_columns(self) -> dict[str, pl.DataType]:
        """Aggregated source columns of a window group, with their dtypes."""
        return {a.column: a.dtype for a in self.aggregations if a.column is not None}

    def where_columns(self) -> dict[str, pl.Expr]:
        """One boolean column per filtered aggregation, evaluated once when events are stored."""
        return {f"where__{i}": a.where for i, a in enumerate(self.aggregations) if a.where is not None}

    @property
    def ref(self) -> str:
        """`group:vN`, the spelling used in feature references and messages."""
        return f"{self.name}:v{self.version}"

    @property
    def time_to_live(self) -> timedelta | None:
        return self._ttl

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def has_created_timestamp(self) -> bool:
        return self.source.created_timestamp_field is not None

    def offline_schema(self) -> dict[str, pl.DataType]:
        """Columns of every offline partition file, in order.

        Row groups store feature rows; window groups store their events (the window state):
        keys, event time, event id, the aggregated columns and one flag per `where`.
        """
        schema: dict[str, pl.DataType] = dict(self.entity.key_schema)
        schema[EVENT_TIMESTAMP] = pl.Datetime("us", "UTC")
        if self.is_windowed:
            schema[EVENT_ID] = pl.String()
            schema[EVENT_SEQ] = pl.String()
            schema.update(self.input_columns())
            schema.update({name: pl.Boolean() for name in self.where_columns()})
            return schema
        if self.has_created_timestamp:
            schema[CREATED_TIMESTAMP] = pl.Datetime("us", "UTC")
        for feature in self.features:
            schema[feature.name] = feature.polars_dtype
        return schema

"""`FeatureStore`: the Python client for training sets and online lookups.

It reads the same definitions, the same offline files and the same Redis keys the Dagster
assets write, and applies the same TTL and default rules on both paths, which is what keeps
training and serving from drifting apart.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from skewless.checks.schema import declared_violations
from skewless.client.training_set import Engine, GroupPlan, TrainingSetStats, build, plan_group
from skewless.compute.point_in_time import (
    LABEL_TS,
    ROW,
    conform_keys,
    normalize_label_times,
)
from skewless.compute.rows import latest_per_entity, transform_rows
from skewless.compute.windows import pushed_events
from skewless.config import StoreConfig
from skewless.errors import AccessDenied, DefinitionError, RequestError, SkewlessError
from skewless.language.dtypes import conform_frame
from skewless.language.feature_group import FeatureGroup
from skewless.language.feature_service import FeatureRef
from skewless.language.source import Source
from skewless.repository import FeatureRepository, load_repository
from skewless.serving.monitor import ServingMonitor
from skewless.serving.reader import ReadPlan
from skewless.storage import audit
from skewless.storage.offline import OfflineStore, open_offline_store
from skewless.storage.offline_layout import day_of
from skewless.storage.online import OnlineStore, open_online_store

Selection = list[tuple[FeatureGroup, list[str]]]


def to_polars(frame: Any, what: str) -> pl.DataFrame:
    """Accept Polars, pandas, Arrow, a list of dicts or a dict of columns."""
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    module = type(frame).__module__
    if module.startswith("pandas"):
        return pl.from_pandas(frame)
    if module.startswith("pyarrow"):
        result = pl.from_arrow(frame)
        assert isinstance(result, pl.DataFrame)
        return result
    if isinstance(frame, Mapping | list):
        try:
            return pl.DataFrame(frame)
        except Exception as exc:
            raise RequestError(f"{what} could not be read as a table: {exc}") from None
    raise RequestError(f"{what} must be a Polars/pandas/Arrow frame, a list of dicts or a dict of columns")


def convert(frame: pl.DataFrame, output: str) -> Any:
    if output == "polars":
        return frame
    if output == "pandas":
        return frame.to_pandas()
    if output == "arrow":
        return frame.to_arrow()
    if output == "dicts":
        return frame.to_dicts()
    raise RequestError(
        f"unknown output {output!r}: use 'polars', 'pandas', 'arrow', 'dicts', 'rows' or 'numpy'"
    )


@dataclass
class TrainingSetPlan:
    """A training set ready to join (`FeatureStore.plan_training_set`).

    `original` is the entity frame as given; `labels` its prepared copy (ROW, join keys,
    LABEL_TS), None when there are no label rows (nothing to join) or when the plan was
    read back from a distributed job's work area (its labels are in the buckets); `plans`
    one `GroupPlan` per selected group, in selection order (the order `build` returns
    feature columns in), empty exactly when there are no label rows."""

    original: pl.DataFrame
    selection: Selection
    names: dict[tuple[str, int, str], str]
    labels: pl.DataFrame | None
    plans: list[GroupPlan]

    def assemble(self, frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
        """The training set: the labels as given, then each group's feature columns (`frames`,
        from any engine); with no label rows, the labels with empty feature columns."""
        if not self.plans:
            return FeatureStore._empty_features(self.original, self.selection, self.names)
        return pl.concat([self.original, *frames], how="horizontal")


_THREADED_ENTRY_ROWS = 1000  # larger pushes encode their stream entry in a thread
_BACKGROUND: tuple[int, ThreadPoolExecutor] | None = None


def _background() -> ThreadPoolExecutor:
    """One worker thread per process for a push's side work (remade after a fork)."""
    global _BACKGROUND
    if _BACKGROUND is None or _BACKGROUND[0] != os.getpid():
        _BACKGROUND = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="skewless-push"))
    return _BACKGROUND[1]


class FeatureStore:
    """Training sets and online features for one feature repository."""

    def __init__(
        self,
        repository: FeatureRepository,
        config: StoreConfig | None = None,
        *,
        offline: OfflineStore | None = None,
        online: OnlineStore | None = None,
        role: str | None = None,
    ) -> None:
        """Stores handed in are used as they are (Dagster assets and checks pass their
        resources' stores, so a run opens one connection pool); the others are opened from
        `config` (default: the environment, anchored at the repository's state folder).

        `role` (else `config.role`, i.e. `SKEWLESS_ROLE`): a role of the repository; the
        online store then connects as that role's Redis ACL user (`skewless roles apply`
        creates it), so what the role may not read is refused by Redis itself. The client
        does not check access in Python first: the server's answer is the rule."""
        self.repository = repository
        # the repository's own state folder (anchored at load), not the current folder's
        self.config = config or StoreConfig.from_env(repository.state_dir)
        if role is not None and role != self.config.role:
            self.config = dataclasses.replace(self.config, role=role)
        self.role = repository.role(self.config.role) if self.config.role else None
        self.offline = offline if offline is not None else open_offline_store(self.config)
        self.online = online if online is not None else open_online_store(self.config, self.role)
        self._writer: OnlineStore | None = None
        self.last_training_stats = TrainingSetStats()
        self._read_plans: dict[tuple[Any, ...], ReadPlan] = {}
        self._source_schemas: dict[str, pl.Schema] = {}  # push's reference, read once per source
        # a role's Redis user may not append to the served-vector log (only its groups' keys):
        # a process of a non-admin role does not log; the HTTP server logs as itself
        log_rate = self.config.serving_log_rate if self.role is None or self.role.admin else 0.0
        self.monitor = ServingMonitor(self.online, log_rate=log_rate)
        self._indexes: dict[str, Any] = {}  # group ref -> vectors.updates.IndexHandle
        self._audit_store: OnlineStore | None = None
        #: every access of this client is recorded here (`storage.audit`; online reads sampled)
        self.audit_log = audit.for_store(
            self.online,
            self.offline,
            state_dir=self.config.state_dir,
            connection=self._audit_client,
            role=self.role.name if self.role is not None else None,
            read_sample=self.config.audit_sample,
        )

    @classmethod
    def from_repo(
        cls,
        target: Any,
        config: StoreConfig | None = None,
        *,
        offline: OfflineStore | None = None,
        online: OnlineStore | None = None,
    ) -> FeatureStore:
        """From a module, a dotted module name, or a path to a repository's Python file."""
        repo = target if isinstance(target, FeatureRepository) else load_repository(target)
        return cls(repo, config, offline=offline, online=online)

    @classmethod
    def from_config(cls, target: Any, config: StoreConfig) -> FeatureStore:
        """A repository with stores chosen by `config` (backends by URL: see `skewless.storage`)."""
        return cls.from_repo(target, config)

    @property
    def writer(self) -> OnlineStore:
        """The online store writes go through: a role that writes has a writer user of its
        own (its reader may not write, see `storage.acl`); otherwise the one store."""
        if self.role is None or self.role.admin or not self.role.write:
            return self.online
        if self._writer is None:
            self._writer = open_online_store(self.config, self.role, write=True)
        return self._writer

    def _audit_client(self) -> Any:
        """Where audit records go: the store's own connection, or for a role that is not an
        admin, the audit ACL user's (a role's users may not append to the audit stream)."""
        if self.role is None or self.role.admin:
            return self.online.client
        if self._audit_store is None:
            from skewless.storage.acl import audit_credentials
            from skewless.storage.online import connect_as

            user, password = audit_credentials(self.config.key_prefix, self.config.state_dir)
            self._audit_store = connect_as(open_online_store(self.config), user, password)
        return self._audit_store.client

    def audit(
        self,
        since: str | datetime = "1d",
        role: str | None = None,
        action: str | None = None,
        until: datetime | None = None,
    ) -> pl.DataFrame:
        """Audit records since `since` (a duration such as `1d`, or a time), optionally of one
        role and action, oldest first: compacted partitions plus what the stream holds (see
        `storage.audit`). Reading the log needs the deployment's or an admin role's credentials."""
        start = audit.parse_since(since) if isinstance(since, str) else since
        self.audit_log.flush()  # this process' own records are in the stream before it is read
        return audit.read(self.online, self.offline, start, until, role=role, action=action)

    def close(self) -> None:
        try:
            if self.monitor.log_rate:
                self.monitor.flush()
            self.audit_log.close()
        finally:
            self.online.close()
            if self._writer is not None:
                self._writer.close()
            if self._audit_store is not None:
                self._audit_store.close()

    def warm(self) -> None:
        """Open every connection this store's requests use (reader, a writing role's writer,
        the audit user's), so none is opened inside a request's deadline; an unreachable
        Redis or a role whose users were never applied fails here, naming it."""
        self.online.warm()
        if self.role is not None and self.role.write and not self.role.admin:
            self.writer.warm()
        self._audit_client()
        if self._audit_store is not None:
            self._audit_store.warm()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- selection
    def select(self, features: Sequence[str] | None = None, service: str | None = None) -> Selection:
        """Resolve feature references (or a service) to groups and feature names, in order.

        One string is one reference (`features="g:v1:f"`): a `str` is itself a sequence, and
        iterating it would parse each letter as a reference.
        """
        if (features is None) == (service is None):
            raise RequestError("pass exactly one of features=[...] or service='name:vN'")
        if isinstance(features, str):
            features = [features]
        if features is not None and not list(features):
            raise RequestError("features=[] names no feature: pass at least one reference 'group:vN:feature'")
        try:
            refs = (
                [FeatureRef.parse(f) for f in features]  # type: ignore[union-attr]
                if service is None
                else self.repository.service(service).refs
            )
            selection: dict[tuple[str, int], tuple[FeatureGroup, list[str]]] = {}
            for ref in refs:
                group, names = self.repository.resolve(ref)
                entry = selection.setdefault((group.name, group.version), (group, []))
                entry[1].extend(n for n in names if n not in entry[1])
        except DefinitionError as exc:
            raise RequestError(str(exc)) from None
        return list(selection.values())

    def check_pii(self, selection: Selection) -> None:
        """Refuse pii features to a role without pii access (`Role(..., pii=True)`), naming
        the role, the group and the features, before anything is read or decrypted: such a
        role gets an error, never ciphertext and never nulls in their place. A process with
        no role (single-user mode) reads everything it has the keys for."""
        if self.role is None or self.role.reads_pii:
            return
        denied = [(g, [f for f in feats if f in g.pii_features]) for g, feats in selection]
        denied = [(g, feats) for g, feats in denied if feats]
        if not denied:
            return
        what = "; ".join(f"feature group '{g.ref}': {', '.join(feats)}" for g, feats in denied)
        raise AccessDenied(
            f"role '{self.role.name}' may not read pii features ({what}): they are encrypted at "
            "rest and readable only by roles declared with pii=True (or admin)",
            role=self.role.name,
            groups=[g.ref for g, _ in denied],
        )

    def pii_columns(
        self,
        features: Sequence[str] | None = None,
        service: str | None = None,
        full_feature_names: bool = False,
    ) -> list[str]:
        """Output columns of a selection that are pii features (a stored training set
        encrypts them, like the partitions they came from)."""
        selection = self.select(features, service)
        names = self.output_names(selection, full_feature_names)
        return [names[(g.name, g.version, f)] for g, feats in selection for f in feats if f in g.pii_features]

    @staticmethod
    def output_names(selection: Selection, full_feature_names: bool) -> dict[tuple[str, int, str], str]:
        names: dict[tuple[str, int, str], str] = {}
        seen: dict[str, str] = {}
        for group, features in selection:
            for feature in features:
                name = f"{group.name}__v{group.version}__{feature}" if full_feature_names else feature
                if name in seen:
                    raise RequestError(
                        f"feature name '{name}' is requested from both {seen[name]} and {group.ref}; "
                        "pass full_feature_names=True"
                    )
                seen[name] = group.ref
                names[(group.name, group.version, feature)] = name
        return names

    # ----------------------------------------------------------------- offline
    def get_training_dataset(
        self,
        entity_df: Any,
        features: Sequence[str] | None = None,
        service: str | None = None,
        timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
        output: Literal["polars", "pandas", "arrow"] = "polars",
        engine: Engine = "auto",
        partitions_from: date | None = None,
        allow_missing: bool = False,
    ) -> Any:
        """Point-in-time-correct features for each label row (see `compute.point_in_time`).

        `engine` chooses in-memory or partitioned (larger than memory) execution; `auto`
        decides from the size of the partitions that can matter. `last_training_stats` tells
        which engine ran and how many partitions were read. `partitions_from` skips row-feature
        partitions before that day, for callers who know no label's latest value is older
        (the agreement check: its entities all have a row on or after that day).

        `features` is a list of `group:vN:feature` references (one string is one reference).
        Every label row is kept, in order. A label row whose join key is null is kept too and
        gets each feature's declared default (a null key matches no stored row, exactly as
        online), so drop such rows first if they should not be trained on. A null label time
        is an error naming the rows: there is no point in time to join at.

        Missing partitions are an error, not stale values: when a day partition the labels
        need was never materialized, `MissingPartitionsError` names the group and the days
        (as ranges). A day is needed when it lies within a label time's lookback (the TTL, a
        window group's longest window; without a TTL every earlier day), on or after the
        source's `start_date` (and `partitions_from`), and the source has events that day —
        so days before the source's first event, after its last one, or gaps in it never
        count (their partitions would be empty). `allow_missing=True` builds the set from
        what is stored and emits a `MissingPartitionsWarning` with the same text instead.
        The rule lives in `skewless.compute.coverage`.
        """
        plan = self.plan_training_set(
            entity_df,
            features,
            service,
            timestamp_column,
            full_feature_names,
            partitions_from,
            allow_missing,
            _stacklevel=5,
        )
        if plan.labels is None:
            return convert(plan.assemble([]), output)
        self.last_training_stats = TrainingSetStats()
        frames = build(plan.labels, plan.plans, engine, self.last_training_stats)
        return convert(plan.assemble(frames), output)

    def plan_training_set(
        self,
        entity_df: Any,
        features: Sequence[str] | None = None,
        service: str | None = None,
        timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
        partitions_from: date | None = None,
        allow_missing: bool = False,
        *,
        _stacklevel: int = 4,
    ) -> TrainingSetPlan:
        """Everything `get_training_dataset` does before joining: the labels checked and
        prepared (ROW, keys, LABEL_TS), coverage enforced, each group's partitions planned.

        The one preparation both the client's engines and the distributed Dagster job
        (`feature_assets.distributed_training`) join from, so they cannot drift; the
        arguments mean what they mean there. `TrainingSetPlan.assemble` puts the joined
        feature columns next to the labels."""
        original = labels = to_polars(entity_df, "entity_df")
        selection = self.select(features, service)
        self.check_pii(selection)
        names = self.output_names(selection, full_feature_names)
        clash = [n for n in names.values() if n in labels.columns]
        if clash:
            raise RequestError(f"entity_df already has columns named like requested features: {clash}")
        label_ts = normalize_label_times(labels, timestamp_column)
        for group, _ in selection:
            labels = conform_keys(labels, group, "entity_df")
        if labels.height == 0:
            return TrainingSetPlan(original, selection, names, None, [])
        keys = sorted({k for group, _ in selection for k in group.entity.key_columns})
        base = labels.select(keys).with_columns(label_ts.alias(LABEL_TS)).with_row_index(ROW)
        label_days = label_ts.dt.date().unique().to_list()
        self._check_coverage(selection, label_days, partitions_from, allow_missing, _stacklevel)
        plans = [
            plan_group(
                self.offline,
                group,
                feats,
                {f: names[(group.name, group.version, f)] for f in feats},
                label_days,
            )
            for group, feats in selection
        ]
        if partitions_from is not None:
            for plan in plans:
                if not plan.group.is_windowed:
                    plan.files = [f for f in plan.files if day_of(f) >= partitions_from]
        self.audit_log.record("training_set", self._audit_object(selection, service), base.height)
        return TrainingSetPlan(original, selection, names, base, plans)

    def _audit_object(self, selection: Selection, service: str | None) -> str:
        """What an access is recorded against: the service version, else the group versions."""
        if service is not None:
            return self.repository.service(service).ref
        return ",".join(group.ref for group, _ in selection)

    def _check_coverage(
        self,
        selection: Selection,
        label_days: list[date],
        since: date | None,
        allow_missing: bool,
        stacklevel: int = 4,
    ) -> None:
        """Refuse (or, allowed, warn about) a training set built over unmaterialized days."""
        from skewless import asset_keys
        from skewless.compute import coverage

        problems = []
        for group, _ in selection:
            # `partitions_from` prunes row groups only (window values need earlier events)
            first = since if since is not None and not group.is_windowed else None
            missing, source_read = coverage.missing_days(
                self.offline, group, coverage.required_days(group, label_days, first)
            )
            if missing:
                problems.append(
                    coverage.missing_message(
                        group,
                        missing,
                        asset=asset_keys.user_string(asset_keys.offline_path(group)),
                        needed_by="the label times need (each back through the TTL or longest window)",
                        remedy="pass allow_missing=True to build the training set from what is stored",
                        source_read=source_read,
                    )
                )
        if problems:
            coverage.enforce("\n".join(problems), allow_missing, stacklevel=stacklevel)

    @staticmethod
    def _empty_features(labels: pl.DataFrame, selection: Selection, names: dict) -> pl.DataFrame:
        columns = [
            pl.Series(names[(g.name, g.version, f)], [], dtype=g.feature(f).polars_dtype)
            for g, feats in selection
            for f in feats
        ]
        return labels.hstack(columns)

    def push(self, source: str, rows: Any, at: datetime | None = None, direct: bool = True) -> dict[str, int]:
        """Apply events to the online store now: the direct push path.

        `rows` are events of the named source (any table form). Every group on that source
        runs its own definition over them — window groups add the events to their window
        state, row groups write their latest values through the write guard — exactly as the
        batch path would. Everything is computed and checked before anything is written, so a
        bad event rejects the push with an error naming it and stores nothing. Pushing the
        same events again changes nothing. Returns events (window groups) or keys written.
        `at` replaces "now" when deciding which events are too old to keep online (replays).
        For a source declared `stream=True` the rows are also appended to its Redis Stream,
        from which the sensor's micro-batch appends them to the offline store (and, with
        `direct=False`, applies them online too, instead of this call).

        Pushed rows must have the source's columns (its schema as scanned; for a source with
        no data yet, the schema its stream last recorded; with neither, they are taken as they
        are). Columns in another order are reordered and dtypes that widen without loss
        (Int32 -> Int64, Float32 -> Float64) are cast; a missing or extra column, or a dtype
        that could lose values, rejects the push with an error naming the column (and both
        dtypes). This is checked at the door because the rows are stored as pushed — in the
        stream and, by the micro-batch, in Parquet next to the source's files — where a
        different shape would break every later micro-batch and scan of the source.

        Audited as `push` (the source, the keys or events written), a refusal too.
        """
        with self.audit_log.denied("push", source):
            written = self._push(source, rows, at, direct)
        self.audit_log.record(
            "push", source, sum(written.values()), detail=", ".join(f"{k}={v}" for k, v in written.items())
        )
        return written

    def _push(self, source: str, rows: Any, at: datetime | None, direct: bool) -> dict[str, int]:
        """The push itself (`push` records it in the audit log)."""
        groups = [g for g in self.repository.groups if g.source.name == source]
        if not groups:
            known = ", ".join(sorted({g.source.name for g in self.repository.groups}))
            raise RequestError(f"unknown source '{source}' (sources with feature groups: {known})")
        self._check_may_push(source, groups)
        frame = to_polars(rows, f"rows pushed to source '{source}'")
        if frame.height == 0:
            return {g.ref: 0 for g in groups}
        src = groups[0].source
        try:
            lazy = src.checked(frame.lazy())
        except SkewlessError as exc:
            raise RequestError(f"rows pushed to {exc}") from None
        # eager from here: a push is usually a few rows, where each lazy collect costs more
        # than the work (a single-event push is the common streaming case)
        utc_us = pl.Datetime("us", "UTC")
        have = frame.schema
        converted = any(have.get(c) != utc_us for c in src.time_columns)
        checked = lazy.collect() if converted else frame
        reference = self._source_schema(src)
        if reference is not None:
            checked, problems = conform_frame(checked, reference)
            if problems:
                raise RequestError(f"rows pushed to source '{source}': " + "; ".join(problems))
        missing = checked.get_column(src.timestamp_field).null_count()
        if missing:
            raise RequestError(f"rows pushed to source '{source}': {missing} rows have no event time")
        from skewless.storage import streams

        online = self.writer
        # the stream entry of a large direct push (Arrow IPC, zstd: ~3 ms per 10k rows) is
        # encoded in a thread while this one computes the events: Redis sits idle until the
        # first script arrives. Nothing is sent before every check below has passed.
        sealed = any(g.pii_features for g in groups)
        entry = None
        if src.stream and direct and groups[0].is_windowed and checked.height > _THREADED_ENTRY_ROWS:
            seal = streams.EntrySeal(online, streams.stream_key(online, source)) if sealed else None
            entry = _background().submit(streams.entry_fields, checked, seal)
        start, end = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
        computed = []
        for group in groups:
            fast = pushed_events(group, checked) if group.is_windowed else None
            computed.append(
                (group, fast if fast is not None else transform_rows(group, checked.lazy(), start, end))
            )
        # erased entities (`erase`) are not stored again by a push either
        computed = [(g, self.offline.without_erased(g, result, max_age_s=5.0)) for g, result in computed]
        for group, result in computed:
            # the declared constraints hold on every write path, not only the batch one
            violation = declared_violations(group, result)
            if violation is not None:
                raise RequestError(f"rows pushed to source '{source}' break {violation}")
        for group, _ in computed:
            self.offline.mark_in_use(group)  # values of these definitions exist now (lock file)
        if src.stream:
            # the rows hold the columns pii features are computed from: sealed in the stream
            # with a window group to write directly, the append rides in its round trip
            if direct and computed[0][0].is_windowed:
                queued = {
                    "stream": lambda: streams.append_commands(
                        online, source, checked, sealed, None if entry is None else entry.result()
                    )
                }
            else:
                streams.append(online, source, checked, sealed)
                queued = {}
        else:
            queued = {}
        written: dict[str, int] = {}
        if not direct:
            return written
        for group, result in computed:
            if group.is_windowed:
                written[group.ref] = online.write_events(
                    group, result, now=at, before=queued.pop("stream", None)
                )
            else:
                latest = latest_per_entity(group, result)
                written[group.ref] = online.write_latest(group, latest)["written"]
                if group.index is not None:
                    from skewless.vectors import updates

                    updates.append(online, group, latest)  # searchable at once, everywhere
        return written

    def _check_may_push(self, source: str, groups: Sequence[FeatureGroup]) -> None:
        """A push writes every group on its source (one definition, every path), so a role
        may push only to a source all of whose groups it writes: refused before anything is
        computed or stored, rather than half written when Redis refuses the first group it
        may not write."""
        if self.role is None or self.role.admin:
            return
        denied = [g.ref for g in self.repository.access(self.role.name).not_written(groups)]
        if denied:
            raise AccessDenied(
                f"role '{self.role.name}' may not push to source '{source}': a push writes every "
                f"feature group on it, and the role does not write {', '.join(denied)}",
                role=self.role.name,
                groups=denied,
            )

    def erase(self, entity: str, keys: Any) -> dict[str, int]:
        """Remove every stored value of some entities (the right to be forgotten); see `_erase`.

        The erasure is recorded in the audit log (`erase`, the entity, how many entities and
        what was removed, never the keys themselves); if that record cannot be written the
        erasure still happened, and `OnlineStoreError` says the audit record is missing."""
        with self.audit_log.denied("erase", entity):
            done = self._erase(entity, keys)
        detail = ", ".join(f"{k}={v}" for k, v in done.items())
        self.audit_log.record("erase", entity, done["entities"], detail=detail, required=True)
        return done

    def _erase(self, entity: str, keys: Any) -> dict[str, int]:
        """Remove every stored value of some entities (the right to be forgotten).

        `keys`: the entity's join-key columns (any table form), one row per entity. In order:
        the keys are added to the entity's erasure list (`<offline root>/_erasures/`), which
        every later materialization, micro-batch and push consults, so a backfill from
        sources that still hold the entity never brings it back; then every offline file that
        holds them — each group version's partitions and pieces, training sets and served
        logs with the key columns, a stream source's pushed rows — is rewritten without
        them (atomically, file by file); then their Redis keys in every group version are
        deleted, their rows taken out of the Redis Streams that hold them (pushed events,
        pushed embeddings), and each vector index of their groups rebuilt without them
        (older builds deleted). Safe to repeat. Not covered: the raw source files (the user's
        own data: filtered at every read instead). The audit log never holds join keys,
        only counts.
        """
        import glob

        from skewless.storage.offline import atomic_write

        groups = [g for g in self.repository.groups if g.entity.name == entity]
        if not groups:
            known = ", ".join(sorted(e.name for e in self.repository.entities))
            raise RequestError(f"erase: unknown entity '{entity}' (known: {known})")
        columns = groups[0].entity.key_columns
        frame = conform_keys(to_polars(keys, "erase keys"), groups[0], "erase keys").select(columns)
        if frame.is_empty():
            raise RequestError(f"erase: no keys of entity '{entity}' given")
        nulls = [c for c in columns if frame.get_column(c).null_count()]
        if nulls:
            raise RequestError(f"erase: join key column(s) {', '.join(nulls)} hold nulls")
        frame = frame.unique()
        self.offline.record_erasure(entity, frame)
        files = rows = 0
        for group in groups:
            f, r = self.offline.erase_rows(self.offline.files(group), frame)
            files, rows = files + f, rows + r
        for service in self.repository.services:
            found = self.offline.served_logs(service.name, service.version)
            if self.offline.has_training_set(service.name, service.version):
                found.append(self.offline.training_set_path(service.name, service.version))
            f, r = self.offline.erase_rows(found, frame)
            files, rows = files + f, rows + r
        for source in {g.source.name: g.source for g in groups}.values():
            pushed = getattr(source, "pushed_dir", None)
            for path in sorted(glob.glob(f"{pushed}/*.parquet")) if pushed is not None else []:
                data = pl.read_parquet(path)
                if set(columns) <= set(data.columns):
                    cast = frame.select([pl.col(c).cast(data.schema[c]) for c in columns])
                    kept = data.join(cast, on=columns, how="anti", nulls_equal=False)
                    if kept.height < data.height:
                        atomic_write(Path(path), kept)
                        files, rows = files + 1, rows + data.height - kept.height
        keys_deleted = sum(self.writer.erase(group, frame) for group in groups)
        entries = self._erase_from_streams(groups, frame)
        indexes = self._erase_from_indexes(groups, frame)
        # versions removed from the code (still in the lock file, retired or not) keep files
        f, r, k = self._erase_removed_versions(entity, frame)
        files, rows, keys_deleted = files + f, rows + r, keys_deleted + k
        return {
            "entities": frame.height,
            "files_rewritten": files,
            "rows_removed": rows,
            "keys_deleted": keys_deleted,
            "stream_entries_rewritten": entries,
            "indexes_rebuilt": indexes,
        }

    def _erase_from_streams(self, groups: Sequence[FeatureGroup], keys: pl.DataFrame) -> int:
        """The erased entities' rows out of the Redis Streams that hold them: each stream
        source's pushed events (entries not yet applied keep their other rows) and each
        indexed group's pushed embeddings. Returns the entries rewritten."""
        from skewless.storage import streams
        from skewless.vectors import updates

        writer = self.writer
        rewritten = 0
        for source in {g.source.name: g.source for g in groups if g.source.stream}.values():
            key = streams.stream_key(writer, source.name)
            rewritten += streams.erase(writer, key, keys, streams.applied(writer, source.name))[0]
        for group in groups:
            if group.index is not None:
                rewritten += streams.erase(writer, updates.updates_key(writer, group), keys, None)[0]
        return rewritten

    def _erase_from_indexes(self, groups: Sequence[FeatureGroup], keys: pl.DataFrame) -> int:
        """Every vector index build of the entity's groups holds its vectors and keys: tell
        serving processes to drop the entities now (a removal in the pushed-embeddings
        stream: they apply it before their next search), then rebuild the index from the
        offline store (already erased) and delete every older build. A rebuild whose recall
        check fails is not published, and the old builds are deleted all the same: an index
        that cannot be rebuilt is gone until the next good build, rather than keep what was
        erased. Returns the indexes rebuilt and published."""
        from skewless.vectors import index_store, updates

        rebuilt = 0
        for group in groups:
            if group.index is None or index_store.read_current(self.offline, group) is None:
                continue
            updates.remove(self.writer, group, keys)
            built = index_store.build(self.offline, group)
            index_store.save(self.offline, group, built)
            if built.blocked:
                index_store.delete_builds(self.offline, group, keep=None)
                warnings.warn(
                    f"erase: the rebuilt index of '{group.ref}' failed its recall check; every build "
                    "was deleted (search is unavailable until the next good build)",
                    stacklevel=3,
                )
                continue
            index_store.publish(self.offline, group, built, keep=1)
            rebuilt += 1
        return rebuilt

    def _erase_removed_versions(self, entity: str, frame: pl.DataFrame) -> tuple[int, int, int]:
        """`erase` for group versions of `entity` the lock file remembers but the code no longer
        defines: their partitions stay after retirement, and until retired their keys too."""
        from skewless.registry.lock import read_lock
        from skewless.storage import online_keys as K

        path = self.repository.lock_path
        if path is None or not path.is_file():
            return 0, 0, 0
        data = read_lock(path)
        defined = {g.ref for g in self.repository.groups}
        files = rows = deleted = 0
        for ref, entry in {**data.get("retired", {}), **data.get("groups", {})}.items():
            if ref in defined or entry.get("entity") != entity:
                continue
            name, version = ref.rsplit(":v", 1)
            f, r = self.offline.erase_rows(self.offline.version_files(name, int(version)), frame)
            files, rows = files + f, rows + r
            key_schema = {k: getattr(pl, dtype) for k, dtype in entry["join_keys"].items()}
            expression = K.version_key_expression(
                entity, key_schema, name, int(version), self.online.key_prefix
            )
            base = frame.cast(key_schema).select(expression.alias("k"))["k"].to_list()  # type: ignore[arg-type]
            suffixes = K.WINDOW_SUFFIXES if entry.get("windowed", False) else ("",)
            deleted += self.writer.unlink([b + x for b in base for x in suffixes])
        return files, rows, deleted

    def _source_schema(self, source: Source) -> pl.Schema | None:
        """The schema pushed rows are normalised to: the source's own, as a scan sees it.

        Cached per store (a scan plans over every file). A source with no data yet falls back
        to the schema its stream recorded with the last checked push, and is looked up again
        next time (its first files may have landed by then).
        """
        known = self._source_schemas.get(source.name)
        if known is not None:
            return known
        try:
            # an empty time range: a DuckDB source then runs a query that returns no rows
            # instead of reading its whole table just to learn the columns
            never = datetime(1970, 1, 1, tzinfo=UTC)
            schema = source.scan(never, never).collect_schema()
        except (SkewlessError, pl.exceptions.PolarsError, OSError):
            schema = None
        if schema is not None:
            self._source_schemas[source.name] = schema
            return schema
        if source.stream:
            from skewless.storage import streams

            # the writer: a role's reader user is not given the stream's keys (only the
            # groups it reads), its writer is (`storage.acl.push_patterns`)
            return streams.recorded_schema(self.writer, source.name)
        return None

    def sql(self, query: str) -> pl.DataFrame:
        """Run DuckDB SQL over the offline store: a view per group version (`<group>_v<N>`)
        and per group (its highest version), with a `date` column for partition pruning.
        Groups' pii columns are in the views for a process allowed to read pii (no role, or
        a role with pii access), decrypted in memory; left out for other roles."""
        import duckdb

        from skewless.storage.sql import create_views

        with duckdb.connect() as conn:
            pii = self.role is None or self.role.reads_pii
            create_views(conn, self.repository.groups, self.offline, pii=pii)
            try:
                return conn.sql(query).pl()
            except duckdb.Error as exc:
                raise RequestError(f"SQL query failed: {exc}") from None

    # ----------------------------------------------------------------- online
    def get_online_features(
        self,
        entities: Any,
        features: Sequence[str] | None = None,
        service: str | None = None,
        full_feature_names: bool = False,
        output: Literal["polars", "pandas", "arrow", "dicts", "rows", "numpy"] = "polars",
        at: datetime | None = None,
    ) -> Any:
        """Current values for each requested entity, in request order, in one Redis round trip.

        `entities`: a list of dicts, a dict of columns, or a Polars/pandas/Arrow frame holding
        the join keys. A stored value older than the group's TTL is not served; missing values
        get the feature's declared default, as in training sets. `output="dicts"` skips
        building a frame (the fastest for a handful of entities); `"rows"` gives one tuple per
        entity in `read_plan(...).schema` order, join keys first (no dict per row: the fastest
        for many entities); `"numpy"` gives a dict of arrays. `at` evaluates TTLs and windows
        as of that instant instead of now (to replay the online path, e.g. against a training
        set).
        """
        started = time.perf_counter_ns()
        self.online.begin_read_stats()
        plan = self.read_plan(features, service, full_feature_names)
        columns, n = plan.entity_columns(entities)
        now_us = None if at is None else int(at.timestamp() * 1_000_000)
        audit_log = self.audit_log
        try:
            if output in ("dicts", "rows"):
                read = plan.to_dicts if output == "dicts" else plan.to_rows
                rows = read(columns, n, now_us)
                self.monitor.observe(plan, plan.service_ref, time.perf_counter_ns() - started, rows, output)
                if audit_log.sampled("online_read"):
                    self._audit_read(plan, n)
                return rows
            frame = plan.to_polars(columns, n, now_us)
        except AccessDenied as exc:  # refusals are always audited
            audit_log.record("online_read", self._plan_object(plan), n, audit.DENIED, detail=str(exc)[:500])
            raise
        self.monitor.observe(plan, plan.service_ref, time.perf_counter_ns() - started, frame, "polars")
        if audit_log.sampled("online_read"):
            self._audit_read(plan, n)
        if output == "numpy":
            return {name: frame.get_column(name).to_numpy() for name in frame.columns}
        return convert(frame, output)

    @staticmethod
    def _plan_object(plan: ReadPlan) -> str:
        return plan.service_ref or ",".join(plan.group_refs)

    def _audit_read(self, plan: ReadPlan, entities: int) -> None:
        self.audit_log.record("online_read", self._plan_object(plan), entities, sampled=True)

    @property
    def last_online_stats(self) -> dict[str, int]:
        """What this thread's last `get_online_features` cost: `round_trips` (one per node
        touched per read step: one for row groups on a single Redis), `nodes` touched,
        `commands` and `keys` sent."""
        return self.online.read_stats().as_dict()

    def read_plan(
        self, features: Sequence[str] | None, service: str | None, full_feature_names: bool
    ) -> ReadPlan:
        """The resolved request shape, cached: repeated requests skip parsing and checks.

        A single string is one reference, as in `select` (and cached as a one-element tuple,
        so `"g:v1:f"` and `["g:v1:f"]` share a plan).
        """
        if isinstance(features, str):
            features = [features]
        cache_key = (tuple(features) if features is not None else None, service, full_feature_names)
        plan = self._read_plans.get(cache_key)
        if plan is None:
            selection = self.select(features, service)
            self.check_pii(selection)
            plan = ReadPlan(self.online, selection, self.output_names(selection, full_feature_names))
            plan.service_ref = self.repository.service(service).ref if service is not None else None
            self._read_plans[cache_key] = plan
        return plan

    def never_written(self, groups: Sequence[FeatureGroup] | None = None) -> list[FeatureGroup]:
        """The group versions (default: all) the online store has no write record of.

        Neither materialized online nor pushed, such a group can only serve its defaults; the
        usual cause is a wrong state folder or Redis (another repository's, an empty one).
        Read from each version's freshness marker (one HGETALL each), so it is meant for
        startup and commands, not the lookup path.
        """
        chosen = self.repository.groups if groups is None else groups
        return [g for g in chosen if self.online.freshness(g) is None]

    def never_written_warnings(self, groups: Sequence[FeatureGroup] | None = None) -> list[str]:
        """One line per never-written group version: what is wrong, where we looked, what to do."""
        from skewless.storage.online import redact

        return [
            f"warning: feature group '{g.ref}' was never written to the online store "
            f"({redact(self.online.url)}, state folder {self.config.state_dir}): lookups return only "
            f"its defaults; materialize the asset online/{g.name}/v{g.version} "
            f"or push to source '{g.source.name}' first"
            for g in self.never_written(groups)
        ]

    # ----------------------------------------------------------------- registry
    @property
    def registry(self) -> Any:
        from skewless.registry.catalog import Registry

        return Registry(self.repository)

    def list_features(self) -> pl.DataFrame:
        """Every feature of every group version, with dtype, description, owner, consumers."""
        return self.registry.features()

    def search(
        self,
        target: str,
        vector: Any = None,
        *,
        entity: Mapping[str, Any] | None = None,
        k: int = 10,
        filter: pl.Expr | None = None,
        features: Sequence[str] | None = None,
        limit: int = 20,
    ) -> pl.DataFrame:
        """Nearest neighbours in a group version's vector index, or a text search of the catalog.

        With a query `vector` or an `entity` (a dict of join keys: its current embedding is
        the query, and it is left out of the answer), `target` is an indexed group version
        (`"item_embeddings:v2"`) and this is `vector_search` (see there). With neither,
        `target` is text and the result ranks features by how well it matches their name,
        group, description, tags and owner (`limit` rows), as before vector search existed.
        """
        if isinstance(vector, int) and not isinstance(vector, bool) and entity is None:
            limit, vector = vector, None  # the catalog search's old signature: search(text, limit)
        if vector is not None or entity is not None:
            return self.vector_search(target, vector, entity=entity, k=k, filter=filter, features=features)
        return self.registry.search(target, limit)  # the catalog: definitions, not values

    def index_handle(self, group_ref: str) -> Any:
        """The process's handle on a group version's published index (loaded on first use)."""
        from pathlib import Path

        from skewless.vectors.updates import IndexHandle

        parsed = FeatureRef.parse(group_ref)
        if parsed.feature is not None:
            raise RequestError(
                f"search a group version ('{parsed.group_ref}'), not a feature ('{group_ref}')"
            )
        try:
            group = self.repository.group(parsed.group, parsed.version)
        except DefinitionError as exc:
            raise RequestError(str(exc)) from None
        if group.index is None:
            indexed = ", ".join(g.ref for g in self.repository.groups if g.index is not None) or "none"
            raise RequestError(
                f"feature group '{group.ref}' has no VectorIndex (indexed group versions: {indexed})"
            )
        handle = self._indexes.get(group.ref)
        if handle is None:
            handle = IndexHandle(self.offline, self.online, group, Path(self.config.state_dir) / "cache")
            self._indexes[group.ref] = handle
        return handle

    def vector_search(
        self,
        group_ref: str,
        vector: Any = None,
        *,
        entity: Mapping[str, Any] | None = None,
        k: int = 10,
        filter: pl.Expr | None = None,
        features: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """The `k` entities nearest to `vector` (or to `entity`'s current embedding) in the
        index of `group_ref`, nearest first: join keys, `distance` (1 - cosine, -inner
        product or L2 distance, by the index's metric) and the requested `features`.

        `filter` is a Polars expression over the group's scalar features
        (`pl.col("country") == "FR"`), as of the index build plus every push since; when at
        least k entities match it, k are returned (see `vectors.engine` for how). `features`
        are names of the group's features or references `group:vN:feature` of any group of
        the same entity, read from the online store in one round trip, with the same TTL and
        default rules as `get_online_features`. Pushed embeddings are searchable as soon as
        the push returns, in every process.
        """
        with self.audit_log.denied("search", group_ref):
            found = self._vector_search(group_ref, vector, entity, k, filter, features)
        if self.audit_log.sampled("search"):
            self.audit_log.record("search", group_ref, found.height, sampled=True)
        return found

    def _vector_search(
        self,
        group_ref: str,
        vector: Any,
        entity: Mapping[str, Any] | None,
        k: int,
        filter: pl.Expr | None,
        features: Sequence[str] | None,
    ) -> pl.DataFrame:
        import numpy as np

        from skewless.vectors.engine import DISTANCE

        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10_000:
            raise RequestError(f"k must be an integer in 1..10000, got {k!r}")
        if (vector is None) == (entity is None):
            raise RequestError("pass exactly one of a query vector or entity={join keys}")
        if filter is not None and not isinstance(filter, pl.Expr):
            raise RequestError(
                f"filter must be a Polars expression such as pl.col('country') == 'FR', got {filter!r}"
            )
        handle = self.index_handle(group_ref)
        group = handle.group
        # one search at a time per index: a concurrent push applied mid-search would swap
        # the overlay under it (the HTTP server searches from several threads)
        with handle.lock:
            searcher = handle.sync()
            keys = group.entity.key_columns
            exclude = None
            if entity is not None:
                missing = [c for c in keys if c not in entity]
                if missing:
                    raise RequestError(f"entity for '{group.ref}' lacks join key(s) {missing}")
                exclude = conform_keys(pl.DataFrame([{c: entity[c] for c in keys}]), group, "entity")
                query = searcher.vector_of(exclude)
                if query is None:
                    raise RequestError(
                        f"entity {dict(entity)} has no embedding in the index of '{group.ref}'"
                    )
            else:
                try:
                    query = np.asarray(vector, dtype=np.float32).reshape(-1)
                except (TypeError, ValueError):
                    raise RequestError(f"query vector for '{group.ref}' must be a list of numbers") from None
            if query.shape[0] != searcher.dim:
                raise RequestError(
                    f"query vector for '{group.ref}' has {query.shape[0]} dimensions, "
                    f"the index has {searcher.dim}"
                )
            if not np.isfinite(query).all():
                raise RequestError(f"query vector for '{group.ref}' has NaN or infinite values")
            names = set(searcher.rows.columns) | set(searcher.overlay.columns)
            if filter is not None:
                unknown = [c for c in filter.meta.root_names() if c not in names or c.startswith("_")]
                if unknown:
                    usable = ", ".join(c for c in searcher.rows.columns if not c.startswith("_"))
                    raise RequestError(
                        f"filter names column(s) {unknown} the index of '{group.ref}' lacks "
                        f"(columns: {usable})"
                    )
            try:
                found = searcher.search(query, k + (1 if exclude is not None else 0), filter)
            except pl.exceptions.PolarsError as exc:
                raise RequestError(f"filter for '{group.ref}' failed: {str(exc).splitlines()[0]}") from None
        result = found.keys.with_columns(pl.Series(DISTANCE, found.distance))
        if exclude is not None:
            result = result.join(exclude, on=keys, how="anti", maintain_order="left").head(k)
        if not features:
            return result
        refs = [
            f if ":" in f else f"{group.ref}:{f}"
            for f in ([features] if isinstance(features, str) else features)
        ]
        values = self.get_online_features(result.select(keys), features=refs)
        return pl.concat([result, values.drop(keys)], how="horizontal")

    def describe(self, target: str) -> dict[str, Any]:
        """Definition, schema, freshness, last materialization and consumers of `group`,
        `group:vN` or `group:vN:feature`."""
        described = self.registry.describe(target)
        entries = described.get("versions") or [described.get("group", described)]
        for entry in entries:
            group = self.repository.group(entry["name"], entry["version"])
            entry["offline"] = self._offline_state(group)
            entry["online"] = self._online_state(group)
            entry["last_materialization"] = _last_materialization(group)
        return described

    def _offline_state(self, group: FeatureGroup) -> dict[str, Any]:
        days = self.offline.partitions(group)
        return {
            "partitions": len(days),
            "first_day": days[0].isoformat() if days else None,
            "last_day": days[-1].isoformat() if days else None,
            "path": str(self.offline.group_dir(group)),
        }

    def _online_state(self, group: FeatureGroup) -> dict[str, Any]:
        try:
            marker = self.online.freshness(group)
        except SkewlessError as exc:
            return {"error": str(exc)}
        if marker is None:
            return {"newest_event": None}
        newest = datetime.fromtimestamp(marker["newest_event_us"] / 1e6, tz=UTC)
        written = datetime.fromtimestamp(marker["written_at_us"] / 1e6, tz=UTC)
        return {
            "newest_event": newest.isoformat(),
            "last_write": written.isoformat(),
            "fresh": datetime.now(UTC) - newest <= group.freshness_limit,
        }

    def retire(self, ref: str, progress: Any = None) -> dict[str, Any]:
        """Delete a group version's online keys (found from its offline partitions, no SCAN)
        and mark it retired in the lock file. The version must be gone from the code first:
        while it is defined, something may still serve it."""
        from skewless.registry.lock import read_lock, retire

        parsed = FeatureRef.parse(ref)
        if parsed.feature is not None:
            raise RequestError(f"retire a group version ('{parsed.group_ref}'), not a feature")
        ref = parsed.group_ref
        if any(g.ref == ref for g in self.repository.groups):
            raise RequestError(
                f"feature group '{ref}' is still defined in the code; remove it (and its use in "
                "feature services) first, then retire it"
            )
        path = self.repository.lock_path
        if path is None:
            raise RequestError("this repository has no lock file (load it with load_repository)")
        data = read_lock(path)
        entry = data["groups"].get(ref) or data["retired"].get(ref)
        if entry is None:
            raise RequestError(f"feature group '{ref}' is not in the lock file {path}")
        key_schema = {k: getattr(pl, dtype) for k, dtype in entry["join_keys"].items()}
        # partitions and stream micro-batch pieces: an entity only pushed is still online
        files = self.offline.version_files(parsed.group, parsed.version)
        entities = (
            self.offline.scan_parquet(files).select(list(key_schema))
            if files
            else pl.LazyFrame(schema=key_schema)
        )
        count = entities.select(pl.struct(list(key_schema)).n_unique()).collect().item() if files else 0
        deleted = self.online.delete_version(
            entry["entity"],
            key_schema,
            parsed.group,
            parsed.version,
            entry.get("windowed", False),
            entities,
            progress,
        )
        retire(path, ref)
        days = len({day_of(p) for p in files})
        return {"ref": ref, "entities": count, "keys_deleted": deleted, "partitions_kept": days}


def _last_materialization(group: FeatureGroup) -> dict[str, Any] | None:
    """From the Dagster instance in DAGSTER_HOME, when there is one."""
    import os

    if not os.environ.get("DAGSTER_HOME") or not os.path.isdir(os.environ["DAGSTER_HOME"]):
        return None
    try:
        import dagster as dg

        from skewless import asset_keys

        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset_keys.offline_path(group)))
    except Exception:
        return None
    if event is None:
        return None
    return {
        "at": datetime.fromtimestamp(event.timestamp, tz=UTC).isoformat(timespec="seconds"),
        "partition": event.dagster_event.partition if event.dagster_event else None,
        "run_id": event.run_id,
    }

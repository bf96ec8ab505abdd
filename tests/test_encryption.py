"""PII encrypted at rest (issue 15 item 3): Parquet modular encryption offline, AES-GCM online.

Real files, a real Redis and real Redis ACL users (`apply_roles`): a file is checked
unreadable by plain pyarrow and Polars, Redis' raw bytes are checked for the plaintext, and
roles are refused pii by the client before anything is read or decrypted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest
import redis

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig
from skewless.errors import AccessDenied, DefinitionError, EncryptionKeyError, OnlineStoreError
from skewless.feature_assets.definitions import build_definitions
from skewless.language.role import Role
from skewless.language.vectors import Vector
from skewless.registry.roles import apply_roles
from skewless.storage import online_keys as K
from skewless.storage.keys import KeyRing, forget_rings, keys_dir
from skewless.storage.offline import encrypted_columns, open_offline_store
from tests.helpers import RUN, START, delete_keys, materialize_days

USER = Entity("user", {"user_id": pl.Int64})
EMAILS = [f"person{i}@example.org" for i in range(1, 6)]
DAY = date(2026, 3, 1)


def events() -> pl.DataFrame:
    t0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
    return pl.DataFrame(
        {
            "user_id": [1, 2, 3, 4, 5, 1],
            "ts": [t0 + timedelta(hours=i) for i in range(6)],
            "email": [*EMAILS, "person1-new@example.org"],
            "age": [31, 42, 53, 64, 75, 32],
            "amount": [10.0, 20.0, 30.0, 40.0, 50.0, 11.0],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def pii_repo(folder: Path) -> FeatureRepository:
    folder.mkdir(parents=True, exist_ok=True)
    rows = events()
    rows.write_parquet(folder / "events.parquet")
    rows.select("user_id", "ts").write_parquet(folder / "labels.parquet")
    source = FileSource("people", folder / "events.parquet", "ts", start_date=START)
    profile = FeatureGroup(
        "user_profile",
        USER,
        source,
        [
            Feature("amount", pl.Float64, default=0.0),
            Feature("email", pl.String, default="", pii=True),
            Feature("age", pl.Int64, pii=True),
        ],
    )
    tagged = FeatureGroup(
        "user_contact",
        USER,
        source,
        [Feature("email", pl.String)],
        tags=["pii"],
    )
    labels = FileSource("labels", folder / "labels.parquet", "ts", start_date=START)
    services = [
        FeatureService("scoring", ["user_profile:v1:amount"]),
        FeatureService("contact_model", ["user_profile:v1:amount", "user_profile:v1:email"], labels=labels),
    ]
    roles = [
        Role("analyst", read=["user_profile:v1", "user_contact:v1"]),
        Role("officer", read=["user_profile:v1", "user_contact:v1"], pii=True),
        Role("ops", admin=True),
    ]
    return FeatureRepository([profile, tagged], services=services, roles=roles, name="pii_test")


@pytest.fixture
def pii_config(tmp_path: Path, redis_url: str) -> Iterator[StoreConfig]:
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=redis_url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"sktest:pii:{RUN}:{uuid.uuid4().hex[:6]}",
    )
    KeyRing.init(config.state_dir)
    yield config
    delete_keys(config)
    forget_rings()


def _materialized(tmp_path: Path, config: StoreConfig) -> FeatureRepository:
    repo = pii_repo(tmp_path / "data")
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, config, instance, START, START).success
    return repo


# ---------------------------------------------------------------------- definitions


def test_pii_is_declared_on_features_or_by_the_group_tag(tmp_path: Path) -> None:
    repo = pii_repo(tmp_path)
    profile, contact = repo.group("user_profile", 1), repo.group("user_contact", 1)
    assert profile.pii_features == ("email", "age") and contact.pii_features == ("email",)
    source = repo.sources[0]
    with pytest.raises(DefinitionError, match="window aggregations cannot be pii"):
        FeatureGroup("w", USER, source, aggregations=[Aggregation("sum", "amount", ["1d"])], tags=["pii"])
    with pytest.raises(DefinitionError, match="Vector feature cannot be pii"):
        Feature("embedding", Vector(4), pii=True)
    with pytest.raises(DefinitionError, match="cannot be pii"):
        FeatureGroup("v", USER, source, [Feature("embedding", Vector(4))], tags=["pii"])
    with pytest.raises(DefinitionError, match="pii must be True or False"):
        Feature("x", pl.Int64, pii="yes")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="pii must be True or False"):
        Role("r", read=["user_profile:v1"], pii=1)  # type: ignore[arg-type]
    assert Role("a", admin=True).reads_pii and not Role("r", read=["x"]).reads_pii
    from skewless.registry.roles import describe_roles

    described = {d["role"]: d["reads_pii"] for d in describe_roles(repo, "p")}
    assert described == {"analyst": False, "officer": True, "ops": True}
    access = repo.access("analyst")
    assert access.may_read(profile) and not access.may_read_pii(profile)
    assert repo.access("officer").may_read_pii(profile)


# ---------------------------------------------------------------------- keys


def test_keys_init_rotate_and_list_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skewless.cli import main

    state = tmp_path / "state"
    saved = os.environ.get("SKEWLESS_HOME")
    os.environ["SKEWLESS_HOME"] = str(state)
    try:
        assert main(["keys", "list"]) == 1  # no ring yet: told to run init
        assert "skewless keys init" in capsys.readouterr().err
        assert main(["keys", "init"]) == 0
        assert main(["keys", "init"]) == 1  # never replaced: that would orphan the data
        assert main(["keys", "rotate"]) == 0
        capsys.readouterr()
        assert main(["keys", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
    finally:
        if saved is None:
            os.environ.pop("SKEWLESS_HOME", None)
        else:
            os.environ["SKEWLESS_HOME"] = saved
    assert listed["current"] == "k2" and [k["key_id"] for k in listed["keys"]] == ["k1", "k2"]
    folder = keys_dir(state)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("ring.json", "master.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    ring = json.loads((folder / "ring.json").read_text())
    master = json.loads((folder / "master.json").read_text())
    # the ring holds wrapped keys only: nothing in it is a master key
    assert not set(master.values()) & {k["online_key"] for k in ring["keys"].values()}


def test_a_pii_write_without_keys_names_the_command(tmp_path: Path, redis_url: str) -> None:
    repo = pii_repo(tmp_path / "data")
    config = StoreConfig(
        str(tmp_path / "offline"), redis_url, str(tmp_path / "state"), f"sktest:pii:{RUN}:nk"
    )
    store = open_offline_store(config)
    frame = pl.DataFrame(
        {
            "user_id": [1],
            "event_timestamp": [datetime(2026, 3, 1, tzinfo=UTC)],
            "amount": [1.0],
            "email": ["x@example.org"],
            "age": [3],
        }
    )
    with pytest.raises(EncryptionKeyError, match="skewless keys init"):
        store.write_partition(repo.group("user_profile", 1), DAY, frame)
    assert not store.partitions(repo.group("user_profile", 1))  # nothing written in clear


# ---------------------------------------------------------------------- offline


def test_an_encrypted_partition_is_unreadable_without_the_key(
    tmp_path: Path, pii_config: StoreConfig
) -> None:
    repo = _materialized(tmp_path, pii_config)
    group = repo.group("user_profile", 1)
    offline = open_offline_store(pii_config)
    path = offline.partition_path(group, DAY)
    data = Path(path).read_bytes()
    assert not any(email.encode() in data for email in EMAILS)  # pages and statistics
    with pytest.raises(OSError, match="decrypt"):
        pq.read_table(path)
    with pytest.raises(Exception, match=r"(?i)encrypt"):
        pl.read_parquet(path)
    # the footer is plaintext: key id and encrypted columns are readable, and so are the
    # columns that are not pii (a role without pii access can be given those)
    assert encrypted_columns(path) == ("k1", ["email", "age"])
    assert pq.read_table(path, columns=["user_id", "amount"]).num_rows == 6
    # with the key: everything, as written
    stored = offline.read_partition(group, DAY)
    assert stored is not None
    assert stored["email"].to_list() == [EMAILS[0], "person1-new@example.org", *EMAILS[1:]]
    assert offline.scan(group).collect().height == 6
    # the group tagged pii is encrypted too
    contact = offline.partition_path(repo.group("user_contact", 1), DAY)
    assert encrypted_columns(contact)[1] == ["email"]


def test_rotation_keeps_old_files_readable_and_rewrites_nothing(
    tmp_path: Path, pii_config: StoreConfig
) -> None:
    repo = pii_repo(tmp_path / "data")
    group = repo.group("user_profile", 1)
    offline = open_offline_store(pii_config)

    def day_rows(day: date, email: str) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "user_id": [1],
                "event_timestamp": [datetime(day.year, day.month, day.day, 9, tzinfo=UTC)],
                "amount": [1.0],
                "email": [email],
                "age": [30],
            }
        )

    first = offline.write_partition(group, DAY, day_rows(DAY, "old@example.org"))
    before = hashlib.sha256(Path(first).read_bytes()).hexdigest()
    mtime = Path(first).stat().st_mtime_ns
    assert KeyRing.open(pii_config.state_dir).rotate() == "k2"
    second_day = DAY + timedelta(days=1)
    second = offline.write_partition(group, second_day, day_rows(second_day, "new@example.org"))
    assert encrypted_columns(first)[0] == "k1" and encrypted_columns(second)[0] == "k2"
    # a reader opened after the rotation reads both (a fresh process: no cached ring)
    forget_rings()
    reader = open_offline_store(pii_config)
    assert reader.scan(group).collect()["email"].to_list() == ["old@example.org", "new@example.org"]
    assert hashlib.sha256(Path(first).read_bytes()).hexdigest() == before
    assert Path(first).stat().st_mtime_ns == mtime


def test_erasure_rewrites_an_encrypted_file_encrypted(tmp_path: Path, pii_config: StoreConfig) -> None:
    repo = _materialized(tmp_path, pii_config)
    with FeatureStore(repo, pii_config) as store:
        store.erase("user", [{"user_id": 2}])
        path = store.offline.partition_path(repo.group("user_profile", 1), DAY)
        assert encrypted_columns(path)[1] == ["email", "age"]
        assert EMAILS[1].encode() not in Path(path).read_bytes()
        left = store.offline.read_partition(repo.group("user_profile", 1), DAY)
        assert left is not None and 2 not in left["user_id"].to_list() and left.height == 5


# ---------------------------------------------------------------------- online


def _raw_value(config: StoreConfig, group: FeatureGroup, user_id: int) -> bytes:
    (key,) = K.entity_keys(group, config.key_prefix, pl.DataFrame({"user_id": [user_id]}))
    assert config.redis_url is not None
    raw = redis.Redis.from_url(config.redis_url).get(key)
    assert raw is not None
    return raw  # type: ignore[no-any-return]


def test_redis_holds_no_plaintext_pii_and_a_moved_value_does_not_decrypt(
    tmp_path: Path, pii_config: StoreConfig
) -> None:
    repo = _materialized(tmp_path, pii_config)
    group = repo.group("user_profile", 1)
    for user in range(2, 6):
        raw = _raw_value(pii_config, group, user)
        assert EMAILS[user - 1].encode() not in raw
        assert raw[:1] == b"2" and b"k1" in raw  # sealed format, key id in the value
    with FeatureStore(repo, pii_config) as store:  # no role: single-user mode reads it all
        got = store.get_online_features(
            [{"user_id": 3}, {"user_id": 9}],
            features=["user_profile:v1:email", "user_profile:v1:age", "user_profile:v1:amount"],
            output="dicts",
        )
        assert got == [
            {"user_id": 3, "email": EMAILS[2], "age": 53, "amount": 30.0},
            {"user_id": 9, "email": "", "age": None, "amount": 0.0},  # defaults when missing
        ]
        # a value copied to another entity's key is refused, not served as that entity's
        (key4,) = K.entity_keys(group, pii_config.key_prefix, pl.DataFrame({"user_id": [4]}))
        assert pii_config.redis_url is not None
        redis.Redis.from_url(pii_config.redis_url).set(key4, _raw_value(pii_config, group, 3))
        with pytest.raises(OnlineStoreError, match="does not decrypt"):
            store.get_online_features([{"user_id": 4}], features=["user_profile:v1:email"])
        # features of the group that are not pii are read without decrypting anything
        assert store.get_online_features(
            [{"user_id": 4}], features=["user_profile:v1:amount"], output="dicts"
        ) == [{"user_id": 4, "amount": 30.0}]


def test_online_rotation_keeps_old_values_readable(tmp_path: Path, pii_config: StoreConfig) -> None:
    repo = _materialized(tmp_path, pii_config)
    group = repo.group("user_contact", 1)
    KeyRing.open(pii_config.state_dir).rotate()
    forget_rings()
    now = datetime.now(UTC)
    with FeatureStore(repo, pii_config) as store:
        store.online.write_latest(
            group, pl.DataFrame({"user_id": [7], "event_timestamp": [now], "email": ["seven@example.org"]})
        )
        assert b"k2" in _raw_value(pii_config, group, 7) and b"k1" in _raw_value(pii_config, group, 2)
        got = store.get_online_features(
            [{"user_id": 2}, {"user_id": 7}], features=["user_contact:v1:email"], output="dicts"
        )
        assert [r["email"] for r in got] == [EMAILS[1], "seven@example.org"]


# ---------------------------------------------------------------------- roles


@pytest.fixture
def applied(tmp_path: Path, pii_config: StoreConfig) -> Iterator[FeatureRepository]:
    repo = _materialized(tmp_path, pii_config)
    apply_roles(repo, pii_config)
    try:
        yield repo
    finally:
        assert pii_config.redis_url is not None
        admin = redis.Redis.from_url(pii_config.redis_url)
        users = [u.decode() for u in admin.execute_command("ACL", "USERS")]
        mine = [u for u in users if u.startswith(pii_config.key_prefix + ".")]
        if mine:
            admin.execute_command("ACL", "DELUSER", *mine)


def test_roles_read_pii_only_when_granted(applied: FeatureRepository, pii_config: StoreConfig) -> None:
    entities = [{"user_id": 3}]
    labels = pl.DataFrame({"user_id": [3], "event_timestamp": [datetime(2026, 3, 2, tzinfo=UTC)]})
    with FeatureStore(applied, pii_config, role="analyst") as analyst:
        for features in (
            ["user_profile:v1:email"],
            ["user_profile:v1:amount", "user_profile:v1:age"],
            ["user_contact:v1:email"],
        ):
            with pytest.raises(AccessDenied, match="role 'analyst' may not read pii features") as denied:
                analyst.get_online_features(entities, features=features)
            assert denied.value.role == "analyst" and denied.value.groups
            with pytest.raises(AccessDenied, match=features[-1].rsplit(":", 1)[1]):
                analyst.get_training_dataset(labels, features=features)
        with pytest.raises(AccessDenied, match=r"user_profile:v1.*email"):
            analyst.get_online_features(entities, service="contact_model:v1")
        # the group's other features stay readable, online (its ACL user reads the key) and offline
        assert analyst.get_online_features(entities, service="scoring:v1", output="dicts") == [
            {"user_id": 3, "amount": 30.0}
        ]
        assert analyst.get_training_dataset(labels, service="scoring:v1")["amount"].to_list() == [30.0]
        assert "email" not in analyst.sql("SELECT * FROM user_profile_v1").columns
    for role in ("officer", "ops"):
        with FeatureStore(applied, pii_config, role=role) as allowed:
            got = allowed.get_online_features(
                entities,
                features=["user_profile:v1:email", "user_contact:v1:email"],
                full_feature_names=True,
                output="dicts",
            )
            assert got[0]["user_profile__v1__email"] == EMAILS[2] == got[0]["user_contact__v1__email"]
            training = allowed.get_training_dataset(labels, features=["user_profile:v1:age"])
            assert training["age"].to_list() == [53]
            assert allowed.sql("SELECT email FROM user_profile_v1 WHERE user_id = 3").item() == EMAILS[2]


def test_http_answers_403_naming_the_pii_features(
    applied: FeatureRepository, pii_config: StoreConfig
) -> None:
    from starlette.testclient import TestClient

    from skewless.serving.http import AccessPolicy, create_app

    keys = {"key-analyst-0001": "analyst", "key-officer-0002": "officer", "key-policy-0003": "reader"}
    roles = {"reader": {"groups": ["user_profile:v1"]}}
    policy = AccessPolicy.from_json(json.dumps({"keys": keys, "roles": roles}), applied)
    store = FeatureStore(applied, pii_config)
    client = TestClient(create_app(store, policy))
    body = {"features": ["user_profile:v1:email"], "entities": [{"user_id": 3}]}
    try:
        for key in ("key-analyst-0001", "key-policy-0003"):
            denied = client.post("/features/online", json=body, headers={"X-API-Key": key})
            assert denied.status_code == 403, denied.text
            assert "pii" in denied.json()["error"] and "email" in denied.json()["error"]
        ok = client.post("/features/online", json=body, headers={"X-API-Key": "key-officer-0002"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["results"] == [{"user_id": 3, "email": EMAILS[2]}]
    finally:
        client.close()
        store.close()


# ---------------------------------------------------------------------- Dagster end to end


def test_materialize_then_a_training_set_asset_with_pii(tmp_path: Path, pii_config: StoreConfig) -> None:
    repo = pii_repo(tmp_path / "data")
    defs = build_definitions(repo, pii_config)
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, pii_config, instance, START, START).success
        assert defs.resolve_job_def("training_sets").execute_in_process(instance=instance).success
    offline = open_offline_store(pii_config)
    path = offline.training_set_path("contact_model", 1)
    assert encrypted_columns(path) == ("k1", ["email"])
    with pytest.raises(OSError):
        pq.read_table(path)
    stored = offline.read_training_set("contact_model", 1)
    assert stored is not None
    with FeatureStore(repo, pii_config) as store:
        client = store.get_training_dataset(
            events().select("user_id", "ts"), service="contact_model:v1", timestamp_column="ts"
        )
    assert stored.equals(client)
    assert client["email"].to_list() == [*EMAILS, "person1-new@example.org"]


def test_a_push_is_sealed_before_it_reaches_redis(tmp_path: Path, pii_config: StoreConfig) -> None:
    """The direct push path (online only; micro-batch pieces go through `write_piece`, which
    the offline contract suite checks encrypted on every backend)."""
    repo = _materialized(tmp_path, pii_config)
    row = {
        "user_id": [8],
        "ts": [datetime(2026, 3, 1, 23, tzinfo=UTC)],
        "email": ["eight@example.org"],
        "age": [88],
        "amount": [8.0],
    }
    with FeatureStore(repo, pii_config) as store:
        store.push("people", row)
        group = repo.group("user_profile", 1)
        raw = _raw_value(pii_config, group, 8)
        assert raw[:1] == b"2" and b"eight@example.org" not in raw
        assert store.get_online_features(
            [{"user_id": 8}], features=["user_profile:v1:email", "user_profile:v1:age"], output="dicts"
        ) == [{"user_id": 8, "email": "eight@example.org", "age": 88}]


def test_stream_entries_of_a_pii_source_are_sealed(tmp_path: Path, pii_config: StoreConfig) -> None:
    """A stream source's entries hold the pushed source rows (the columns pii features are
    computed from): sealed in Redis, small (JSON) and large (Arrow) entries alike; read back
    by the micro-batch's reader, across a key rotation; an erasure's rewrite stays sealed; an
    entry copied to another stream does not decrypt."""
    from skewless.storage import streams

    source = FileSource("signups", tmp_path / "signups", "ts", start_date=START, stream=True)
    group = FeatureGroup(
        "user_signup", USER, source, [Feature("email", pl.String, pii=True), Feature("amount", pl.Float64)]
    )
    plain_source = FileSource("visits", tmp_path / "visits", "ts", start_date=START, stream=True)
    plain = FeatureGroup("user_visit", USER, plain_source, [Feature("amount", pl.Float64)])
    repo = FeatureRepository([group, plain], name="pii_stream")
    t0 = datetime(2026, 3, 1, 8, tzinfo=UTC)

    def rows(users: range) -> dict:
        return {
            "user_id": list(users),
            "ts": [t0 + timedelta(seconds=u) for u in users],
            "email": [f"signup{u}@example.org" for u in users],
            "amount": [float(u) for u in users],
        }

    with FeatureStore(repo, pii_config) as store:
        store.push("signups", rows(range(1, 3)))  # a small entry (JSON columns)
        store.push("signups", rows(range(100, 200)))  # a large one (Arrow IPC)
        KeyRing.open(pii_config.state_dir).rotate()
        forget_rings()
        store.online.encryption_keys = None
        store.push("signups", rows(range(3, 4)))  # under the new key
        store.push("visits", {"user_id": [1], "ts": [t0], "amount": [1.0]})
        client = store.online.client
        key = K.stream_key(pii_config.key_prefix, "signups")
        entries = client.xrange(key, "-", "+")
        assert len(entries) == 3 and all(set(fields) == {b"sealed"} for _, fields in entries)
        raw = b"".join(v for _, fields in entries for v in fields.values())
        assert b"signup" not in raw and b"example.org" not in raw
        assert b"k1" in entries[0][1][b"sealed"][:4] and b"k2" in entries[2][1][b"sealed"][:4]
        # a source without pii features is not sealed (no cost where nothing needs hiding)
        visits = client.xrange(K.stream_key(pii_config.key_prefix, "visits"), "-", "+")
        assert set(visits[0][1]) == {b"cols"}
        # the micro-batch's reader opens them all, in entry order
        back, count = streams.read(store.online, "signups", "0", "+")
        assert count == 3 and back is not None
        expected = pl.concat([pl.DataFrame(rows(r)) for r in (range(1, 3), range(100, 200), range(3, 4))])
        assert back.select(expected.columns).equals(expected.cast(back.select(expected.columns).schema))
        # erasure: the rewritten entries are sealed too, without the erased user's rows
        store.erase("user", [{"user_id": 150}])
        entries = client.xrange(key, "-", "+")
        assert all(set(fields) == {b"sealed"} for _, fields in entries)
        back, _ = streams.read(store.online, "signups", "0", "+")
        assert back is not None and back.height == 102 and 150 not in back["user_id"].to_list()
        # an entry copied into another stream is refused, not read as that stream's
        other = K.stream_key(pii_config.key_prefix, "visits")
        client.xadd(other, entries[0][1])
        with pytest.raises(EncryptionKeyError, match="does not decrypt"):
            streams.read(store.online, "visits", "0", "+")

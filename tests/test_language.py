"""Bad definitions fail when loaded, naming the group, feature or column at fault."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
from skewless.errors import DefinitionError
from skewless.language.feature_service import FeatureRef
from skewless.repository import load_repository

user = Entity("user", {"user_id": pl.Int64})
source = FileSource("events", "/tmp/events.parquet", "ts")


def group(**kwargs) -> FeatureGroup:
    args = {"name": "g", "entity": user, "source": source, "features": [Feature("x", pl.Float64)]}
    args.update(kwargs)
    return FeatureGroup(**args)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Entity("user", {}), "entity 'user': join_keys must be a non-empty mapping"),
        (lambda: Entity("user", {"user_id": pl.Float64}), "join key 'user_id' has dtype Float64"),
        (lambda: Entity("1user", {"user_id": pl.Int64}), "entity name '1user' is invalid"),
        (lambda: FileSource("s", "/x", "ts", start_date="yesterday"), "source 's': start_date 'yesterday'"),
        (
            lambda: FileSource("s", "/x", "ts", created_timestamp_field="ts"),
            "must differ from timestamp_field",
        ),
        (lambda: group(version=0), "feature group 'g': version must be a positive integer"),
        (lambda: group(features=[]), "feature group 'g:v1': declares no features"),
        (
            lambda: group(features=[Feature("x", pl.Int64), Feature("x", pl.Int64)]),
            "feature 'x' is declared twice",
        ),
        (
            lambda: group(features=[Feature("user_id", pl.Int64)]),
            "feature 'user_id' collides with a join key",
        ),
        (
            lambda: group(features=[Feature("event_timestamp", pl.Int64)]),
            "collides with a join key or reserved",
        ),
        (lambda: group(features=[Feature("x", pl.Decimal(10, 2))]), "feature 'x' has unsupported dtype"),
        (lambda: group(features=[Feature("x", pl.Datetime("us"))]), "feature 'x' has unsupported dtype"),
        (
            lambda: group(features=[Feature("x", pl.Int64, default="a")]),
            "feature 'x' default 'a' does not fit",
        ),
        (lambda: group(features=[Feature("x", "float")]), "feature 'x': dtype 'float' is not a Polars dtype"),
        (lambda: group(ttl="soon"), "feature group 'g:v1' ttl: expected a positive duration"),
        (lambda: group(ttl=timedelta(0)), "duration must be positive"),
        (lambda: group(owner="bob"), "owner 'bob' must be an email address or 'team:<name>'"),
        (lambda: group(tags=["has space"]), "tag 'has space'"),
        (lambda: group(transformation="nope"), "transformation must be a callable"),
        (
            lambda: FeatureService("svc", ["g:v1:x", "bad ref"]),
            "feature service 'svc:v1': feature reference 'bad ref'",
        ),
        (lambda: FeatureService("svc", []), "features must be a non-empty list"),
    ],
)
def test_bad_definitions(build, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_good_definition_normalizes() -> None:
    g = group(ttl="7d", tags=["pii"], owner="team:fraud", features=[Feature("x", pl.Int64, default=0)])
    assert g.time_to_live == timedelta(days=7)
    assert g.tags == {"pii": ""}
    assert g.ref == "g:v1"
    assert list(g.offline_schema()) == ["user_id", "event_timestamp", "x"]
    assert FeatureRef.parse("g:v2:x") == FeatureRef("g", 2, "x")
    assert FeatureRef.parse("g:2") == FeatureRef("g", 2, None)


def test_same_group_and_version_twice_is_refused() -> None:
    with pytest.raises(DefinitionError, match="feature group 'g:v1' is defined twice"):
        FeatureRepository([group(), group(features=[Feature("y", pl.Int64)])])


def test_two_versions_coexist() -> None:
    repo = FeatureRepository([group(), group(version=2, features=[Feature("y", pl.Int64)])])
    assert [g.ref for g in repo.groups] == ["g:v1", "g:v2"]


def test_service_with_unknown_reference_is_refused() -> None:
    svc = FeatureService("svc", ["g:v1:x", "g:v1:nope"])
    with pytest.raises(DefinitionError, match=r"feature service 'svc:v1': unknown feature 'g:v1:nope'"):
        FeatureRepository([group()], services=[svc])
    svc = FeatureService("svc", ["g:v3:x"])
    with pytest.raises(DefinitionError, match=r"unknown feature group 'g:v3' \(known versions: g:v1\)"):
        FeatureRepository([group()], services=[svc])


def test_two_different_entities_with_one_name_are_refused() -> None:
    other = Entity("user", {"uid": pl.Int64})
    with pytest.raises(DefinitionError, match="two different entity definitions are named 'user'"):
        FeatureRepository([group(), group(name="h", entity=other, features=[Feature("y", pl.Int64)])])


def test_load_repository_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_features.py"
    path.write_text(
        "import polars as pl\n"
        "from skewless import Entity, Feature, FeatureGroup, FileSource\n"
        "u = Entity('user', {'user_id': pl.Int64})\n"
        "s = FileSource('events', '/tmp/e.parquet', 'ts')\n"
        "a = FeatureGroup('a', u, s, [Feature('x', pl.Int64)])\n"
        "b = FeatureGroup('a', u, s, [Feature('x', pl.Int64)], version=2)\n"
    )
    repo = load_repository(str(path))
    assert [g.ref for g in repo.groups] == ["a:v1", "a:v2"]


def test_load_repository_with_a_duplicate_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "dupes.py"
    path.write_text(
        "import polars as pl\n"
        "from skewless import Entity, Feature, FeatureGroup, FileSource\n"
        "u = Entity('user', {'user_id': pl.Int64})\n"
        "s = FileSource('events', '/tmp/e.parquet', 'ts')\n"
        "a = FeatureGroup('a', u, s, [Feature('x', pl.Int64)])\n"
        "b = FeatureGroup('a', u, s, [Feature('y', pl.Int64)])\n"
    )
    with pytest.raises(DefinitionError, match="feature group 'a:v1' is defined twice"):
        load_repository(str(path))

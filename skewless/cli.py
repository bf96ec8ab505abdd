"""The `skewless` command line.

Every command that takes a repository anchors itself to it (`anchor_environment`): the
state folder, the embedded Redis and the Dagster instance (`DAGSTER_HOME`) are the
repository's, whichever folder the command runs from, and are exported to child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_REPO = "examples/card_fraud/features.py"


def _module_file(target: str) -> Path | None:
    """The file of a repository given as a path or a dotted module name (None if unknown)."""
    path = Path(target).expanduser()
    if target.endswith(".py") or path.exists():
        return path.resolve()
    import importlib.util

    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def anchor_environment(target: str | None) -> Path:
    """The repository's state folder, exported as `SKEWLESS_HOME` (unless set) with
    `DAGSTER_HOME` defaulting to `<state>/dagster`, as `make ui` does.

    Exported rather than passed around so that everything this process starts (Dagster
    steps, the embedded Redis, a server's workers) agrees on the same state; before, a
    command run from another folder silently used `./.skewless` there (issue 12 item 3).
    """
    from skewless.config import home

    file = _module_file(target) if target else None
    state = home(file) if file is not None else home()
    os.environ.setdefault("SKEWLESS_HOME", str(state))
    os.environ.setdefault("DAGSTER_HOME", str(state / "dagster"))
    return state


def _embedded_note(config: Any, was_running: bool) -> None:
    """Say so when this command started the embedded Redis: it is a daemon that keeps running
    for the next command, and a new one on an empty state folder is a sign of a wrong one."""
    from skewless.storage.embedded_redis import embedded_redis_running

    if config.redis_url is None and not was_running and embedded_redis_running(config.state_dir):
        print(
            f"note: started the embedded Redis of state folder {config.state_dir}; it keeps running "
            "(`skewless redis stop --repo …` stops it)",
            file=sys.stderr,
        )


def _was_running(config: Any) -> bool:
    from skewless.storage.embedded_redis import embedded_redis_running

    return config.redis_url is not None or embedded_redis_running(config.state_dir)


def _entity(text: str) -> dict[str, Any]:
    """`user_id=7,merchant_id=3` -> {"user_id": 7, "merchant_id": 3} (JSON values, else strings)."""
    entity: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"skewless: --entity {text!r}: expected key=value[,key=value]")
        try:
            entity[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            entity[key.strip()] = raw
    return entity


def get_command(args: argparse.Namespace) -> int:
    """Online values through the same read path as the server; warns (stderr) for every
    selected group version never written to this online store."""
    from skewless.client.feature_store import FeatureStore

    if (args.service is None) == (args.features is None):
        raise SystemExit("skewless get: pass exactly one of --service or --features")
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    store = FeatureStore.from_repo(args.repo)
    was_running = _was_running(store.config)
    try:
        groups = [group for group, _ in store.select(features, args.service)]
        for line in store.never_written_warnings(groups):
            print(line, file=sys.stderr)
        rows = store.get_online_features(
            [_entity(e) for e in args.entity], features=features, service=args.service, output="dicts"
        )
        print(json.dumps(rows, default=str, indent=None if args.compact else 2))
    finally:
        store.close()
        _embedded_note(store.config, was_running)
    return 0


def init_command(args: argparse.Namespace) -> int:
    """Scaffold a repository and print the commands that take it to served features."""
    from skewless.scaffold import init_repository

    made = init_repository(args.folder, name=args.name, days=args.days)
    folder = made["folder"]
    print(f"created feature repository {made['name']} in {folder}")
    days = f"{made['first_day']}..{made['last_day']}"
    print(f"  groups {', '.join(made['groups'])}; {made['orders']} sample orders {days}")
    print("next:")
    print(f"  cd {folder}")
    print('  export DAGSTER_HOME="$PWD/.skewless/dagster"')
    print(f"  {made['materialize']}")
    print("  skewless get --repo features.py --service shop_model:v1 -e customer_id=1")
    print("  dagster dev -w workspace.yaml")
    return 0


def info_command(args: argparse.Namespace) -> int:
    """Where a repository's state is (nothing is started): the answer to "why do I see
    only defaults?" is usually a state folder or Redis other than the one expected."""
    from skewless.config import ExecutionConfig, StoreConfig, locate
    from skewless.sensors.instance import POSTGRES_URL_VARIABLE
    from skewless.storage.embedded_redis import embedded_redis_running, socket_path
    from skewless.storage.offline import open_offline_store
    from skewless.storage.online import open_online_store, redact

    file = _module_file(args.repo)
    location = locate(file) if file is not None else None
    config = StoreConfig.from_env()
    execution = ExecutionConfig.from_env()
    if config.redis_url:
        online = redact(config.redis_url)
    else:
        running = "running" if embedded_redis_running(config.state_dir) else "not running"
        online = f"embedded unix://{socket_path(config.state_dir)} ({running})"
    info = {
        "repository": str(file) if file else args.repo,
        "root": str(location.root) if location else None,
        "config_file": str(location.config_file) if location and location.config_file else None,
        "state_dir": config.state_dir,
        "offline_root": config.offline_root,
        # the classes the factories choose for this configuration (building them connects to
        # nothing): which backend a process would use, without touching it
        "offline_backend": type(open_offline_store(config)).__name__,
        "online_store": online,
        "online_backend": type(open_online_store(config)).__name__,
        "key_prefix": config.key_prefix,
        "dagster_home": os.environ.get("DAGSTER_HOME"),
        "dagster_storage": (
            f"postgres (${POSTGRES_URL_VARIABLE})" if os.environ.get(POSTGRES_URL_VARIABLE) else "sqlite"
        ),
        # how jobs run and backfills are cut (docs/architecture.md, "Partitions fan out")
        "executor": execution.executor
        + (f" (broker {redact(execution.celery_broker)})" if execution.celery_broker else ""),
        "partitions_per_run": execution.partitions_per_run or "all (one run per backfill)",
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<18} {value}")
    return 0


def registry_command(args: argparse.Namespace) -> int:
    import warnings

    from skewless.client.feature_store import FeatureStore
    from skewless.registry import cli_output

    warnings.filterwarnings("ignore")
    store = FeatureStore.from_repo(args.repo)
    try:
        if args.action == "list":
            frame = store.list_features().select(
                "ref", "dtype", "default", "window", "owner", "ttl", "consumers", "description"
            )
            cli_output.print_json(frame) if args.json else cli_output.print_frame(frame, "features")
        elif args.action == "search":
            frame = store.search(args.text, limit=args.limit)
            if args.json:
                cli_output.print_json(frame)
            elif frame.is_empty():
                print(f"no feature matches {args.text!r}")
            else:
                cli_output.print_frame(frame, f"features matching {args.text!r}")
        elif args.action == "describe":
            described = store.describe(args.target)
            cli_output.print_json(described) if args.json else cli_output.print_described(described)
        elif args.action == "retire":
            result = _retire(store, args.target, quiet=args.json)
            if args.json:
                cli_output.print_json(result)
            else:
                print(
                    f"retired {result['ref']}: {result['keys_deleted']} online keys deleted "
                    f"({result['entities']} entities); {result['partitions_kept']} offline partitions kept"
                )
    finally:
        store.close()
    return 0


def roles_command(args: argparse.Namespace) -> int:
    """`skewless roles`: each role, the group versions it reaches and the Redis users (key
    patterns, commands) it becomes; `skewless roles apply`: create them on the online store."""
    from skewless.config import StoreConfig
    from skewless.registry import cli_output
    from skewless.registry.roles import apply_roles, describe_roles
    from skewless.repository import load_repository

    repo = load_repository(args.repo)
    config = StoreConfig.from_env(repo.state_dir)
    if args.action == "apply":
        was_running = _was_running(config)
        done = apply_roles(repo, config)
        _embedded_note(config, was_running)
        if args.json:
            cli_output.print_json(done)
        else:
            for user in done["applied"]:
                print(f"applied Redis user {user} (password: {done['passwords'][user]})")
            for user in done["deleted"]:
                print(f"deleted Redis user {user} (no role needs it)")
        return 0
    described = describe_roles(repo, config.key_prefix)
    if args.json:
        cli_output.print_json(described)
        return 0
    if not described:
        print(f"repository '{repo.name}' declares no roles (FeatureRepository(roles=[Role(...)]))")
    for role in described:
        kind = "admin" if role["admin"] else "role"
        print(f"{kind} {role['role']}" + (f" — {role['description']}" if role["description"] else ""))
        print(f"  reads    {', '.join(role['reads']) or '-'}")
        print(f"  writes   {', '.join(role['writes']) or '-'}")
        print(f"  services {', '.join(role['services']) or '-'}")
        print(f"  pii      {'read in clear' if role['reads_pii'] else 'refused (AccessDenied)'}")
        for user in role["redis_users"]:
            print(
                f"  redis user {user['user']} ({user['access']}): {' '.join('~' + k for k in user['keys'])}"
            )
    return 0


def keys_command(args: argparse.Namespace) -> int:
    """`skewless keys init|rotate|list`: the encryption keys of pii features (`storage.keys`).
    `init` creates the ring and its first key; `rotate` adds a key and makes it current (old
    keys stay, so everything written under them stays readable); `list` shows the key ids."""
    from skewless.config import home
    from skewless.registry import cli_output
    from skewless.storage.keys import KeyRing

    state = home()  # anchored by main: the --repo's state folder, else the current folder's
    if args.action == "init":
        ring = KeyRing.init(state, master_key_id=args.master_key_id)
    elif args.action == "rotate":
        ring = KeyRing.open(state)
        ring.rotate(args.master_key_id)
    else:
        ring = KeyRing.open(state)
    current = ring.current
    listed = [
        {
            "key_id": e.key_id,
            "master_key_id": e.master_key_id,
            "created": e.created,
            "current": e.key_id == current,
        }
        for e in ring.entries
    ]
    if args.json:
        cli_output.print_json({"keys_dir": str(ring.folder), "current": current, "keys": listed})
        return 0
    if args.action != "list":
        print(f"{'created' if args.action == 'init' else 'rotated to'} key {current} in {ring.folder}")
    for entry in listed:
        mark = " (current)" if entry["current"] else ""
        print(f"  {entry['key_id']}{mark}  master key {entry['master_key_id']}  created {entry['created']}")
    return 0


def erase_command(args: argparse.Namespace) -> int:
    """`skewless erase --entity user -k user_id=7`: every stored value of those entities,
    offline and online, removed; their keys kept on the erasure list (see FeatureStore.erase)."""
    from skewless.client.feature_store import FeatureStore

    store = FeatureStore.from_repo(args.repo)
    try:
        done = store.erase(args.entity, [_entity(k) for k in args.key])
    finally:
        store.close()
    if args.json:
        print(json.dumps(done))
    else:
        print(
            f"erased {done['entities']} {args.entity} entities: {done['rows_removed']} offline rows in "
            f"{done['files_rewritten']} files, {done['keys_deleted']} Redis keys; kept on the erasure list"
        )
    return 0


def audit_command(args: argparse.Namespace) -> int:
    """`skewless audit --role R --since 1d [--action A] [--json]`: the audit log's records,
    compacted partitions plus the stream's newest entries (see `storage.audit`)."""
    from skewless.client.feature_store import FeatureStore

    store = FeatureStore.from_repo(args.repo)
    try:
        frame = store.audit(args.since, role=args.role, action=args.action)
    except ValueError as exc:
        raise SystemExit(f"skewless audit: {exc}") from None
    finally:
        store.close()
    if args.json:
        print(json.dumps(frame.with_columns(frame["time"].dt.to_string()).to_dicts()))
        return 0
    for row in frame.iter_rows(named=True):
        print(
            f"{row['time']:%Y-%m-%dT%H:%M:%S.%fZ} {row['role']:<16} {row['action']:<13} {row['outcome']:<6} "
            f"{row['object']} rows={row['rows']} {row['channel']} {row['user']}@{row['host']}:{row['pid']} "
            f"req={row['request_id']}" + (f" {row['detail']}" if row["detail"] else "")
        )
    print(f"{frame.height} audit records", file=sys.stderr)
    return 0


def _retire(store: object, target: str, quiet: bool) -> dict:
    if quiet:
        return store.retire(target)  # type: ignore[attr-defined]
    from skewless import progress

    with progress.bar() as bars:  # a bar on a terminal only
        task = bars.add_task(f"retiring {target}", total=None)
        return store.retire(target, progress=lambda n: bars.advance(task, n))  # type: ignore[attr-defined]


def _version() -> str:
    """The installed distribution's version (from pyproject.toml): one source of truth."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skewless")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skewless", description="A feature store inside Dagster.")
    parser.add_argument("--version", action="version", version=f"skewless {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the card-fraud example end to end (from the repository root)")
    demo.add_argument("--users", type=int, default=2_000)
    demo.add_argument("--merchants", type=int, default=300)
    demo.add_argument("--days", type=int, default=14)
    init = sub.add_parser("init", help="scaffold a small working feature repository of your own")
    init.add_argument("folder", help="a new or empty folder")
    init.add_argument("--name", help="the Dagster code location name (default: the folder's name)")
    init.add_argument("--days", type=int, default=7, help="days of sample data (ending yesterday)")
    redis_cmd = sub.add_parser("redis", help="the embedded Redis in the state folder")
    redis_cmd.add_argument("action", choices=["start", "stop", "url"])
    redis_cmd.add_argument("--repo", help="the repository whose state folder (default: the current folder's)")
    info = sub.add_parser("info", help="where a repository's state lives (state folder, Redis, DAGSTER_HOME)")
    info.add_argument("--repo", default=DEFAULT_REPO)
    info.add_argument("--json", action="store_true")
    get = sub.add_parser("get", help="online feature values for entities (warns on never-written groups)")
    get.add_argument("--repo", default=DEFAULT_REPO)
    get.add_argument("--service", help="a feature service, name:vN")
    get.add_argument("--features", help="comma-separated references group:vN[:feature]")
    get.add_argument(
        "--entity", "-e", action="append", required=True, help="join keys key=value[,key=value]; repeatable"
    )
    get.add_argument("--compact", action="store_true", help="one line of JSON")
    serve = sub.add_parser("serve", help="run the HTTP feature server")
    serve.add_argument("repo", nargs="?", default="examples/card_fraud/features.py")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=6566)
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes on the port (one core each; default 1)"
    )
    listing = sub.add_parser("list", help="list the feature group versions of a repository")
    listing.add_argument("repo", nargs="?", default=DEFAULT_REPO)
    features = sub.add_parser("features", help="the registry: list, search, describe, retire")
    actions = features.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "every feature of every group version"),
        ("search", "features ranked by name, group, description, tags, owner"),
        ("describe", "definition, schema, freshness, last materialization, consumers"),
        ("retire", "delete a removed group version's online keys and mark it retired"),
    ):
        action = actions.add_parser(name, help=text)
        if name == "search":
            action.add_argument("text")
            action.add_argument("--limit", type=int, default=20)
        elif name == "describe":
            action.add_argument("target", help="group, group:vN or group:vN:feature")
        elif name == "retire":
            action.add_argument("target", help="group:vN")
        action.add_argument("--repo", default=DEFAULT_REPO)
        action.add_argument("--json", action="store_true", help="machine-readable output")
    roles = sub.add_parser("roles", help="the repository's roles; `roles apply` creates their Redis users")
    roles.add_argument("action", nargs="?", choices=["show", "apply"], default="show")
    roles.add_argument("--repo", default=DEFAULT_REPO)
    roles.add_argument("--json", action="store_true")
    keys = sub.add_parser("keys", help="encryption keys of pii features: init, rotate, list")
    keys.add_argument("action", choices=["init", "rotate", "list"])
    keys.add_argument("--repo", help="the repository whose state folder (default: the current folder's)")
    keys.add_argument(
        "--master-key-id", help="a master key your KMS client already holds (default: create one)"
    )
    keys.add_argument("--json", action="store_true")
    erase = sub.add_parser("erase", help="remove an entity's values from every store (right to be forgotten)")
    erase.add_argument("--entity", required=True, help="the entity name, e.g. user")
    erase.add_argument(
        "--key", "-k", action="append", required=True, help="join keys key=value[,...]; repeatable"
    )
    erase.add_argument("--repo", default=DEFAULT_REPO)
    erase.add_argument("--json", action="store_true")
    audit_cmd = sub.add_parser("audit", help="the audit log: reads and writes by role")
    audit_cmd.add_argument("--role", help="only this role ('default': processes without a role)")
    audit_cmd.add_argument("--since", default="1d", help="a duration (30m, 12h, 1d) or an ISO time")
    audit_cmd.add_argument("--action", help="only this action, e.g. online_read, erase")
    audit_cmd.add_argument("--repo", default=DEFAULT_REPO)
    audit_cmd.add_argument("--json", action="store_true")
    impact = sub.add_parser("impact", help="everything downstream of a source or group version")
    impact.add_argument("target", help="source, group, group:vN or group:vN:feature")
    impact.add_argument("--repo", default=DEFAULT_REPO)
    impact.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from skewless.errors import SkewlessError

    exported = {k: os.environ.get(k) for k in ("SKEWLESS_HOME", "DAGSTER_HOME")}
    try:
        if args.command not in ("demo", "init"):  # those anchor to their own repositories
            anchor_environment(getattr(args, "repo", None))
        if args.command == "demo":
            from skewless.demo import run_demo

            run_demo(users=args.users, merchants=args.merchants, days=args.days)
        elif args.command == "redis":
            from skewless.config import home
            from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis

            # anchored above: the --repo's state folder, else the current folder's
            if args.action == "stop":
                print("stopped" if stop_embedded_redis(home()) else "not running")
            else:
                print(ensure_embedded_redis(home()))
        elif args.command == "serve":
            from skewless.serving.http import serve as run_server

            run_server(args.repo, host=args.host, port=args.port, workers=args.workers)
        elif args.command == "list":
            from skewless.repository import load_repository

            repo = load_repository(args.repo)
            for group in repo.groups:
                print(f"{group.ref:<28} entity={group.entity.name:<14} {', '.join(group.feature_names)}")
            for service in repo.services:
                print(f"service {service.ref:<20} {', '.join(service.features)}")
        elif args.command == "features":
            return registry_command(args)
        elif args.command == "init":
            return init_command(args)
        elif args.command == "get":
            return get_command(args)
        elif args.command == "info":
            return info_command(args)
        elif args.command == "roles":
            return roles_command(args)
        elif args.command == "erase":
            return erase_command(args)
        elif args.command == "keys":
            return keys_command(args)
        elif args.command == "audit":
            return audit_command(args)
        elif args.command == "impact":
            import warnings

            warnings.filterwarnings("ignore")  # Dagster's beta notices are not for this output
            from skewless.feature_assets.impact import impact as impact_of
            from skewless.registry import cli_output
            from skewless.repository import load_repository

            result = impact_of(load_repository(args.repo), args.target)
            cli_output.print_json(result) if args.json else cli_output.print_impact(result)
    except SkewlessError as exc:
        print(f"skewless: {exc}", file=sys.stderr)
        return 1
    finally:
        # `main` called in process (tests, scripts): leave the environment as it was
        for key, value in exported.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0


if __name__ == "__main__":
    sys.exit(main())

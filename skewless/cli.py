"""The `skewless` command line."""

from __future__ import annotations

import argparse
import sys

DEFAULT_REPO = "examples/card_fraud/features.py"


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
            frame = store.search(args.text, args.limit)
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


def _retire(store: object, target: str, quiet: bool) -> dict:
    if quiet:
        return store.retire(target)  # type: ignore[attr-defined]
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(f"retiring {target}", total=None)
        return store.retire(target, progress=lambda n: progress.advance(task, n))  # type: ignore[attr-defined]


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
    redis_cmd = sub.add_parser("redis", help="the embedded Redis in the state folder")
    redis_cmd.add_argument("action", choices=["start", "stop", "url"])
    serve = sub.add_parser("serve", help="run the HTTP feature server")
    serve.add_argument("repo", nargs="?", default="examples/card_fraud/features.py")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=6566)
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
    impact = sub.add_parser("impact", help="everything downstream of a source or group version")
    impact.add_argument("target", help="source, group, group:vN or group:vN:feature")
    impact.add_argument("--repo", default=DEFAULT_REPO)
    impact.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from skewless.errors import SkewlessError

    try:
        if args.command == "demo":
            from skewless.demo import run_demo

            run_demo(users=args.users, merchants=args.merchants, days=args.days)
        elif args.command == "redis":
            from skewless.config import home
            from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis

            if args.action == "stop":
                print("stopped" if stop_embedded_redis(home()) else "not running")
            else:
                print(ensure_embedded_redis(home()))
        elif args.command == "serve":
            from skewless.serving.http import serve as run_server

            run_server(args.repo, host=args.host, port=args.port)
        elif args.command == "list":
            from skewless.repository import load_repository

            repo = load_repository(args.repo)
            for group in repo.groups:
                print(f"{group.ref:<28} entity={group.entity.name:<14} {', '.join(group.feature_names)}")
            for service in repo.services:
                print(f"service {service.ref:<20} {', '.join(service.features)}")
        elif args.command == "features":
            return registry_command(args)
        elif args.command == "impact":
            import warnings

            warnings.filterwarnings("ignore")  # Dagster's beta notices are not for this output
            from skewless.registry import cli_output
            from skewless.registry.impact import impact as impact_of
            from skewless.repository import load_repository

            result = impact_of(load_repository(args.repo), args.target)
            cli_output.print_json(result) if args.json else cli_output.print_impact(result)
    except SkewlessError as exc:
        print(f"skewless: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

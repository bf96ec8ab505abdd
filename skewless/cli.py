"""The `skewless` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skewless", description="A feature store inside Dagster.")
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
    listing.add_argument("repo", nargs="?", default="examples/card_fraud/features.py")
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
    except SkewlessError as exc:
        print(f"skewless: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

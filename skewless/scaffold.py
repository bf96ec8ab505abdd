"""`skewless init <folder>`: a small feature repository of one's own that works at once.

The quick start of the README builds on the bundled example, which is not where a user's
features live. This writes a repository with everything a real one has — definitions, a
Dagster code location and workspace file, a config file anchoring its state, a `.gitignore`
for that state, a sample-data script — generates a week of sample data, loads it once (which
validates it and writes its lock file) and prints the exact commands to materialize it.
"""

from __future__ import annotations

import keyword
import re
import runpy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from skewless.errors import DefinitionError

SAMPLE_DAYS = 7

FEATURES = '''"""The feature repository `{name}`, made by `skewless init`: edit it, it is yours.

One entity (a customer), one source (orders: Parquet files under data/orders), two feature
groups (the latest order's values; counts and sums over sliding windows) and a feature
service pinning them for a model. Changing a group that was materialized needs a new
`version=`; skewless.lock.json (commit it) records what each version computes.
"""

import polars as pl
from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureService, FileSource

customer = Entity("customer", {{"customer_id": pl.Int64}}, description="A customer of the shop")

orders = FileSource(
    "orders",
    path="data/orders",  # relative paths are resolved against this repository's folder
    timestamp_field="ordered_at",
    id_field="order_id",  # identifies an event: windows count a re-delivered order once
    start_date="{start}",  # the first daily partition
    description="Orders, one Parquet file per day (`python sample_data.py` writes sample ones)",
)

customer_last_order = FeatureGroup(
    name="customer_last_order",
    version=1,
    entity=customer,
    source=orders,
    transformation=lambda events: events.select(
        "customer_id",
        "ordered_at",
        pl.col("amount").alias("last_amount"),
        pl.col("category").alias("last_category"),
    ),
    features=[
        Feature("last_amount", pl.Float64, default=0.0, min_value=0.0, description="Latest order's amount"),
        Feature("last_category", pl.String, default="none", description="Latest order's category"),
    ],
    owner="team:you",
    description="The latest order of each customer",
)

customer_order_windows = FeatureGroup(
    name="customer_order_windows",
    version=1,
    entity=customer,
    source=orders,
    aggregations=[
        Aggregation("count", windows=["1d", "7d"], name="order_count"),
        Aggregation("sum", "amount", ["7d"]),
    ],
    owner="team:you",
    description="Orders per customer over sliding windows",
)

shop_model = FeatureService("shop_model", ["customer_last_order:v1", "customer_order_windows:v1"])
'''

DEFINITIONS = '''"""The Dagster code location of `{name}` (workspace.yaml loads it).

    dagster dev -w workspace.yaml
    dagster asset materialize -f definitions.py --select ... --partition-range A...B
"""

from pathlib import Path

from skewless import build_definitions, load_repository

defs = build_definitions(load_repository(Path(__file__).with_name("features.py")))
'''

SAMPLE_DATA = '''"""Sample orders: `python sample_data.py [--days N]` rewrites data/orders for the N days
before today (UTC), one Hive-style folder per day (data/orders/date=YYYY-MM-DD/orders.parquet).

Deterministic for a given end day and seed. Replace it with your real data: any Parquet
files with the columns the definitions read and a timezone-aware `ordered_at`.
"""

import argparse
import random
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

ORDERS = Path(__file__).resolve().parent / "data" / "orders"
CATEGORIES = ["books", "garden", "kitchen", "toys"]


def generate(
    days: int = {days}, customers: int = 50, end: date | None = None, seed: int = 1
) -> dict[str, int]:
    """Write `days` daily files ending the day before `end` (default today, UTC)."""
    end = end or datetime.now(UTC).date()
    rng = random.Random(seed)
    if ORDERS.exists():
        shutil.rmtree(ORDERS)
    rows = 0
    for i in range(days):
        day = end - timedelta(days=days - i)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        n = customers * 2
        frame = pl.DataFrame(
            {{
                "order_id": [i * 1_000_000 + j for j in range(n)],
                "customer_id": [rng.randint(1, customers) for _ in range(n)],
                "amount": [round(rng.lognormvariate(3, 0.8), 2) for _ in range(n)],
                "category": [rng.choice(CATEGORIES) for _ in range(n)],
                "ordered_at": sorted(midnight + timedelta(seconds=rng.randrange(86_400)) for _ in range(n)),
            }},
            schema_overrides={{"ordered_at": pl.Datetime("us", "UTC")}},
        )
        folder = ORDERS / f"date={{day.isoformat()}}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(folder / "orders.parquet")
        rows += n
    return {{"days": days, "orders": rows}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default={days})
    parser.add_argument("--customers", type=int, default=50)
    args = parser.parse_args()
    print(generate(args.days, args.customers))
'''

WORKSPACE = """load_from:
  - python_file:
      relative_path: definitions.py
      location_name: {name}
"""

CONFIG = """# The state folder of this repository (offline store, embedded Redis, Dagster instance),
# relative to this file, whichever folder a command runs from. SKEWLESS_HOME overrides it.
state_dir = ".skewless"
"""

GITIGNORE = """# skewless state: offline store, embedded Redis, Dagster instance (see skewless.toml)
.skewless/
__pycache__/
"""

README = """# {name}

A feature repository made by `skewless init`. Its state (offline Parquet store, embedded
Redis, Dagster instance) lives in `.skewless/` here, whichever folder you run commands from.

```bash
export DAGSTER_HOME="$PWD/.skewless/dagster"          # this repository's Dagster instance
{materialize}
skewless get --repo features.py --service shop_model:v1 -e customer_id=1
dagster dev -w workspace.yaml                          # the UI: assets, runs, checks
python sample_data.py --days 14                        # regenerate the sample data
```

Asset keys: `features/<group>_v<N>_offline` (offline, daily partitions) and
`online/<group>_v<N>_online` (Redis), per group version. Edit `features.py`; a version that
was never materialized may change freely, a materialized one needs `version=` bumped (see
`skewless.lock.json`).
"""


def materialize_command(first: date, last: date) -> str:
    """The `dagster asset materialize` line for every group version, days first..last."""
    from skewless.asset_keys import OFFLINE, ONLINE, _versioned

    keys = ",".join(
        "/".join(_versioned(layer, group, 1))
        for group in ("customer_last_order", "customer_order_windows")
        for layer in (OFFLINE, ONLINE)
    )
    return (
        f'dagster asset materialize -f definitions.py --select "{keys}" '
        f"--partition-range {first.isoformat()}...{last.isoformat()}"
    )


def init_repository(
    folder: str | Path, name: str | None = None, days: int = SAMPLE_DAYS
) -> dict[str, object]:
    """Write the repository into `folder` (new or empty), generate its sample data, load it
    once (validates the definitions, writes the lock file) and prepare its Dagster instance.

    Returns what was made: the folder, files, first/last sample day and the commands to run.
    """
    from skewless.config import private_dirs
    from skewless.repository import load_repository
    from skewless.sensors.instance import write_instance_yaml

    target = Path(folder).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DefinitionError(f"skewless init: {target} exists and is not an empty folder; choose a new one")
    name = name or target.name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        raise DefinitionError(
            f"skewless init: {name!r} is not a usable code location name (letters, digits, _); pass --name"
        )
    if days < 1:
        raise DefinitionError("skewless init: --days must be at least 1")
    today = datetime.now(UTC).date()
    first, last = today - timedelta(days=days), today - timedelta(days=1)
    files = {
        "features.py": FEATURES.format(name=name, start=first.isoformat()),
        "definitions.py": DEFINITIONS.format(name=name),
        "sample_data.py": SAMPLE_DATA.format(days=days),
        "workspace.yaml": WORKSPACE.format(name=name),
        "skewless.toml": CONFIG,
        ".gitignore": GITIGNORE,
        "README.md": README.format(name=name, materialize=materialize_command(first, last)),
    }
    target.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        (target / file).write_text(text)
    sample = runpy.run_path(str(target / "sample_data.py"))  # the script the user can rerun
    counts = sample["generate"](days=days, end=today)
    state = target / ".skewless"
    private_dirs(state)
    write_instance_yaml(state / "dagster")  # telemetry off, run monitoring and retries on
    repo = load_repository(target / "features.py")  # validates; writes skewless.lock.json
    return {
        "folder": str(target),
        "name": name,
        "files": [*files, "skewless.lock.json", "data/orders/"],
        "groups": [g.ref for g in repo.groups],
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "orders": counts["orders"],
        "materialize": materialize_command(first, last),
    }

#!/usr/bin/env bash
# A PostgreSQL for the Dagster-instance tests (tests/test_instance_postgres.py), only if none answers.
# Like install-chromium.sh: idempotent, and a no-op on machines that already run one at
# 127.0.0.1:5432 (it never reconfigures a server that answers). Otherwise it installs Debian's
# `postgresql` package, starts its cluster and lets local TCP connections in without a password
# (trust for 127.0.0.1/::1 only): for throw-away test machines, not for a server holding data.
set -euo pipefail

HOST=127.0.0.1
PORT=5432

answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$HOST" -p "$PORT" -t 3
    else
        (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
    fi
}

if answers; then
    echo "postgresql already answers at $HOST:$PORT"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi

# the newest installed cluster (Debian creates `main` when the package is installed)
read -r VERSION CLUSTER _ < <(pg_lsclusters --no-header | sort -V | tail -n 1)
if [ -z "${VERSION:-}" ]; then
    VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    CLUSTER=main
    $SUDO pg_createcluster "$VERSION" "$CLUSTER"
fi

HBA="/etc/postgresql/$VERSION/$CLUSTER/pg_hba.conf"
if ! $SUDO grep -q "skewless tests" "$HBA"; then
    # first match wins in pg_hba.conf: put the trust lines on top
    $SUDO sed -i '1i # skewless tests: local TCP without a password (.ci/install-postgres.sh)\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$HBA"
fi

$SUDO pg_ctlcluster "$VERSION" "$CLUSTER" start 2>/dev/null || $SUDO pg_ctlcluster "$VERSION" "$CLUSTER" reload
for _ in $(seq 1 30); do
    if answers; then
        echo "postgresql $VERSION/$CLUSTER answers at $HOST:$PORT"
        exit 0
    fi
    sleep 1
done
echo "postgresql $VERSION/$CLUSTER did not answer at $HOST:$PORT" >&2
exit 1

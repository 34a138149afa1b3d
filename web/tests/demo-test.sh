#!/usr/bin/env bash
# The web IDE against `nonstop demo` (the real shop under the real agent), in Chromium.
# Usage: web/tests/demo-test.sh [TARGET_DIR/PROFILE]   (default: $CARGO_TARGET_DIR/debug or target/debug)
# Needs: web/tests/setup.sh done, and `cargo build -p nonstop -p shop -p nonstop-agent`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$here/../../target}/debug}"
[ -x "$bin/nonstop" ] || { echo "no $bin/nonstop: cargo build -p nonstop -p shop -p nonstop-agent" >&2; exit 2; }
data="$(mktemp -d)"
log="$data/demo.log"
"$bin/nonstop" demo --listen 127.0.0.1:0 --data "$data" >"$log" 2>&1 &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 150); do
  grep -q 'token=' "$log" && break
  kill -0 $demo 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
url="$(grep -o 'http://[0-9.:]*/?token=[0-9a-f]*' "$log" | head -1)"
[ -n "$url" ] || { cat "$log" >&2; exit 1; }
NONSTOP_URL="${url%%/?token=*}" NONSTOP_TOKEN="${url##*token=}" node "$here/demo.test.mjs"

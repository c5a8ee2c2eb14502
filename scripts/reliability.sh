#!/usr/bin/env bash
# Reruns the fault scenarios of RELIABILITY.md and prints its table (markdown) on stdout; the
# raw results go to target/reliability/. Takes a few minutes; NOT run by CI (the short
# versions of the same scenarios are ordinary tests there).
#
#   scripts/reliability.sh                        # the table as in RELIABILITY.md
#   RELIABILITY_SECS=60 scripts/reliability.sh     # longer node-death and flood runs
#   RELIABILITY_FUZZ_SECS=300 scripts/reliability.sh   # also fuzz each target (needs cargo-fuzz + nightly)
#
# Needs redis-server, node and compat-tests/node_modules (npm ci), like scripts/test-all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${RELIABILITY_SECS:-20}"
CLIENTS="${RELIABILITY_CLIENTS:-5000}"
MALFORMED="${RELIABILITY_MALFORMED:-10000}"
FUZZ_SECS="${RELIABILITY_FUZZ_SECS:-0}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET/reliability"
mkdir -p "$OUT"
RESULTS="$OUT/results.txt"
: > "$RESULTS"

[ -d compat-tests/node_modules ] || (cd compat-tests && npm ci --no-audit --no-fund)
echo "== cargo build --release" >&2
cargo build --release >&2
BIN="$(cd "$TARGET/release" && pwd)/actioncluster"

echo "== redis restart without persistence: ours, then node.js Faye + faye-redis (14 s each)" >&2
for kind in ours faye-reference; do
  (cd compat-tests && ACTIONCLUSTER_BIN="$BIN" node test/reliability.js redis-restart "$kind" 45 14000) >> "$RESULTS"
done

run_rust() { # test binary, filter; keeps the RELIABILITY lines
  if ! ACTIONCLUSTER_BIN="$BIN" RELIABILITY_SECS="$SECS" RELIABILITY_CLIENTS="$CLIENTS" RELIABILITY_MALFORMED="$MALFORMED" \
    cargo test --release --test "$1" -- --nocapture --test-threads=1 $2 > "$OUT/$1.log" 2>&1; then
    echo "scenario $1 failed; see $OUT/$1.log" >&2
    exit 1
  fi
  grep -o 'RELIABILITY {.*}' "$OUT/$1.log" | sed 's/^RELIABILITY //' >> "$RESULTS"
}
echo "== node death behind the test balancer (SIGKILL, SIGTERM), ${SECS} s each" >&2
run_rust node_death ""
echo "== flood of a never-reading subscriber (${SECS} s) and ${MALFORMED} malformed inputs" >&2
run_rust floods ""
echo "== reconnect storm of ${CLIENTS} held clients after a redis restart" >&2
run_rust redis_recovery many_held_clients

if [ "$FUZZ_SECS" -gt 0 ]; then
  for target in codec channel; do
    echo "== fuzz $target for ${FUZZ_SECS} s" >&2
    log="$OUT/fuzz-$target.log"
    mkdir -p "fuzz/corpus/$target"
    rc=0
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" --jobs 1 -- \
      -max_total_time="$FUZZ_SECS" -dict="fuzz/dicts/$target.dict" -print_final_stats=1 > "$log" 2>&1 || rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    findings=$([ "$rc" -eq 0 ] && echo 0 || echo "1 (see $log)")
    echo "{\"scenario\":\"fuzz\",\"target\":\"$target\",\"seconds\":$FUZZ_SECS,\"runs\":${runs:-0},\"findings\":\"$findings\"}" >> "$RESULTS"
  done
fi

node compat-tests/test/reliability.js table < "$RESULTS"

#!/usr/bin/env bash
# Runs the load scenarios of the load generator (benches/loadgen) against our release binary
# and against the node.js Faye 1.4 server (benches/node/faye-server.js: memory engine, and
# faye-redis 0.2.0 for the redis scenarios, from compat-tests' node packages,
# NODE_ENV=production), in the same run, and prints one table: each figure for both and the
# ratio. Each scenario gets fresh server processes (and a fresh redis-server of our own).
# Only loopback traffic. See BENCHMARKS.md.
#
#   scripts/bench-compare.sh [--duration S] [--warmup S] [--idle-clients "N ..."] [--only LIST]
#                            [--servers ours,node] [--before BIN] [--out DIR]
#
#   --duration S       seconds measured per scenario (default 10)
#   --warmup S         seconds published before measuring (default 2)
#   --idle-clients "N ..."  idle clients per run, one run each (default: "1000 5000 M", M as many as the
#                      open-files limit allows, at most 100000)
#   --only LIST        comma-separated subset of: fanout,fanout-half,fanout-common,channels,longpoll,idle,
#                      redis,redis-2nodes,redis-rooms (faye layout), native,native-2nodes,native-rooms
#                      (--redis-layout native), commands (redis commands per publish at 10, 1,000 and
#                      10,000 subscribers, both layouts and node.js faye-redis)
#   --servers LIST     ours,node (default both)
#   --before BIN       also run every scenario against BIN (an earlier build of ours, same flags), reported
#                      in a "before" column
#   --out DIR          results directory (default target/bench-compare); results.jsonl is appended to
#   BENCH_COMMANDS_SUBSCRIBERS="10 1000 10000"  the subscriber counts of the commands scenario
#   BENCH_IDLE_TRANSPORTS="websocket long-polling eventsource"  the idle runs' transports
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10
WARMUP=2
IDLE_CLIENTS=
ONLY=fanout,fanout-half,fanout-common,channels,longpoll,idle,redis,redis-2nodes,redis-rooms,native,native-2nodes,native-rooms,commands
SERVERS=ours,node
BEFORE_BIN=
OUT=target/bench-compare
TIMEOUT=45

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --idle-clients) IDLE_CLIENTS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --before) BEFORE_BIN=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
wants_server() { case ",$SERVERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# The clients talk to 127.0.0.1 directly, never through a proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY || true

for tool in node redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench-compare: $tool is needed (apt-get install nodejs npm redis-server)" >&2; exit 2; }
done
if [ ! -d compat-tests/node_modules/faye ] || [ ! -d compat-tests/node_modules/faye-redis ]; then
  echo "== npm ci in compat-tests (npm faye and faye-redis)"
  (cd compat-tests && npm ci --no-audit --no-fund)
fi

mkdir -p "$OUT/bin" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

echo "== building (release binary and the load generator)"
nice -n 10 cargo build --release --quiet
LOADGEN_EXE=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
  grep '"name":"loadgen"' | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$LOADGEN_EXE" ] || { echo "bench-compare: could not find the loadgen executable" >&2; exit 1; }
# Private copies: a concurrent build in target/ cannot swap the binaries mid-run.
cp "${CARGO_TARGET_DIR:-target}/release/actioncluster" "$OUT/bin/actioncluster.new" && mv -f "$OUT/bin/actioncluster.new" "$OUT/bin/actioncluster"
cp "$LOADGEN_EXE" "$OUT/bin/loadgen.new" && mv -f "$OUT/bin/loadgen.new" "$OUT/bin/loadgen"
OURS_BIN=$OUT/bin/actioncluster
if [ -n "$BEFORE_BIN" ]; then
  [ -x "$BEFORE_BIN" ] || { echo "bench-compare: --before $BEFORE_BIN is not an executable" >&2; exit 2; }
  cp "$BEFORE_BIN" "$OUT/bin/actioncluster-before"
  BEFORE_BIN=$OUT/bin/actioncluster-before
fi
LOADGEN=$OUT/bin/loadgen

# Idle clients need one descriptor each, in the server and in the generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ -z "$IDLE_CLIENTS" ]; then
  if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge 101000 ]; then MOST=100000; else MOST=$((NOFILE - 1000)); fi
  IDLE_CLIENTS="1000 5000 $MOST"
fi

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# wait_url FILE PID: waits (15 s at most) for the server's ready line; prints the URL.
wait_url() {
  local file=$1 pid=$2
  for _ in $(seq 1 150); do
    if grep -q 'listening on http://' "$file" 2>/dev/null; then
      grep -o 'http://[^ ]*' "$file" | head -1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-compare: server $pid did not start; its log:" >&2
  cat "$file" "${file%.out}.err" >&2 || true
  return 1
}

# start_server KIND NAME [REDIS_URL] [LAYOUT]: sets SERVER_URL and SERVER_PID. LAYOUT (faye or
# native) is our nodes' --redis-layout; node.js Faye always uses faye-redis.
start_server() {
  local kind=$1 name=$2 redis=${3:-} layout=${4:-faye}
  local log=$OUT/logs/$name
  if [ "$kind" = ours ] || [ "$kind" = before ]; then
    local bin=$OURS_BIN
    [ "$kind" = before ] && bin=$BEFORE_BIN
    "$bin" --host 127.0.0.1 --port 0 --timeout "$TIMEOUT" --handshake-rate 0 --log warn \
      ${redis:+--redis "$redis" --redis-layout "$layout"} >"$log.out" 2>"$log.err" &
  else
    NODE_ENV=production node "$ROOT/benches/node/faye-server.js" --host 127.0.0.1 --port 0 --timeout "$TIMEOUT" \
      ${redis:+--redis "$redis"} >"$log.out" 2>"$log.err" &
  fi
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_URL=$(wait_url "$log.out" "$SERVER_PID")
}

stop() {
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# start_redis NAME: a redis-server of our own on a free port; sets REDIS_URL and REDIS_PID.
start_redis() {
  local port attempt
  for attempt in $(seq 1 10); do
    for _ in $(seq 1 50); do
      port=$((20000 + RANDOM % 12000)) # below the kernel's ephemeral range (32768-)
      [ "$port" = 6379 ] && continue
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    done
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/logs/$1.redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
      if [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ]; then break; fi
      kill -0 "$REDIS_PID" 2>/dev/null || break # the port was taken after all: another one
      sleep 0.05
    done
    if kill -0 "$REDIS_PID" 2>/dev/null; then break; fi
    wait "$REDIS_PID" 2>/dev/null || true
  done
  PIDS+=("$REDIS_PID")
  local reported
  reported=$(redis-cli -p "$port" INFO server | tr -d '\r' | grep '^process_id:' | cut -d: -f2)
  if [ "$reported" != "$REDIS_PID" ]; then
    echo "bench-compare: the redis on port $port is not ours" >&2
    exit 1
  fi
  REDIS_URL=redis://127.0.0.1:$port/0
}

# figure LABEL SERVER KEY: one number from the results.
figure() {
  grep -F "\"label\":\"$1\"" "$RESULTS" | grep -F "\"server\":\"$2\"" | tail -1 |
    grep -o "\"$3\":[0-9.eE+-]*" | head -1 | cut -d: -f2
}

loadgen() {
  "$LOADGEN" "$@" --duration "$DURATION" --warmup "$WARMUP" --json-out "$RESULTS"
}

# run_single SERVER LABEL SCENARIO [loadgen args...]: one fresh server, one run.
run_single() {
  local server=$1 label=$2 scenario=$3
  shift 3
  start_server "$server" "$scenario-$server"
  loadgen "$scenario" --url "$SERVER_URL" --server-pid "$SERVER_PID" --server "$server" --label "$label" "$@" ||
    echo "bench-compare: $label [$server] failed" >&2
  stop "$SERVER_PID"
}

# run_redis SERVER LABEL NODES [SCENARIO] [LAYOUT]: a scenario (default fanout) on redis,
# subscribers on the first node and publishers on the last; LAYOUT is our nodes' layout.
run_redis() {
  local server=$1 label=$2 nodes=$3 scenario=${4:-fanout} layout=${5:-faye}
  start_redis "redis-$nodes-$scenario-$layout-$server"
  start_server "$server" "redis$nodes-$scenario-$layout-a-$server" "$REDIS_URL" "$layout"
  local url_a=$SERVER_URL url_b=$SERVER_URL pids=("$SERVER_PID")
  if [ "$nodes" = 2 ]; then
    start_server "$server" "redis$nodes-$scenario-$layout-b-$server" "$REDIS_URL" "$layout"
    url_b=$SERVER_URL
    pids+=("$SERVER_PID")
  fi
  loadgen "$scenario" --url "$url_a" --pub-url "$url_b" "${pids[@]/#/--server-pid=}" --redis-pid "$REDIS_PID" \
    --server "$server" --label "$label" || echo "bench-compare: $label [$server] failed" >&2
  stop "${pids[@]}" "$REDIS_PID"
}

# redis_calls PORT: every command redis ran (those inside scripts included) since its stats reset.
redis_calls() {
  redis-cli -p "$1" INFO commandstats | tr -d '\r' | grep -o 'calls=[0-9]*' | cut -d= -f2 |
    awk '{ s += $1 } END { print s + 0 }'
}

# commands_per_publish SERVER LAYOUT SUBSCRIBERS: redis commands one publish costs, fan-out to
# SUBSCRIBERS on one node. Two runs that differ only in how many messages are published (the
# subscribers' set-up, heartbeats and connects are the same in both); the difference in
# commands over the difference in publishes is what a publish costs, deliveries included.
commands_per_publish() {
  local server=$1 layout=$2 subscribers=$3 calls=() pubs=() rates="2 6"
  # The native layout keeps up with far more publishes: a larger difference drowns the noise of
  # the set-up's inbox reads (their number varies with how the subscribes batch).
  [ "$layout" = native ] && rates="2 50"
  for rate in $rates; do
    start_redis "commands-$server-$layout-$subscribers-$rate"
    local port=${REDIS_URL##*:}
    port=${port%%/*}
    start_server "$server" "commands-$server-$layout-$subscribers-$rate" "$REDIS_URL" "$layout"
    redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
    local out=$OUT/logs/commands-$server-$layout-$subscribers-$rate.json
    "$LOADGEN" fanout --url "$SERVER_URL" --subscribers "$subscribers" --rate "$rate" --duration 5 --warmup 0 \
      --drain 20 --source-addrs 16 --server "$server" --label commands --json-out "$out" >/dev/null 2>&1 || true
    calls+=("$(redis_calls "$port")")
    pubs+=("$(grep -o '"publishes_acked":[0-9]*' "$out" | tail -1 | cut -d: -f2)")
    stop "$SERVER_PID" "$REDIS_PID"
  done
  awk -v c1="${calls[0]}" -v c2="${calls[1]}" -v p1="${pubs[0]:-0}" -v p2="${pubs[1]:-0}" \
    'BEGIN { if (p2 > p1) printf "%.1f", (c2 - c1) / (p2 - p1); else printf "?" }'
}

each_server() { # each_server FUNCTION ARGS...: runs it for the earlier build (--before), ours, then node
  local fn=$1
  shift
  if [ -n "$BEFORE_BIN" ]; then "$fn" before "$@"; fi
  for server in ours node; do
    if wants_server "$server"; then "$fn" "$server" "$@"; fi
  done
}

echo "== machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))," \
  "$(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), open files $NOFILE"
echo "== $(rustc --version), node $(node --version), faye $(node -p "require('$ROOT/compat-tests/node_modules/faye/package.json').version")," \
  "faye-redis $(node -p "require('$ROOT/compat-tests/node_modules/faye-redis/package.json').version"), $(redis-server --version | cut -d' ' -f3)"
echo "== commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); rustc processes running now: $(pgrep -c rustc || true)"
echo "== duration ${DURATION}s (+${WARMUP}s warm-up) per scenario; results in $RESULTS"

FANOUT="fan-out 1->100, max rate"
if wants fanout || wants fanout-half || wants fanout-common; then
  each_server run_single "$FANOUT" fanout
fi
if wants fanout-half; then
  half() {
    local rate
    rate=$(figure "$FANOUT" "$1" acks_per_s)
    [ -n "$rate" ] || { echo "no max rate measured for $1" >&2; return 0; }
    run_single "$1" "fan-out at 50% of own max rate" fanout --rate "$(awk -v r="$rate" 'BEGIN { printf "%d", r / 2 }')"
  }
  each_server half
fi
if wants fanout-common; then
  common=$(figure "$FANOUT" node acks_per_s || true)
  [ -n "$common" ] || common=$(figure "$FANOUT" ours acks_per_s || true)
  if [ -n "$common" ]; then
    common=$(awk -v r="$common" 'BEGIN { printf "%d", r / 2 }')
    each_server run_single "fan-out at $common msg/s (50% of node's max)" fanout --rate "$common"
  fi
fi
if wants channels; then
  each_server run_single "100 channels, 10 pub -> 1000 sub" channels
fi
if wants longpoll; then
  each_server run_single "long-polling fan-out 1->100" longpoll
fi
if wants idle; then
  for transport in ${BENCH_IDLE_TRANSPORTS:-websocket long-polling eventsource}; do
    for n in $IDLE_CLIENTS; do
      each_server run_single "idle $transport clients, $n" idle --subscribers "$n" --transport "$transport" --source-addrs 16
    done
  done
fi
if wants redis; then
  each_server run_redis "redis: fan-out 1->100, one node" 1
fi
if wants redis-2nodes; then
  each_server run_redis "redis: fan-out, sub node A, pub node B" 2
fi
if wants redis-rooms; then
  each_server run_redis "redis: 100 rooms x 10, sub node A, pub node B" 2 channels
fi
# The native layout: our nodes with --redis-layout native; node.js Faye on faye-redis beside them.
if wants native; then
  each_server run_redis "native: fan-out 1->100, one node" 1 fanout native
fi
if wants native-2nodes; then
  each_server run_redis "native: fan-out, sub node A, pub node B" 2 fanout native
fi
if wants native-rooms; then
  each_server run_redis "native: 100 rooms x 10, sub node A, pub node B" 2 channels native
fi
if wants commands; then
  COMMANDS_TABLE=$OUT/commands.md
  {
    echo "| subscribers | ours, native layout | ours, faye layout | node.js faye-redis |"
    echo "| ---: | ---: | ---: | ---: |"
  } > "$COMMANDS_TABLE"
  for n in ${BENCH_COMMANDS_SUBSCRIBERS:-10 1000 10000}; do
    native=$(commands_per_publish ours native "$n")
    faye=$(commands_per_publish ours faye "$n")
    node=?
    if wants_server node; then node=$(commands_per_publish node faye "$n"); fi
    echo "| $n | $native | $faye | $node |" >> "$COMMANDS_TABLE"
  done
fi

echo
echo "== rustc processes running at the end: $(pgrep -c rustc || true) (figures taken while others compile are skewed)"
echo
"$LOADGEN" report "$RESULTS" | tee "$OUT/table.md"
if [ -n "${COMMANDS_TABLE:-}" ]; then
  echo
  echo "== redis commands per publish (INFO commandstats, script-internal commands included)"
  cat "$COMMANDS_TABLE"
fi

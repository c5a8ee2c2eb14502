#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, Rust tests, and the compat tests that drive
# our release binary with the real npm faye client (and faye-redis). Installs what a fresh
# Debian machine with only the Rust toolchain lacks (node, npm, redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# redis-cli creates the Redis Cluster of tests/native_cluster.rs (sentinels are redis-server --sentinel)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The dashboard's browser test drives Debian's headless Chromium.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update
  apt-get install -y "${need_apt[@]}"
fi

echo "== npm ci (compat-tests: npm faye for the compat suites and the Rust client's node.js Faye tests)"
(cd compat-tests && npm ci --no-audit --no-fund)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings (every crate; the tls feature too, so its code is linted)"
cargo clippy --workspace --all-targets --features tls -- -D warnings
cargo clippy -p actioncluster-client --no-default-features --all-targets -- -D warnings
echo "== cargo doc with warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
echo "== cargo package (dry run of each crate, in dependency order)"
cargo package --workspace --no-verify --allow-dirty
echo "== cargo build --release (and the dashboard demo node the browser test drives)"
cargo build --release --bin actioncluster --example dashboard_demo
echo "== cargo test (every crate: unit, integration and doc tests)"
cargo test --workspace
echo "== TLS (HTTPS/WSS) with --features tls"
cargo test --features tls --test tls
echo "== spec tests against the node.js Faye server (proves the expectations are Faye's)"
ACTIONCLUSTER_SPEC_REFERENCE=1 cargo test --test 'spec_*'
echo "== spec tests against two nodes of ours on the native redis layout behind a round-robin balancer"
ACTIONCLUSTER_SPEC_ENGINE=native-pair cargo test --test 'spec_*'
echo "== compat-tests (npm faye against our release binary)"
(
  cd compat-tests
  ACTIONCLUSTER_BIN="$PWD/../target/release/actioncluster" npm test
)

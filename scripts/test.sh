#!/usr/bin/env bash
# The one command that runs every Larder test on a fresh machine. It installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== set-up"
for t in wasm32-unknown-unknown wasm32-wasip2; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

echo "== format"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== core builds for wasm (no clock, no I/O)"
cargo build -p larder-core --target wasm32-unknown-unknown
cargo build -p larder-core --target wasm32-wasip2

echo "== JavaScript package (wasm-bindgen) in Node"
if ! wasm-bindgen --version 2>/dev/null | grep -q "0.2.130"; then
  cargo install wasm-bindgen-cli --version 0.2.130
fi
if ! command -v node >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi
cargo build -p larder-wasm --release --target wasm32-unknown-unknown
wasm-bindgen --target nodejs --out-dir adapters/wasm/pkg target/wasm32-unknown-unknown/release/larder_wasm.wasm
node --test adapters/wasm/tests/

echo "== Spin component (wasm32-wasip2)"
cargo build -p larder-spin --target wasm32-wasip2 --profile component
ls -l target/wasm32-wasip2/component/larder_spin.wasm

echo "== real clients and services the tests drive (curl, pip, npm, apt-get, dpkg-deb, undici, prometheus-client, etcd)"
need=()
command -v curl >/dev/null || need+=(curl)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v npm >/dev/null || need+=(npm)
command -v apt-get >/dev/null || need+=(apt)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Prometheus project's own OpenMetrics parser reads /metrics in the tests.
python3 -c 'import prometheus_client' 2>/dev/null \
  || python3 -m pip install --quiet prometheus-client 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages prometheus-client
[ -d tests/clients/node_modules/undici ] \
  || npm install --prefix tests/clients --no-audit --no-fund --no-package-lock >/dev/null

echo "== tests"
cargo test -p larder-spin --lib
cargo test --workspace --exclude larder-spin

echo "== packaging (systemd unit, manifests, Dockerfile, --version, completions, man page)"
./packaging/check.sh

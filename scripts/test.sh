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

echo "== tests"
cargo test --workspace

#!/usr/bin/env bash
# The whole test suite: set-up (idempotent), formatting, lints, the layering check, and every
# test of the workspace, including the end-to-end tests that boot real QEMU microVMs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export FIREFLEET_IMAGE_DIR="${FIREFLEET_IMAGE_DIR:-$HOME/.cache/firefleet/images}"
export FIREFLEET_GUEST_BIN="$CARGO_TARGET_DIR/debug/firefleet-guest"
# The API fuzzer scripts/setup.sh installs (crates/server/tests/fuzz.rs runs it).
export FIREFLEET_SCHEMATHESIS="${FIREFLEET_CACHE:-$HOME/.cache/firefleet}/schemathesis-$(sed -n 's/^schemathesis_version=//p' scripts/setup.sh)/bin/st"

scripts/setup.sh
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy -q --workspace --all-targets --all-features -- -D warnings
echo "==> cargo xtask check (pure crates, server layers, import loops, file sizes)" >&2
cargo xtask check
echo "==> cargo test" >&2
# QEMU under TCG is CPU-bound: two test threads per binary on these 2-core machines.
cargo test --workspace --all-features -- --test-threads=2

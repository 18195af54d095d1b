#!/bin/sh
# Builds the statically linked firefleet-guest (PID 1 of every microVM) and prints its path.
# The explicit --target keeps +crt-static away from proc-macros and build scripts.
set -eu
cd "$(dirname "$0")/../.."
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p firefleet-guest --target x86_64-unknown-linux-gnu >&2
target_dir="${CARGO_TARGET_DIR:-$(pwd)/target}"
echo "$target_dir/x86_64-unknown-linux-gnu/release/firefleet-guest"

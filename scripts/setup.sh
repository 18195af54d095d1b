#!/usr/bin/env bash
# Installs what FireFleet needs on Debian 12 and builds it, idempotently:
#   - Debian packages: QEMU, busybox-static (guest userland), e2fsprogs, cpio, xz/zstd
#   - the workspace (debug profile) and the static firefleet-guest binary
#   - the default guest image (Debian's cloud kernel + firefleet-guest), rebuilt only when the
#     guest binary changed
# Environment: CARGO_TARGET_DIR (default ./target), FIREFLEET_IMAGE_DIR (default ~/.cache/firefleet/images).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

pkgs=(gcc libc6-dev qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio xz-utils zstd ca-certificates nftables iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  say "cargo not found: install a Rust toolchain (https://rustup.rs) and run this again"
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export FIREFLEET_IMAGE_DIR="${FIREFLEET_IMAGE_DIR:-$HOME/.cache/firefleet/images}"

say "building firefleet"
cargo build -q -p firefleet-cli
say "building the static firefleet-guest"
guest=$(crates/guest/build-static.sh | tail -n 1)
cp -f "$guest" "$CARGO_TARGET_DIR/debug/firefleet-guest"
ff="$CARGO_TARGET_DIR/debug/firefleet"

guest_sum=$(sha256sum "$CARGO_TARGET_DIR/debug/firefleet-guest" | cut -d' ' -f1)
if "$ff" image ls --output json 2>/dev/null | grep -q "$guest_sum"; then
  say "default guest image is up to date"
else
  say "building the default guest image (downloads Debian's cloud kernel once)"
  "$ff" image build --name default --guest-bin "$CARGO_TARGET_DIR/debug/firefleet-guest"
fi

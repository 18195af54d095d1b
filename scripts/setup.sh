#!/usr/bin/env bash
# Installs what FireFleet needs on Debian 12 and builds it, idempotently:
#   - Debian packages: QEMU, busybox-static (guest userland), e2fsprogs, cpio, xz/zstd
#   - the workspace (debug profile) and the static firefleet-guest binary
#   - the default guest image (Debian's cloud kernel + firefleet-guest), rebuilt only when the
#     guest binary changed
#   - schemathesis (the API fuzzer of crates/server/tests/fuzz.rs, from PyPI, version pinned) in
#     a virtual environment of its own, made once per version
# Environment: CARGO_TARGET_DIR (default ./target), FIREFLEET_IMAGE_DIR (default ~/.cache/firefleet/images),
# FIREFLEET_CACHE (default ~/.cache/firefleet: the fuzzer's virtual environment).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

# Every Debian package the project needs, and every command it runs from them. The test suite's
# extra parts (curl, promtool, python3 for the API fuzzer) are in the same list: one transaction.
# etcd: the store's etcd backend is tested against real etcd members (etcd-server, etcd-client);
# its gRPC client is generated at build time by protoc, which needs the well-known types
# (google/protobuf/*.proto) of libprotobuf-dev.
pkgs=(gcc libc6-dev qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio xz-utils zstd
  ca-certificates nftables iproute2 procps tar dpkg curl prometheus python3 python3-venv
  etcd-server etcd-client protobuf-compiler libprotobuf-dev)
cmds=(cc qemu-system-x86_64 qemu-img mkfs.ext4 nft tc ip cpio xz zstd tar dpkg-deb apt-get
  pgrep curl promtool python3 etcd etcdctl protoc)

# `verify`: every command on the PATH and busybox statically linked at FIREFLEET_BUSYBOX (or
# /bin/busybox); stops at the first missing one, naming it and the package that brings it.
verify() {
  local c
  for c in "${cmds[@]}"; do
    command -v "$c" >/dev/null 2>&1 || { say "missing command: $c (run scripts/setup.sh as root to install it)"; return 1; }
  done
  local bb="${FIREFLEET_BUSYBOX:-/bin/busybox}"
  [ -x "$bb" ] || { say "missing command: busybox at $bb (Debian package busybox-static)"; return 1; }
  [ -f /usr/include/google/protobuf/descriptor.proto ] || { say "missing file: /usr/include/google/protobuf/descriptor.proto (Debian package libprotobuf-dev)"; return 1; }
  # A qemu-img that cannot run (a half-removed package) is as missing as an absent one.
  qemu-img --version >/dev/null 2>&1 || { say "missing command: qemu-img does not run"; return 1; }
  qemu-system-x86_64 --version >/dev/null 2>&1 || { say "missing command: qemu-system-x86_64 does not run"; return 1; }
}
if [ "${1:-}" = --verify ]; then
  verify
  exit
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || ! verify 2>/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  say "installing Debian packages (missing: ${missing[*]:-none})"
  $sudo apt-get update -q
  # The whole list in one transaction, so that apt solves it as one: installing only what was
  # missing let apt remove a preinstalled newer qemu-utils (from backports) to satisfy
  # qemu-system-x86. The QEMU packages are one source package: pin them to the version that
  # qemu-system-x86 would get, downgrading a mismatched qemu-utils rather than removing it.
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  want=()
  for p in "${pkgs[@]}"; do
    case "$p" in
      qemu-system-x86|qemu-utils) [ -n "$qemu_version" ] && [ "$qemu_version" != "(none)" ] && p="$p=$qemu_version" ;;
    esac
    want+=("$p")
  done
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends --allow-downgrades "${want[@]}"
fi
verify
if ! command -v cargo >/dev/null; then
  say "cargo not found: install a Rust toolchain (https://rustup.rs) and run this again"
  exit 1
fi

# The API fuzzer: one virtual environment per pinned version (the version is in its path, as
# in crates/server/tests/fuzz.rs). `.installed` is written last, so an interrupted install is
# made again rather than taken for a finished one.
schemathesis_version=4.32.5
fuzz_venv="${FIREFLEET_CACHE:-$HOME/.cache/firefleet}/schemathesis-$schemathesis_version"
if [ ! -f "$fuzz_venv/.installed" ] || [ ! -x "$fuzz_venv/bin/st" ]; then
  say "installing schemathesis $schemathesis_version (the API fuzzer) into $fuzz_venv"
  rm -rf "$fuzz_venv"
  mkdir -p "$(dirname "$fuzz_venv")"
  python3 -m venv "$fuzz_venv"
  "$fuzz_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
  "$fuzz_venv/bin/st" --version >/dev/null
  touch "$fuzz_venv/.installed"
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

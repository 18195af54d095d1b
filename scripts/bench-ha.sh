#!/usr/bin/env bash
# The control plane on SQLite and on a three-member etcd (docs/benchmarks.md, issue 16):
# `bench creates` (POST /v1/vms and DELETE round trips) and `bench vm-run` (control-plane time
# to Running) against one `firefleet server` on each store, with one local agent each.
# Needs root (the agents' bridges), etcd and the default guest image; build first
# (cargo build -p firefleet-cli). Ports 7561-7562 and 23790-23802 must be free.
set -euo pipefail
B=${FIREFLEET_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/firefleet}
W=$(mktemp -d /tmp/ff-bench-ha.XXXXXX)
export FIREFLEET_IMAGE_DIR=$HOME/.cache/firefleet/images FIREFLEET_LOG=warn
cleanup() { pkill -f "$W/" || true; sleep 2; rm -rf "$W"; ip link del ffhb1 2>/dev/null || true; ip link del ffhb2 2>/dev/null || true; }
trap cleanup EXIT
# etcd, three members
IC=""; for i in 0 1 2; do IC="$IC,m$i=http://127.0.0.1:$((23800+i))"; done; IC=${IC#,}
for i in 0 1 2; do
  etcd --name m$i --data-dir $W/etcd$i --listen-client-urls http://127.0.0.1:$((23790+i)) --advertise-client-urls http://127.0.0.1:$((23790+i)) \
    --listen-peer-urls http://127.0.0.1:$((23800+i)) --initial-advertise-peer-urls http://127.0.0.1:$((23800+i)) \
    --initial-cluster $IC --initial-cluster-state new --initial-cluster-token hb --max-txn-ops 4096 > $W/etcd$i.log 2>&1 &
done
sleep 4
openssl rand -hex 32 > $W/secrets.key; chmod 600 $W/secrets.key
run() { # NAME _ PORT BRIDGE SUBNET [SERVER ARGS...]
  local name=$1 port=$3 bridge=$4 subnet=$5; shift 5
  local D=$W/$name
  $B server --data-dir $D/server --listen 127.0.0.1:$port --rate-limit 100000 --rate-burst 100000 "$@" > $W/$name-server.log 2>&1 &
  for _ in $(seq 50); do [ -f $D/server/admin.token ] && break; sleep 0.2; done
  sleep 1
  export FIREFLEET_SERVER=https://127.0.0.1:$port FIREFLEET_CA=$D/server/ca.pem FIREFLEET_TOKEN=@$D/server/admin.token
  echo "== $name: bench creates"
  $B bench creates --count 300 --output json > $W/$name-creates.json; cat $W/$name-creates.json
  T=$($B join-token create --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  FIREFLEET_JOIN_TOKEN=$T $B agent --server https://127.0.0.1:$port --ca $D/server/ca.pem --name $name-n --data-dir $D/agent \
     --image-dir $FIREFLEET_IMAGE_DIR --bridge $bridge --subnet $subnet --capacity-vcpus 8 --capacity-memory-mib 4096 > $W/$name-agent.log 2>&1 &
  sleep 5
  echo "== $name: bench vm-run"
  $B bench vm-run --count 10 --output json > $W/$name-vmrun.json; python3 -c "
import json; d=json.load(open('$W/$name-vmrun.json')); print(json.dumps(d)[:1500])"
}
run sqlite 0 7561 ffhb1 10.216.1.0/24
run etcd 0 7562 ffhb2 10.216.2.0/24 --store etcd://127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792 --secrets-key $W/secrets.key

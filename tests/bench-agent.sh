#!/usr/bin/env bash
# Benchmark of the vm-run command path against references measured in the same run:
#
#  1. warm latency: median wall time of `vm-run vm true` on a running guest, against
#     `ssh localhost true` (openssh-server on loopback, key auth) — target: vm-run >= 10x faster;
#  2. cold start: `vm-run vm true` on a stopped VM (proxy starts the guest, waits for the agent,
#     runs the command) against the bare guest's boot-to-ready time (launch boot-guest.sh until
#     the guest's script prints its first line, no vmsilo involved) — target: <= 200 ms added.
#
# Guests are QEMU (TCG here) from shared/vmtest with vhost-device-vsock; only ratios and
# differences measured in this run are meaningful. Needs: qemu-system-x86, the vmtest
# prerequisites, vhost-device-vsock, openssh-server, python3, binutils.
#
# Usage: tests/bench-agent.sh [WARM_RUNS (default 50)] [COLD_RUNS (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
WARM=${1:-50}
COLD=${2:-3}
SHARED=${VMSILO_SHARED:-$(cd .. && pwd)/shared}
export PATH=$PATH:/opt/vhost-device/bin:/usr/sbin
for t in qemu-system-x86_64 vhost-device-vsock sshd ssh ssh-keygen python3 strip; do
  command -v "$t" >/dev/null || { echo "bench-agent: $t missing (see the header)" >&2; exit 2; }
done

W=$(mktemp -d /tmp/vmsilo-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/bench.pid" ] && kill -TERM -- "-$(cat "$W/bench.pid")" 2>/dev/null || true
  [ -f "$W/bare.pid" ] && kill -TERM -- "-$(cat "$W/bare.pid")" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

echo "== building vm-run, vmsilo and a static vmsilo-agent" >&2
cargo build -q -p vmsilo --bin vm-run --bin vmsilo
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q -p vmsilo-guest --bin vmsilo-agent --target x86_64-unknown-linux-gnu
TD=${CARGO_TARGET_DIR:-target}
strip -o "$W/vmsilo-agent" "$TD/x86_64-unknown-linux-gnu/debug/vmsilo-agent"
VM_RUN=$PWD/$TD/debug/vm-run
VMSILO=$PWD/$TD/debug/vmsilo

now() { date +%s.%N; }
median() { python3 -c 'import sys,statistics; print("%.6f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# --- ssh reference on loopback ---
mkdir -p "$W/ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host" && ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/client"
cp "$W/ssh/client.pub" "$W/ssh/authorized_keys"
cat > "$W/ssh/sshd_config" <<CFG
Port 2299
ListenAddress 127.0.0.1
HostKey $W/ssh/host
AuthorizedKeysFile $W/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UseDNS no
UsePAM no
PidFile $W/ssh/sshd.pid
CFG
/usr/sbin/sshd -D -f "$W/ssh/sshd_config" -E "$W/ssh/sshd.log" &
PIDS+=($!)
SSH=(ssh -q -p 2299 -i "$W/ssh/client" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o GSSAPIAuthentication=no root@127.0.0.1)
for _ in $(seq 50); do "${SSH[@]}" true 2>/dev/null && break; sleep 0.1; done

# --- vmsilo: config, proxy (socket-activated), guest start command ---
RUN=$W/run; mkdir -p "$RUN"
cat > "$W/config.json" <<JSON
{"user":"user","userUid":1000,"nixosVms":[{"id":3,"name":"bench","vsock":{"transport":"vhost-user"},"autoShutdown":{"enable":true,"after":5}}]}
JSON
GUEST_SCRIPT="mkdir -p /dev/pts && (mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts); echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd; mkdir -p /home/user; chown 1000 /home/user; exec vmsilo-agent --user user --path /usr/bin:/bin --no-ifname --auto-shutdown-after 5 --poweroff-command 'poweroff -f'"
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
BOOT=$SHARED/vmtest/boot-guest.sh
START="mkdir -p $RUN/bench && echo \$\$ > $W/bench.pid && exec setsid $BOOT --name vmsilo-bench --vsock-uds $RUN/bench/vsock.sock --cid 3 --add-file $W/vmsilo-agent:/usr/bin/vmsilo-agent --timeout 600 --log $W/bench.console.log --run $(q "$GUEST_SCRIPT") >> $W/bench.boot.log 2>&1"
VMSILO_RUN_DIR=$RUN VMSILO_LOG=info python3 - "$RUN/bench-command.socket" "$VMSILO" "$W/config.json" "$START" 2>"$W/proxy.log" <<'PY' &
import os, socket, sys
path, vmsilo, config, start = sys.argv[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(64)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(vmsilo, [vmsilo, "proxy", "--config", config, "bench", "--start-command", start, "--agent-timeout", "300"])
PY
PIDS+=($!)
export VMSILO_RUN_DIR=$RUN
guest_running() { [ -f "$W/bench.pid" ] && kill -0 "$(cat "$W/bench.pid")" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$(cat "$W/bench.pid")/status" 2>/dev/null; }
wait_stopped() { for _ in $(seq 600); do guest_running || return 0; sleep 0.1; done; echo "guest did not power off" >&2; exit 1; }

# Bare guest: launch boot-guest.sh to the guest script's first line, no vsock agent involved
# (same device set: vhost-device-vsock backend and vsock device).
bare_once() {
  local t0 t1
  t0=$(now)
  t1=$(setsid bash -c "echo \$\$ > $W/bare.pid; exec $BOOT --name vmsilo-bare --vsock-uds $W/bare.vsock --cid 5 --add-file $W/vmsilo-agent:/usr/bin/vmsilo-agent --timeout 120 --log $W/bare.console.log --run 'echo BARE_UP'" \
        | while IFS= read -r line; do case $line in *BARE_UP*) date +%s.%N;; esac; done | head -1)
  python3 -c "print('%.6f' % ($t1 - $t0))"
}

cold_once() {
  wait_stopped
  local t0 t1
  t0=$(now); "$VM_RUN" bench true; t1=$(now)
  python3 -c "print('%.6f' % ($t1 - $t0))"
}

echo "== ssh localhost true x$WARM" >&2
SSH_T=()
for _ in $(seq "$WARM"); do t0=$(now); "${SSH[@]}" true; t1=$(now); SSH_T+=("$(python3 -c "print($t1-$t0)")"); done

COLD_T=(); BARE_T=()
for i in $(seq "$COLD"); do
  echo "== cold start $i/$COLD (bare guest, then vm-run on the stopped VM)" >&2
  BARE_T+=("$(bare_once)")
  COLD_T+=("$(cold_once)")
done

echo "== vm-run bench true x$WARM (running guest)" >&2
"$VM_RUN" bench true
RUN_T=()
for _ in $(seq "$WARM"); do t0=$(now); "$VM_RUN" bench true; t1=$(now); RUN_T+=("$(python3 -c "print($t1-$t0)")"); done

ssh_med=$(median "${SSH_T[@]}"); run_med=$(median "${RUN_T[@]}")
cold_med=$(median "${COLD_T[@]}"); bare_med=$(median "${BARE_T[@]}")
python3 - "$ssh_med" "$run_med" "$cold_med" "$bare_med" "${COLD_T[*]}" "${BARE_T[*]}" <<'PY'
import sys
ssh, run, cold, bare = map(float, sys.argv[1:5])
print(f"BENCH_WARM vm_run_median_ms={run*1e3:.1f} ssh_median_ms={ssh*1e3:.1f} ssh_over_vm_run={ssh/run:.2f}x (target >= 10x)")
print(f"BENCH_COLD vm_run_cold_median_s={cold:.3f} bare_boot_to_ready_median_s={bare:.3f} added_ms={(cold-bare)*1e3:.0f} cold_over_bare={cold/bare:.3f} (target: added <= 200 ms)")
print(f"BENCH_SAMPLES cold_s=[{sys.argv[5]}] bare_s=[{sys.argv[6]}]")
PY

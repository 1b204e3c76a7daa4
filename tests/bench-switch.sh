#!/usr/bin/env bash
# vm-switch benchmarks, one command: `tests/bench-switch.sh [--no-guests] [--no-loadgen]`.
#
# 1. loadgen: tests/bench/switch.sh — vhost-loadgen plays two VMs against dpdk-testpmd (io
#    forwarding) and vm-switch in the same run, CPUs pinned; prints medians and ratios.
# 2. guests: two QEMU guests (TCG here) through vm-switch, dpdk-testpmd (tso=1), `-netdev stream`
#    and a TAP + bridge, with ../shared/vmtest/run-pair.sh: ping RTT and iperf3 both ways.
#
# Needs: dpdk-dev (dpdk-testpmd), qemu-system-x86, the vmtest initramfs (tests/setup.sh), root
# for the TAP backend.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${VMSILO_SHARED:-$(cd .. && pwd)/shared}
SECS=${BENCH_IPERF_SECS:-10}
guests=1; loadgen=1
for a in "$@"; do
  case $a in
    --no-guests) guests=0 ;;
    --no-loadgen) loadgen=0 ;;
    *) echo "usage: $0 [--no-guests] [--no-loadgen]" >&2; exit 2 ;;
  esac
done

if ((loadgen)); then
  echo "== loadgen (tests/bench/switch.sh)"
  bash tests/bench/switch.sh
fi

if ((guests)); then
  cargo build -q --release -p vm-switch --bin vm-switch
  work=$(mktemp -d)
  trap 'kill "${sw_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
  mkdir -p "$work/cfg"
  printf '{"name":"a","mac":"52:54:00:00:00:0a","ipv4":["198.18.0.1/24"]}' > "$work/cfg/a.json"
  printf '{"name":"b","mac":"52:54:00:00:00:0b","ipv4":["198.18.0.2/24"]}' > "$work/cfg/b.json"
  target=${CARGO_TARGET_DIR:-target}
  "$target/release/vm-switch" --name bench --config-dir "$work/cfg" 2> "$work/switch.log" &
  sw_pid=$!
  pair() { "$SHARED/vmtest/run-pair.sh" --tests "ping iperf iperf-R" --secs "$SECS" "$@" | grep PAIR_RESULT; }
  echo "== guests: vm-switch"
  pair --backend external --sock-a "$work/cfg/a.sock" --sock-b "$work/cfg/b.sock" \
       --mac-a 52:54:00:00:00:0a --mac-b 52:54:00:00:00:0b
  kill "$sw_pid"; wait "$sw_pid" 2>/dev/null || true
  echo "== guests: dpdk-testpmd (tso=1)"
  pair --backend testpmd --vdev-opts ,tso=1
  echo "== guests: dpdk-testpmd (default)"
  pair --backend testpmd
  echo "== guests: -netdev stream"
  pair --backend stream
  echo "== guests: TAP + bridge"
  pair --backend tap
fi

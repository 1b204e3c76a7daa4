#!/bin/bash
# switch.sh - benchmark vm-switch against dpdk-testpmd (io forwarding between two vhost-user
# ports, the reference vhost-user forwarder) in one run, with the same load generator
# (vhost-loadgen, a vhost-user frontend playing two VMs) and the same CPU budget.
#
# Usage: tests/bench/switch.sh [--secs N] [--runs N] [--out DIR] [--no-build]
#                              [--loadgen-cpu C] [--backend-cpu C] [--switch-args "..."]
#   --secs N         measurement window per result (default 5; plus 1 s warm-up)
#   --runs N         alternate testpmd / vm-switch N times; ratios use the medians (default 1)
#   --out DIR        keep logs and results there (default: mktemp -d)
#   --no-build       use the existing target/release binaries
#   --loadgen-cpu C  CPU for the load generator and testpmd's idle main lcore (default 0)
#   --backend-cpu C  CPU for testpmd's forwarding lcore and for all vm-switch processes
#                    (default 1): both backends get exactly one core
#   --spread-cpus L  CPU list for the second vm-switch configuration, "vm-switch-spread"
#                    (default "LOADGEN_CPU,BACKEND_CPU": its per-VM children may use both CPUs,
#                    sharing one with the generator); "none" skips that configuration
#   --switch-args S  extra vm-switch flags (word-split), e.g. "--no-sandbox"
#
# vm-switch runs twice: "vm-switch" on the backend CPU only (testpmd's budget) and
# "vm-switch-spread" on --spread-cpus.
# Results: every vhost-loadgen line (LOADGEN ...) goes to DIR/results.txt; the script ends with
#   BENCH metric=NAME backend=vm-switch|vm-switch-spread testpmd=X value=Y ratio=Y/X
# lines for mpps_64, gbps_1514, latency p50/p99 (loaded, unloaded, and loaded with a receiver
# draining at most 100 kpps, all with 1514-byte frames) and a
# BENCH rss line per vm-switch process. Exit 0 when every measurement ran; non-zero (with the
# reason on stderr) when a prerequisite is missing or a backend or the generator fails.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SECS=5; RUNS=1; OUT=""; BUILD=1; LG_CPU=0; BE_CPU=1; SPREAD_CPUS=""; SWITCH_ARGS=""

die() { echo "switch.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) SECS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --loadgen-cpu) LG_CPU=$2; shift 2 ;;
        --backend-cpu) BE_CPU=$2; shift 2 ;;
        --spread-cpus) SPREAD_CPUS=$2; shift 2 ;;
        --switch-args) SWITCH_ARGS=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "switch.sh: unknown argument $1" >&2; usage ;;
    esac
done

# --- prerequisites (fail loudly) ---------------------------------------------------------------
command -v dpdk-testpmd >/dev/null ||
    die "dpdk-testpmd not found: apt-get install --no-install-recommends dpdk-dev (Debian 12)"
command -v taskset >/dev/null || die "taskset not found: apt-get install util-linux"
command -v cargo >/dev/null || [ "$BUILD" = 0 ] || die "cargo not found (or pass --no-build)"
NCPU=$(nproc)
[ "$LG_CPU" -lt "$NCPU" ] && [ "$BE_CPU" -lt "$NCPU" ] ||
    die "CPUs $LG_CPU/$BE_CPU do not exist (nproc=$NCPU); pass --loadgen-cpu/--backend-cpu"
[ "$LG_CPU" != "$BE_CPU" ] || echo "switch.sh: warning: load generator and backend share CPU $LG_CPU" >&2

if [ "$BUILD" = 1 ]; then
    (cd "$REPO" && cargo build --release -p vm-switch -p vmsilo-tests \
        --bin vm-switch --bin vhost-loadgen) || die "cargo build failed"
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
LOADGEN=$TARGET/release/vhost-loadgen
SWITCH=$TARGET/release/vm-switch
[ -x "$LOADGEN" ] || die "$LOADGEN missing (build without --no-build)"
[ -x "$SWITCH" ] || die "$SWITCH missing (build without --no-build)"

OUT=${OUT:-$(mktemp -d /tmp/switch-bench.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
: > "$RESULTS"

MAC_A=52:54:00:00:00:0a; MAC_B=52:54:00:00:00:0b
IP_A=10.9.0.1; IP_B=10.9.0.2

BPID=""
stop_backend() {
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then
        kill -INT "$BPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BPID" 2>/dev/null || true
        wait "$BPID" 2>/dev/null || true
    fi
    BPID=""
}
trap stop_backend EXIT
trap 'exit 143' TERM INT HUP

wait_sock() { # path timeout_s
    local i
    for ((i = 0; i < $2 * 10; i++)); do [ -S "$1" ] && return 0; sleep 0.1; done
    return 1
}

start_testpmd() { # dir
    local d=$1
    mkdir -p "$d"; rm -f "$d/a.sock" "$d/b.sock"
    # --no-huge: anonymous memory, IOVA=VA, no hugetlbfs; lcore 0 (main, idle) shares the
    # generator's CPU, lcore 1 (forwarding, busy-polls) gets the backend CPU.
    dpdk-testpmd --lcores "0@$LG_CPU,1@$BE_CPU" --no-huge -m 512 --no-pci --no-shconf \
        --file-prefix "bench$$" \
        --vdev "net_vhost0,iface=$d/a.sock" --vdev "net_vhost1,iface=$d/b.sock" -- \
        --forward-mode=io --nb-cores=1 --total-num-mbufs 32768 --stats-period 3600 \
        < /dev/null > "$d/backend.log" 2>&1 &
    BPID=$!
    wait_sock "$d/a.sock" 30 && wait_sock "$d/b.sock" 5 || {
        tail -5 "$d/backend.log" >&2; die "testpmd did not create its sockets; see $d/backend.log"; }
}

write_peer() { # dir name mac ip
    printf '{"name":"%s","mac":"%s","ipv4":["%s/24"],"routes":[],"receiveBroadcast":false}\n' \
        "$2" "$3" "$4" > "$1/.$2.json.tmp"
    mv "$1/.$2.json.tmp" "$1/$2.json"
}

start_switch() { # dir cpu-list
    local d=$1 cpus=$2
    mkdir -p "$d/cfg"; rm -f "$d"/cfg/*
    write_peer "$d/cfg" a "$MAC_A" "$IP_A"
    write_peer "$d/cfg" b "$MAC_B" "$IP_B"
    # shellcheck disable=SC2086
    taskset -c "$cpus" "$SWITCH" --name bench --config-dir "$d/cfg" --log-level info \
        $SWITCH_ARGS < /dev/null > "$d/backend.log" 2>&1 &
    BPID=$!
    wait_sock "$d/cfg/a.sock" 20 && wait_sock "$d/cfg/b.sock" 5 || {
        tail -5 "$d/backend.log" >&2; die "vm-switch did not create its sockets; see $d/backend.log"; }
}

loadgen() { # label sock_a sock_b extra...
    local label=$1 sa=$2 sb=$3; shift 3
    local log=$OUT/loadgen.log
    echo "+ vhost-loadgen --label $label $*" >> "$log"
    taskset -c "$LG_CPU" "$LOADGEN" --label "$label" --secs "$SECS" --rss-pid "$BPID" \
        --vm "a,$sa,$MAC_A,$IP_A" --vm "b,$sb,$MAC_B,$IP_B" "$@" > "$OUT/lg.out" 2>> "$log" || {
        cat "$OUT/lg.out" >> "$log"; tail -5 "$log" >&2
        die "vhost-loadgen failed against $label (see $log)"; }
    cat "$OUT/lg.out" >> "$log"
    grep '^LOADGEN mode=' "$OUT/lg.out" | sed "s/^/run=$RUN /" | tee -a "$RESULTS"
    grep '^LOADGEN rss' "$OUT/lg.out" >> "$OUT/rss-$label.txt" || true
}

suite() { # label sock_a sock_b [extra loadgen args]
    local label=$1 sa=$2 sb=$3; shift 3
    loadgen "$label" "$sa" "$sb" --mode throughput --size 64 "$@"
    loadgen "$label" "$sa" "$sb" --mode throughput --size 1514 "$@"
    loadgen "$label" "$sa" "$sb" --mode latency --size 1514 "$@"
    loadgen "$label" "$sa" "$sb" --mode latency --size 1514 --no-load "$@"
    # A slow receiver: VM b drains at most 100 kpps, so a standing queue builds in the backend.
    loadgen "$label" "$sa" "$sb" --mode latency --size 1514 --drain-pps 100000 "$@"
}

SPREAD_CPUS=${SPREAD_CPUS:-$LG_CPU,$BE_CPU}
echo "switch.sh: results in $OUT (loadgen CPU $LG_CPU; testpmd forwarding and vm-switch on CPU $BE_CPU; vm-switch-spread on CPUs $SPREAD_CPUS; ${SECS}s per result)"
for RUN in $(seq "$RUNS"); do
    start_testpmd "$OUT/testpmd"
    suite testpmd "$OUT/testpmd/a.sock" "$OUT/testpmd/b.sock"
    stop_backend

    # Same CPU budget as testpmd's forwarding lcore: one core for all vm-switch processes.
    start_switch "$OUT/switch" "$BE_CPU"
    # The switch answers ARP for its peers: resolve next hops as a guest would.
    suite vm-switch "$OUT/switch/cfg/a.sock" "$OUT/switch/cfg/b.sock" --arp
    stop_backend

    if [ "$SPREAD_CPUS" != none ]; then
        start_switch "$OUT/switch" "$SPREAD_CPUS"
        suite vm-switch-spread "$OUT/switch/cfg/a.sock" "$OUT/switch/cfg/b.sock" --arp
        stop_backend
    fi
    echo "switch.sh: run $RUN of $RUNS done"
done

# --- ratios ----------------------------------------------------------------------------------
# For each metric and vm-switch configuration: the medians over runs of testpmd's and vm-switch's
# values, and the median of the per-run ratios (each run measures both back to back, so the
# per-run ratio cancels most of the drift of a shared machine).
report() { # name select key
    local v
    for v in vm-switch vm-switch-spread; do
        grep -q " backend=$v " "$RESULTS" || continue
        awk -v n="$1" -v sel="$2" -v key="$3" -v be="$v" '
            function val(   i, p) {
                for (i = 1; i <= NF; i++) { split($i, p, "="); if (p[1] == key) return p[2] }
                return "nan"
            }
            function median(a, k,   i, j, t) {
                if (k == 0) return "nan"
                for (i = 0; i < k; i++) for (j = i + 1; j < k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                return (k % 2) ? a[int(k / 2)] : (a[k / 2 - 1] + a[k / 2]) / 2
            }
            index($0, sel) {
                split($1, r, "="); x = val()
                if (x == "nan") next
                if (index($0, " backend=testpmd ")) tp[r[2]] = x + 0
                else if (index($0, " backend=" be " ")) sw[r[2]] = x + 0
            }
            END {
                for (k in tp) { a[nt++] = tp[k]; if (k in sw && tp[k] > 0) q[nq++] = sw[k] / tp[k] }
                for (k in sw) b[ns++] = sw[k]
                mq = median(q, nq)
                printf "BENCH metric=%s backend=%s runs=%d testpmd=%s value=%s ratio=%s\n", n, be, nq,
                    median(a, nt), median(b, ns), (mq == "nan") ? mq : sprintf("%.2f", mq)
            }' "$RESULTS"
    done
}
{
    report mpps_64 "size=64 vms" mpps
    report gbps_1514 "size=1514 vms" gbps
    report drop_pct_64 "size=64 vms" drop_pct
    report lat_load_p50_us "load=bulk drain_pps=none" p50_us
    report lat_load_p99_us "load=bulk drain_pps=none" p99_us
    report lat_slowrx_p50_us "drain_pps=100000" p50_us
    report lat_slowrx_p99_us "drain_pps=100000" p99_us
    report lat_slowrx_rx_pps "drain_pps=100000" bulk_rx_pps
    report lat_idle_p50_us "load=none" p50_us
    report lat_idle_p99_us "load=none" p99_us
    for v in vm-switch vm-switch-spread; do
        [ -f "$OUT/rss-$v.txt" ] || continue
        # Per process name: the largest RSS seen, with its private (anon) and shared (shmem:
        # guest memory and rings) parts.
        awk -v v="$v" '{ for (i = 1; i <= NF; i++) { split($i, p, "="); f[p[1]] = p[2] }
               c = f["comm"]
               if (f["rss_kib"] + 0 > max[c] + 0) { max[c] = f["rss_kib"]; an[c] = f["anon_kib"]; sh[c] = f["shmem_kib"] } }
             END { for (c in max) printf "BENCH rss backend=%s comm=%s max_rss_kib=%s anon_kib=%s shmem_kib=%s\n", v, c, max[c], an[c], sh[c] }' \
            "$OUT/rss-$v.txt" | sort
    done
    if [ -f "$OUT/rss-testpmd.txt" ]; then
        awk '{ for (i = 1; i <= NF; i++) { split($i, p, "="); f[p[1]] = p[2] }
               if (f["rss_kib"] > m) m = f["rss_kib"] }
             END { printf "BENCH rss backend=testpmd max_rss_kib=%s\n", m }' "$OUT/rss-testpmd.txt"
    fi
} | tee "$OUT/summary.txt"

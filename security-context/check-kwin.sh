#!/usr/bin/env bash
# Local check, not CI: run vmsilo-wayland-context against a real KWin 6.3 (headless, in the
# trixie chroot of ../shared/kwin-headless; root, and that directory's setup.sh done once).
# Checks: READY, a client through the listener sees every global but the manager, the listener
# comes back at the same path after KWin is SIGKILLed and started again, SIGTERM removes it,
# and KWin stops accepting once the owning process dies.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
kh=${VMSILO_SHARED:-$repo/../shared}/kwin-headless
[[ -x /opt/trixie/usr/bin/kwin_wayland || -n ${TRIXIE_ROOT:-} ]] ||
  { echo "run $kh/setup.sh first (needs root, ~1 GB download)" >&2; exit 1; }

cargo build -q --manifest-path "$repo/Cargo.toml" -p vmsilo-security-context --bin vmsilo-wayland-context
bin=${CARGO_TARGET_DIR:-$repo/target}/debug/vmsilo-wayland-context
export XDG_RUNTIME_DIR=${KWIN_RT:-/tmp/kwin-rt} WAYLAND_DISPLAY=${KWIN_SOCKET:-wayland-kwin}

work=$(mktemp -d)
listen=$work/wayland-0
pid=
cleanup() {
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
  "$kh/stop.sh" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- stderr of vmsilo-wayland-context:" >&2; cat "$work/err" >&2; exit 1; }

# Wait until stdout has $1 lines, all "READY <listen>".
wait_ready() {
  for _ in $(seq 1 200); do
    if [[ $(wc -l <"$work/out") -ge $1 ]]; then
      grep -qvx "READY $listen" "$work/out" && fail "unexpected stdout: $(cat "$work/out")"
      return 0
    fi
    sleep 0.05
  done
  fail "no READY #$1 after 10 s"
}

probe() {
  python3 - "$kh" "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY" "$listen" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import wl_probe
normal = wl_probe.Conn(sys.argv[2]).globals()
tagged = wl_probe.Conn(sys.argv[3]).globals()
hidden = sorted(set(normal) - set(tagged))
print(f"  normal client: {len(normal)} globals; through the listener: {len(tagged)}; hidden: {hidden}")
sys.exit(0 if 'wp_security_context_manager_v1' in normal and hidden == ['wp_security_context_manager_v1'] else 1)
EOF
}

"$kh/start.sh"
"$bin" --vm banking --color '#2ecc71' --listen "$listen" >"$work/out" 2>"$work/err" &
pid=$!
wait_ready 1
echo "READY after start"
probe || fail "globals through the listener"

pgid=$(cat "${KWIN_STATE:-/tmp/kwin-state}/kwin.pgid")
kill -KILL "$(pgrep -g "$pgid" -x kwin_wayland)"
for _ in $(seq 1 200); do [[ -e $listen ]] || break; sleep 0.05; done
[[ -e $listen ]] && fail "listener socket kept while KWin is dead"
echo "KWin SIGKILLed: listener socket removed"
"$kh/stop.sh" >/dev/null
t0=$(date +%s%N)
"$kh/start.sh"
wait_ready 2
echo "READY again $(( ($(date +%s%N) - t0) / 1000000 )) ms after start.sh began"
probe || fail "globals through the re-created listener"

kill -TERM "$pid"
wait "$pid" || fail "exit status $? after SIGTERM"
pid=
[[ -e $listen ]] && fail "listener socket left after SIGTERM"
echo "SIGTERM: exit 0, socket removed"

# A process that dies without cleaning up: KWin sees close_fd's peer close and stops accepting.
: >"$work/out"
"$bin" --vm banking --color '#2ecc71' --listen "$listen" >"$work/out" 2>"$work/err" &
pid=$!
wait_ready 1
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
pid=
sleep 0.5
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); sys.exit(s.connect_ex(sys.argv[1]) == 0)' "$listen" ||
  fail "KWin still accepts on the listener after its owner was SIGKILLed"
echo "SIGKILL: KWin refuses new connections on the leftover socket"
echo "PASS"

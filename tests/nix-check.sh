#!/usr/bin/env bash
# Checks the Nix side of vmsilo without a Nix store or nixpkgs checkout in the repository.
#
# Always:   `nix-instantiate --parse` on every .nix file (Debian: apt-get install nix-bin).
# NIXPKGS_LIB=<nixpkgs>/lib (e.g. a checkout of nix-community/nixpkgs.lib, never committed):
#           evaluates the host module with lib.evalModules (tests/nix/eval.nix) on every
#           shared example, runs `vmsilo check` on the generated config.json, checks the units
#           run the right binaries (and that those binaries accept the arguments), checks TAP/NAT,
#           polkit and dirs, cross-checks the Nix MAC derivation against Python's hashlib, and
#           checks every bad config in tests/nix/bad-configs.json fails with its message.
#           VMSILO_BIN_DIR: where vmsilo and vm-switch binaries are (default: builds them with
#           cargo into the workspace target dir).
# KWIN_SRC=<KWin 6.3.6 source tree>: `git apply --check` of kwin-patch/*.patch against it.
#
# Exit status: 0 when every enabled check passed, 1 otherwise. Requirements that are missing
# are failures, not skips; only the env-gated sections are skipped (and say so).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${VMSILO_SHARED:-$repo/../shared}
fail=0
note() { printf '%s\n' "$*"; }
bad() { printf 'FAIL: %s\n' "$*" >&2; fail=1; }

command -v nix-instantiate >/dev/null || { echo "nix-instantiate not found: apt-get install nix-bin" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }

# 1. Parse every .nix file.
mapfile -t nixfiles < <(cd "$repo" && git ls-files --cached --others --exclude-standard '*.nix' 2>/dev/null \
    || find . -name '*.nix' -not -path './target/*')
[ "${#nixfiles[@]}" -gt 0 ] || { bad "no .nix files found under $repo"; exit 1; }
for f in "${nixfiles[@]}"; do
    if ! out=$(nix-instantiate --parse "$repo/$f" 2>&1 >/dev/null); then
        bad "parse $f: $out"
    fi
done
note "parse: ${#nixfiles[@]} .nix files checked"

# 2. Module evaluation.
if [ -n "${NIXPKGS_LIB:-}" ]; then
    [ -f "$NIXPKGS_LIB/default.nix" ] || { bad "NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix"; exit 1; }
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

    bindir=${VMSILO_BIN_DIR:-}
    if [ -z "$bindir" ]; then
        note "building vmsilo, vmsilo-tray and vm-switch (cargo build -p vmsilo -p vm-switch)"
        (cd "$repo" && cargo build -q -p vmsilo -p vm-switch) || { bad "cargo build of vmsilo/vm-switch failed"; exit 1; }
        bindir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
    fi
    for b in vmsilo vm-switch; do
        [ -x "$bindir/$b" ] || { bad "$bindir/$b missing (set VMSILO_BIN_DIR or build the workspace)"; exit 1; }
    done

    evalnix() { nix-instantiate --eval --strict --json "$repo/tests/nix/eval.nix" --arg lib "import $NIXPKGS_LIB" "$@"; }

    examples=("$shared"/examples/*.json "$repo"/tests/nix/examples/*.json)
    [ -e "${examples[0]}" ] || { bad "no examples in $shared/examples"; exit 1; }
    for ex in "${examples[@]}"; do
        name=$(basename "$ex" .json)
        if ! evalnix --argstr example "$ex" >"$tmp/$name.eval.json" 2>"$tmp/$name.err"; then
            bad "$name: module evaluation failed: $(cat "$tmp/$name.err")"; continue
        fi
        python3 - "$tmp/$name.eval.json" "$tmp/$name.config.json" <<'PY' || { bad "$name: extracting the document failed"; continue; }
import json, sys
json.dump(json.load(open(sys.argv[1]))["document"], open(sys.argv[2], "w"), indent=2)
PY
        if ! out=$("$bindir/vmsilo" check "$tmp/$name.config.json" 2>&1); then
            bad "$name: vmsilo check rejected the generated config.json: $out"
        fi
        binaries=; [ "$ex" = "${examples[0]}" ] && binaries=--binaries
        python3 "$repo/tests/nix/check_eval.py" "$ex" "$tmp/$name.eval.json" "$bindir" "$tmp/$name.config.json" $binaries \
            || bad "$name: unit/network checks failed"
        note "eval: $name checked"
    done

    # Every bad config must fail with the expected assertion messages, and `vmsilo check` must
    # reject it too (the Nix rules mirror the validator) unless the case says why not.
    python3 - "$repo/tests/nix/bad-configs.json" >"$tmp/cases.tsv" <<'PY'
import json, sys
for i, case in enumerate(json.load(open(sys.argv[1]))):
    print(i, json.dumps(case["config"]), json.dumps(case["expect"]), "nixOnly" in case, case["case"], sep="\t")
PY
    while IFS=$'\t' read -r i config expect nixonly label; do
        printf '%s' "$config" >"$tmp/bad$i.config.json"
        if [ "$nixonly" = False ] && "$bindir/vmsilo" check "$tmp/bad$i.config.json" >/dev/null 2>&1; then
            bad "bad config '$label': the Nix assertions reject it but vmsilo check accepts it"
        fi
        if ! evalnix --argstr documentJson "$config" >"$tmp/bad$i.json" 2>"$tmp/bad$i.err"; then
            bad "bad config '$label': evaluation failed instead of reporting assertions: $(cat "$tmp/bad$i.err")"; continue
        fi
        python3 - "$tmp/bad$i.json" "$expect" "$label" <<'PY' || fail=1
import json, sys
got = json.load(open(sys.argv[1]))["failedAssertions"]
missing = [e for e in json.loads(sys.argv[2]) if not any(e in m for m in got)]
if missing:
    print(f"FAIL: bad config '{sys.argv[3]}': expected messages {missing}, got {got}", file=sys.stderr)
    sys.exit(1)
PY
    done <"$tmp/cases.tsv"
    note "eval: $(wc -l <"$tmp/cases.tsv") bad configs checked"

    if out=$(nix-instantiate --eval --strict --json "$repo/tests/nix/kwin-overlay.nix" --arg lib "import $NIXPKGS_LIB" 2>&1) \
        && [ "$out" = "[]" ]; then
        note "eval: KWin overlay pins 6.3.6 and adds the patch once"
    else
        bad "KWin overlay: $out"
    fi
else
    note "skip: module evaluation (set NIXPKGS_LIB to a nixpkgs lib directory)"
fi

# 3. KWin patch: the globals DESIGN.md requires hidden are in the patch's hidden set, and every
#    global the patch hides has a "hidden" row in kwin-patch/README.md.
python3 - "$repo/kwin-patch" <<'PY' || bad "kwin: hidden-globals list and README table disagree"
import glob, re, sys
required = """zwlr_data_control_manager_v1 zwlr_layer_shell_v1 org_kde_plasma_shell
org_kde_kwin_server_decoration_palette_manager org_kde_plasma_virtual_desktop_management
kde_output_management_v2 kde_output_device_v2 kde_screen_edge_manager_v1
kde_external_brightness_v1 org_kde_kwin_dpms_manager zwp_keyboard_shortcuts_inhibit_manager_v1
zxdg_exporter_v2 zxdg_importer_v2""".split()
patch = "".join(open(p).read() for p in sorted(glob.glob(sys.argv[1] + "/*.patch")))
block = re.search(r"vmsiloHiddenInterfaces = \{(.*?)\};", patch, re.S)
if not block:
    sys.exit("FAIL: no vmsiloHiddenInterfaces set in the patch")
hidden = set(re.findall(r'QByteArrayLiteral\("([a-z0-9_]+)"\)', block.group(1)))
readme = open(sys.argv[1] + "/README.md").read()
rows = {name for line in readme.splitlines() if "**hidden**" in line
        for name in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])}
errors = [f"required global {g} is not hidden" for g in required if g not in hidden]
errors += [f"README has no hidden row for {g}" for g in sorted(hidden - rows)]
errors += [f"README marks {g} hidden but the patch does not" for g in sorted(rows - hidden)]
for e in errors:
    print("FAIL: kwin:", e, file=sys.stderr)
if not errors:
    print(f"kwin: {len(hidden)} hidden globals cover DESIGN.md's list and match the README table")
sys.exit(1 if errors else 0)
PY

if [ -n "${KWIN_SRC:-}" ]; then
    for p in "$repo"/kwin-patch/*.patch; do
        if out=$(git -C "$KWIN_SRC" apply --check "$p" 2>&1); then
            note "kwin: $(basename "$p") applies to $KWIN_SRC"
        else
            bad "kwin: $(basename "$p") does not apply to $KWIN_SRC: $out"
        fi
    done
else
    note "skip: KWin patch check (set KWIN_SRC to a KWin 6.3.6 source tree)"
fi

exit $fail

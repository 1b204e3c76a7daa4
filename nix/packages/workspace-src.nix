# The Cargo workspace as a store source: only what cargo needs, so edits to docs or Nix files do
# not rebuild the Rust tools.
{ lib }:
let root = ../..; in
lib.fileset.toSource {
  inherit root;
  fileset = lib.fileset.unions (map (p: root + "/${p}") [
    "Cargo.toml" "Cargo.lock" "host-launcher" "protocol" "guest" "switch" "security-context" "tests"
  ]);
}

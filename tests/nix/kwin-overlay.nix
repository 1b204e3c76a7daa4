# Evaluates nix/packages/kwin.nix against stand-in KWin derivations: the pinned release and the
# patch are applied to a 6.3 KWin, a second application is a no-op, another minor version is
# refused. Prints a list of failures (empty = pass).
{ lib }:
let
  fakeKwin = version: {
    inherit version;
    passthru = { };
    overrideAttrs = f: let new = f { patches = [ "nixpkgs.patch" ]; passthru = { }; }; in
      fakeKwin version // new // { overrideAttrs = f2: throw "unused"; };
  };
  build = kwin: import ../../nix/packages/kwin.nix { inherit lib kwin; fetchurl = args: args; };
  patched = build (fakeKwin "6.3.5");
  twice = build patched;
  refused = builtins.tryEval (build (fakeKwin "6.4.0")).version;
  check = cond: msg: lib.optional (!cond) msg;
in
check (patched.version == "6.3.6") "pinned version not applied: ${patched.version}"
++ check (patched.src.url == "mirror://kde/stable/plasma/6.3.6/kwin-6.3.6.tar.xz") "src url ${patched.src.url}"
++ check (builtins.length patched.patches == 2 && builtins.head patched.patches == "nixpkgs.patch"
  && lib.hasSuffix "kwin-patch/0001-vmsilo-security-context-frames.patch" (toString (builtins.elemAt patched.patches 1)))
  "patches: ${builtins.toJSON (map toString patched.patches)}"
++ check (builtins.pathExists (builtins.elemAt patched.patches 1)) "patch file missing"
++ check (twice.patches == patched.patches) "second overlay application patched again"
++ check (!refused.success) "KWin 6.4 was accepted"

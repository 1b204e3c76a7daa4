# Puts the patched KWin (overlays.default) under Plasma: security-context colour frames and the
# globals hidden from VM clients depend on it.
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
in
{
  config = lib.mkIf (cfg.enable && cfg.patchKwin) {
    nixpkgs.overlays = [ (import ../packages/kwin-overlay.nix) ];
  };
}

# Polkit rule: the configured user may start/stop/restart the vmsilo units, no others.
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  unitNames = lib.concatMap (vm: [
    (vlib.units.socket vm.name)
    (vlib.units.proxy vm.name)
    (vlib.units.vm vm.name)
  ]) cfg.nixosVms;
in
{
  config = lib.mkIf cfg.enable {
    security.polkit.enable = true;
    security.polkit.extraConfig = builtins.replaceStrings [ "@USER@" "@UNITS@" ]
      [ cfg.user (builtins.toJSON unitNames) ]
      (builtins.readFile ../../assets/polkit-rule.js.in);
  };
}

# Directories of the runtime contract: /shared and the home template belong to the user (the VM
# service seeds /shared/<vm> from the template on first start).
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  inherit (vlib) paths;
  group = config.users.users.${cfg.user}.group or "users";
in
{
  config = lib.mkIf cfg.enable {
    systemd.tmpfiles.rules = [
      "d ${paths.runDir} 0755 root root -"
      "d ${paths.stateDir} 0755 root root -"
      "d ${paths.homeTemplate} 0700 ${cfg.user} ${group} -"
      "d ${paths.sharedRoot} 0755 ${cfg.user} ${group} -"
      "d ${paths.switchDir} 0755 root root -"
    ] ++ map (net: "d ${paths.switchDir}/${net} 0750 root root -") (vlib.switchNetworks cfg.nixosVms);
  };
}

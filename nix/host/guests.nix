# Builds each guest (NixOS system, root image, kernel, initrd) through cfg.guestBuilder and
# exposes the results to config-json.nix and the packages.
{ config, lib, pkgs, ... }:
let
  cfg = config.programs.vmsilo;
in
{
  options.programs.vmsilo.internal.guests = lib.mkOption {
    type = lib.types.attrsOf lib.types.attrs;
    internal = true;
    readOnly = true;
    description = "Per VM name: { kernel, initramfs, rootDisk, kernelParams, system }.";
  };

  config = lib.mkIf cfg.enable {
    programs.vmsilo.guestBuilder = lib.mkDefault (vm: import ../guest/build.nix {
      inherit pkgs lib vm;
      hostCfg = cfg;
    });
    programs.vmsilo.internal.guests = lib.listToAttrs (map (vm: {
      inherit (vm) name;
      value = cfg.guestBuilder vm;
    }) cfg.nixosVms);
  };
}

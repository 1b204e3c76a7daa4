# One guest: evaluate its NixOS system from nix/guest plus the user's guestConfig, then build the
# read-only ext4 root image holding its store closure. Returns what the host needs.
{ pkgs, lib, vm, hostCfg }:
let
  # guestConfig is either a module or `vmConfig: module`. A module function takes a set pattern
  # ({ config, pkgs, ... }:), a vmConfig function a plain argument; functionArgs tells them apart.
  userModule =
    if builtins.isFunction vm.guestConfig && builtins.functionArgs vm.guestConfig == { }
    then vm.guestConfig vm
    else vm.guestConfig;

  system = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    inherit (pkgs.stdenv.hostPlatform) system;
    modules = [
      ./default.nix
      userModule
      { nixpkgs.pkgs = pkgs; }
    ];
    specialArgs = {
      vmsiloVm = vm;
      vmsiloAgent = hostCfg.guestAgentPackage;
    };
  };
  toplevel = system.config.system.build.toplevel;

  rootImage = pkgs.callPackage (pkgs.path + "/nixos/lib/make-ext4-fs.nix") {
    storePaths = [ toplevel ];
    volumeLabel = "vmsilo-root";
    # Mount points of the overlay root; everything else comes from the NixOS activation.
    populateImageCommands = ''
      mkdir -p ./files/etc ./files/var ./files/home ./files/root ./files/tmp
      ln -s ${toplevel} ./files/vmsilo-system
    '';
  };
in
{
  inherit system toplevel rootImage;
  kernel = "${toplevel}/kernel";
  initramfs = "${toplevel}/initrd";
  rootDisk = "${rootImage}";
  # The VM service adds vmsilo.ifname=... per interface; these make the NixOS stage 1 find its
  # stage 2 and the console.
  kernelParams = [ "init=${toplevel}/init" ] ++ system.config.boot.kernelParams;
}

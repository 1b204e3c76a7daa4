# The NixOS configuration every vmsilo guest starts from. nix/guest/build.nix evaluates it with
# specialArgs `vmsiloVm` (this VM's programs.vmsilo.nixosVms entry) and `vmsiloAgent`.
{ lib, vmsiloVm, ... }:
{
  imports = [
    ./root.nix
    ./agent.nix
    ./wayland.nix
    ./network.nix
    ./home.nix
    ./devices.nix
  ];

  networking.hostName = vmsiloVm.name;
  environment.systemPackages = vmsiloVm.guestPrograms;

  # The one guest user every command runs as (the agent's default --user).
  users.users.user = {
    isNormalUser = true;
    uid = 1000;
    home = "/home/user";
    extraGroups = [ "video" "audio" "render" ];
  };

  boot.kernelParams = [ "console=ttyS0" "panic=-1" ];
  boot.loader.grub.enable = false;
  documentation.enable = lib.mkDefault false;
  system.stateVersion = lib.mkDefault "25.05";
}

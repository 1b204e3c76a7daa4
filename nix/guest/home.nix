# Shared home: the host directory (sharedHome) arrives over virtiofs with tag "home".
{ lib, vmsiloVm, ... }:
lib.mkIf (vmsiloVm.sharedHome != false) {
  boot.initrd.availableKernelModules = [ "virtiofs" ];
  fileSystems."/home/user" = {
    device = "home";
    fsType = "virtiofs";
    options = [ "nofail" ];
  };
}

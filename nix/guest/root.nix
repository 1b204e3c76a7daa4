# Root file system: the read-only ext4 image (first disk, label vmsilo-root) supplies /nix/store;
# everything else lives on the ephemeral upper layer: the blank qcow2 the VM service attaches as
# the second disk (/dev/vdb, formatted at boot) or RAM when rootOverlay.type = "tmpfs". NixOS
# activation rebuilds /etc and the rest of / from the store at every boot, so the result is the
# read-only image with a throw-away writable layer on top; nothing written survives a restart.
#
# Stage 1 is the scripted initrd on purpose: it mounts exactly these file systems and ignores a
# generic `root=` on the kernel command line.
{ lib, vmsiloVm, ... }:
let
  qcow2 = vmsiloVm.rootOverlay.type == "qcow2";
in
{
  boot.initrd.systemd.enable = false;
  boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" "virtio_mmio" "ext4" ];

  fileSystems."/" = if qcow2 then {
    device = "/dev/vdb";
    fsType = "ext4";
    # The VM service creates a fresh, empty qcow2 for every start.
    autoFormat = true;
  } else {
    device = "none";
    fsType = "tmpfs";
    options = [ "mode=0755" ];
  };

  fileSystems."/nix/.ro-store" = {
    device = "/dev/disk/by-label/vmsilo-root";
    fsType = "ext4";
    options = [ "ro" ];
    neededForBoot = true;
  };

  fileSystems."/nix/store" = {
    device = "/nix/.ro-store/nix/store";
    fsType = "none";
    options = [ "bind" "ro" ];
    depends = [ "/nix/.ro-store" ];
    neededForBoot = true;
  };
}

# Overlay root: the read-only ext4 image (label vmsilo-root, first disk) is the lower layer; the
# upper layer is the ephemeral qcow2 the VM service attaches as the second disk (/dev/vdb), or
# RAM when rootOverlay.type = "tmpfs". Nothing written to / survives a VM restart.
{ lib, vmsiloVm, ... }:
let
  qcow2 = vmsiloVm.rootOverlay.type == "qcow2";
in
{
  boot.initrd.systemd.enable = true;
  boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" "virtio_mmio" "ext4" "overlay" ];

  fileSystems."/vmsilo/lower" = {
    device = "/dev/disk/by-label/vmsilo-root";
    fsType = "ext4";
    options = [ "ro" ];
    neededForBoot = true;
  };
  fileSystems."/vmsilo/upper" = if qcow2 then {
    device = "/dev/vdb";
    fsType = "ext4";
    # The VM service creates a fresh, empty qcow2 per start.
    autoFormat = true;
    neededForBoot = true;
  } else {
    device = "tmpfs";
    fsType = "tmpfs";
    options = [ "mode=0755" ];
    neededForBoot = true;
  };
  fileSystems."/" = {
    fsType = "overlay";
    device = "overlay";
    overlay = {
      lowerdir = [ "/vmsilo/lower" ];
      upperdir = "/vmsilo/upper/root";
      workdir = "/vmsilo/upper/work";
    };
  };
}

# isolatedPciDevices: vfio-pci claims them from the initrd on (driver_override via udev, before
# any other driver probes), and activation rebinds devices a running host already bound.
{ config, lib, pkgs, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  bdfs = map vlib.normalizeBdf cfg.isolatedPciDevices;
  udevRules = lib.concatMapStrings (bdf: ''
    ACTION=="add", SUBSYSTEM=="pci", KERNEL=="${bdf}", ATTR{driver_override}="vfio-pci"
  '') bdfs;
in
{
  config = lib.mkIf (cfg.enable && bdfs != [ ]) {
    assertions = map (bdf: {
      assertion = builtins.match "[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]" bdf != null;
      message = "programs.vmsilo.isolatedPciDevices: \"${bdf}\" is not a PCI address like 01:00.0.";
    }) bdfs;

    boot.initrd.kernelModules = [ "vfio_pci" "vfio" "vfio_iommu_type1" ];
    boot.initrd.services.udev.rules = udevRules;
    boot.initrd.extraUdevRulesCommands = ''
      cp ${pkgs.writeText "60-vmsilo-vfio.rules" udevRules} $out/60-vmsilo-vfio.rules
    '';
    services.udev.extraRules = udevRules;

    system.activationScripts.vmsilo-vfio = {
      deps = [ "specialfs" ];
      text = ''
        ${pkgs.kmod}/bin/modprobe vfio-pci || true
        for bdf in ${lib.escapeShellArgs bdfs}; do
          dev=/sys/bus/pci/devices/$bdf
          if [ ! -e "$dev" ]; then echo "vmsilo: isolated PCI device $bdf not present" >&2; continue; fi
          echo vfio-pci > "$dev/driver_override"
          if [ -e "$dev/driver" ] && [ "$(basename "$(readlink "$dev/driver")")" != vfio-pci ]; then
            echo "$bdf" > "$dev/driver/unbind"
          fi
          [ -e "$dev/driver" ] || echo "$bdf" > /sys/bus/pci/drivers_probe
        done
      '';
    };
  };
}

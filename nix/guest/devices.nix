# GPU and sound guest pieces.
{ lib, vmsiloVm, ... }:
{
  config = lib.mkMerge [
    (lib.mkIf (vmsiloVm.gpu != false) {
      boot.kernelModules = [ "virtio_gpu" ];
    })
    (lib.mkIf (vmsiloVm.sound != false) {
      boot.kernelModules = [ "snd_virtio" ];
      services.pipewire = {
        enable = true;
        pulse.enable = true;
        alsa.enable = true;
      };
    })
  ];
}

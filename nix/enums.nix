# Every closed set of values in one place: options.nix builds its enum types from these lists and
# nix/host/assertions.nix and the tests check against the same lists.
{
  logLevels = [ "error" "warn" "info" "debug" "trace" ];
  interfaceTypes = [ "tap" "vm-switch" ];
  overlayTypes = [ "qcow2" "tmpfs" ];
  vmms = [ "crosvm" "qemu" ];
  vsockTransports = [ "vhost-vsock" "vhost-user" ];
  waylandProxies = [ "wayland-proxy-virtwl" "sommelier" ];
}

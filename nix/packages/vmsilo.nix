# Host tools: vmsilo (service runner, proxy, desktop generator, check), vm-run/vm-start/vm-stop/
# vm-shell/vm-start-debug, the tray and the Wayland security-context helper.
{ lib, callPackage, libxkbcommon, symlinkJoin }:
let
  mk = callPackage ./rust-crate.nix { };
  launcher = mk {
    pname = "vmsilo-launcher";
    crate = "vmsilo";
    description = "vmsilo host commands and VM service";
  };
  securityContext = mk {
    pname = "vmsilo-wayland-context";
    crate = "vmsilo-security-context";
    description = "Per-VM wp_security_context_v1 listener";
    buildInputs = [ libxkbcommon ];
  };
in
symlinkJoin {
  name = "vmsilo-${launcher.version}";
  paths = [ launcher securityContext ];
  passthru = { inherit launcher securityContext; };
  meta = launcher.meta // { mainProgram = "vmsilo"; };
}

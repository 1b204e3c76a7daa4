# overlays.default: the vmsilo packages and the patched KWin inside kdePackages.
final: prev: {
  vmsilo = final.callPackage ./vmsilo.nix { };
  vm-switch = final.callPackage ./vm-switch.nix { };
  vmsilo-guest = final.callPackage ./vmsilo-guest.nix { };
  kdePackages = prev.kdePackages.overrideScope (kfinal: kprev: {
    kwin = kfinal.callPackage ./kwin.nix { inherit (kprev) kwin; };
  });
}

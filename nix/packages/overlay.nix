# overlays.default: the vmsilo packages and the patched KWin inside kdePackages.
final: prev:
{
  vmsilo = final.callPackage ./vmsilo.nix { };
  vm-switch = final.callPackage ./vm-switch.nix { };
  vmsilo-guest = final.callPackage ./vmsilo-guest.nix { };
} // import ./kwin-overlay.nix final prev

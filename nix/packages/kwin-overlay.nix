# Only the patched KWin (programs.vmsilo.patchKwin adds this to nixpkgs.overlays).
final: prev: {
  kdePackages = prev.kdePackages.overrideScope (kfinal: kprev: {
    kwin = kfinal.callPackage ./kwin.nix { inherit (kprev) kwin; };
  });
}

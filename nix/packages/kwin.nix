# KWin with the vmsilo patch, pinned to the release the patch is written and checked against.
{ lib, fetchurl, kwin }:
let
  pinned = {
    version = "6.3.6";
    # Upstream tarball (download.kde.org, signed by the Plasma release key).
    hash = "sha256-J/IgXwbVjx0fSA0qlK4kAiwvlbnB/cWlSfjhQ3E/zhI=";
  };
in
# Applying the overlay twice (module plus a user's own nixpkgs.overlays) must not patch twice.
if kwin.passthru.vmsiloPatched or false then
  kwin
else if lib.versions.majorMinor kwin.version != lib.versions.majorMinor pinned.version then
  throw "vmsilo: the KWin patch targets KWin ${pinned.version}, but nixpkgs has ${kwin.version}; use the nixpkgs the vmsilo flake pins or set programs.vmsilo.patchKwin = false."
else
  kwin.overrideAttrs (old: {
    inherit (pinned) version;
    src = fetchurl {
      url = "mirror://kde/stable/plasma/${pinned.version}/kwin-${pinned.version}.tar.xz";
      inherit (pinned) hash;
    };
    patches = (old.patches or [ ]) ++ [ ../../kwin-patch/0001-vmsilo-security-context-frames.patch ];
    passthru = (old.passthru or { }) // { vmsiloPatched = true; };
  })

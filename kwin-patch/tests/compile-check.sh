#!/bin/sh
# Local (not CI) check that the patched KWin compiles: run inside a system with KWin 6.3's build
# dependencies (e.g. a Debian trixie chroot after `apt-get build-dep kwin`), with KWIN_BUILD a
# CMake build directory (Unix Makefiles) configured from a KWin 6.3.6 tree with the patch applied.
# Compiles every translation unit the patch touches, then builds and runs the colour test with
# KWin's own compiler flags. Takes ~10 minutes on 2 cores, mostly moc and protocol code.
set -eu
: "${KWIN_BUILD:?set KWIN_BUILD to a configured KWin build directory}"
here=$(cd "$(dirname "$0")" && pwd)
cd "$KWIN_BUILD/src"
make kwin_autogen >/dev/null
for t in wayland/clientconnection.o wayland/display.o wayland/securitycontext_v1.o wayland_server.o \
         xdgshellwindow.o decorations/decoratedwindow.o; do
    make "$t" >/dev/null
    echo "compiled $t"
done
flags=$(sed -n 's/^CXX_FLAGS = //p' CMakeFiles/kwin.dir/flags.make)
defs=$(sed -n 's/^CXX_DEFINES = //p' CMakeFiles/kwin.dir/flags.make)
incs=$(sed -n 's/^CXX_INCLUDES = //p' CMakeFiles/kwin.dir/flags.make)
out=$(mktemp -d)
eval g++ "$flags" "$defs" "$incs" -fPIC -o "$out/vmsilo_color_test" "$here/vmsilo_color_test.cpp" -lQt6Gui -lQt6Core
"$out/vmsilo_color_test"
rm -rf "$out"

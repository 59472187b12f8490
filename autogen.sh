#!/bin/sh
# Regenerate the build system from a git checkout (not needed for a tarball).
set -e
cd "$(dirname "$0")"
mkdir -p m4 build-aux
autoreconf --install --force
# automake does not install the TAP driver by itself.
cp "$(automake --print-libdir)/tap-driver.sh" build-aux/

#!/bin/bash
# t_configure.sh — a build that follows the README gets man pages, or
# configure says why not.
#
# In a scratch copy of the git checkout (the files git knows), after
# ./autogen.sh, with scdoc made unavailable (SCDOC=no, which configure's
# program check takes as "not found"):
#   1. ./configure exits non-zero and names scdoc and --disable-man;
#   2. ./configure --disable-man succeeds and reports "man pages : no";
#   3. with scdoc (when installed) ./configure reports "man pages : yes".
# About 30 s. Needs autoreconf (the tree's ./autogen.sh); skips without it.
set -u
T0=$SECONDS
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/tests/dist/tap.sh"

command -v autoreconf >/dev/null || missing "autoreconf (apt-get install autoconf automake libtool)"
command -v git >/dev/null || missing "git"
git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 || skip_all "not a git checkout (a release tarball ships the man pages)"
WORK=$(mktemp -d /tmp/kumofs-configure.XXXXXX)
tap_cleanup() { rm -rf "$WORK"; }
trap tap_cleanup EXIT

(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$WORK") || { ok 1 "copy the checkout"; tap_end t_configure 1; }
(cd "$WORK" && ./autogen.sh) >"$WORK/autogen.log" 2>&1
rc=$?
ok "$rc" "./autogen.sh in a copy of the checkout"
[ "$rc" = 0 ] || { tail -n 20 "$WORK/autogen.log" | sed 's/^/# /'; tap_end t_configure 1; }

(cd "$WORK" && SCDOC=no ./configure) >"$WORK/no-scdoc.log" 2>&1
rc=$?
[ "$rc" != 0 ] && grep -q 'error: scdoc is required.*--disable-man' "$WORK/no-scdoc.log"
ok $? "without scdoc, ./configure fails and names scdoc and --disable-man (exit $rc)"
[ "$rc" != 0 ] || tail -n 5 "$WORK/no-scdoc.log" | sed 's/^/# /'

(cd "$WORK" && SCDOC=no ./configure --disable-man) >"$WORK/disable-man.log" 2>&1
rc=$?
[ "$rc" = 0 ] && grep -Eq '^ *man pages *: no$' "$WORK/disable-man.log"
ok $? "without scdoc, ./configure --disable-man succeeds without man pages (exit $rc)"

if command -v scdoc >/dev/null; then
    (cd "$WORK" && ./configure) >"$WORK/scdoc.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] && grep -Eq '^ *man pages *: yes$' "$WORK/scdoc.log"
    ok $? "with scdoc, ./configure builds the man pages (exit $rc)"
else
    skip "scdoc not installed"
fi
tap_end t_configure 0

#!/bin/bash
# t_trixie.sh — this tree on Debian 13 (trixie), from a Debian 12 host (or
# any Debian): built, tested, packaged and installed in a trixie root made
# by debootstrap (TAP; ends with "N passed, N failed").
#
#   1. the trixie root: debootstrap --variant=minbase trixie, the build
#      dependencies of debian/control (apt-get build-dep) and what the checks
#      below use (lintian, mandoc, python3, systemd); made once and cached
#      as a tar (about 700 MB) under $KUMO_TRIXIE_CACHE, keyed by the
#      Build-Depends of debian/control, so later runs need no mirror
#   2. a copy of the tree (the files git knows and the untracked, not
#      ignored ones): ./autogen.sh, ./configure --enable-werror (msgpack-c 6
#      found as pkg-config's msgpack-c), make, make check
#   3. tests/dist/run's man, systemd and deb parts in the root, with the
#      binaries of 2: trixie's mandoc and systemd-analyze, dpkg-buildpackage,
#      lintian --fail-on error,warning, the packages' contents (units in
#      /usr/lib/systemd/system), the unpacked daemons serve
#   4. apt-get install of the two packages (every dependency is in the root
#      already): the user kumofs (systemd-sysusers) and its directories
#      (systemd-tmpfiles), no unit enabled, systemd-analyze verify of the
#      installed units; the installed daemons serve a set and a get;
#      dpkg -P leaves no file behind
#
# Steps 2 to 4 run in mount, pid and network namespaces of their own
# (loopback only): the root's /proc, /sys and /dev mounts and every process
# started there end with each step, and no port of the host is used.
#
# Needs root, debootstrap, unshare and ip; the Debian mirror on the first
# run. Skips (TAP "1..0 # SKIP") without them; with KUMO_TEST_REQUIRE=1 a
# missing tool fails instead. About 4 minutes on 2 cores, plus about 3 for
# the first root.
#
# Environment: KUMO_TRIXIE_CACHE (default /var/tmp/kumofs-dist/trixie),
# DEBIAN_MIRROR (default: the host's apt mirror), MAKEFLAGS_J (make jobs,
# default: the CPUs), KUMO_TRIXIE_KEEP=1 (keep the scratch root; printed),
# KUMO_DEBS_OUT (the two packages of step 3, once installed and purged
# cleanly, are copied to KUMO_DEBS_OUT/trixie, for t_ansible.sh).
# shellcheck disable=SC2016  # the single-quoted command lines run in the root
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KUMO_TRIXIE_CACHE:-/var/tmp/kumofs-dist/trixie}
JOBS=${MAKEFLAGS_J:-$(nproc 2>/dev/null || echo 2)}
# Besides the build dependencies: what tests/dist/run's parts and step 4 use.
EXTRA="lintian mandoc python3 systemd adduser"
UNITS="kumo-manager.service kumo-server@.service kumo-gateway.service kumofs.target"

T0=$SECONDS
WORK=
R=   # the root, under $WORK
# shellcheck source=tests/dist/tap.sh
. "$HERE/tap.sh"

show() { tail -n "${2:-40}" "$1" | sed 's/^/#   /'; }   # file [lines]

finish() {
    local rc=$?
    trap - EXIT INT TERM
    # The mounts were made in namespaces that are gone: $R holds plain
    # directories only.
    if [ -n "$WORK" ]; then
        if [ "${KUMO_TRIXIE_KEEP:-0}" = 1 ]; then note "scratch root kept: $R"; else rm -rf "$WORK"; fi
    fi
    tap_end t_trixie "$rc"
}

# Run a bash command line in a root, in mount and pid namespaces of its own
# with /proc, /sys and /dev mounted; "isolated" adds a network namespace
# with loopback only, "net" keeps the host's network (for apt).
in_root() { # root isolated|net command
    local root=$1 mode=$2 cmd=$3 netns=()
    [ "$mode" = isolated ] && netns=(--net)
    unshare --mount --pid --fork --kill-child "${netns[@]}" -- sh -c '
        r=$1 mode=$2 cmd=$3
        mount -t proc proc "$r/proc" && mount -t sysfs sysfs "$r/sys" && mount --rbind /dev "$r/dev" || exit 1
        if [ "$mode" = isolated ]; then ip link set lo up || exit 1; fi
        exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive bash -c "$cmd"' sh "$root" "$mode" "$cmd"
}

mirror() { # the host's Debian mirror; trixie is on every one of them
    local m=${DEBIAN_MIRROR:-}
    [ -n "$m" ] || m=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    echo "${m:-http://deb.debian.org/debian}"
}

# The cached root ($TAR), made when missing; one builder at a time.
make_root() {
    local key d
    key=$( { sed -n '/^Build-Depends:/,/^[^ ]/p' "$ROOT/debian/control"; echo "$EXTRA"; } | md5sum | cut -c1-12)
    TAR=$CACHE/trixie-build-$key.tar
    [ -s "$TAR" ] && return 0
    mkdir -p "$CACHE" || return 1
    (
        exec 8>"$CACHE/lock"
        flock -w 900 8 || { note "timed out waiting for $CACHE/lock"; exit 1; }
        [ -s "$TAR" ] && exit 0
        d=$(mktemp -d "$CACHE/root.XXXXXX") || exit 1
        trap 'rm -rf "$d"' EXIT
        note "debootstrap --variant=minbase trixie from $(mirror) (once; cached in $TAR)"
        if ! timeout 900 debootstrap --variant=minbase trixie "$d/root" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1; then
            show "$CACHE/debootstrap.log" 20
            exit 1
        fi
        mkdir -p "$d/root/tmp/kumofs-deps/debian" && cp "$ROOT/debian/control" "$d/root/tmp/kumofs-deps/debian/" &&
            cp /etc/resolv.conf "$d/root/etc/resolv.conf" || exit 1
        note "apt-get build-dep, $EXTRA (log: $CACHE/apt.log)"
        if ! in_root "$d/root" net "apt-get update -q && apt-get build-dep -y -q --no-install-recommends /tmp/kumofs-deps &&
            apt-get install -y -q --no-install-recommends $EXTRA" >"$CACHE/apt.log" 2>&1; then
            show "$CACHE/apt.log" 20
            exit 1
        fi
        rm -rf "$d/root/tmp/kumofs-deps" "$d/root"/var/cache/apt/archives/*.deb "$d/root"/var/lib/apt/lists/*
        tar -C "$d/root" --numeric-owner -cf "$TAR.tmp" . && mv -f "$TAR.tmp" "$TAR" || exit 1
        note "root ready: $(du -h "$TAR" | cut -f1)"
    )
}

# ------------------------------------------------------------------ tools

[ "$(id -u)" = 0 ] || missing "needs root (debootstrap, chroot, namespaces)"
for t in debootstrap unshare chroot ip flock; do
    command -v "$t" >/dev/null || missing "$t not installed"
done
git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 || missing "not a git checkout (the tree is copied by git ls-files)"
trap finish EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. root

t=$SECONDS
make_root
ok $? "a trixie root with the build dependencies ($((SECONDS - t)) s)"
[ "$FAILED" = 0 ] || exit 1
WORK=$(mktemp -d /var/tmp/kumo-trixie.XXXXXX) || exit 1
R=$WORK/root
mkdir -p "$R" && tar -C "$R" --numeric-owner -xf "$TAR" || exit 1
note "$(sed -n 's/^PRETTY_NAME=//p' "$R/etc/os-release"), from $TAR"

# ------------------------------------------------------------------ 2. build

mkdir -p "$R/build/kumofs"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) |
    tar -x -C "$R/build/kumofs"
[ -f "$R/build/kumofs/configure.ac" ]
ok $? "a copy of the tree in the root"

t=$SECONDS
in_root "$R" isolated 'cd /build/kumofs && ./autogen.sh && ./configure --enable-werror' >"$WORK/configure.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/configure.log"
ok "$rc" "./autogen.sh && ./configure --enable-werror ($((SECONDS - t)) s)"
grep -q '^  msgpack-c *: msgpack-c 6' "$WORK/configure.log"
ok $? "configure found msgpack-c 6 as msgpack-c:$(sed -n 's/^  msgpack-c *://p' "$WORK/configure.log")"

t=$SECONDS
in_root "$R" isolated "cd /build/kumofs && nice make -j$JOBS" >"$WORK/make.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/make.log"
ok "$rc" "make -j$JOBS, warnings as errors ($((SECONDS - t)) s)"

t=$SECONDS
in_root "$R" isolated "cd /build/kumofs && nice make -j$JOBS check" >"$WORK/check.log" 2>&1
rc=$?
[ "$rc" = 0 ] || { show "$WORK/check.log"; show "$R/build/kumofs/test-suite.log"; }
ok "$rc" "make check:$(sed -n 's/^# \(PASS\|FAIL\|SKIP\): */ \1 /p' "$WORK/check.log" | tr -d '\n') ($((SECONDS - t)) s)"

# ------------------------------------------------------------------ 3. dist

t=$SECONDS
mkdir -p "$R/build/dist"
in_root "$R" isolated 'cd /build/kumofs && KUMO_BUILD_DIR=/build/kumofs KUMO_DIST_PARTS="man systemd deb" \
    KUMO_DIST_KEEP=1 KUMO_TEST_REQUIRE=1 TMPDIR=/build/dist tests/dist/run' >"$WORK/dist.log" 2>&1
sed -n '/^==> deb: lintian/,/^==> deb: the daemons/p' "$WORK/dist.log" | sed '1d;$d' | sed 's/^/# lintian: /'
for part in man systemd deb; do
    line=$(grep "^dist $part: " "$WORK/dist.log")
    [ "${line#dist "$part": }" = PASS ]
    ok $? "tests/dist/run $part in the root: ${line#dist "$part": }"
done
if [ "$(grep -c '^dist [a-z]*: PASS$' "$WORK/dist.log")" != 3 ]; then
    grep -A8 -e '^not ok' -e '^dist: ' "$WORK/dist.log" | sed 's/^/#   /'
    show "$WORK/dist.log" 20
fi
note "tests/dist/run took $((SECONDS - t)) s"

# ------------------------------------------------------------------ 4. install

debs=()
for f in "$R"/build/dist/kumo-dist.*/deb/kumofs-{server,tools}_*.deb; do
    [ -f "$f" ] && debs+=("${f#"$R"}")
done
in_root "$R" isolated "apt-get install -y -q --no-install-recommends ${debs[*]}" >"$WORK/install.log" 2>&1
rc=$?
[ ${#debs[@]} = 2 ] && [ "$rc" = 0 ]
rc=$?
[ "$rc" = 0 ] || show "$WORK/install.log" 20
ok "$rc" "apt-get install of kumofs-server and kumofs-tools (${#debs[@]} packages)"

# The user from /usr/lib/sysusers.d/kumofs.conf (systemd-sysusers in the
# postinst), its directories from /usr/lib/tmpfiles.d/kumofs.conf
# (systemd-tmpfiles: /proc is mounted here), no unit enabled.
in_root "$R" isolated "getent passwd kumofs | grep -E '^kumofs:x:[0-9]+:[0-9]+:kumofs daemons:/var/lib/kumofs:/usr/sbin/nologin\$' &&
    stat -c '%n %U:%G %a' /var/lib/kumofs /var/log/kumofs | tee /dev/stderr | grep -c ' kumofs:kumofs 750\$' | grep -qx 2 &&
    ls /usr/lib/sysusers.d/kumofs.conf /usr/lib/tmpfiles.d/kumofs.conf /etc/logrotate.d/kumofs-server &&
    ! ls /etc/systemd/system/*.wants/kumo* 2>/dev/null &&
    cd /usr/lib/systemd/system && ls $UNITS" >"$WORK/installed.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/installed.log"
ok "$rc" "the user kumofs and its directories (sysusers.d, tmpfiles.d), no unit enabled, the units in /usr/lib/systemd/system"


in_root "$R" isolated 'for u in kumo-manager.service kumo-server@a.service kumo-gateway.service kumofs.target; do
        systemd-analyze verify --man=no "$u" 2>&1 | sed "s/^/$u: /"
    done' >"$WORK/verify.log" 2>&1
[ ! -s "$WORK/verify.log" ]
rc=$?
[ "$rc" = 0 ] || show "$WORK/verify.log"
ok "$rc" "systemd-analyze verify of the installed units prints nothing"

# The installed daemons: a manager (-a attaches by itself), a server and a
# gateway in the root's own network namespace.
in_root "$R" isolated '
    d=$(mktemp -d)
    kumo-manager -l 127.0.0.1:19700 -a -Rs 0.2 -o "$d/manager.log" &
    kumo-server -m 127.0.0.1:19700 -l 127.0.0.1:19800 -L 19900 -s "$d/db.tch" -f "$d" -o "$d/server.log" &
    kumo-gateway -m 127.0.0.1:19700 -t 127.0.0.1:11211 -o "$d/gateway.log" &
    for i in $(seq 150); do
        if { exec 3<>/dev/tcp/127.0.0.1/11211; } 2>/dev/null; then
            printf "set kumo-trixie 0 0 5\r\nhello\r\nget kumo-trixie\r\n" >&3
            r=$(timeout 2 head -n 4 <&3 | tr -d "\r" | tr "\n" "|")
            exec 3<&- 3>&-
            [ "$r" = "STORED|VALUE kumo-trixie 0 5|hello|END|" ] && exit 0
        fi
        sleep 0.2
    done
    tail -n 20 "$d"/*.log
    exit 1' >"$WORK/serve.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/serve.log"
ok "$rc" "the installed daemons serve a set and a get"

in_root "$R" isolated 'dpkg -r kumofs-tools kumofs-server && dpkg -P kumofs-tools kumofs-server || exit 1
    left=$(ls -d /usr/bin/kumo* /etc/default/kumo* /usr/lib/systemd/system/kumo* /var/log/kumofs \
        /etc/logrotate.d/kumofs* /usr/lib/sysusers.d/kumofs.conf /usr/lib/tmpfiles.d/kumofs.conf \
        /usr/share/man/man*/kumo* 2>/dev/null)
    [ -z "$left" ] || { echo "left behind:" $left; exit 1; }' >"$WORK/purge.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/purge.log"
ok "$rc" "dpkg -r, dpkg -P: no file left behind"

if [ -n "${KUMO_DEBS_OUT:-}" ] && [ "$FAILED" = 0 ]; then
    mkdir -p "$KUMO_DEBS_OUT/trixie" && cp "${debs[@]/#/$R}" "$KUMO_DEBS_OUT/trixie/" &&
        note "the packages copied to $KUMO_DEBS_OUT/trixie"
fi

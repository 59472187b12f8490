#!/bin/bash
# docker-base.sh — a Docker engine and a debian:bookworm-slim base image for
# the tests in tests/dist, on a machine that can pull no image.
#
# Sourced by t_docker.sh (and usable by hand: `tests/dist/docker-base.sh
# tarball` prints the cached base tarball, building it first if needed).
#
#   kd_base_tarball   debootstrap --variant=minbase bookworm, once: the tar is
#                     cached as $KD_CACHE/debian-bookworm-minbase.tar (116 MB),
#                     so later runs skip the minute debootstrap takes
#   kd_engine_start   use $DOCKER_HOST when it answers; otherwise start our
#                     own dockerd (socket and exec-root in a temporary
#                     directory, data-root $KD_CACHE/engine so image layers
#                     are reused by the next run) and export DOCKER_HOST
#   kd_base_image     `docker import` the tarball as debian:bookworm-slim
#                     unless the engine already has that image, so the
#                     Dockerfile keeps its normal FROM line
#   kd_engine_stop    stop the dockerd we started (by its pid) and remove its
#                     temporary directory
#
# Our dockerd is isolated: no default bridge (--bridge=none), no iptables
# rules, no NAT, no IP forwarding. Compose networks are plain Linux bridges
# between the containers and the host; a published port is served by
# docker-proxy on the host. Image builds must use `docker build --network
# host` (RUN steps reach the Debian mirror through the host).
#
# One of our engines at a time: runs queue on $KD_CACHE/engine.lock (flock).
# We never start a dockerd beside one we did not start (a second daemon with
# --bridge=none would delete the other's docker0): with a foreign daemon
# running, we use /var/run/docker.sock or give up.
#
# Environment: KUMO_DOCKER_CACHE (default /var/tmp/kumofs-dist/docker: the
# base tarball and the engine's data-root, about 1 GB), DEBIAN_MIRROR
# (default: the host's apt mirror), DOCKER_HOST (an engine to use instead).

KD_CACHE=${KUMO_DOCKER_CACHE:-/var/tmp/kumofs-dist/docker}
KD_TARBALL=$KD_CACHE/debian-bookworm-minbase.tar
KD_OWN_PID=
KD_RUN=
KD_LOCK_FD=

kd_say() { printf '# %s\n' "$*" >&2; }

# The Debian mirror apt uses on this host (bookworm suite), for debootstrap.
kd_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { print u; exit }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    echo "${uri:-http://deb.debian.org/debian}"
}

kd_base_tarball() {
    mkdir -p "$KD_CACHE" || return 1
    if [ -s "$KD_TARBALL" ]; then
        echo "$KD_TARBALL"
        return 0
    fi
    (
        # One builder at a time; the loser of the race finds the tarball.
        exec 8>"$KD_CACHE/tarball.lock"
        flock -w 900 8 || { kd_say "timed out waiting for $KD_CACHE/tarball.lock"; exit 1; }
        [ -s "$KD_TARBALL" ] && exit 0
        command -v debootstrap >/dev/null || { kd_say "debootstrap is not installed"; exit 1; }
        local root mirror t0=$SECONDS
        root=$(mktemp -d "$KD_CACHE/rootfs.XXXXXX") || exit 1
        trap 'rm -rf "$root"' EXIT
        mirror=$(kd_mirror)
        kd_say "debootstrap --variant=minbase bookworm from $mirror (once; cached in $KD_TARBALL)"
        if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$KD_CACHE/debootstrap.log" 2>&1; then
            kd_say "debootstrap failed; last lines of $KD_CACHE/debootstrap.log:"
            tail -n 20 "$KD_CACHE/debootstrap.log" >&2
            exit 1
        fi
        # Like the official image: deb822 sources (bookworm, -updates,
        # -security) and no package caches.
        rm -f "$root/etc/apt/sources.list"
        local sec=${mirror%/debian}/debian-security
        [ "$sec" = "$mirror/debian-security" ] && sec=http://deb.debian.org/debian-security
        cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
        tar -C "$root" --numeric-owner -cf "$KD_TARBALL.tmp" . && mv -f "$KD_TARBALL.tmp" "$KD_TARBALL" || exit 1
        kd_say "base tarball ready in $((SECONDS - t0)) s: $(du -h "$KD_TARBALL" | cut -f1)"
    ) || return 1
    echo "$KD_TARBALL"
}

# The docker CLI that matches our daemon (Debian's), else the first on PATH.
kd_docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

kd_engine_answers() { timeout 20 "$KD_DOCKER" info >/dev/null 2>&1; }

# Returns 0 with DOCKER_HOST exported, 2 when no engine can run here (the
# reason printed), 1 on other failures.
kd_engine_start() {
    KD_DOCKER=$(kd_docker_cli)
    [ -n "$KD_DOCKER" ] || { kd_say "no docker CLI (apt-get install docker.io)"; return 2; }
    export DOCKER_BUILDKIT=0                     # the classic builder: no buildx here
    if [ -n "${DOCKER_HOST:-}" ]; then
        if kd_engine_answers; then
            kd_say "using the engine at DOCKER_HOST=$DOCKER_HOST"
            return 0
        fi
        kd_say "DOCKER_HOST=$DOCKER_HOST does not answer; starting our own engine"
        unset DOCKER_HOST
    fi
    command -v dockerd >/dev/null || { kd_say "no dockerd (apt-get install docker.io)"; return 2; }
    mkdir -p "$KD_CACHE" || return 1
    exec {KD_LOCK_FD}>"$KD_CACHE/engine.lock"
    if ! flock -n "$KD_LOCK_FD"; then
        kd_say "another test run holds $KD_CACHE/engine.lock; waiting (up to 15 min)"
        flock -w 900 "$KD_LOCK_FD" || { kd_say "gave up waiting for the engine lock"; return 1; }
    fi
    # A dockerd a killed earlier run of ours left behind (recorded by pid).
    local old
    old=$(cat "$KD_CACHE/dockerd.pid" 2>/dev/null)
    if [ -n "$old" ] && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q -- "--data-root $KD_CACHE/engine "; then
        kd_say "stopping dockerd $old left by an earlier run"
        kill -TERM "$old" 2>/dev/null
        local n
        for ((n = 0; n < 300; n++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$KD_CACHE/dockerd.pid"
    if pgrep -x dockerd >/dev/null 2>&1 || ip link show docker0 >/dev/null 2>&1; then
        export DOCKER_HOST=unix:///var/run/docker.sock
        if kd_engine_answers; then
            kd_say "a Docker engine is already running here: using $DOCKER_HOST"
            return 0
        fi
        unset DOCKER_HOST
        kd_say "a Docker engine we did not start is running and /var/run/docker.sock does not answer;"
        kd_say "not starting a second one beside it (set DOCKER_HOST to use it)"
        return 2
    fi
    KD_RUN=$(mktemp -d /tmp/kumo-dk.XXXXXX) || return 1
    echo '{}' >"$KD_RUN/daemon.json"
    export DOCKER_HOST=unix://$KD_RUN/docker.sock
    dockerd --config-file "$KD_RUN/daemon.json" \
        --data-root "$KD_CACHE/engine" --exec-root "$KD_RUN/x" --pidfile "$KD_RUN/dockerd.pid" \
        -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
        --default-address-pool base=172.30.0.0/16,size=24 --log-level=warn \
        >"$KD_RUN/dockerd.log" 2>&1 &
    KD_OWN_PID=$!
    echo "$KD_OWN_PID" >"$KD_CACHE/dockerd.pid"
    local t
    for ((t = 0; t < 60; t++)); do
        if ! kill -0 "$KD_OWN_PID" 2>/dev/null; then
            kd_say "dockerd exited at start; its log:"
            sed 's/^/#   /' "$KD_RUN/dockerd.log" >&2
            KD_OWN_PID=
            return 2
        fi
        kd_engine_answers && break
        sleep 1
    done
    if ! kd_engine_answers; then
        kd_say "dockerd did not answer in 60 s; its log:"
        tail -n 30 "$KD_RUN/dockerd.log" | sed 's/^/#   /' >&2
        return 2
    fi
    # Can it run a container at all? (kernel, cgroups, overlay)
    kd_say "started dockerd (pid $KD_OWN_PID): $("$KD_DOCKER" version -f '{{.Server.Version}}' 2>/dev/null)," \
        "storage $("$KD_DOCKER" info -f '{{.Driver}}' 2>/dev/null), cgroup v$("$KD_DOCKER" info -f '{{.CgroupVersion}}' 2>/dev/null)"
    return 0
}

kd_base_image() {
    if "$KD_DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1; then
        kd_say "debian:bookworm-slim is already in the engine"
        return 0
    fi
    local tar
    tar=$(kd_base_tarball) || return 1
    "$KD_DOCKER" import -c 'CMD ["bash"]' "$tar" debian:bookworm-slim >/dev/null || return 1
    kd_say "imported $tar as debian:bookworm-slim"
}

kd_engine_stop() {
    if [ -n "$KD_OWN_PID" ]; then
        kill -TERM "$KD_OWN_PID" 2>/dev/null
        local n
        for ((n = 0; n < 300; n++)); do kill -0 "$KD_OWN_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$KD_OWN_PID" 2>/dev/null; then
            kd_say "dockerd $KD_OWN_PID ignored SIGTERM for 30 s: SIGKILL"
            kill -KILL "$KD_OWN_PID" 2>/dev/null
        fi
        wait "$KD_OWN_PID" 2>/dev/null
        rm -f "$KD_CACHE/dockerd.pid"
        KD_OWN_PID=
    fi
    if [ -n "$KD_RUN" ]; then
        # dockerd unmounts what it mounted; anything left would keep rm busy.
        grep -o " $KD_RUN/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
        rm -rf "$KD_RUN"
        KD_RUN=
    fi
    if [ -n "$KD_LOCK_FD" ]; then
        exec {KD_LOCK_FD}>&-
        KD_LOCK_FD=
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case ${1:-} in
    tarball) kd_base_tarball ;;
    *) echo "usage: $0 tarball   (build or find the cached debootstrap tarball)" >&2; exit 64 ;;
    esac
fi

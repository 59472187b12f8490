#!/bin/bash
# docker-base.sh — a Docker engine and the debian:trixie-slim and
# debian:bookworm-slim base images for the tests in tests/dist, on a machine
# that can pull no image.
#
# Sourced by t_docker.sh and t_ansible.sh (and usable by hand:
# `tests/dist/docker-base.sh tarball [SUITE]` prints the cached base tarball
# of SUITE, trixie by default, building it first if needed).
#
#   kd_base_tarball [SUITE]
#                     debootstrap --variant=minbase SUITE (trixie, bookworm),
#                     trimmed as the official -slim images are (below), once:
#                     the tar is cached as $KD_CACHE/debian-SUITE-slim.tar
#                     (about 80 MB), so later runs skip the minute
#                     debootstrap takes
#   kd_engine_start   use $DOCKER_HOST when it answers; otherwise start our
#                     own dockerd (socket and exec-root in a temporary
#                     directory, data-root $KD_CACHE/engine so image layers
#                     are reused by the next run) and export DOCKER_HOST
#   kd_base_image [SUITE]
#                     `docker import` the tarball as debian:SUITE-slim unless
#                     the engine already has that image, so the Dockerfiles
#                     keep their normal FROM line
#
# Trimmed like the official debian:SUITE-slim: a dpkg configuration in the
# image (/etc/dpkg/dpkg.cfg.d/docker-slim) keeps documentation (except the
# copyright files), man and info pages, translations and lintian overrides
# out of every package installed later, and what debootstrap installed of
# them is deleted; no apt lists, caches or logs.
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
KD_OWN_PID=
KD_RUN=
KD_LOCK_FD=

kd_say() { printf '# %s\n' "$*" >&2; }

# The Debian mirror apt uses on this host, for debootstrap: one of the
# sources of the host's release (every Debian mirror carries every suite).
kd_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    uri=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    echo "${uri:-http://deb.debian.org/debian}"
}

kd_base_tarball() { # [suite]
    local suite=${1:-trixie} tarball
    tarball=$KD_CACHE/debian-$suite-slim.tar
    mkdir -p "$KD_CACHE" || return 1
    if [ -s "$tarball" ]; then
        echo "$tarball"
        return 0
    fi
    (
        # One builder at a time; the loser of the race finds the tarball.
        exec 8>"$KD_CACHE/tarball.lock"
        flock -w 900 8 || { kd_say "timed out waiting for $KD_CACHE/tarball.lock"; exit 1; }
        [ -s "$tarball" ] && exit 0
        command -v debootstrap >/dev/null || { kd_say "debootstrap is not installed"; exit 1; }
        local root mirror t0=$SECONDS
        root=$(mktemp -d "$KD_CACHE/rootfs.XXXXXX") || exit 1
        trap 'rm -rf "$root"' EXIT
        mirror=$(kd_mirror)
        kd_say "debootstrap --variant=minbase $suite from $mirror (once; cached in $tarball)"
        if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$KD_CACHE/debootstrap-$suite.log" 2>&1; then
            kd_say "debootstrap failed; last lines of $KD_CACHE/debootstrap-$suite.log:"
            tail -n 20 "$KD_CACHE/debootstrap-$suite.log" >&2
            exit 1
        fi
        # Like the official image: deb822 sources (SUITE, -updates,
        # -security) ...
        rm -f "$root/etc/apt/sources.list"
        local sec=${mirror%/debian}/debian-security
        [ "$sec" = "$mirror/debian-security" ] && sec=http://deb.debian.org/debian-security
        cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        # ... -slim: no documentation but the copyright files, no man or
        # info pages, no translations, now and for every later package ...
        cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# As in the official debian:*-slim images: what dpkg leaves out.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
        find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* \
            "$root"/usr/share/lintian/* "$root"/usr/share/linda/* "$root"/usr/share/locale/*
        # ... and no package caches, lists or logs.
        rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
        tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv -f "$tarball.tmp" "$tarball" || exit 1
        kd_say "base tarball ready in $((SECONDS - t0)) s: $(du -h "$tarball" | cut -f1)"
    ) || return 1
    echo "$tarball"
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

kd_base_image() { # [suite]
    local suite=${1:-trixie} tar
    if "$KD_DOCKER" image inspect "debian:$suite-slim" >/dev/null 2>&1; then
        kd_say "debian:$suite-slim is already in the engine"
        return 0
    fi
    tar=$(kd_base_tarball "$suite") || return 1
    "$KD_DOCKER" import -c 'CMD ["bash"]' "$tar" "debian:$suite-slim" >/dev/null || return 1
    kd_say "imported $tar as debian:$suite-slim"
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
    tarball) kd_base_tarball "${2:-trixie}" ;;
    *) echo "usage: $0 tarball [SUITE]   (build or find the cached debootstrap tarball; trixie)" >&2; exit 64 ;;
    esac
fi

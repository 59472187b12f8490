#!/bin/bash
# docker-entrypoint.sh — turn KUMO_* environment variables into kumofs flags.
#
#   (no command)            run the daemon named by KUMO_ROLE with flags from
#                           the environment
#   manager|server|gateway  the same for that role; further words are added
#                           to its flags (e.g. `server -v`)
#   -x ...                  a command starting with a flag: the KUMO_ROLE
#                           daemon with the environment's flags, then these
#   anything else           run as given (kumoctl, kumostat, bash, ...)
#
# The daemon replaces this shell (exec), so it gets the SIGTERM of `docker
# stop` (through tini) and drains. The variables are documented in
# deploy/docker/README.md; the C code never reads them.
set -eu

die() { echo "docker-entrypoint: $*" >&2; exit 64; }

truthy() {
    case ${1:-} in 1 | [yY] | [yY][eE][sS] | [tT][rR][uU][eE] | [oO][nN]) return 0 ;; *) return 1 ;; esac
}

# This container's first IPv4 address (what other containers reach it at).
container_ip() {
    local a
    for a in $(hostname -i 2>/dev/null); do
        case $a in *.*.*.*) [ "$a" != 127.0.0.1 ] && { echo "$a"; return 0; } ;; esac
    done
    for a in $(hostname -I 2>/dev/null); do
        case $a in *.*.*.*) echo "$a"; return 0 ;; esac
    done
    return 1
}

# Wait (at most KUMO_WAIT seconds) until a name resolves: the partner manager
# is resolved once at start-up, and its container may not exist yet.
wait_resolves() {
    local name=$1 host t
    case $name in
    \[*) return 0 ;;                              # [v6]:port
    dnssrv+*) return 0 ;;
    esac
    host=${name%:*}
    for ((t = 0; t < ${KUMO_WAIT:-60}; t++)); do
        getent hosts "$host" >/dev/null 2>&1 && return 0
        [ "$t" = 0 ] && echo "docker-entrypoint: waiting for $host to resolve" >&2
        sleep 1
    done
    echo "docker-entrypoint: $host does not resolve after ${KUMO_WAIT:-60} s; starting anyway" >&2
}

# -m/-p from KUMO_MANAGER ("a", "a,b" or "a b") and KUMO_PARTNER.
manager_flags() {
    local list=${KUMO_MANAGER:-} first second
    [ -n "$list" ] || die "KUMO_MANAGER (the manager's address or DNS name) is required for the $ROLE role"
    list=${list//,/ }
    read -r first second _ <<<"$list"
    args+=(-m "$first")
    second=${second:-${KUMO_PARTNER:-}}
    [ -n "$second" ] && args+=(-p "$second")
    return 0
}

common_flags() {
    truthy "${KUMO_VERBOSE:-}" && args+=(-v)
    args+=(-o "${KUMO_LOG:--}")                   # stdout without colour: docker logs
    [ -n "${KUMO_METRICS:-}" ] && args+=(--metrics "$KUMO_METRICS")
    # The tools (kumoctl, the health check) read the same variable themselves.
    [ -n "${KUMO_CLUSTER_KEY_FILE:-}" ] && args+=(--cluster-key-file "$KUMO_CLUSTER_KEY_FILE")
    if [ -n "${KUMO_ARGS:-}" ]; then
        local extra
        read -r -a extra <<<"$KUMO_ARGS"
        args+=("${extra[@]}")
    fi
    return 0
}

role_command() {
    local listen
    args=()
    case $ROLE in
    manager)
        listen=${KUMO_LISTEN:-}
        if [ -z "$listen" ]; then
            listen=$(container_ip) || die "cannot find this container's address; set KUMO_LISTEN"
        fi
        [ -n "${KUMO_PORT:-}" ] && [[ $listen != *:* ]] && listen=$listen:$KUMO_PORT
        args=(kumo-manager -l "$listen" -c "${KUMO_CONTROL_PORT:-19799}")
        if [ -n "${KUMO_PARTNER:-}" ]; then
            wait_resolves "$KUMO_PARTNER"
            args+=(-p "$KUMO_PARTNER")
        fi
        if truthy "${KUMO_AUTO_REPLACE:-}"; then
            args+=(-a)
            [ -n "${KUMO_REPLACE_DELAY:-}" ] && args+=(-Rs "$KUMO_REPLACE_DELAY")
        fi
        ;;
    server)
        args=(kumo-server)
        manager_flags
        # No -l by default: the server announces the address it reaches its
        # manager from, so scaled replicas need no per-container flags.
        [ -n "${KUMO_LISTEN:-}" ] && args+=(-l "$KUMO_LISTEN")
        local tmp=${KUMO_TMPDIR:-/var/lib/kumofs/tmp}
        mkdir -p "$tmp" 2>/dev/null || true
        args+=(-L "${KUMO_STREAM_PORT:-19900}" -s "${KUMO_STORE:-/var/lib/kumofs/kumo-server.tch}" -f "$tmp")
        ;;
    gateway)
        args=(kumo-gateway)
        manager_flags
        args+=(-t "${KUMO_LISTEN:+$KUMO_LISTEN:}${KUMO_PORT:-11211}")
        [ -n "${KUMO_BINARY_PORT:-}" ] && args+=(-b "${KUMO_LISTEN:+$KUMO_LISTEN:}$KUMO_BINARY_PORT")
        ;;
    "")
        die "set KUMO_ROLE=manager|server|gateway, or give a command (see deploy/docker/README.md)"
        ;;
    *)
        die "KUMO_ROLE must be manager, server or gateway, not '$ROLE'"
        ;;
    esac
    common_flags
}

ROLE=${KUMO_ROLE:-}
case ${1:-} in
manager | server | gateway)
    ROLE=$1
    shift
    ;;
"" | -*) ;;
*)
    exec "$@"
    ;;
esac

if [ "$(id -u)" = 0 ] && ! truthy "${KUMO_ALLOW_ROOT:-}"; then
    die "refusing to run a daemon as root (the image runs as kumofs; set KUMO_ALLOW_ROOT=1 to override)"
fi
role_command
set -- "${args[@]}" "$@"
echo "docker-entrypoint: $*" >&2
exec "$@"

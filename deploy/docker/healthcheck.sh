#!/bin/bash
# kumo-healthcheck — the image's HEALTHCHECK: ask the kumofs daemon running
# in this container whether it answers, over its own protocol.
#
#   manager  kumoctl 127.0.0.1:<-c port> status
#   server   kumostat 127.0.0.1:<-l port> pid, else kumostat <-l> pid
#   gateway  memcached "version" on the -t port (or a connect to the -b port)
#
# The daemon and its ports are read from its command line in /proc, so the
# check works whether it was started from KUMO_* variables or an explicit
# command. Exit 0 healthy, 1 unhealthy (Docker reserves 2).
set -u

pid='' comm=''
for d in /proc/[0-9]*; do
    c=$(cat "$d/comm" 2>/dev/null) || continue
    case $c in kumo-manager | kumo-server | kumo-gateway) pid=${d#/proc/} comm=$c; break ;; esac
done
[ -n "$pid" ] || { echo "no kumofs daemon running"; exit 1; }
mapfile -d '' argv <"/proc/$pid/cmdline" 2>/dev/null || { echo "cannot read /proc/$pid/cmdline"; exit 1; }

# flag_value SHORT LONG: the value given to the daemon for this flag, or "".
flag_value() {
    local i
    for ((i = 1; i < ${#argv[@]}; i++)); do
        case ${argv[$i]} in
        "$1" | "$2") echo "${argv[$((i + 1))]:-}"; return ;;
        "$2"=*) echo "${argv[$i]#*=}"; return ;;
        esac
    done
}

# port_of "[addr:]port" or "addr[:port]" DEFAULT
port_of() {
    local v=$1
    case $v in
    "") echo "$2" ;;
    *:*) echo "${v##*:}" ;;
    *[!0-9]*) echo "$2" ;;                        # a host with no port
    *) echo "$v" ;;
    esac
}

case $comm in
kumo-manager)
    port=$(flag_value -c --control-port)
    # The manager answers (status exits 2 when it answers about a degraded
    # cluster: that is the cluster's health, kumoctl health, not this
    # container's).
    timeout 4 kumoctl "127.0.0.1:${port:-19799}" status >/dev/null
    rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || exit 1
    ;;
kumo-server)
    l=$(flag_value -l --listen)
    port=$(port_of "$l" 19800)
    # A server listens on its -l address when that is this container's,
    # else on every interface: 127.0.0.1 first, then the -l address.
    timeout 4 kumostat "127.0.0.1:$port" pid >/dev/null 2>&1 ||
        { [ -n "$l" ] && timeout 4 kumostat "$l" pid >/dev/null; } || exit 1
    ;;
kumo-gateway)
    t=$(flag_value -t --memproto-text)
    host=127.0.0.1
    if [ -n "$t" ]; then
        port=$(port_of "$t" 11211)
        case $t in *:*) h=${t%:*}; h=${h#[}; h=${h%]}; [ -n "$h" ] && [ "$h" != 0.0.0.0 ] && host=$h ;; esac
        exec 3<>"/dev/tcp/$host/$port" || exit 1
        printf 'version\r\n' >&3
        read -r -t 3 line <&3 || exit 1
        [[ $line == VERSION* ]] || { echo "unexpected answer: $line"; exit 1; }
        exit 0
    fi
    b=$(flag_value -b --memproto-binary)
    port=$(port_of "$b" 11212)
    timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" || exit 1
    ;;
esac
exit 0

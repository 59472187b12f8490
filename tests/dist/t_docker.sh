#!/bin/bash
# t_docker.sh — the image and the compose cluster of deploy/docker, on a real
# Docker engine (TAP; ends with "N passed, N failed").
#
#   1. a Docker engine: $DOCKER_HOST if it answers, else our own dockerd
#      (docker-base.sh); the base image debian:trixie-slim is debootstrapped
#      once (minbase, trimmed as the official one), cached under
#      /var/tmp/kumofs-dist/docker, and `docker import`ed
#   2. docker build of deploy/docker/Dockerfile from this checkout; its size
#      is printed and must stay under $KUMO_IMAGE_MAX_MB (120) MB; the OCI
#      labels (title, description, version = configure.ac's, source,
#      licenses = Apache-2.0, authors); stripped binaries, LICENSE and
#      NOTICE in the image; the image runs as kumofs, declares the volume
#      and a health check, and its entrypoint refuses to guess a role
#   3. docker-compose up: two managers (-a), three servers, a gateway
#      published on a free port of 127.0.0.1 (the compose file's default
#      binding; KUMO_BIND=0.0.0.0 makes it every interface, checked with
#      docker-compose config); the servers are attached with no kumoctl;
#      keys set and read back through the gateway with a memcached client
#   4. --scale server=4: the fourth server is attached by itself, both
#      managers agree, the keys still read back, every container is healthy
#   5. upgrades and restarts: the whole project recreated (new addresses),
#      docker-compose restart, each service recreated alone, both managers
#      together: each time the 4 servers are attached again by the
#      managers, every key reads back, and each node (the identity beside
#      its database) holds the records it held; then scaled down to 3 and
#      back to 4: every key reads back
#   6. docker stop of a server: it exits 0 (SIGTERM reached it through tini)
#      and every key still reads back from the other replicas
#   7. docker-compose down -v: containers, networks, volumes gone; the
#      dockerd we started is stopped
#
# Skips (TAP "1..0 # SKIP") only when no Docker engine can run here; with
# KUMO_TEST_REQUIRE=1 a missing tool (docker.io, docker-compose, debootstrap,
# python3-pymemcache) fails instead of skipping.
#
# Environment: KUMO_DOCKER_CACHE (default /var/tmp/kumofs-dist/docker), DOCKER_HOST,
# KUMO_DOCKER_KEEP=1 (leave the cluster up on failure, for a look),
# KUMO_IMAGE_MAX_MB (default 120).
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMPOSE_FILE=$ROOT/deploy/docker/docker-compose.yml
PY=/usr/bin/python3                      # Debian's: it sees python3-pymemcache
# shellcheck source=tests/dist/docker-base.sh
. "$HERE/docker-base.sh"

T0=$SECONDS
# shellcheck source=tests/dist/tap.sh
. "$HERE/tap.sh"
PROJECT=kumot$$
IMAGE=kumofs:t_docker
KEYS=200
COMPOSE=()
UP=0
WORK=$(mktemp -d /tmp/kumo-dock.XXXXXX) || exit 1

tap_cleanup() { rm -rf "$WORK"; }   # skip_all and missing (tap.sh)

finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$UP" = 1 ]; then
        if [ "$FAILED" -gt 0 ] && [ "${KUMO_DOCKER_KEEP:-}" = 1 ]; then
            note "KUMO_DOCKER_KEEP=1: cluster $PROJECT left running (DOCKER_HOST=$DOCKER_HOST)"
            return
        fi
        if [ "$FAILED" -gt 0 ]; then
            note "logs of the cluster (last 40 lines per service):"
            "${COMPOSE[@]}" logs --no-color --tail=40 2>&1 | sed 's/^/#   /'
        fi
        "${COMPOSE[@]}" down -v --remove-orphans -t 20 >/dev/null 2>&1
        UP=0
    fi
    if [ -n "$KD_OWN_PID" ]; then   # our engine: drop dangling layers
        # Dangling layers of earlier builds of our tag; the tagged image and
        # the build cache stay for the next run.
        "$KD_DOCKER" image prune -f >/dev/null 2>&1
    fi
    kd_engine_stop
    rm -rf "$WORK"
    tap_end t_docker "$rc"
}

# ------------------------------------------------------------------ tools

command -v dockerd >/dev/null || missing "dockerd not installed (apt-get install docker.io)"
if command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    missing "no docker-compose (apt-get install docker-compose)"
fi
command -v debootstrap >/dev/null || missing "debootstrap not installed (apt-get install debootstrap)"
"$PY" -c 'import pymemcache' 2>/dev/null || missing "python3-pymemcache not installed (for $PY)"
[ "$(id -u)" = 0 ] || skip_all "a Docker engine needs root here (run as root)"

trap finish EXIT
trap 'exit 130' INT TERM

kd_engine_start
rc=$?
if [ "$rc" = 2 ]; then
    trap - EXIT
    kd_engine_stop
    skip_all "no Docker engine can run on this machine (see the lines above)"
fi
[ "$rc" = 0 ] || { ok 1 "a Docker engine"; exit 1; }
ok 0 "Docker engine answers at $DOCKER_HOST ($(elapsed))"
DOCKER=$KD_DOCKER
COMPOSE+=(-p "$PROJECT" -f "$COMPOSE_FILE")

# docker run works at all (kernel, cgroups, storage)?
kd_base_image trixie
ok $? "base image debian:trixie-slim present ($(elapsed))"
if ! out=$("$DOCKER" run --rm --network none debian:trixie-slim true 2>&1); then
    note "$out"
    trap - EXIT
    kd_engine_stop
    rm -rf "$WORK"
    skip_all "the Docker engine starts but cannot run a container here: $out"
fi

# ------------------------------------------------------------------ image

# The build stage is tagged too, so its layers (the -dev packages) survive
# the prune at the end and the next run only recompiles.
t=$SECONDS
build_log=$WORK/build.log
timeout 900 "$DOCKER" build --network host -q -f "$ROOT/deploy/docker/Dockerfile" --target build \
    -t "$IMAGE-build" "$ROOT" >"$build_log" 2>&1 &&
    timeout 900 "$DOCKER" build --network host -q -f "$ROOT/deploy/docker/Dockerfile" -t "$IMAGE" "$ROOT" \
        >>"$build_log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || sed 's/^/#   /' "$build_log" | tail -n 40
ok "$rc" "docker build -f deploy/docker/Dockerfile ($((SECONDS - t)) s)"
[ "$rc" -eq 0 ] || exit 1
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
base=$("$DOCKER" image inspect -f '{{.Size}}' debian:trixie-slim)
max=${KUMO_IMAGE_MAX_MB:-120}
[ "$size" -lt $((max * 1000000)) ]
ok $? "image size $((size / 1000000)) MB (base debian:trixie-slim $((base / 1000000)) MB), under $max MB"

# The OCI labels: every one set, the version the one configure.ac gives.
version=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$ROOT/configure.ac")
labels=$("$DOCKER" image inspect -f '{{json .Config.Labels}}' "$IMAGE")
"$PY" - "$labels" "$version" <<'EOF'
import json, sys
labels, version = json.loads(sys.argv[1]) or {}, sys.argv[2]
want = {
    "org.opencontainers.image.title": "kumofs",
    "org.opencontainers.image.version": version,
    "org.opencontainers.image.source": "https://github.com/kumofs/kumofs",
    "org.opencontainers.image.licenses": "Apache-2.0",
    "org.opencontainers.image.authors": "kumofs maintainers <maintainers@kumofs.org>",
}
bad = ["%s=%r (want %r)" % (k, labels.get(k), v) for k, v in want.items() if labels.get(k) != v]
if len(labels.get("org.opencontainers.image.description", "")) < 20:
    bad.append("org.opencontainers.image.description is missing")
for b in bad:
    print("# " + b)
sys.exit(1 if bad else 0)
EOF
ok $? "OCI labels: title, description, version $version, source, licenses Apache-2.0, authors"

# make install-strip: no symbol table in the binaries; the licence and the
# credits travel with the image.
cid=$("$DOCKER" create "$IMAGE") && "$DOCKER" cp "$cid:/usr/bin/kumo-server" "$WORK/kumo-server" >/dev/null &&
    "$DOCKER" rm "$cid" >/dev/null
# (readelf: binutils, which build-essential brings)
sections=$(readelf -S -W "$WORK/kumo-server" 2>&1)
[[ $sections == *" .text "* && $sections != *" .symtab "* && $sections != *" .debug_"* ]]
ok $? "the binaries are stripped (kumo-server: no .symtab, no .debug_* section)"
out=$("$DOCKER" run --rm --network none "$IMAGE" sh -c 'head -n 3 /usr/share/doc/kumofs/LICENSE; cat /usr/share/doc/kumofs/NOTICE' 2>&1)
[[ $out == *"Apache License"* && $out == *"Copyright (C) 2009 FURUHASHI Sadayuki"* ]]
ok $? "LICENSE and NOTICE (kumofs 0.4, FURUHASHI Sadayuki) in /usr/share/doc/kumofs"

uid=$("$DOCKER" run --rm --network none "$IMAGE" id -un 2>&1)
[ "$uid" = kumofs ]
ok $? "the image runs as kumofs (got '$uid')"

cfg=$("$DOCKER" image inspect -f '{{json .Config.Volumes}} {{json .Config.Healthcheck.Test}} {{json .Config.Entrypoint}}' "$IMAGE")
[[ $cfg == *'"/var/lib/kumofs"'* && $cfg == *kumo-healthcheck* && $cfg == *docker-entrypoint.sh* ]]
ok $? "VOLUME /var/lib/kumofs, HEALTHCHECK and entrypoint declared ($cfg)"

out=$("$DOCKER" run --rm --network none "$IMAGE" 2>&1)
rc=$?
[ "$rc" = 64 ] && [[ $out == *KUMO_ROLE* ]]
ok $? "no KUMO_ROLE and no command: exit 64 with a hint (rc $rc)"

out=$("$DOCKER" run --rm --network none "$IMAGE" kumo-server --help 2>&1)
[[ $out == *--stream-port* ]]
ok $? "an explicit command runs as given (kumo-server --help)"

# ------------------------------------------------------------------ cluster

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
GW_PORT=$(free_port)
unset KUMO_BIND
export KUMO_IMAGE=$IMAGE KUMO_GATEWAY_PORT=$GW_PORT KUMO_REPLACE_DELAY=2 KUMO_VERBOSE=1

# KUMO_BIND opens the published port wider; without it, 127.0.0.1 only.
cfg_local=$("${COMPOSE[@]}" config 2>&1 | grep -A3 '^ *ports:' | tr -s ' \n' ' ')
cfg_open=$(KUMO_BIND=0.0.0.0 "${COMPOSE[@]}" config 2>&1 | grep -A3 '^ *ports:' | tr -s ' \n' ' ')
[[ $cfg_local == *"127.0.0.1:$GW_PORT:11211"* && $cfg_local != *0.0.0.0* && $cfg_open == *"0.0.0.0:$GW_PORT:11211"* ]]
ok $? "compose publishes the gateway on 127.0.0.1 by default, KUMO_BIND=0.0.0.0 on every interface ($cfg_local/$cfg_open)"

status_of() { # manager-service: kumoctl status inside it
    "${COMPOSE[@]}" exec -T "$1" kumoctl 127.0.0.1 status 2>/dev/null
}
active_count() { # status text on stdin
    awk '/^[^ ]/ { sec = $0; next } sec == "attached node:" && /\(active\)/ { n++ } END { print n + 0 }'
}
# Wait until manager1 (and manager2) list exactly N active attached servers
# and nothing under "not attached node:".
wait_attached() {
    local want=$1 secs=$2 t s1 s2
    for ((t = 0; t < secs; t += 2)); do
        s1=$(status_of manager1) && s2=$(status_of manager2) &&
            [ "$(active_count <<<"$s1")" = "$want" ] && [ "$(active_count <<<"$s2")" = "$want" ] &&
            ! grep -q '^  ' <<<"$(sed -n '/^not attached node:/,/^[^ ]/p' <<<"$s1" | sed 1d)" &&
            return 0
        sleep 2
    done
    note "manager1 status after ${secs}s:"
    status_of manager1 | sed 's/^/#   /'
    return 1
}

memc() { # setall|getall|getall-live: through the published gateway port
    "$PY" - "$1" "$GW_PORT" "$KEYS" <<'EOF'
import sys, time
from pymemcache.client.base import Client
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = Client(("127.0.0.1", port), connect_timeout=5, timeout=10, default_noreply=False)
bad = 0
for i in range(n):
    k, v = "t_docker:%d" % i, ("value-%d-" % i).encode() * 8
    for attempt in range(20):     # a server just stopped: the gateway may retry
        try:
            if mode == "setall":
                ok = c.set(k, v)
            else:
                ok = c.get(k) == v
            break
        except Exception as e:
            ok = False
            err = e
            time.sleep(0.5)
            c.close()
    if not ok:
        bad += 1
        if bad <= 3:
            print("# %s %s failed" % (mode, k))
print("# %s: %d of %d keys bad" % (mode, bad, n))
sys.exit(1 if bad else 0)
EOF
}

gateway_answers() {
    local t line
    for ((t = 0; t < $1; t++)); do
        if exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT"; then
            printf 'version\r\n' >&3
            line=
            read -r -t 2 line <&3
            exec 3<&- 3>&-
            [[ $line == VERSION* ]] && return 0
        fi 2>/dev/null
        sleep 1
    done
    return 1
}

t=$SECONDS
UP=1
"${COMPOSE[@]}" up -d --no-build --scale server=3 >"$WORK/up.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || sed 's/^/#   /' "$WORK/up.log"
ok "$rc" "docker-compose up -d --scale server=3 ($((SECONDS - t)) s)"

t=$SECONDS
wait_attached 3 90
ok $? "three servers attached by the managers (-a), no kumoctl attach ($((SECONDS - t)) s)"

gateway_answers 60
ok $? "gateway answers 'version' on the published port 127.0.0.1:$GW_PORT"
binding=$("$DOCKER" inspect -f '{{json .HostConfig.PortBindings}}' "$("${COMPOSE[@]}" ps -q gateway)")
[[ $binding == *'"HostIp":"127.0.0.1","HostPort":"'$GW_PORT'"'* ]]
ok $? "the gateway container is published on 127.0.0.1 only ($binding)"

memc setall
ok $? "set $KEYS keys through the gateway (pymemcache)"
memc getall
ok $? "get $KEYS keys back"

t=$SECONDS
"${COMPOSE[@]}" up -d --no-build --no-recreate --scale server=4 >"$WORK/scale.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || sed 's/^/#   /' "$WORK/scale.log"
ok "$rc" "docker-compose up -d --scale server=4"
wait_attached 4 90
ok $? "the fourth server is attached by itself; manager1 and manager2 agree ($((SECONDS - t)) s)"
note "manager1: $(status_of manager1 | tr '\n' ' ' | sed 's/  */ /g')"

memc getall
ok $? "the $KEYS keys read back after the scale-out"

# Every container healthy (the image's HEALTHCHECK, real checks per role).
t=$SECONDS
healthy=0
for ((i = 0; i < 60; i++)); do
    mapfile -t ids < <("${COMPOSE[@]}" ps -q)
    states=$("$DOCKER" inspect -f '{{.Name}} {{.State.Health.Status}}' "${ids[@]}" 2>/dev/null)
    if [ "$(grep -c ' healthy$' <<<"$states")" = 7 ]; then healthy=1; break; fi
    sleep 2
done
[ "$healthy" = 1 ]
ok $? "all 7 containers report healthy ($((SECONDS - t)) s)"
[ "$healthy" = 1 ] || note "$(tr '\n' ' ' <<<"$states")"

# Upgrades and restarts as users do them. A server's database is placed by
# the identity written beside it (<db>.node), so whatever addresses the
# containers come back with, each node keeps its keys: after each operation
# every key reads back and each node holds the records it held.
nodes_items() { # "<node identity> <records>" per server container, sorted
    local id
    for id in $("${COMPOSE[@]}" ps -q server); do
        "$DOCKER" exec "$id" sh -c 'printf "%s %s\n" "$(cat /var/lib/kumofs/kumo-server.tch.node)" \
            "$(kumostat 127.0.0.1 items | awk "{print \$NF}")"' 2>&1
    done | sort
}
server_addrs() { # "<first 8 digits of each node's id>@<its container's address>", sorted
    local id
    for id in $("${COMPOSE[@]}" ps -q server); do
        printf '%s@%s\n' "$("$DOCKER" exec "$id" awk '{print substr($4, 1, 8)}' /var/lib/kumofs/kumo-server.tch.node)" \
            "$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id")"
    done 2>/dev/null | sort | tr '\n' ' '
}
upgrade_step() { # name, then the compose arguments
    local name=$1 t rc now was
    shift
    was=$(server_addrs)
    t=$SECONDS
    "${COMPOSE[@]}" "$@" >"$WORK/step.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || sed 's/^/#   /' "$WORK/step.log"
    wait_attached 4 120 && gateway_answers 60 && memc getall
    rc=$((rc | $?))
    now=$(nodes_items)
    [ "$rc" -eq 0 ] && [ "$now" = "$BEFORE" ]
    rc=$?
    ok "$rc" "$name: 4 servers attached, all $KEYS keys read back, no record moved ($((SECONDS - t)) s)"
    [ "$rc" -eq 0 ] || note "nodes before: $(tr '\n' ' ' <<<"$BEFORE")/ after: $(tr '\n' ' ' <<<"$now")"
    now=$(server_addrs)
    [ "$now" = "$was" ] && note "nodes at: $now (no address changed)" || note "nodes at: $was-> $now"
}
BEFORE=$(nodes_items)
grep -q '^kumofs-node 1 id [0-9a-f]\{32\} [0-9][0-9]*$' <<<"$BEFORE" && [ "$(grep -c . <<<"$BEFORE")" = 4 ]
ok $? "each server's volume holds its identity, a random id beside its database ($(tr '\n' ' ' <<<"$BEFORE"))"
note "nodes at: $(server_addrs)"
upgrade_step "docker-compose up -d --force-recreate (the whole project, as an image upgrade does)" \
    up -d --no-build --force-recreate --scale server=4
upgrade_step "docker-compose restart" restart
upgrade_step "manager1 recreated alone" up -d --no-build --no-deps --force-recreate manager1
upgrade_step "manager2 recreated alone" up -d --no-build --no-deps --force-recreate manager2
upgrade_step "the servers recreated (managers up)" up -d --no-build --no-deps --force-recreate --scale server=4 server
upgrade_step "the gateway recreated" up -d --no-build --no-deps --force-recreate gateway
upgrade_step "both managers recreated together (servers up: the layout is learned from them)" \
    up -d --no-build --no-deps --force-recreate manager1 manager2

# Scaling down and back up changes the membership: the removed server is
# lost, then detached by auto-replace; the new one (a new volume, a new id)
# is attached. Its keys move, none is lost.
t=$SECONDS
"${COMPOSE[@]}" up -d --no-build --scale server=3 >"$WORK/step.log" 2>&1 &&
    wait_attached 3 120 && memc getall
ok $? "scaled down to 3 servers: the fourth is detached by itself, every key reads back ($((SECONDS - t)) s)"
t=$SECONDS
"${COMPOSE[@]}" up -d --no-build --scale server=4 >"$WORK/step.log" 2>&1 &&
    wait_attached 4 120 && memc getall
ok $? "scaled back up to 4: the new server is attached, every key reads back ($((SECONDS - t)) s)"

# Graceful stop: tini hands SIGTERM to kumo-server, which drains and exits 0.
victim=$("${COMPOSE[@]}" ps -q server | tail -n 1)
"$DOCKER" stop -t 30 "$victim" >/dev/null
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$victim")
[ "$code" = 0 ]
ok $? "docker stop of a server: it drained and exited 0 (exit code $code)"
memc getall
ok $? "every key still reads back with that server stopped"

# docker-compose 1.29 sometimes fails to remove the network while the
# engine is still tearing down a container's endpoint ("has active
# endpoints"); `down` is idempotent, and a second one finishes the job, as
# it would for a user. The first attempt's output is shown either way.
leftovers() {
    left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    nets=$("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
    [ "$left" = 0 ] && [ "$nets" = 0 ]
}
t=$SECONDS
"${COMPOSE[@]}" down -v --remove-orphans -t 20 >"$WORK/down.log" 2>&1
rc=$?
UP=0
leftovers # counted whatever rc is: the note below names them
clean=$?
if [ "$rc" != 0 ] || [ "$clean" != 0 ]; then
    note "the first docker-compose down -v: exit $rc, $left containers and $nets networks left:"
    sed 's/^/#   /' "$WORK/down.log"
    "${COMPOSE[@]}" down -v --remove-orphans -t 20 >"$WORK/down.log" 2>&1
    rc=$?
fi
leftovers && [ "$rc" = 0 ]
ok $? "docker-compose down -v: no container or network left ($((SECONDS - t)) s; $left containers, $nets networks)"
[ "$rc" = 0 ] || sed 's/^/#   /' "$WORK/down.log"

#!/bin/bash
# t_ansible.sh — deploy/ansible: static checks, then the role applied to a
# real target (TAP; ends with "N passed, N failed").
#
#   1. ansible-playbook --syntax-check, ansible-lint (production profile, the
#      config in deploy/ansible/.ansible-lint), yamllint
#   2. the role in --check --diff mode against localhost (templates render,
#      the manager list and conditions evaluate; nothing is written)
#   3. a target: a container running systemd as PID 1 (no network: the
#      cluster lives on its loopback) on a Docker engine (docker-base.sh).
#      The role installs the kumofs .debs (built from this checkout inside
#      the image's build stage, or taken from KUMO_DEBS_DIR), writes the
#      /etc/default files, starts kumo-manager, kumo-server@a and
#      kumo-gateway under systemd, and attaches the server; then a memcached
#      set/get through the gateway, kumoctl status, a second run that
#      changes nothing, a third that changes a flag and restarts the
#      daemons through the handlers, and a fourth that sets a cluster key
#
# Part 3 is skipped (not failed) when no Docker engine can run here. With
# KUMO_TEST_REQUIRE=1 a missing ansible or ansible-lint fails instead of
# skipping. Without debian/ in the checkout the role is applied with
# kumofs_install=false to binaries and units copied into the target.
#
# Environment: KUMO_DEBS_DIR (kumofs-server_*.deb and kumofs-tools_*.deb to
# install instead of building them), KUMO_DOCKER_CACHE, DOCKER_HOST.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ANS=$ROOT/deploy/ansible
# shellcheck source=tests/dist/docker-base.sh
. "$HERE/docker-base.sh"

T0=$SECONDS
# shellcheck source=tests/dist/tap.sh
. "$HERE/tap.sh"
TARGET=kumot-ans$$
BUILD_IMAGE=kumofs:t_docker-build         # the Dockerfile's build stage (t_docker.sh tags it too)
TARGET_IMAGE=kumofs:t_ansible-target
WORK=$(mktemp -d /tmp/kumo-ans.XXXXXX)
STARTED=0
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 NO_COLOR=1 PY_COLORS=0
export ANSIBLE_LOCAL_TEMP=$WORK/tmp ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_PIPELINING=1

show() { sed 's/^/#   /' "$@"; }
tap_cleanup() { rm -rf "$WORK"; }   # skip_all and missing (tap.sh)

finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$STARTED" = 1 ]; then
        "$KD_DOCKER" rm -f -v "$TARGET" >/dev/null 2>&1
        STARTED=0
    fi
    if [ -n "$KD_OWN_PID" ]; then   # our engine: drop dangling layers
        "$KD_DOCKER" image prune -f >/dev/null 2>&1
    fi
    kd_engine_stop
    rm -rf "$WORK"
    tap_end t_ansible "$rc"
}

command -v ansible-playbook >/dev/null || missing "ansible not installed (apt-get install ansible)"
command -v ansible-lint >/dev/null || missing "ansible-lint not installed (apt-get install ansible-lint)"
trap finish EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/tmp"

# ------------------------------------------------------------------ static

cd "$ANS" || exit 1
ansible-playbook -i inventory/hosts.ini site.yml --syntax-check >"$WORK/syntax.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/syntax.log"
ok "$rc" "ansible-playbook --syntax-check site.yml"

ansible-lint --version 2>/dev/null | head -n 1 | sed 's/^/# /'
ansible-lint >"$WORK/lint.log" 2>&1
rc=$?
[ "$rc" = 0 ] || show "$WORK/lint.log"
ok "$rc" "ansible-lint: $(grep -Eo '(Passed|Failed).*' "$WORK/lint.log" | tail -n 1)"

if command -v yamllint >/dev/null; then
    yamllint -s . >"$WORK/yamllint.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || show "$WORK/yamllint.log"
    ok "$rc" "yamllint -s deploy/ansible"
else
    skip "yamllint not installed"
fi

# The role in check mode on localhost: every template renders and every
# condition evaluates; --check writes nothing.
cat >"$WORK/local.ini" <<'EOF'
[kumo_managers]
localhost
[kumo_servers]
localhost
[kumo_gateways]
localhost
[all:vars]
ansible_connection=local
ansible_python_interpreter=/usr/bin/python3
kumofs_address=127.0.0.1
EOF
ansible-playbook -i "$WORK/local.ini" site.yml --check --diff \
    -e kumofs_install=false -e kumofs_service_enabled=false >"$WORK/check.log" 2>&1
rc=$?
[ "$rc" = 0 ] && grep -q 'KUMO_MANAGER_OPTS="-l 127.0.0.1:19700 -c 19799 -a -Rs 4"' "$WORK/check.log" &&
    grep -q 'KUMO_SERVER_OPTS="-l 127.0.0.1:19800 -L 19900"' "$WORK/check.log" &&
    grep -q 'KUMO_MANAGERS="-m 127.0.0.1:19700"' "$WORK/check.log" &&
    grep -q 'KUMO_GATEWAY_OPTS="-t 11211"' "$WORK/check.log"
rc2=$?
[ "$rc2" = 0 ] || show "$WORK/check.log"
ok "$rc2" "role in --check --diff mode on localhost renders the four /etc/default files"

# ------------------------------------------------------------------ target

target_part() {
    local rc mode t
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        skip "role on a systemd container: needs root, docker.io and debootstrap"
        return
    fi
    kd_engine_start
    rc=$?
    if [ "$rc" = 2 ]; then skip "role on a systemd container: no Docker engine can run here"; return; fi
    ok "$rc" "Docker engine answers at ${DOCKER_HOST:-?} ($(elapsed))"
    [ "$rc" = 0 ] || return
    local D=$KD_DOCKER
    kd_base_image
    ok $? "base image debian:bookworm-slim present"

    # What the role installs: the .debs (KUMO_DEBS_DIR, or built here), or
    # with no debian/ the build stage's binaries and deploy/systemd's units.
    t=$SECONDS
    local debs=()
    if [ -n "${KUMO_DEBS_DIR:-}" ]; then
        mode=debs
        debs=("$KUMO_DEBS_DIR"/kumofs-server_*.deb "$KUMO_DEBS_DIR"/kumofs-tools_*.deb)
        [ -f "${debs[0]}" ] && [ -f "${debs[1]}" ]
        ok $? "the .debs in KUMO_DEBS_DIR: ${debs[*]##*/}"
    else
        timeout 900 "$D" build --network host -q -f "$ROOT/deploy/docker/Dockerfile" --target build \
            -t "$BUILD_IMAGE" "$ROOT" >"$WORK/build.log" 2>&1
        rc=$?
        [ "$rc" = 0 ] || tail -n 40 "$WORK/build.log" | show
        ok "$rc" "the Dockerfile's build stage ($((SECONDS - t)) s)"
        [ "$rc" = 0 ] || return
        if [ -f "$ROOT/debian/control" ]; then
            mode=debs
            t=$SECONDS
            cat >"$WORK/Dockerfile.debs" <<EOF
FROM $BUILD_IMAGE
COPY debian/control /pkg/deps/debian/control
RUN apt-get update && apt-get build-dep -y --no-install-recommends /pkg/deps \\
 && rm -rf /var/lib/apt/lists/*
COPY . /pkg/kumofs
RUN cd /pkg/kumofs && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b >/pkg/build.log 2>&1 \\
 || { tail -n 60 /pkg/build.log; exit 1; }
EOF
            timeout 900 "$D" build --network host -q -f "$WORK/Dockerfile.debs" -t kumofs:t_ansible-debs "$ROOT" \
                >"$WORK/debs.log" 2>&1 &&
                mkdir -p "$WORK/debs" &&
                "$D" run --rm --network none -v "$WORK/debs:/out" kumofs:t_ansible-debs \
                    sh -c 'cp /pkg/kumofs-server_*.deb /pkg/kumofs-tools_*.deb /out/' >>"$WORK/debs.log" 2>&1
            rc=$?
            [ "$rc" = 0 ] || tail -n 60 "$WORK/debs.log" | show
            debs=("$WORK"/debs/kumofs-server_*.deb "$WORK"/debs/kumofs-tools_*.deb)
            ok "$rc" "dpkg-buildpackage -b in the build stage: ${debs[*]##*/} ($((SECONDS - t)) s)"
            [ "$rc" = 0 ] || return
        else
            mode=files
            note "no debian/ in this checkout: binaries and units are copied in, kumofs_install=false"
        fi
    fi

    # The target: systemd as PID 1, python3 for ansible, the libraries the
    # packages depend on (the container has no network, so apt can only
    # install the local .debs).
    mkdir -p "$WORK/target"
    cat >"$WORK/target/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus python3 adduser \
        libevent-2.1-7 libevent-pthreads-2.1-7 libmsgpackc2 libtokyocabinet9 libssl3 zlib1g libsystemd0 \
 && rm -rf /var/lib/apt/lists/* \
 && systemctl set-default multi-user.target \
 && systemctl mask systemd-logind.service getty.target console-getty.service
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
EOF
    if [ "$mode" = files ]; then
        mkdir -p "$WORK/target/units"
        cp "$ROOT"/deploy/systemd/*.service "$ROOT"/deploy/systemd/*.target "$WORK/target/units/"
        cat >>"$WORK/target/Dockerfile" <<EOF
COPY --from=$BUILD_IMAGE /out/usr/bin/ /usr/bin/
COPY units/ /lib/systemd/system/
RUN adduser --system --group --home /var/lib/kumofs --no-create-home kumofs
EOF
    fi
    t=$SECONDS
    timeout 600 "$D" build --network host -q -t "$TARGET_IMAGE" "$WORK/target" >"$WORK/target.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 30 "$WORK/target.log" | show
    ok "$rc" "target image with systemd and python3 ($((SECONDS - t)) s)"
    [ "$rc" = 0 ] || return

    # systemd needs mount namespaces for the units' sandboxing: every
    # capability root has here (CAP_SYS_RESOURCE is not among them, so no
    # --privileged), its own cgroup namespace, no network.
    STARTED=1
    "$D" run -d --name "$TARGET" --hostname kumo-target --network none --cgroupns=private \
        --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        --tmpfs /run --tmpfs /run/lock "$TARGET_IMAGE" >/dev/null
    local state=
    for ((t = 0; t < 60; t++)); do
        state=$("$D" exec "$TARGET" systemctl is-system-running 2>/dev/null)
        case $state in running | degraded) break ;; esac
        sleep 1
    done
    [ "$state" = running ] || [ "$state" = degraded ]
    ok $? "systemd runs in the target container ($state)"
    [ "$state" = degraded ] && "$D" exec "$TARGET" systemctl --failed --no-pager | show

    cat >"$WORK/target.ini" <<EOF
[kumo_managers]
kumo-target
[kumo_servers]
kumo-target
[kumo_gateways]
kumo-target
[all:vars]
ansible_connection=community.docker.docker
ansible_host=$TARGET
ansible_user=root
ansible_python_interpreter=/usr/bin/python3
kumofs_address=127.0.0.1
EOF
    local extra
    if [ "$mode" = debs ]; then
        mkdir -p "$WORK/vars"
        "${PY:-/usr/bin/python3}" -c 'import json, sys; print(json.dumps({"kumofs_deb_files": sys.argv[1:]}))' \
            "${debs[@]}" >"$WORK/vars/debs.json"
        extra=(-e "@$WORK/vars/debs.json")
    else
        extra=(-e kumofs_install=false)
    fi
    # The docker connection plugin runs `docker`: the CLI that matches the engine.
    local path=$PATH
    [ "$D" = /usr/bin/docker ] && path=/usr/bin:$PATH

    t=$SECONDS
    PATH=$path ansible-playbook -i "$WORK/target.ini" site.yml "${extra[@]}" >"$WORK/run1.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run1.log" | show
    ok "$rc" "ansible-playbook site.yml on the target ($mode): installed, configured, started, attached ($((SECONDS - t)) s)"
    grep -A3 '^PLAY RECAP' "$WORK/run1.log" | show

    local active
    active=$("$D" exec "$TARGET" systemctl is-active kumo-manager.service kumo-server@a.service kumo-gateway.service 2>&1 | tr '\n' ' ')
    [ "$active" = "active active active " ]
    ok $? "kumo-manager, kumo-server@a, kumo-gateway active under systemd ($active)"

    local st
    st=$("$D" exec "$TARGET" kumoctl 127.0.0.1 status 2>&1)
    grep -q '^  127.0.0.1:19800 (active)' <<<"$st"
    rc=$?
    ok "$rc" "kumoctl status: 127.0.0.1:19800 attached and active"
    [ "$rc" = 0 ] || show <<<"$st"

    local reply
    reply=$("$D" exec "$TARGET" bash -c 'exec 3<>/dev/tcp/127.0.0.1/11211 &&
        printf "set t_ansible 0 0 5\r\nhello\r\nget t_ansible\r\nquit\r\n" >&3 && timeout 3 cat <&3' 2>&1 | tr -d '\r')
    [ "$(printf '%s\n' "$reply" | head -n 3 | tr '\n' ' ')" = "STORED VALUE t_ansible 0 5 hello " ]
    ok $? "memcached set/get through the deployed gateway ($(tr '\n' ' ' <<<"$reply"))"

    t=$SECONDS
    PATH=$path ansible-playbook -i "$WORK/target.ini" site.yml "${extra[@]}" >"$WORK/run2.log" 2>&1
    rc=$?
    grep -A3 '^PLAY RECAP' "$WORK/run2.log" | show
    [ "$rc" = 0 ] && grep -q 'kumo-target *: .*changed=0 .*failed=0' "$WORK/run2.log" &&
        ! grep -q 'changed=[1-9]' "$WORK/run2.log"
    ok $? "second run changes nothing ($((SECONDS - t)) s)"

    # A changed flag: the handlers restart the daemons (serial: 1), the
    # server comes back attached, and the gateway serves the old key.
    local pid_before pid_after
    pid_before=$("$D" exec "$TARGET" systemctl show -p MainPID --value kumo-server@a.service)
    t=$SECONDS
    PATH=$path ansible-playbook -i "$WORK/target.ini" site.yml "${extra[@]}" -e kumofs_extra_opts=-v \
        >"$WORK/run3.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run3.log" | show
    pid_after=$("$D" exec "$TARGET" systemctl show -p MainPID --value kumo-server@a.service)
    local cmd
    cmd=$("$D" exec "$TARGET" bash -c "tr '\0' ' ' </proc/$pid_after/cmdline" 2>/dev/null)
    [ "$rc" = 0 ] && [ "$pid_before" != "$pid_after" ] && [[ $cmd == *" -v"* ]]
    ok $? "a changed flag restarts the server through the handler (pid $pid_before -> $pid_after: $cmd) ($((SECONDS - t)) s)"
    reply=$("$D" exec "$TARGET" bash -c 'exec 3<>/dev/tcp/127.0.0.1/11211 &&
        printf "get t_ansible\r\nquit\r\n" >&3 && timeout 3 cat <&3' 2>&1 | tr -d '\r')
    [[ $reply == *"VALUE t_ansible 0 5"*hello* ]]
    ok $? "the key reads back after the rolling restart"

    # A cluster key: written root:kumofs 0640, every daemon restarts with
    # it, the attach step's kumoctl uses it, and a kumoctl without it is
    # refused.
    local secret mode_owner
    secret=$(head -c 24 /dev/urandom | base64)
    t=$SECONDS
    PATH=$path ansible-playbook -i "$WORK/target.ini" site.yml "${extra[@]}" -e kumofs_extra_opts=-v \
        -e "kumofs_cluster_key=$secret" >"$WORK/run4.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run4.log" | show
    mode_owner=$("$D" exec "$TARGET" stat -c '%a %U:%G' /etc/kumofs/cluster.key 2>&1)
    pid_after=$("$D" exec "$TARGET" systemctl show -p MainPID --value kumo-server@a.service)
    cmd=$("$D" exec "$TARGET" bash -c "tr '\0' ' ' </proc/$pid_after/cmdline" 2>/dev/null)
    [ "$rc" = 0 ] && [ "$mode_owner" = "640 root:kumofs" ] && [[ $cmd == *"--cluster-key-file /etc/kumofs/cluster.key"* ]]
    ok $? "kumofs_cluster_key: the key file is $mode_owner, the server runs with it ($cmd) ($((SECONDS - t)) s)"
    st=$("$D" exec -e KUMO_CLUSTER_KEY_FILE=/etc/kumofs/cluster.key "$TARGET" kumoctl 127.0.0.1 status 2>&1)
    grep -q '^  127.0.0.1:19800 (active)' <<<"$st"
    rc=$?
    ok "$rc" "kumoctl with the key: 127.0.0.1:19800 attached and active again"
    [ "$rc" = 0 ] || show <<<"$st"
    st=$("$D" exec "$TARGET" kumoctl 127.0.0.1 status 2>&1)
    [[ $st == *"requires the cluster key"* ]]
    ok $? "kumoctl without the key is refused ($st)"
    reply=$("$D" exec "$TARGET" bash -c 'exec 3<>/dev/tcp/127.0.0.1/11211 &&
        printf "get t_ansible\r\nquit\r\n" >&3 && timeout 3 cat <&3' 2>&1 | tr -d '\r')
    [[ $reply == *"VALUE t_ansible 0 5"*hello* ]]
    ok $? "the key reads back through the keyed cluster"
}

target_part

#!/bin/bash
# t_ansible.sh — deploy/ansible: static checks, then the role applied to
# real targets, Debian 12 and Debian 13 (TAP; ends with "N passed, N failed").
#
#   1. ansible-playbook --syntax-check, ansible-lint (production profile, the
#      config in deploy/ansible/.ansible-lint), yamllint
#   2. the role in --check --diff mode against localhost (templates render,
#      the manager list and conditions evaluate, the gateway takes this
#      host's private address; nothing is written)
#   3. for each supported release (bookworm, trixie): a target container
#      running systemd as PID 1, on a network of its own with no way out, on
#      a Docker engine (docker-base.sh; base images debian:RELEASE-slim).
#      The role installs the kumofs .debs of that release (built from this
#      checkout in a debian:RELEASE-slim container, or taken from
#      KUMO_DEBS_DIR/RELEASE), writes the /etc/default files, starts
#      kumo-manager, kumo-server@a and kumo-gateway under systemd, and
#      attaches the server; the gateway listens on the container's private
#      address (ansible_default_ipv4), not on 127.0.0.1, and serves a
#      memcached set/get there; kumoctl status; a second run changes
#      nothing. On trixie, the current stable release, a third run changes
#      a flag and restarts the daemons through the handlers, and a fourth
#      sets a cluster key.
#
# Part 3 is skipped (not failed) when no Docker engine can run here. With
# KUMO_TEST_REQUIRE=1 a missing ansible or ansible-lint fails instead of
# skipping. About 2 minutes per release when the .debs are given, 2 more
# each to build them (the build dependencies' layer is cached).
#
# Environment: KUMO_DEBS_DIR (a directory with bookworm/ and trixie/, each
# holding the kumofs-server_*.deb and kumofs-tools_*.deb of that release, as
# quickstart test leaves them; a release missing there is built),
# KUMO_ANSIBLE_RELEASES (default "bookworm trixie"), KUMO_DOCKER_CACHE,
# DOCKER_HOST.
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
RELEASES=${KUMO_ANSIBLE_RELEASES:-bookworm trixie}
PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/kumo-ans.XXXXXX)
CONTAINERS=()
NETWORKS=()
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 NO_COLOR=1 PY_COLORS=0
export ANSIBLE_LOCAL_TEMP=$WORK/tmp ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_PIPELINING=1

show() { sed 's/^/#   /' "$@"; }
tap_cleanup() { rm -rf "$WORK"; }   # skip_all and missing (tap.sh)

drop_targets() {
    local c
    for c in "${CONTAINERS[@]}"; do "$KD_DOCKER" rm -f -v "$c" >/dev/null 2>&1; done
    for c in "${NETWORKS[@]}"; do "$KD_DOCKER" network rm "$c" >/dev/null 2>&1; done
    CONTAINERS=()
    NETWORKS=()
}

finish() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "${KD_DOCKER:-}" ] && drop_targets
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
# The gateway's default address: this host's private one, the source
# address of its default route (what Ansible's ansible_default_ipv4 is).
private=$(ip -4 route get 8.8.8.8 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ "$rc" = 0 ] && grep -q 'KUMO_MANAGER_OPTS="-l 127.0.0.1:19700 -c 19799 -a -Rs 4"' "$WORK/check.log" &&
    grep -q 'KUMO_SERVER_OPTS="-l 127.0.0.1:19800 -L 19900"' "$WORK/check.log" &&
    grep -q 'KUMO_MANAGERS="-m 127.0.0.1:19700"' "$WORK/check.log" &&
    grep -q "KUMO_GATEWAY_OPTS=\"-t ${private:-127.0.0.1}:11211\"" "$WORK/check.log"
rc2=$?
[ "$rc2" = 0 ] || show "$WORK/check.log"
ok "$rc2" "role in --check --diff mode on localhost renders the four /etc/default files (gateway on ${private:-127.0.0.1}:11211)"

# ------------------------------------------------------------------ targets

# The .debs of a release: KUMO_DEBS_DIR/RELEASE, else built from this
# checkout in a debian:RELEASE-slim container (apt-get build-dep of
# debian/control, then dpkg-buildpackage -b without the tests, which the
# suite runs elsewhere). Sets DEBS.
debs_for() { # release
    local rel=$1 t=$SECONDS rc
    DEBS=()
    if [ -n "${KUMO_DEBS_DIR:-}" ] && ls "$KUMO_DEBS_DIR/$rel"/kumofs-server_*.deb >/dev/null 2>&1; then
        DEBS=("$KUMO_DEBS_DIR/$rel"/kumofs-server_*.deb "$KUMO_DEBS_DIR/$rel"/kumofs-tools_*.deb)
        [ -f "${DEBS[1]}" ]
        ok $? "$rel: the .debs in KUMO_DEBS_DIR/$rel: ${DEBS[*]##*/}"
        return
    fi
    mkdir -p "$WORK/debs-$rel"
    cat >"$WORK/Dockerfile.debs-$rel" <<EOF
FROM debian:$rel-slim
ARG DEBIAN_FRONTEND=noninteractive
COPY debian/control /pkg/deps/debian/control
RUN apt-get update && apt-get build-dep -y --no-install-recommends /pkg/deps \\
 && rm -rf /var/lib/apt/lists/*
COPY . /pkg/kumofs
RUN cd /pkg/kumofs && DEB_BUILD_OPTIONS="nocheck parallel=\$(nproc)" dpkg-buildpackage -us -uc -b >/pkg/build.log 2>&1 \\
 || { tail -n 60 /pkg/build.log; exit 1; }
EOF
    timeout 900 "$D" build --network host -q -f "$WORK/Dockerfile.debs-$rel" -t "kumofs:t_ansible-debs-$rel" "$ROOT" \
        >"$WORK/debs-$rel.log" 2>&1 &&
        "$D" run --rm --network none -v "$WORK/debs-$rel:/out" "kumofs:t_ansible-debs-$rel" \
            sh -c 'cp /pkg/kumofs-server_*.deb /pkg/kumofs-tools_*.deb /out/' >>"$WORK/debs-$rel.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/debs-$rel.log" | show
    DEBS=("$WORK/debs-$rel"/kumofs-server_*.deb "$WORK/debs-$rel"/kumofs-tools_*.deb)
    ok "$rc" "$rel: dpkg-buildpackage -b in debian:$rel-slim: ${DEBS[*]##*/} ($((SECONDS - t)) s)"
}

# memcached set/get (or get) through ADDR:11211, inside the target.
target_memc() { # container addr set|get
    local cmd
    if [ "$3" = set ]; then cmd='set t_ansible 0 0 5\r\nhello\r\nget t_ansible\r\nquit\r\n'; else cmd='get t_ansible\r\nquit\r\n'; fi
    "$D" exec "$1" bash -c "exec 3<>/dev/tcp/$2/11211 && printf '$cmd' >&3 && timeout 3 cat <&3" 2>&1 | tr -d '\r'
}

target_part() { # release full|short
    local rel=$1 depth=$2 rc t deps C=$TARGET-$1 NET=$TARGET-$1 image=kumofs:t_ansible-target-$1
    kd_base_image "$rel"
    ok $? "$rel: base image debian:$rel-slim present"
    debs_for "$rel"
    [ -f "${DEBS[0]:-}" ] && [ -f "${DEBS[1]:-}" ] || return

    # The target: systemd as PID 1, python3 for ansible, iproute2 for its
    # network facts, and what the packages depend on (read from the .debs:
    # the container cannot reach a mirror, so apt can only install the
    # local files).
    deps=$(for d in "${DEBS[@]}"; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
        sed 's/(.*)//; s/|.*//; s/ //g' | grep -v '^$' | grep -v '^kumofs' | sort -u | tr '\n' ' ')
    mkdir -p "$WORK/target-$rel"
    cat >"$WORK/target-$rel/Dockerfile" <<EOF
FROM debian:$rel-slim
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \\
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus python3 iproute2 $deps \\
 && rm -rf /var/lib/apt/lists/* \\
 && systemctl set-default multi-user.target \\
 && systemctl mask systemd-logind.service getty.target console-getty.service
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
EOF
    t=$SECONDS
    timeout 600 "$D" build --network host -q -t "$image" "$WORK/target-$rel" >"$WORK/target-$rel.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 30 "$WORK/target-$rel.log" | show
    ok "$rc" "$rel: target image with systemd, python3 and the packages' dependencies ($((SECONDS - t)) s)"
    [ "$rc" = 0 ] || return

    # A network of its own (the engine adds no route out of it): the
    # container has a default route, so Ansible finds its private address.
    # systemd needs mount namespaces for the units' sandboxing: every
    # capability root has here (CAP_SYS_RESOURCE is not among them, so no
    # --privileged), its own cgroup namespace.
    NETWORKS+=("$NET")
    CONTAINERS+=("$C")
    "$D" network create "$NET" >/dev/null &&
        "$D" run -d --name "$C" --hostname kumo-target --network "$NET" --cgroupns=private \
            --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
            --tmpfs /run --tmpfs /run/lock "$image" >/dev/null
    local state= addr
    for ((t = 0; t < 60; t++)); do
        state=$("$D" exec "$C" systemctl is-system-running 2>/dev/null)
        case $state in running | degraded) break ;; esac
        sleep 1
    done
    [ "$state" = running ] || [ "$state" = degraded ]
    ok $? "$rel: systemd runs in the target container ($state; $("$D" exec "$C" sh -c '. /etc/os-release && echo "$PRETTY_NAME"'))"
    [ "$state" = degraded ] && "$D" exec "$C" systemctl --failed --no-pager | show
    addr=$("$D" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$C")

    cat >"$WORK/target-$rel.ini" <<EOF
[kumo_managers]
kumo-target
[kumo_servers]
kumo-target
[kumo_gateways]
kumo-target
[all:vars]
ansible_connection=community.docker.docker
ansible_host=$C
ansible_user=root
ansible_python_interpreter=/usr/bin/python3
kumofs_address=127.0.0.1
EOF
    "$PY" -c 'import json, sys; print(json.dumps({"kumofs_deb_files": sys.argv[1:]}))' "${DEBS[@]}" \
        >"$WORK/debs-$rel.json"
    local play=(ansible-playbook -i "$WORK/target-$rel.ini" site.yml -e "@$WORK/debs-$rel.json")
    # The docker connection plugin runs `docker`: the CLI that matches the engine.
    local path=$PATH
    [ "$D" = /usr/bin/docker ] && path=/usr/bin:$PATH

    t=$SECONDS
    PATH=$path "${play[@]}" >"$WORK/run1-$rel.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run1-$rel.log" | show
    ok "$rc" "$rel: ansible-playbook site.yml: installed, configured, started, attached ($((SECONDS - t)) s)"
    grep -A3 '^PLAY RECAP' "$WORK/run1-$rel.log" | show

    local active
    active=$("$D" exec "$C" systemctl is-active kumo-manager.service kumo-server@a.service kumo-gateway.service 2>&1 | tr '\n' ' ')
    [ "$active" = "active active active " ]
    ok $? "$rel: kumo-manager, kumo-server@a, kumo-gateway active under systemd ($active)"

    local st
    st=$("$D" exec "$C" kumoctl 127.0.0.1 status 2>&1)
    grep -q '^  127.0.0.1:19800 (active)' <<<"$st"
    rc=$?
    ok "$rc" "$rel: kumoctl status: 127.0.0.1:19800 attached and active"
    [ "$rc" = 0 ] || show <<<"$st"

    # The gateway on the container's private address only (the role's
    # default, ansible_default_ipv4.address).
    local opts reply lo
    opts=$("$D" exec "$C" grep '^KUMO_GATEWAY_OPTS=' /etc/default/kumo-gateway)
    reply=$(target_memc "$C" "$addr" set)
    lo=$("$D" exec "$C" bash -c 'exec 3<>/dev/tcp/127.0.0.1/11211 && echo open' 2>&1)
    [ "$opts" = "KUMO_GATEWAY_OPTS=\"-t $addr:11211\"" ] &&
        [ "$(printf '%s\n' "$reply" | head -n 3 | tr '\n' ' ')" = "STORED VALUE t_ansible 0 5 hello " ] &&
        [[ $lo != *open* ]]
    ok $? "$rel: the gateway listens on the private address $addr ($opts) and serves a set/get there; 127.0.0.1:11211 is closed"

    t=$SECONDS
    PATH=$path "${play[@]}" >"$WORK/run2-$rel.log" 2>&1
    rc=$?
    grep -A3 '^PLAY RECAP' "$WORK/run2-$rel.log" | show
    [ "$rc" = 0 ] && grep -q 'kumo-target *: .*changed=0 .*failed=0' "$WORK/run2-$rel.log" &&
        ! grep -q 'changed=[1-9]' "$WORK/run2-$rel.log"
    ok $? "$rel: second run changes nothing ($((SECONDS - t)) s)"

    if [ "$depth" = full ]; then
        target_changes "$rel" "$C" "$addr" "$path" "${play[@]}"
    fi
    drop_targets
}

# A changed flag, then a cluster key, through the role's handlers.
target_changes() { # release container addr PATH play...
    local rel=$1 C=$2 addr=$3 path=$4 rc t
    shift 4
    local play=("$@")
    # A changed flag: the handlers restart the daemons (serial: 1), the
    # server comes back attached, and the gateway serves the old key.
    local pid_before pid_after cmd reply
    pid_before=$("$D" exec "$C" systemctl show -p MainPID --value kumo-server@a.service)
    t=$SECONDS
    PATH=$path "${play[@]}" -e kumofs_extra_opts=-v >"$WORK/run3-$rel.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run3-$rel.log" | show
    pid_after=$("$D" exec "$C" systemctl show -p MainPID --value kumo-server@a.service)
    cmd=$("$D" exec "$C" bash -c "tr '\0' ' ' </proc/$pid_after/cmdline" 2>/dev/null)
    [ "$rc" = 0 ] && [ "$pid_before" != "$pid_after" ] && [[ $cmd == *" -v"* ]]
    ok $? "$rel: a changed flag restarts the server through the handler (pid $pid_before -> $pid_after: $cmd) ($((SECONDS - t)) s)"
    reply=$(target_memc "$C" "$addr" get)
    [[ $reply == *"VALUE t_ansible 0 5"*hello* ]]
    ok $? "$rel: the key reads back after the rolling restart"

    # A cluster key: written root:kumofs 0640, every daemon restarts with
    # it, the attach step's kumoctl uses it, and a kumoctl without it is
    # refused.
    local secret mode_owner st
    secret=$(head -c 24 /dev/urandom | base64)
    t=$SECONDS
    PATH=$path "${play[@]}" -e kumofs_extra_opts=-v -e "kumofs_cluster_key=$secret" >"$WORK/run4-$rel.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || tail -n 60 "$WORK/run4-$rel.log" | show
    mode_owner=$("$D" exec "$C" stat -c '%a %U:%G' /etc/kumofs/cluster.key 2>&1)
    pid_after=$("$D" exec "$C" systemctl show -p MainPID --value kumo-server@a.service)
    cmd=$("$D" exec "$C" bash -c "tr '\0' ' ' </proc/$pid_after/cmdline" 2>/dev/null)
    [ "$rc" = 0 ] && [ "$mode_owner" = "640 root:kumofs" ] && [[ $cmd == *"--cluster-key-file /etc/kumofs/cluster.key"* ]]
    ok $? "$rel: kumofs_cluster_key: the key file is $mode_owner, the server runs with it ($cmd) ($((SECONDS - t)) s)"
    st=$("$D" exec -e KUMO_CLUSTER_KEY_FILE=/etc/kumofs/cluster.key "$C" kumoctl 127.0.0.1 status 2>&1)
    grep -q '^  127.0.0.1:19800 (active)' <<<"$st"
    rc=$?
    ok "$rc" "$rel: kumoctl with the key: 127.0.0.1:19800 attached and active again"
    [ "$rc" = 0 ] || show <<<"$st"
    st=$("$D" exec "$C" kumoctl 127.0.0.1 status 2>&1)
    [[ $st == *"requires the cluster key"* ]]
    ok $? "$rel: kumoctl without the key is refused ($st)"
    reply=$(target_memc "$C" "$addr" get)
    [[ $reply == *"VALUE t_ansible 0 5"*hello* ]]
    ok $? "$rel: the key reads back through the keyed cluster"
}

targets() {
    local rc rel
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        skip "role on systemd containers: needs root, docker.io and debootstrap"
        return
    fi
    kd_engine_start
    rc=$?
    if [ "$rc" = 2 ]; then skip "role on systemd containers: no Docker engine can run here"; return; fi
    ok "$rc" "Docker engine answers at ${DOCKER_HOST:-?} ($(elapsed))"
    [ "$rc" = 0 ] || return
    D=$KD_DOCKER
    for rel in $RELEASES; do
        # The whole scenario on the current stable release; the install
        # and its checks on the other.
        if [ "$rel" = trixie ]; then target_part "$rel" full; else target_part "$rel" short; fi
    done
}

targets

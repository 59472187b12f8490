#!/bin/bash
# tap.sh — the TAP helpers of the tests/dist scripts (t_docker.sh,
# t_ansible.sh, t_trixie.sh); sourced, after the script has set T0=$SECONDS.
#
#   ok STATUS DESCRIPTION   a test: "ok N - DESCRIPTION" when STATUS is 0,
#                           "not ok N - DESCRIPTION" otherwise
#   skip WHY                a skipped test
#   note TEXT...            a "# TEXT" line
#   elapsed                 the time since T0, "N s"
#   skip_all WHY            "1..0 # SKIP WHY", exit 0
#   missing WHAT            a missing tool: skip_all, or under
#                           KUMO_TEST_REQUIRE=1 one failed test and exit 1
#   tap_end NAME RC         the plan, how long NAME took, "N passed, N
#                           failed" (", N skipped" when some were), exit 1 if
#                           a test failed or RC (the script's status) is not 0
#
# skip_all and missing call the script's tap_cleanup first, if it has one.

N=0 PASSED=0 FAILED=0 SKIPPED=0

ok() { # status description
    N=$((N + 1))
    if [ "$1" -eq 0 ]; then
        PASSED=$((PASSED + 1)); echo "ok $N - $2"
    else
        FAILED=$((FAILED + 1)); echo "not ok $N - $2"
    fi
}
skip() { N=$((N + 1)); SKIPPED=$((SKIPPED + 1)); echo "ok $N # SKIP $*"; }
note() { printf '# %s\n' "$*"; }
elapsed() { echo "$((SECONDS - T0)) s"; }

skip_all() {
    if declare -F tap_cleanup >/dev/null; then tap_cleanup; fi
    echo "1..0 # SKIP $*"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
}

missing() { # what
    if [ "${KUMO_TEST_REQUIRE:-}" = 1 ]; then
        if declare -F tap_cleanup >/dev/null; then tap_cleanup; fi
        echo "not ok 1 - $* (KUMO_TEST_REQUIRE=1)"
        echo "1..1"
        echo "0 passed, 1 failed"
        exit 1
    fi
    skip_all "$*"
}

tap_end() { # name rc
    [ "$2" -ne 0 ] && [ "$FAILED" -eq 0 ] && FAILED=1
    echo "1..$N"
    note "$1 took $(elapsed)"
    if [ "$SKIPPED" -gt 0 ]; then
        echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    else
        echo "$PASSED passed, $FAILED failed"
    fi
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}

#!/usr/bin/python3
"""t_clockskew — expiry and flush_all with one server's clock 2 minutes ahead.

Server 3 runs under libfaketime (FAKETIME=+120, Debian's `faketime`), so its
wall clock is 120 s ahead of the others'. Every key lives on all three
servers, and the gateway's gets start at different owners, so each check
below reads through every owner. The cluster's time follows its fastest
clock (docs/protocol.md, "Expiry and clocks"); what matters is that the
three owners of a key agree:

  - the skew is reported: a WARN naming the clock difference in a log;
  - within a keepalive, every server's ClockTime follows the fast clock;
  - 300 keys set with a 60 s TTL read back at once, from every owner;
  - `add` on those 300 live keys answers NOT_STORED 300 times (the
    coordinator sees them live whatever its clock);
  - keys set with a 3 s TTL read back at once and are gone within 7 s;
  - within 4 s of `flush_all 2`, none of 300 keys reads back.
"""
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
import kumotest as kt  # noqa: E402

tap = kt.tap
N = 300


def find_faketime():
    for d in ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime"):
        p = os.path.join(d, "libfaketime.so.1")
        if os.path.exists(p):
            return p
    return None


class SkewCluster(kt.Cluster):
    lib = None

    def server_argv(self, s):
        argv = super().server_argv(s)
        if s.index != 3:
            return argv
        return ["env", "LD_PRELOAD=" + self.lib, "FAKETIME=+120", "FAKETIME_DONT_FAKE_MONOTONIC=1",
                "FAKETIME_NO_CACHE=1"] + argv


def poll(cond, timeout):
    """Whether cond() became true within timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)     # between polls
    return False


def readable(ports, keys, rounds=3):
    """How many keys read back, the worst of `rounds` passes over fresh
    connections (so the gets start at different owners)."""
    worst = len(keys)
    for r in range(rounds):
        mc = kt.mc_client(ports, timeout=10)
        got = 0
        # one key per get, then multi-gets: single gets start at the primary,
        # batched ones at whichever owner's batch is open
        for i, k in enumerate(keys):
            if r == 0:
                got += mc.get(k) is not None
        if r > 0:
            for j in range(0, len(keys), 50):
                got += len(mc.get_many(keys[j:j + 50]))
        mc.close()
        worst = min(worst, got)
    return worst


def body():
    lib = find_faketime()
    if not lib:
        tap.skip_all("libfaketime not installed (Debian package faketime)")
    kt.require_binaries()
    kt.require_module("pymemcache")
    SkewCluster.lib = lib
    c = SkewCluster(nservers=3, start=False)
    c.start()
    port = c.gateway_port

    def skew_logged():
        for name in ["manager"] + ["server%d" % s.index for s in c.servers]:
            with open(c.log(name), errors="replace") as f:
                if re.search(r"its clock is 1[12]\d s (ahead of|behind) ours", f.read()):
                    return True
        return False
    tap.ok(poll(skew_logged, 15), "the 120 s skew is logged (its clock is ... s ahead of ours)")

    # The fast clock reaches every node with the manager's next keepalive
    # (or the first message from the fast node): the cluster's time is then
    # the fast one everywhere, and the checks below start from there.
    def converged():
        fast = time.time() + 115
        # "<ISO time> clock <counter> (<ClockTime>)"
        return all(int(c.kumostat(s, "clocktime").split()[-1].strip("()")) >> 32 >= fast for s in c.servers)
    tap.ok(poll(converged, 10), "within a keepalive, every server's ClockTime follows the fast clock")

    mc = kt.mc_client(port, timeout=10)
    keys = ["ttl60:%d" % i for i in range(N)]
    for k in keys:
        mc.set(k, b"v", expire=60)
    got = readable(port, keys)
    tap.ok(got == N, "%d keys set with a 60 s TTL read back at once from every owner" % N,
           "%d of %d readable" % (got, N))
    stored = sum(1 for k in keys if mc.add(k, b"w", expire=60, noreply=False))
    tap.ok(stored == 0, "add on %d live keys: NOT_STORED every time" % N, "%d answered STORED" % stored)

    short = ["ttl3:%d" % i for i in range(100)]
    t_set = time.time()
    for k in short:
        mc.set(k, b"v", expire=3)
    got = readable(port, short, rounds=1)
    tap.ok(got == len(short), "100 keys with a 3 s TTL read back at once", "%d of 100" % got)
    # until they are gone, within the 7 s the check allows
    poll(lambda: readable(port, short) == 0, t_set + 7 - time.time())
    got = readable(port, short)
    tap.ok(got == 0, "... and none of them within 7 s", "%d still readable" % got)

    fk = ["flush:%d" % i for i in range(N)]
    for k in fk:
        mc.set(k, b"v")
    t_flush = time.time()
    tap.ok(mc.flush_all(delay=2, noreply=False), "flush_all 2 answers OK")
    # until they are gone, within the 4 s the check allows
    poll(lambda: readable(port, fk) == 0, t_flush + 4 - time.time())
    got = readable(port, fk)
    tap.ok(got == 0, "within 4 s of flush_all 2, none of %d keys reads back" % N, "%d still readable" % got)
    c.check_running()
    mc.close()


kt.main(body)

#!/usr/bin/python3
"""t_failover — kill -9 one of three servers under load, then bring it back.

  1. 500 keys (never changed afterwards) and 100 keys the client overwrites.
  2. A client thread keeps setting new keys, overwriting the 100, and reading
     random keys back (each op retried for up to 30 s: the gateway retries
     internally and may take a few seconds to route around the dead server).
  3. kill -9 a server chosen by the seed; `kumoctl status` must show it
     (fault) within ~10 s; every key stays readable meanwhile.
  4. Restart it on the same database and ports: it shows under "not attached
     node"; `kumoctl attach`; wait until it is (active) in every server's
     whs (`kumostat <server> whs`) and then until `kumostat
     <server> hsccheck` is true on every server.
  5. Every key, including those written while it was down, reads back with
     its last acknowledged value; every server holds every key (3 servers,
     3 replicas); the restarted server serves gets again.
  6. A manager that does not run for 6 s (SIGSTOP, as a starved process or
     a paused VM) keeps every server (active) after SIGCONT: its own stall
     is not the servers' silence.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
NBASE = 500
NUPD = 100
OP_DEADLINE = 30.0
FAULT_WITHIN = 10.0


def body():
    kt.require_module("pymemcache")
    kt.require_binaries()
    rng = kt.make_rng()

    with kt.Cluster(nservers=3) as c:
        port = c.gateway_port
        base = {"base:%d" % i: ("base value %d " % i).encode() + rng.randbytes(rng.randrange(0, 200))
                for i in range(NBASE)}
        upd = {"upd:%d" % i: b"initial %d" % i for i in range(NUPD)}
        tap.note("writing %d + %d keys" % (NBASE, NUPD))
        mc = kt.mc_client(port, timeout=OP_DEADLINE)
        failed = [k for k, v in list(base.items()) + list(upd.items()) if mc.set(k, v) is not True]
        mc.close()
        tap.ok(not failed, "%d keys written" % (NBASE + NUPD), "failed: %s" % failed[:10])

        victim = rng.choice(c.servers)
        tap.note("victim: %s (pid %d)" % (victim.addr, victim.daemon.pid))
        # sets new keys (live:n), overwrites the upd: keys, reads base keys; each op retried
        client = kt.LoadClient(port, base, rng, prefix="live", overwrite=upd, retry_for=OP_DEADLINE,
                               timeout=OP_DEADLINE, pause=0.01)
        client.start()
        tap.ok(client.wait_progress(20, OP_DEADLINE), "the client runs before the kill (%s)" % client.summary(),
               "\n".join(client.failures()[:10]))

        tap.note("kill -9 %s while the client runs" % victim.addr)
        victim.daemon.kill9()
        t_kill = time.time()

        def fault():
            return c.status().state(victim.addr) == "fault"
        try:
            kt.wait_until(fault, 60, "%s shown (fault)" % victim.addr, interval=0.25,
                          daemons=[c.manager, c.gateway])
            took = time.time() - t_kill
            tap.ok(took <= FAULT_WITHIN, "kumoctl status shows %s (fault) within %.0f s (took %.1f s)"
                   % (victim.addr, FAULT_WITHIN, took))
        except TimeoutError as e:
            tap.ok(False, "kumoctl status shows %s (fault)" % victim.addr, str(e))

        progressed = client.wait_progress(20, OP_DEADLINE * 2)
        tap.ok(progressed and not client.failures(),
               "client keeps writing and reading while the server is down (%s)" % client.summary(),
               "\n".join(client.failures()[:10]))

        tap.note("reading all %d base keys with one server down" % NBASE)
        bad = kt.read_mismatches(port, base, timeout=OP_DEADLINE)
        tap.ok(not bad, "every base key readable while %s is down" % victim.addr,
               "%d unreadable, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        mc = kt.mc_client(port, timeout=OP_DEADLINE)
        got = {}
        keys = sorted(base)
        for i in range(0, len(keys), 100):
            got.update(mc.get_many(keys[i:i + 100]))
        mc.close()
        bad = [k for k in base if got.get(k) != base[k]]
        tap.ok(not bad, "multi-gets of the base keys complete while %s is down" % victim.addr,
               "%d missing or wrong, e.g. %s" % (len(bad), bad[:10]))

        tap.note("restarting %s on the same database and ports" % victim.addr)
        c.start_server(victim)
        try:
            c.wait_not_attached([victim], timeout=30)
            tap.ok(True, "restarted %s shows under 'not attached node'" % victim.addr)
        except (TimeoutError, kt.DaemonDied) as e:
            tap.ok(False, "restarted %s shows under 'not attached node'" % victim.addr, str(e))

        try:
            c.attach([victim], timeout=30)
            tap.ok(True, "kumoctl attach: %s (active) again" % victim.addr)
        except (TimeoutError, OSError, kt.DaemonDied) as e:
            tap.ok(False, "kumoctl attach: %s (active) again" % victim.addr, str(e))

        def all_hsc():
            return all(c.hsccheck(s) for s in c.servers)
        try:
            # first every server must have the new whs (else hsccheck is trivially true)
            kt.wait_until(lambda: all(c.hash_space(s, "whs").state(victim.addr) == "active"
                                      for s in c.servers),
                          30, "every server's whs to show %s (active)" % victim.addr,
                          interval=0.2, daemons=c.daemons())
            kt.wait_until(all_hsc, 60, "kumostat hsccheck true on every server", interval=0.5,
                          daemons=c.daemons())
            kt.holds_for(all_hsc, 3.0, "kumostat hsccheck true on every server", interval=0.5,
                         daemons=c.daemons())
            tap.ok(True, "kumostat hsccheck is true on all three servers and stays so (rebalancing done)")
        except (TimeoutError, kt.DaemonDied) as e:
            tap.ok(False, "kumostat hsccheck is true on all three servers", str(e))

        ended = client.stop()
        tap.ok(ended and not client.failures(),
               "client saw no failure over the whole run (%s)" % client.summary(),
               "\n".join(client.failures()[:10]))

        tap.note("verifying %d keys (%d written by the client)" % (len(base) + len(upd) + len(client.own),
                                                                   len(client.own)))
        want, bad = client.verify(also=base, timeout=OP_DEADLINE)
        tap.ok(not bad, "every key reads back its last acknowledged value",
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))

        for s in c.servers:
            try:
                n = c.items(s)
            except (OSError, ValueError) as e:
                n = "error: %s" % e
            tap.eq(n, len(want), "kumostat %s items = %d (3 servers: every server holds every key)"
                   % (s.addr, len(want)))

        st = c.status()
        ring = kt.Ring(st.attached_addrs())
        mine = [k for k in want if ring.owners(k)[0] == victim.addr]
        try:
            cmd_get_before = int(c.kumostat(victim, "cmd_get").split()[-1])
            bad = kt.read_mismatches(port, {k: want[k] for k in mine}, timeout=OP_DEADLINE)
            cmd_get_after = int(c.kumostat(victim, "cmd_get").split()[-1])
            tap.ok(not bad and cmd_get_after > cmd_get_before,
                   "restarted %s serves gets (cmd_get %d -> %d after %d gets of keys it is primary for)"
                   % (victim.addr, cmd_get_before, cmd_get_after, len(mine)),
                   "\n".join(bad[:10]))
        except (OSError, ValueError) as e:
            tap.ok(False, "restarted %s serves gets" % victim.addr, str(e))

        c.check_running()

        tap.note("== a stalled manager: SIGSTOP for 6 s, then SIGCONT")
        os.kill(c.manager.pid, signal.SIGSTOP)
        try:
            time.sleep(6.0)     # the stall itself: a duration of the scenario
        finally:
            os.kill(c.manager.pid, signal.SIGCONT)
        states = {}

        def all_active():
            st = c.status()
            states.update((s.addr, st.state(s.addr)) for s in c.servers)
            return all(v == "active" for v in states.values())
        # a few keepalive rounds after waking: no server may be marked fault in any of them
        try:
            kt.holds_for(all_active, 3.0, "every server (active) after the stall", interval=0.25,
                         daemons=c.daemons())
            tap.ok(True, "after the manager's 6 s stall every server is still (active)", repr(states))
        except (TimeoutError, kt.DaemonDied) as e:
            tap.ok(False, "after the manager's 6 s stall every server is still (active)", "%s: %r" % (e, states))
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_managers — two managers (docs/architecture.md §9).

Managers A (`-l A -p B -c ctlA`) and B (`-l B -p A -c ctlB`); every server
and the gateway get `-m A -p B`.

  1. Both managers list new servers under "not attached node"; `kumoctl A
     attach`; the two `kumoctl status` outputs become identical (timestamp,
     attached and not-attached lists); a 4th server attached through B;
     identical again, every server's whs is the managers' and hsccheck true.
  2. A client thread keeps setting and reading (each op retried up to 20 s:
     a killed server makes the gateway retry). kill -9 A: B still detects a
     killed server (fault), a 5th server is attached through B and the dead
     one detached through B (replaces finish); reads and writes continue;
     restart A on the same address: it rejoins and shows B's status.
  3. Both managers killed: the cluster keeps serving gets and sets; both
     restarted: they learn the layout from the servers, so every server is
     listed (active) at once and nothing under "not attached node" (treating
     them as newcomers would put every one into catch-up when attached);
     `kumoctl attach` exits 0 and attaches nothing; hsccheck true everywhere,
     and every key reads back.
  4. A new cluster with `-a -Rs 1` on both managers: the first servers are
     attached without kumoctl; a new server is attached alone, and exactly
     one manager's log has "start replace" for it; a killed server is
     detached alone, again by exactly one manager.

Environment: KUMO_TEST_SEED (printed) and kumotest's usual variables.
"""
import os
import random
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
OP_DEADLINE = 20.0
REPLACE_TIMEOUT = 60.0


class Cluster2(kt.Cluster):
    """kt.Cluster with a second manager B (`-p` everywhere). self.manager is A."""

    def __init__(self, nservers=3, manager_args=(), **kw):
        super().__init__(nservers=nservers, manager_args=manager_args, start=False, **kw)
        self.mgr2_port = kt.free_port()
        self.ctl2_port = kt.free_port()
        self.manager2 = None

    @property
    def mgr2_addr(self):
        return "127.0.0.1:%d" % self.mgr2_port

    def ctl(self, which):
        return "127.0.0.1:%d" % (self.ctl_port if which == "A" else self.ctl2_port)

    def mgr_daemon(self, which):
        return self.manager if which == "A" else self.manager2

    def argv_of(self, which):
        me, other, ctl = ((self.mgr_addr, self.mgr2_addr, self.ctl_port) if which == "A"
                          else (self.mgr2_addr, self.mgr_addr, self.ctl2_port))
        return [kt.binary("kumo-manager")] + self._v() + ["-o", "-", "-l", me, "-p", other, "-c", ctl] + \
            self.manager_args

    def server_argv(self, s):
        return super().server_argv(s) + ["-p", self.mgr2_addr]

    def gateway_argv(self):
        return super().gateway_argv() + ["-p", self.mgr2_addr]

    def daemons(self):
        ds = [self.manager, self.manager2] + [s.daemon for s in self.servers] + [self.gateway]
        return [d for d in ds if d is not None]

    def live_daemons(self):
        return [d for d in self.daemons() if not d.expected_exit]

    def start_mgr(self, which):
        d = kt.Daemon("kumo-manager-%s" % which, self.argv_of(which), self.log("manager%s" % which)).start()
        if which == "A":
            self.manager = d
        else:
            self.manager2 = d
        kt.wait_until(lambda: self.kumoctl_on(which, "status", timeout=5).returncode in kt.STATUS_ANSWERED, 20,
                      "manager %s to answer kumoctl status" % which, interval=0.2, daemons=[d])
        return d

    def kumoctl_on(self, which, *args, timeout=20):
        return kt.run_tool([kt.binary("kumoctl"), self.ctl(which)] + list(args), timeout=timeout)

    def status_text(self, which):
        r = self.kumoctl_on(which, "status")
        if r.returncode not in kt.STATUS_ANSWERED:
            raise OSError("kumoctl %s status: exit %s: %s" % (which, r.returncode, (r.stderr or r.stdout).strip()))
        return r.stdout

    def status_on(self, which):
        return kt.Status(self.status_text(which))

    def add_server(self):
        i = len(self.servers) + 1
        tmp = os.path.join(self.dir, "tmp%d" % i)
        os.makedirs(tmp, exist_ok=True)
        s = kt.Server(i, kt.free_port(), kt.free_port(), os.path.join(self.dir, "server%d.tch" % i), tmp)
        self.servers.append(s)
        return s


def wait_not_attached_on(c, which, servers, timeout=30):
    def cond():
        st = c.status_on(which)
        return all(s.addr in st.not_attached for s in servers) and st
    return kt.wait_until(cond, timeout, "%s under 'not attached node' on manager %s" % (
        " ".join(s.addr for s in servers), which), interval=0.2, daemons=c.live_daemons())


def wait_learned_on(c, which, servers, timeout=30):
    """Until a restarted manager lists `servers` (active), none under 'not attached node'."""
    def cond():
        st = c.status_on(which)
        return all(st.state(s.addr) == "active" for s in servers) and not st.not_attached and st
    return kt.wait_until(cond, timeout, "%s (active) on manager %s, learned from the servers" % (
        " ".join(s.addr for s in servers), which), interval=0.2, daemons=c.live_daemons())


def wait_same_status(c, timeout=15, what="the two managers' status"):
    """Until `kumoctl A status` and `kumoctl B status` print the same text."""
    last = {}

    def cond():
        a, b = c.status_text("A"), c.status_text("B")
        last["A"], last["B"] = a, b
        return a == b and a
    try:
        kt.wait_until(cond, timeout, what + " to be identical", interval=0.3, daemons=c.live_daemons())
        return True, last["A"]
    except TimeoutError as e:
        return False, "%s\n--- A:\n%s--- B:\n%s" % (e, last.get("A"), last.get("B"))


def wait_replaced(c, which, live, timeout=REPLACE_TIMEOUT, what="the replace"):
    """Until neither reachable manager shows "replace:", every live server's whs
    equals `which`'s (timestamp and nodes) and hsccheck is true; and stays so for 2 s."""
    others = [w for w in ("A", "B") if w != which and c.mgr_daemon(w) and c.mgr_daemon(w).alive()]

    def cond():
        text = c.status_text(which)
        if "replace:" in text:
            return False
        for w in others:
            if "replace:" in c.status_text(w):
                return False
        st = kt.Status(text)
        for s in live:
            hs = c.hash_space(s, "whs")
            if hs.timestamp != st.timestamp or hs.attached != st.attached or not c.hsccheck(s):
                return False
        return st
    t0 = time.time()
    kt.wait_until(cond, timeout, what + " to finish (per manager %s)" % which, interval=0.3,
                  daemons=c.live_daemons())
    st = kt.holds_for(cond, 2.0, what + " to stay finished", interval=0.3, daemons=c.live_daemons())
    tap.note("%s finished in %.1f s" % (what, time.time() - t0))
    return st


def load_client(port, known, rng, prefix="mgrload"):
    """Sets its own keys (300, reused) and reads them and the known keys back;
    each op is retried for up to OP_DEADLINE s."""
    return kt.LoadClient(port, known, rng, prefix=prefix, nown=300, retry_for=OP_DEADLINE, timeout=5.0)


def write_all(port, items):
    mc = kt.mc_client(port, timeout=10)
    bad = [k for k, v in items.items() if mc.set(k, v, noreply=False) is not True]
    mc.close()
    return bad


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_since(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def check_ok(name, fn):
    """Run a step that raises TimeoutError/OSError on failure: ok/not ok."""
    try:
        r = fn()
        tap.ok(True, name)
        return r if r is not None else True
    except (TimeoutError, OSError) as e:
        tap.ok(False, name, str(e))
        return None


# --------------------------------------------------------------------------

def part1(c, rng):
    tap.note("== 1. two managers: status identical on both, attach through either")
    c.start_mgr("A")
    c.start_mgr("B")
    first = c.servers[:3]
    for s in first:
        c.start_server(s)
    for w in ("A", "B"):
        check_ok("manager %s lists the 3 servers under 'not attached node'" % w,
                 lambda: wait_not_attached_on(c, w, first))
    r = c.kumoctl_on("A", "attach")
    tap.ok(r.returncode == 0, "kumoctl A attach exits 0", r.stdout + r.stderr)
    st = check_ok("the attach's replace finishes", lambda: wait_replaced(c, "A", first, what="attach through A"))
    same, text = wait_same_status(c)
    tap.ok(same, "kumoctl status is identical on A and B after attach through A", text)
    sta = c.status_on("A")
    tap.eq(sorted(sta.attached), sorted((s.addr, "active") for s in first), "the 3 servers attached and (active)")
    c.start_gateway()
    base = {("mgr:%d:%d" % (i, rng.randrange(1 << 30))).encode(): ("value %d " % i).encode() + rng.randbytes(
        rng.randrange(0, 100)) for i in range(300)}
    bad = write_all(c.gateway_port, base)
    tap.ok(not bad, "300 keys written", "failed: %s" % bad[:10])

    s4 = c.add_server()
    c.start_server(s4)
    for w in ("A", "B"):
        check_ok("manager %s lists the new %s under 'not attached node'" % (w, s4.addr),
                 lambda: wait_not_attached_on(c, w, [s4]))
    r = c.kumoctl_on("B", "attach")
    tap.ok(r.returncode == 0, "kumoctl B attach exits 0", r.stdout + r.stderr)
    check_ok("the replace after attach through B finishes",
             lambda: wait_replaced(c, "B", c.servers, what="attach through B"))
    same, text = wait_same_status(c)
    tap.ok(same, "kumoctl status is identical on A and B after attach through B", text)
    stb = c.status_on("B")
    tap.eq(sorted(stb.attached), sorted((s.addr, "active") for s in c.servers), "the 4 servers attached and (active)")
    bad = kt.read_mismatches(c.gateway_port, base, timeout=10, tries=3)
    tap.ok(not bad, "all 300 keys read back", "%d wrong, e.g. %s" % (len(bad), bad[:10]))
    return base


def part2(c, rng, base):
    tap.note("== 2. manager A killed: B detects faults, attaches, detaches; A restarts and rejoins")
    client = load_client(c.gateway_port, base, rng)
    client.start()
    tap.ok(client.wait_progress(20, OP_DEADLINE), "the client runs (%s)" % client.summary(),
           "\n".join(client.failures()[:10]))
    tap.note("kill -9 manager A (pid %d)" % c.manager.pid)
    c.manager.kill9()
    tap.ok(client.wait_progress(20, OP_DEADLINE), "the client runs on with A killed (%s)" % client.summary(),
           "\n".join(client.failures()[:10]))
    victim = rng.choice(c.servers)
    tap.note("kill -9 server %s" % victim.addr)
    victim.daemon.kill9()
    t0 = time.time()
    ok = check_ok("manager B shows %s (fault)" % victim.addr,
                  lambda: kt.wait_until(lambda: c.status_on("B").state(victim.addr) == "fault", 30,
                                        "%s (fault) on B" % victim.addr, interval=0.25, daemons=c.live_daemons()))
    if ok:
        tap.note("B showed the fault after %.1f s" % (time.time() - t0))
    s5 = c.add_server()
    c.start_server(s5)
    check_ok("manager B lists the new %s under 'not attached node'" % s5.addr,
             lambda: wait_not_attached_on(c, "B", [s5]))
    r = c.kumoctl_on("B", "attach")
    tap.ok(r.returncode == 0, "kumoctl B attach exits 0 (A is down)", r.stdout + r.stderr)
    live = [s for s in c.servers if s is not victim]
    st = check_ok("the replace after attach through B finishes (A down)",
                  lambda: wait_replaced(c, "B", live, what="attach through B with A down"))
    if st:
        tap.eq(st.state(s5.addr), "active", "%s (active) on B" % s5.addr)
        tap.eq(st.state(victim.addr), "fault", "%s still (fault) on B" % victim.addr)
    r = c.kumoctl_on("B", "detach")
    tap.ok(r.returncode == 0, "kumoctl B detach exits 0 (A is down)", r.stdout + r.stderr)
    st = check_ok("the replace after detach through B finishes (A down)",
                  lambda: wait_replaced(c, "B", live, what="detach through B with A down"))
    if st:
        tap.eq(sorted(st.attached), sorted((s.addr, "active") for s in live),
               "B: the 4 live servers attached and (active), %s detached" % victim.addr)
    progressed = client.wait_progress(20, OP_DEADLINE)
    tap.ok(progressed and not client.failures(),
           "reads and writes continue with A down (%s)" % client.summary(), "\n".join(client.failures()[:10]))

    tap.note("restarting manager A on the same address")
    c.start_mgr("A")
    same, text = wait_same_status(c, timeout=20, what="restarted A's status and B's")
    tap.ok(same, "restarted A shows the same status as B", text)
    try:
        sta = c.status_on("A")
        tap.eq(sorted(sta.attached), sorted((s.addr, "active") for s in live),
               "restarted A lists the 4 live servers (active)")
        tap.eq(sta.not_attached, [], "restarted A lists nothing under 'not attached node'")
    except OSError as e:
        tap.ok(False, "kumoctl A status after restart", str(e))
    client.wait_progress(20, OP_DEADLINE)    # some load with A back; checked below
    client.stop()
    tap.ok(not client.failures(), "the client saw no failure through part 2 (%s)" % client.summary(),
           "\n".join(client.failures()[:10]))
    want, bad = client.verify(also=base, timeout=10, tries=3)
    tap.ok(not bad, "all %d keys read back after part 2" % len(want), "%d wrong, e.g. %s" % (len(bad), bad[:10]))
    return want, live


def part3(c, rng, want, live):
    tap.note("== 3. both managers down: the cluster keeps serving; attach restores control")
    client = load_client(c.gateway_port, want, rng, prefix="part3load")
    client.start()
    tap.ok(client.wait_progress(20, OP_DEADLINE), "the client runs (%s)" % client.summary(),
           "\n".join(client.failures()[:10]))
    tap.note("kill -9 both managers")
    c.manager.kill9()
    c.manager2.kill9()
    t_kill = time.time()
    sets0, gets0, _ = client.snapshot()
    extra = {("nomgr:%d" % i).encode(): b"written without managers %d" % i for i in range(100)}
    bad = write_all(c.gateway_port, extra)
    tap.ok(not bad, "100 sets with both managers down", "failed: %s" % bad[:10])
    bad = kt.read_mismatches(c.gateway_port, extra, timeout=10, tries=3)
    tap.ok(not bad, "...and read back", "%s" % bad[:10])
    progressed = client.wait_progress(20, OP_DEADLINE)
    sets1, gets1, nerr = client.snapshot()
    tap.ok(progressed and sets1 > sets0 and gets1 > gets0 and nerr == 0,
           "the client keeps getting and setting with both managers down (%d sets, %d gets in %.1f s)"
           % (sets1 - sets0, gets1 - gets0, time.time() - t_kill), "\n".join(client.failures()[:10]))
    c.check_running("servers and gateway still running with both managers down")

    tap.note("restarting both managers")
    c.start_mgr("A")
    c.start_mgr("B")
    for w in ("A", "B"):
        check_ok("restarted manager %s learns the layout: the 4 servers (active), none new" % w,
                 lambda: wait_learned_on(c, w, live))
    r = c.kumoctl_on("A", "attach")
    tap.ok(r.returncode == 0, "kumoctl A attach exits 0", r.stdout + r.stderr)
    same, text = wait_same_status(c)
    tap.ok(same, "status identical on A and B after the attach", text)
    for w in ("A", "B"):
        try:
            stw = c.status_on(w)
            tap.eq(sorted(stw.attached), sorted((s.addr, "active") for s in live),
                   "manager %s lists the 4 servers (active)" % w)
            tap.eq(stw.not_attached, [], "manager %s: nothing under 'not attached node'" % w)
        except OSError as e:
            tap.ok(False, "kumoctl %s status" % w, str(e))
    hsc = {s.addr: c.hsccheck(s) for s in live}
    tap.ok(all(hsc.values()), "kumostat hsccheck true on every server", "%s" % hsc)
    client.wait_progress(20, OP_DEADLINE)    # some load with the managers back; checked below
    client.stop()
    tap.ok(not client.failures(), "the client saw no failure through part 3 (%s)" % client.summary(),
           "\n".join(client.failures()[:10]))
    allk = dict(want)
    allk.update(extra)
    allk, bad = client.verify(also=allk, timeout=10, tries=3)
    tap.ok(not bad, "all %d keys read back after part 3" % len(allk), "%d wrong, e.g. %s" % (len(bad), bad[:10]))
    c.check_running()


def count_start_replace(c, marks):
    out = {}
    for w in ("A", "B"):
        text = log_since(c.log("manager%s" % w), marks[w])
        out[w] = sum(1 for line in text.splitlines() if "start replace" in line)
    return out


def part4(rng):
    tap.note("== 4. auto-replace (-a -Rs 1 on both managers)")
    c = Cluster2(nservers=3, manager_args=["-a", "-Rs", "1"])
    try:
        c.start_mgr("A")
        c.start_mgr("B")
        for s in c.servers:
            c.start_server(s)

        def all_active():
            sa, sb = c.status_on("A"), c.status_on("B")
            want = sorted((s.addr, "active") for s in c.servers if s.daemon and not s.daemon.expected_exit)
            return sorted(sa.attached) == want and sorted(sb.attached) == want
        check_ok("the first 3 servers are attached without kumoctl",
                 lambda: kt.wait_until(all_active, 30, "auto-attach of the first servers", interval=0.3,
                                       daemons=c.live_daemons()))
        check_ok("the first replace finishes", lambda: wait_replaced(c, "A", c.servers, what="first auto-replace"))
        c.start_gateway()
        base = {("auto:%d" % i).encode(): b"auto value %d" % i for i in range(200)}
        bad = write_all(c.gateway_port, base)
        tap.ok(not bad, "200 keys written", "failed: %s" % bad[:10])

        marks = {w: log_size(c.log("manager%s" % w)) for w in ("A", "B")}
        s4 = c.add_server()
        t0 = time.time()
        c.start_server(s4)
        ok = check_ok("new server %s is attached on both managers without kumoctl" % s4.addr,
                      lambda: kt.wait_until(all_active, 30, "auto-attach of %s" % s4.addr, interval=0.3,
                                            daemons=c.live_daemons()))
        if ok:
            tap.note("attached %.1f s after it started" % (time.time() - t0))
        check_ok("its replace finishes", lambda: wait_replaced(c, "A", c.servers, what="auto-attach replace"))
        n = count_start_replace(c, marks)
        tap.ok(sorted(n.values())[0] == 0 and sorted(n.values())[1] >= 1,
               "exactly one manager ran the replace for the new server ('start replace' lines: A %d, B %d)"
               % (n["A"], n["B"]))
        driver = "A" if c.mgr_port < c.mgr2_port else "B"
        tap.note("(A is %s, B is %s: the smaller address, %s, is expected to drive)" % (c.mgr_addr, c.mgr2_addr, driver))
        same, text = wait_same_status(c)
        tap.ok(same, "status identical on A and B", text)

        marks = {w: log_size(c.log("manager%s" % w)) for w in ("A", "B")}
        victim = rng.choice(c.servers)
        tap.note("kill -9 server %s" % victim.addr)
        victim.daemon.kill9()
        live = [s for s in c.servers if s is not victim]
        ok = check_ok("killed %s is detached on both managers without kumoctl" % victim.addr,
                      lambda: kt.wait_until(all_active, 40, "auto-detach of %s" % victim.addr, interval=0.3,
                                            daemons=c.live_daemons()))
        check_ok("its replace finishes", lambda: wait_replaced(c, "A", live, what="auto-detach replace"))
        n = count_start_replace(c, marks)
        tap.ok(sorted(n.values())[0] == 0 and sorted(n.values())[1] >= 1,
               "exactly one manager ran the replace for the lost server ('start replace' lines: A %d, B %d)"
               % (n["A"], n["B"]))
        bad = kt.read_mismatches(c.gateway_port, base, timeout=10, tries=3)
        tap.ok(not bad, "all 200 keys read back", "%d wrong, e.g. %s" % (len(bad), bad[:10]))
        c.check_running()
    finally:
        for d in c.daemons():
            if d.alive():
                d.stop()


def body():
    kt.require_module("pymemcache")
    kt.require_binaries()
    rng = kt.make_rng()
    seeds = [rng.randrange(1 << 32) for _ in range(4)]
    c = Cluster2(nservers=3)
    tap.note("managers A %s (control %d), B %s (control %d); logs in %s" % (
        c.mgr_addr, c.ctl_port, c.mgr2_addr, c.ctl2_port, c.logdir))
    try:
        base = part1(c, random.Random(seeds[0]))
        want, live = part2(c, random.Random(seeds[1]), base)
        part3(c, random.Random(seeds[2]), want, live)
    except kt.DaemonDied as e:
        tap.ok(False, "daemons stay up", str(e))
    except Exception:
        tap.ok(False, "parts 1-3 raised no exception", traceback.format_exc())
    finally:
        for d in c.daemons():
            if d.alive():
                d.stop()
    try:
        part4(random.Random(seeds[3]))
    except kt.DaemonDied as e:
        tap.ok(False, "part 4: daemons stay up", str(e))
    except Exception:
        tap.ok(False, "part 4 raised no exception", traceback.format_exc())


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_notify — sd_notify readiness, STATUS, WATCHDOG, STOPPING and a clean SIGTERM.

Each daemon gets a NOTIFY_SOCKET of the test's own (an AF_UNIX datagram
socket in the test's directory, SO_PASSCRED on so every message's sender pid
is known) and WATCHDOG_USEC=1000000.

  1. A server started while no manager runs: WATCHDOG=1 arrives, READY=1
     does not (2 s); after 5 s its STATUS says no manager is reachable.
  2. The manager: READY=1, and its ports answer at that moment.
  3. The server: READY=1 once it has reached the manager; its STATUS says so.
  4. A gateway whose manager knows no attached server answers `version` but
     is NOT ready (2 s); `kumoctl attach` -> READY=1 and STATUS "serving";
     STATUS lines of the manager and the server follow the attach.
  5. WATCHDOG=1 from each daemon, about every 0.5 s.
  6. Keys written through the gateway (replies awaited); SIGTERM to the
     server while a client keeps writing, then to the gateway: STOPPING=1
     and exit status 0 each; STATUS= of the gateway and the manager follow
     the loss; the server's Tokyo Cabinet file is closed cleanly (`tchmgr
     inform` shows no "open"/"fatal" flag) and holds every key and every
     set acknowledged around the SIGTERM; a restart on it keeps every key
     (read back through a new gateway). SIGTERM to the manager:
     STOPPING=1, exit 0.
  7. NOTIFY_SOCKET naming a path that does not exist (and WATCHDOG_USEC
     set): all three daemons start, serve, keep running and exit 0.
  8. A server with no -l whose manager name does not resolve keeps running,
     is not ready, and SIGTERM still gives STOPPING=1 and exit 0.
"""
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
NKEYS = 200
WATCHDOG_USEC = 1000000
NO_SUCH = "kumo-no-such-host.invalid"    # RFC 2606: never resolves


class Notify:
    """A NOTIFY_SOCKET: collects (time, sender pid, line) of every datagram."""

    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.msgs = []          # (t, pid, line)
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        credsz = struct.calcsize("3i")
        while not self.closed:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(credsz))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS and len(cdata) >= credsz:
                    pid = struct.unpack("3i", cdata[:credsz])[0]
            t = time.time()
            with self.cond:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self.msgs.append((t, pid, line))
                self.cond.notify_all()

    def lines(self, prefix=None, since=0.0):
        with self.cond:
            return [(t, p, l) for t, p, l in self.msgs
                    if t >= since and (prefix is None or l.startswith(prefix))]

    def wait_for(self, pred, timeout, since=0.0):
        """The first (t, pid, line) with t >= since and pred(line), or None after timeout."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for m in self.msgs:
                    if m[0] >= since and pred(m[2]):
                        return m
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def dump(self):
        with self.cond:
            return "\n".join("%.3f pid=%s %s" % (t, p, l) for t, p, l in self.msgs[-40:]) or "(nothing)"

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class NDaemon(kt.Daemon):
    """kt.Daemon with extra environment (NOTIFY_SOCKET, WATCHDOG_USEC)."""

    def __init__(self, name, argv, log, extra_env):
        super().__init__(name, argv, log, env=extra_env)


class Writer(threading.Thread):
    """Sets fresh keys through the gateway until told to stop; remembers what was acknowledged."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.values = {}
        self.acked = 0
        self.acked_at = []
        self.failed = 0

    def run(self):
        c, i = None, 0
        while not self.stop.is_set():
            k, v = "inflight:%d" % i, ("value-%d" % i).encode()
            i += 1
            try:
                if c is None:
                    c = kt.mc_client(self.port, timeout=5)
                if c.set(k, v, noreply=False) is True:
                    self.values[k] = v
                    self.acked += 1
                    self.acked_at.append(time.time())
                else:
                    self.failed += 1
            except Exception:
                self.failed += 1
                c = None
                time.sleep(0.05)    # before the retry on a new connection
        if c is not None:
            c.close()


def is_ready(line):
    return line == "READY=1"


def sigterm_check(d, nsock, what):
    """SIGTERM d; STOPPING=1 must arrive and the exit status be 0."""
    t0 = time.time()
    st, killed = d.stop(timeout=15)
    took = time.time() - t0
    m = nsock.wait_for(lambda l: l == "STOPPING=1", 2.0, since=t0 - 0.01)
    tap.ok(m is not None, "%s: STOPPING=1 after SIGTERM" % what, "notify messages:\n" + nsock.dump())
    if m is not None:
        tap.eq(m[1], d.pid, "%s: STOPPING=1 sent by the daemon's own pid" % what)
    tap.ok(st == 0 and not killed, "%s: SIGTERM -> exit status 0 (took %.1f s)" % (what, took),
           "exit status %s%s" % (st, ", needed SIGKILL" if killed else ""))


def watchdog_check(nsock, pid, what, since):
    ts = [t for t, p, l in nsock.lines("WATCHDOG=1", since) if p == pid]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    med = statistics.median(gaps) if gaps else None
    tap.ok(len(ts) >= 3 and med is not None and 0.3 <= med <= 0.8,
           "%s: WATCHDOG=1 about every 0.5 s with WATCHDOG_USEC=%d (%d messages, median gap %s)" % (
               what, WATCHDOG_USEC, len(ts), "%.2f s" % med if med is not None else "-"),
           "notify messages:\n" + nsock.dump())


def tch_flags(path):
    r = subprocess.run(["tchmgr", "inform", path], capture_output=True, text=True, timeout=30)
    m = re.search(r"^additional flags:(.*)$", r.stdout, re.M)
    return r.returncode, (m.group(1).split() if m else None), r.stdout + r.stderr


def get_all(port, keys, timeout=30):
    """Every key -> value read back through the gateway (retried until timeout)."""
    deadline = time.time() + timeout
    got = {}
    c = None
    while True:
        try:
            if c is None:
                c = kt.mc_client(port, timeout=5)
            missing = [k for k in keys if k not in got]
            for i in range(0, len(missing), 50):
                res = c.get_many(missing[i:i + 50])
                got.update({k: v for k, v in res.items()})
            if len(got) == len(keys) or time.time() > deadline:
                break
        except Exception:
            c = None
            if time.time() > deadline:
                break
        time.sleep(0.5)     # between the rounds of a polling loop
    if c is not None:
        c.close()
    return got


def wait_active(c, srv, timeout=40):
    """Wait until srv is (active) in the manager's whs, attaching it if it is a newcomer."""
    def cond():
        st = c.status()
        if srv.addr in st.not_attached:
            c.kumoctl("attach")
            return False
        return st.state(srv.addr) == "active" and st
    return kt.wait_until(cond, timeout, "%s (active) again" % srv.addr, interval=0.3, daemons=c.daemons())


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    if not shutil.which("tchmgr"):
        tap.skip_all("tchmgr not installed (tokyocabinet-bin)")
    rng = kt.make_rng()
    c = kt.Cluster(nservers=1, start=False)
    srv = c.servers[0]
    socks = {}
    for n in ("manager", "server", "gateway"):
        socks[n] = Notify(os.path.join(c.dir, "notify-%s.sock" % n), n)
    env = lambda n: {"NOTIFY_SOCKET": socks[n].path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}  # noqa: E731
    t_begin = time.time()

    # 1. server before any manager
    tap.note("1. kumo-server %s started while no manager listens on %s" % (srv.addr, c.mgr_addr))
    srv.daemon = NDaemon("kumo-server[1]", c.server_argv(srv), c.log("server1"), env("server")).start()
    t_srv = time.time()
    time.sleep(2.0)     # a period in which nothing must come (READY=1), and the watchdog must tick
    srv.daemon.check_alive()
    early = [m for m in socks["server"].lines("READY=", t_srv)]
    tap.ok(not early, "server with no manager reachable: no READY=1 within 2 s",
           "got: %s" % early)
    wd = [m for m in socks["server"].lines("WATCHDOG=1", t_srv)]
    tap.ok(len(wd) >= 2, "server with no manager: WATCHDOG=1 still sent (%d in 2 s)" % len(wd),
           socks["server"].dump())
    m = socks["server"].wait_for(lambda l: l.startswith("STATUS=") and "no manager reachable" in l,
                                 kt.LINKS_UNREACHABLE_WARN + 3, t_srv)
    tap.ok(m is not None, "server with no manager reachable for %.0f s: STATUS= says so (%s)" % (
        kt.LINKS_UNREACHABLE_WARN, m[2] if m else "-"), socks["server"].dump())

    # 2. the manager
    tap.note("2. kumo-manager on %s (control %d)" % (c.mgr_addr, c.ctl_port))
    t_mgr = time.time()
    c.manager = NDaemon("kumo-manager", c.manager_argv(), c.log("manager"), env("manager")).start()
    m = socks["manager"].wait_for(is_ready, 10, t_mgr)
    tap.ok(m is not None, "manager: READY=1 (%.2f s after start)" % ((m[0] - t_mgr) if m else -1),
           socks["manager"].dump())
    if m is None:
        return
    tap.eq(m[1], c.manager.pid, "manager: READY=1 sent by the daemon's own pid")
    tap.ok(kt.port_open(c.mgr_port) and kt.port_open(c.ctl_port),
           "manager: cluster and control ports accept connections when READY=1 arrives")
    r = c.kumoctl("status", timeout=5)
    tap.ok(r.returncode in kt.STATUS_ANSWERED, "manager: kumoctl status answers right after READY=1", r.stderr)
    tap.ok(socks["manager"].wait_for(lambda l: l.startswith("STATUS="), 2, t_mgr) is not None,
           "manager: a STATUS= line at start", socks["manager"].dump())

    # 3. the server finds it
    m = socks["server"].wait_for(is_ready, 15, t_mgr)
    tap.ok(m is not None, "server: READY=1 once the manager is up (%.2f s after the manager's start)" % (
        (m[0] - t_mgr) if m else -1), socks["server"].dump())
    if m is None:
        return
    tap.eq(m[1], srv.daemon.pid, "server: READY=1 sent by the daemon's own pid")
    st = c.wait_not_attached([srv], timeout=10)
    tap.ok(srv.addr in st.not_attached, "server: the manager knows it (not attached node) once it is ready")
    ms = socks["server"].wait_for(lambda l: l.startswith("STATUS=") and "manager connected" in l, 5, t_mgr)
    tap.ok(ms is not None, "server: STATUS= says the manager is connected (%s)" % (ms[2] if ms else "-"),
           socks["server"].dump())
    tap.eq(len(socks["server"].lines("READY=1")), 1, "server: READY=1 sent once")

    # 4. a gateway with no attached server
    tap.note("4. kumo-gateway on 127.0.0.1:%d, nothing attached yet" % c.gateway_port)
    t_gw = time.time()
    c.gateway = NDaemon("kumo-gateway", c.gateway_argv(), c.log("gateway"), env("gateway")).start()
    kt.wait_until(lambda: kt.raw_version(c.gateway_port), 15, "gateway answering version",
                  daemons=c.daemons())
    time.sleep(2.0)     # a period in which nothing must come (READY=1, STATUS=... serving)
    early = socks["gateway"].lines("READY=", t_gw)
    tap.ok(not early, "gateway whose manager knows no attached server: not READY (2 s)", "got %s" % early)
    st = socks["gateway"].lines("STATUS=", t_gw)
    tap.ok(all("serving" not in l for _, _, l in st), "gateway: no STATUS says serving yet",
           socks["gateway"].dump())

    tap.note("kumoctl attach")
    t_att = time.time()
    c.attach([srv])
    m = socks["gateway"].wait_for(is_ready, 15, t_att)
    tap.ok(m is not None, "gateway: READY=1 after kumoctl attach (%.2f s)" % ((m[0] - t_att) if m else -1),
           socks["gateway"].dump())
    if m is not None:
        tap.eq(m[1], c.gateway.pid, "gateway: READY=1 sent by the daemon's own pid")
    ms = socks["gateway"].wait_for(lambda l: l.startswith("STATUS=") and "serving" in l, 5, t_att)
    tap.ok(ms is not None, "gateway: STATUS= serving after the attach (%s)" % (ms[2] if ms else "-"),
           socks["gateway"].dump())
    ms = socks["manager"].wait_for(lambda l: l.startswith("STATUS=") and re.search(r"\b1 servers? attached", l)
                                   is not None, 5, t_att)
    tap.ok(ms is not None, "manager: STATUS= counts the attached server (%s)" % (ms[2] if ms else "-"),
           socks["manager"].dump())
    ms = socks["server"].wait_for(lambda l: l.startswith("STATUS=") and re.search(r"(?<!not )attached", l)
                                  is not None, 5, t_att)
    tap.ok(ms is not None, "server: STATUS= says attached (%s)" % (ms[2] if ms else "-"),
           socks["server"].dump())
    ms = socks["manager"].wait_for(lambda l: l.startswith("STATUS=") and "1 gateway" in l, 5, t_gw)
    tap.ok(ms is not None, "manager: STATUS= counts the gateway (%s)" % (ms[2] if ms else "-"),
           socks["manager"].dump())

    # 5. watchdog: until each daemon has sent a few WATCHDOG=1 (the checks need 3 and a median gap)
    def ticks(name, pid, since):
        return sum(1 for _, p, _ in socks[name].lines("WATCHDOG=1", since) if p == pid)
    try:
        kt.wait_until(lambda: ticks("manager", c.manager.pid, t_mgr) >= 5 and ticks("server", srv.daemon.pid, t_srv) >= 5
                      and ticks("gateway", c.gateway.pid, t_gw) >= 5, 20, "5 WATCHDOG=1 from each daemon",
                      interval=0.1, daemons=c.daemons())
    except TimeoutError as e:
        tap.note(str(e))
    watchdog_check(socks["manager"], c.manager.pid, "manager", t_mgr)
    watchdog_check(socks["server"], srv.daemon.pid, "server", t_srv)
    watchdog_check(socks["gateway"], c.gateway.pid, "gateway", t_gw)

    # 6. data, SIGTERM, clean file, restart
    keys = ["notify:%d:%d" % (i, rng.randrange(1 << 30)) for i in range(NKEYS)]
    vals = {k: ("v%d-" % i).encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            for i, k in enumerate(keys)}
    mc = kt.mc_client(c.gateway_port)
    bad = [k for k in keys if mc.set(k, vals[k], noreply=False) is not True]
    mc.close()
    tap.ok(not bad, "%d keys set through the gateway (replies awaited)" % NKEYS, "failed: %s" % bad[:5])
    got = get_all(c.gateway_port, keys, timeout=10)
    tap.ok(all(got.get(k) == vals[k] for k in keys), "every key reads back before the shutdown")

    tap.note("SIGTERM to the server while a client keeps writing through the gateway")
    w = Writer(c.gateway_port)
    w.start()
    kt.wait_until(lambda: w.acked >= 20, 10, "the writer's first acknowledged sets", interval=0.05)
    t_stop = time.time()
    sigterm_check(srv.daemon, socks["server"], "server (writes in flight)")
    time.sleep(0.5)     # a duration: the writer goes on a little with the server gone
    w.stop.set()
    w.join(30)
    tap.note("writer: %d sets acknowledged (%d after the SIGTERM), %d failed" % (
        w.acked, sum(1 for t in w.acked_at if t >= t_stop), w.failed))
    ms = socks["gateway"].wait_for(lambda l: l.startswith("STATUS=") and "0 active" in l, 15, t_stop)
    tap.ok(ms is not None, "gateway: STATUS= changes when its only server is gone (%s)" % (ms[2] if ms else "-"),
           socks["gateway"].dump())
    ms = socks["manager"].wait_for(lambda l: l.startswith("STATUS=") and "(0 active)" in l, 15, t_stop)
    tap.ok(ms is not None, "manager: STATUS= counts the server as not active (%s)" % (ms[2] if ms else "-"),
           socks["manager"].dump())
    sigterm_check(c.gateway, socks["gateway"], "gateway")
    rc, flags, out = tch_flags(srv.db)
    tap.ok(rc == 0 and flags is not None and "open" not in flags and "fatal" not in flags,
           "server database closed cleanly: tchmgr inform shows flags %s" % flags, out)
    try:
        recs = kt.tch_records(srv.db)
        stored = {}
        for k, v in recs:
            rec = kt.Record(k, v)
            if not rec.tombstone:
                stored[rec.key.decode("utf-8", "replace")] = rec.payload
        miss = [k for k in keys if stored.get(k) != vals[k]]
        tap.ok(not miss, "every key is in the database file after SIGTERM (%d records)" % len(recs),
               "missing or wrong: %s" % miss[:5])
        lost = [k for k, v in w.values.items() if stored.get(k) != v]
        tap.ok(not lost, "every set acknowledged around the SIGTERM is in the file (%d)" % len(w.values),
               "lost: %s" % lost[:5])
    except (OSError, ValueError) as e:
        tap.ok(False, "every key is in the database file after SIGTERM", str(e))

    tap.note("restart the server on the same file, then a new gateway")
    srv.daemon = kt.Daemon("kumo-server[1]", c.server_argv(srv), c.log("server1")).start()
    wait_active(c, srv)
    c.gateway = kt.Daemon("kumo-gateway", c.gateway_argv(), c.log("gateway")).start()
    c.wait_gateway()
    got = get_all(c.gateway_port, keys, timeout=30)
    wrong = [k for k in keys if got.get(k) != vals[k]]
    tap.ok(not wrong, "after the restart every key reads back (%d/%d)" % (NKEYS - len(wrong), NKEYS),
           "missing or wrong: %s" % wrong[:5])

    sigterm_check(c.manager, socks["manager"], "manager")
    for d in (c.gateway, srv.daemon):
        st_, killed = d.stop(timeout=15)
        tap.ok(st_ == 0 and not killed, "%s (no NOTIFY_SOCKET): SIGTERM -> exit 0" % d.name,
               "exit status %s" % st_)
    rc, flags, out = tch_flags(srv.db)
    tap.ok(rc == 0 and flags is not None and "open" not in flags and "fatal" not in flags,
           "database closed cleanly after the second SIGTERM (flags %s)" % flags, out)
    for s in socks.values():
        s.close()

    # 7. a notify socket that is not there
    tap.note("7. NOTIFY_SOCKET naming a path that does not exist")
    c2 = kt.Cluster(nservers=1, start=False)
    s2 = c2.servers[0]
    gone = {"NOTIFY_SOCKET": os.path.join(c2.dir, "no-such-dir", "notify.sock"),
            "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    c2.manager = NDaemon("kumo-manager(gone)", c2.manager_argv(), c2.log("manager"), gone).start()
    kt.wait_until(lambda: c2.kumoctl("status", timeout=5).returncode in kt.STATUS_ANSWERED, 20, "manager answering",
                  interval=0.2, daemons=[c2.manager])
    s2.daemon = NDaemon("kumo-server(gone)", c2.server_argv(s2), c2.log("server1"), gone).start()
    c2.wait_not_attached([s2])
    c2.attach([s2])
    c2.gateway = NDaemon("kumo-gateway(gone)", c2.gateway_argv(), c2.log("gateway"), gone).start()
    c2.wait_gateway()
    mc = kt.mc_client(c2.gateway_port)
    ok = mc.set("gone-key", b"gone-value", noreply=False) is True and mc.get("gone-key") == b"gone-value"
    mc.close()
    tap.ok(ok, "with a missing notify socket the cluster serves a set and a get")
    try:    # over a few watchdog ticks towards nowhere
        kt.holds_for(lambda: all(d.alive() for d in c2.daemons()), 2.0, "every daemon running", interval=0.1)
    except kt.NotHeld:
        pass
    dead = ["%s exited %s" % (d.name, d.returncode()) for d in c2.daemons() if not d.alive()]
    tap.ok(not dead, "with a missing notify socket every daemon keeps running", "; ".join(dead))
    for d in (c2.gateway, s2.daemon, c2.manager):
        st_, killed = d.stop(timeout=15)
        tap.ok(st_ == 0 and not killed, "%s: SIGTERM -> exit 0" % d.name, "exit status %s" % st_)
    # 8. a server with no -l whose manager name does not resolve
    tap.note("8. kumo-server with no -l and -m %s (does not resolve)" % NO_SUCH)
    c3 = kt.Cluster(nservers=1, start=False)
    s3 = c3.servers[0]
    n3 = Notify(os.path.join(c3.dir, "notify-waiting.sock"), "waiting server")
    argv = [a for a in c3.server_argv(s3)]
    i = argv.index("-l")
    del argv[i:i + 2]
    argv[argv.index("-m") + 1] = NO_SUCH
    t3 = time.time()
    s3.daemon = NDaemon("kumo-server(waiting)", argv, c3.log("server1"), {"NOTIFY_SOCKET": n3.path}).start()
    try:    # it retries the lookup, and stays up without READY=1 meanwhile
        kt.wait_until(lambda: s3.daemon.tail(200).count("cannot resolve") >= 2 or not s3.daemon.alive(), 60,
                      "the waiting server to fail its lookup twice", interval=0.2)
        kt.holds_for(lambda: s3.daemon.alive() and not n3.lines("READY=", t3), 1.0,
                     "the waiting server running, not READY", interval=0.1)
    except TimeoutError as e:
        tap.note(str(e))
    tap.ok(s3.daemon.alive(), "a server whose manager name does not resolve keeps running (retrying)",
           s3.daemon.tail(10))
    tap.ok(not n3.lines("READY=", t3), "... and is not READY", n3.dump())
    sigterm_check(s3.daemon, n3, "server waiting for its manager's name")
    n3.close()
    tap.note("t_notify took %.1f s" % (time.time() - t_begin))


if __name__ == "__main__":
    kt.main(body)

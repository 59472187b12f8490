#!/usr/bin/python3
"""t_nemesis — Jepsen-style faults under load, checked against the consistency contract.

Hosts are network namespaces on one bridge (tests/fault/netns.py): m1, m2
(two managers, partners), s1..s5 (servers; s5's database is on a small
tmpfs), gw (two gateways and the clients). Copies take seconds, as on a real
data set: 8 MiB of incompressible filler, replace streams at
0.5 MiB/s (-Rr), the servers' TCP buffers capped (SOCK_MAX). Client threads
(a process inside gw, pymemcache) record every operation with its invoke and
completion time on the machine's monotonic clock:
  4 threads  set/get/delete/gets+cas on a few shared keys with unique
             checksummed values (history.make_value), and fresh keys with
             3 KB values, some later deleted for good and read again
  2 threads  read-modify-write: incr and get of 8 counters (ck*, 0 at the
             start), add/append/delete/get of 8 lists (lk*) whose every
             element is unique
Meanwhile the nemesis runs episodes in an order drawn from the seed (each
ends with a heal: everything restarted, nft rules removed, `kumoctl attach`,
replace finished):
  kill        kill -9 of one server, then of a second while the first is
              down; sometimes `kumoctl detach`; both restarted on their databases
  stop        SIGSTOP of a server (hung: connections stay open), SIGCONT later
  partition   nft drop rules in a server's namespace: cut off from everyone,
              from both managers, or from the gateways only
  manager     kill -9 of manager 1, restarted
  managers    kill -9 of both managers, restarted
  disk        s5's tmpfs filled with a file, freed later
  stale       a server's database copied (under SIGSTOP), load goes on, the
              server killed and restarted on the stale copy
and, at an operator's pace (SIGTERM; a restart is attached as soon as a
manager lists the server under "not attached node"):
  restart_rmw SIGTERM of the server that is the first owner of the most
              counters and lists; the clients change its keys for 3-6 s; it
              is restarted on its own database and attached, and the
              read-modify-write traffic goes on at once
  rolling     the three servers that together own the most keys, in turn:
              SIGTERM, 1-3 s of load, restart on its database, attach; the
              next one stopped as soon as `kumoctl status` (polled every
              0.2 s) shows the previous one (active)
  reattach    SIGTERM of a server, `kumoctl detach`, wait for that replace
              under load, then the server restarted on its database and
              attached again
  emptydb     SIGTERM of a server, its .tch moved aside, restarted on an
              empty database, attached
  backup      `kumoctl backup`; one server's copy kept (not s5's: its tmpfs
              is small); 5-8 s of load (overwrites, deletes); SIGTERM, the
              old copy put back, restarted, attached
The detection latency (fault to `(fault)` in kumoctl status) is measured for
stop and partition; reads overlapping those windows must not fail. The
catch-up time (attach to `(active)`) is shown for the operator's episodes.

Afterwards: everything healed and attached, a final get of every key, the
servers stopped and their Tokyo Cabinet files read: every key's newest
record must be on its three owners. history.check() reports lost, stale,
torn, phantom, resurrected and wrong (a read-modify-write answered from an
old or missing copy); all must be 0. The figures give each class by kind of
key and by the episode last begun when the offending operation completed.

On 48bffc3 (before catch-up) each of the five operator's episodes
alone fails (--episodes NAME, seeds 21 and 22): wrong answers 14-284, stale
reads 0-143, lost 0-3, and after a rolling restart resurrected deletes (1-2)
and keys whose newest record is on fewer than three owners (11-12); with
the catch-up state all are 0 (docs/testing.md).

Usage: t_nemesis.py [--seed N] [--long] [--minutes M] [--episodes a,b,...]
  (no flag: the short schedule, every episode once, TAP for prove)
  --long: random episodes for M minutes (default 10), then the figures.
  --episodes: only these (in this order; with --long, drawn from them).
Binaries from KUMO_BUILD_DIR (default: the repository root).
Needs root and `ip netns` (skips without), nft, tchmgr, pymemcache.
Namespaces, the tmpfs, nft tables (in the namespaces) and every process are
removed at exit, also on failure, a signal or the watchdog.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
MGR_PORT, CTL_PORT, SRV_PORT, STREAM_PORT = 19700, 19799, 19800, 19900
GW_PORTS = (11211, 11212)
SERVERS = ["s1", "s2", "s3", "s4", "s5"]
DISK_HOST = "s5"
HOSTS = ["m1", "m2"] + SERVERS + ["gw"]
PADS = (40, 40, 200, 1000, 3000)   # value sizes: records move and the files grow
EPISODES = ["kill", "stop", "partition", "manager", "managers", "disk", "stale",
            "restart_rmw", "rolling", "reattach", "emptydb", "backup"]
COUNTERS = ["ck%d" % i for i in range(8)]       # history: counter keys (incr)
LISTS = ["lk%d" % i for i in range(8)]          # history: list keys (add, append, delete)
# Copies that take seconds, as on a real data set: FILLER_MB of
# incompressible values (the replace deflates its streams), replace streams
# at REPLACE_RATE MiB/s, and the servers' TCP buffers capped at SOCK_MAX bytes
# (sysctl in their namespaces): a stream file goes out by sendfile, whose
# writes the rate limit does not cut, so without the cap the first write
# takes ~4 MiB at once.
FILLER_MB = 8
FILLER_VALUE = 64 << 10
REPLACE_RATE = 0.5
SOCK_MAX = 131072


def parse_args():
    ap = argparse.ArgumentParser(description="fault-injection schedule against a kumofs cluster")
    ap.add_argument("--seed", type=int, help="seed of the schedule and the clients (default: random, printed)")
    ap.add_argument("--long", action="store_true", help="random episodes for --minutes, then print the figures")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the long schedule (default 10)")
    ap.add_argument("--partial-attach", action="store_true",
                    help="attach restarted servers as soon as any is back, not once all are")
    ap.add_argument("--episodes", help="comma-separated episodes: the short schedule runs these, in this order")
    ap.add_argument("--client", help=argparse.SUPPRESS)     # internal: the client process
    ap.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.episodes and not set(args.episodes.split(",")) <= set(EPISODES):
        ap.error("--episodes: one of %s" % " ".join(EPISODES))
    return args


# --------------------------------------------------------------------------
# the client process (runs inside the gw namespace)
# --------------------------------------------------------------------------

def client_main(spec_path):
    sys.path.insert(0, HERE)
    import history
    from pymemcache.client.base import Client
    with open(spec_path) as f:
        spec = json.load(f)
    keys = spec["keys"]

    def connect(port):
        return Client(("127.0.0.1", port), connect_timeout=10, timeout=spec["timeout"],
                      default_noreply=False, no_delay=True)

    class Worker:
        """One thread's connection and history; op() runs and records one operation."""

        def __init__(self, wid, out):
            self.wid, self.out = wid, out
            self.port = GW_PORTS[wid % len(GW_PORTS)]
            self.mc = None

        def op(self, f, k, fn, v=None, **extra):
            t0 = time.monotonic()
            try:
                if self.mc is None:
                    self.mc = connect(self.port)
                r, got = fn(self.mc)
            except Exception as e:   # timeout, SERVER_ERROR, connection lost: indeterminate
                if self.mc is not None:
                    self.mc.close()
                self.mc = None
                r, got = "info", None
                extra["err"] = "%s: %s" % (type(e).__name__, str(e)[:80])
            ev = {"p": self.wid, "f": f, "k": k, "v": got if f in ("get", "incr") else v, "t0": t0,
                  "t1": time.monotonic(), "r": r}
            ev.update(extra)
            self.out.append(ev)
            return ev

        def get(self, k, **extra):
            return self.op("get", k, lambda mc: ("ok", dec(k, mc.get(k))), **extra)

    def dec(k, b):     # a read value as the history keeps it
        return None if b is None else history.decode(k, b.decode("utf-8", "replace"))

    def stopped():
        return os.path.exists(spec["stop"])

    def worker(wid, out):
        """set/get/delete/gets+cas of the shared registers (history: register keys)."""
        rng = random.Random(spec["seed"] * 1000 + wid)
        w, n = Worker(wid, out), 0
        fresh, gone = [], []    # this thread's fresh keys not deleted yet, and deleted
        while not stopped():
            k = rng.choice(keys)
            x = rng.random()
            time.sleep(rng.uniform(0, spec["pause"]))    # a client's think time: the load's pace
            n += 1
            if x < 0.02:    # a fresh key with a large value: the database files keep growing
                k = "nf%d_%d" % (wid, n)
                v = history.make_value(k, wid, n, pad=3000)
                ev = w.op("set", k, lambda mc: ("ok" if mc.set(k, v.encode()) else "fail", None),
                          history.value_id(k, v))
                if ev["r"] == "ok":
                    fresh.append(k)
            elif x < 0.03 and fresh:    # a fresh key deleted for good (a copy that missed it brings it back)
                k = fresh.pop(rng.randrange(len(fresh)))
                w.op("delete", k, lambda mc: ("ok" if mc.delete(k) else "nf", None))
                gone.append(k)
            elif x < 0.04 and fresh:    # an earlier fresh key read
                w.get(rng.choice(fresh))
            elif x < 0.05 and gone:     # a deleted one read
                w.get(rng.choice(gone))
            elif x < 0.45:
                v = history.make_value(k, wid, n, pad=rng.choice(PADS))
                w.op("set", k, lambda mc: ("ok" if mc.set(k, v.encode()) else "fail", None), history.value_id(k, v))
            elif x < 0.75:
                w.get(k)
            elif x < 0.85:
                w.op("delete", k, lambda mc: ("ok" if mc.delete(k) else "nf", None))
            else:
                res = {}

                def gets(mc):
                    val, unique = mc.gets(k)
                    res["cas"] = unique
                    return "ok", dec(k, val)
                ev = w.op("get", k, gets)
                if ev["r"] != "ok" or ev["v"] is None:
                    continue
                v = history.make_value(k, wid, n, pad=rng.choice(PADS))
                code = {True: "ok", False: "fail", None: "fail"}
                w.op("cas", k, lambda mc: (code[mc.cas(k, v.encode(), res["cas"])], None),
                     history.value_id(k, v), b=ev["v"])

    def rmw_worker(wid, out):
        """Read-modify-write: incr and get of the counters, add/append/delete/get
        of the lists (history: counter and list keys)."""
        rng = random.Random(spec["seed"] * 1000 + wid)
        w, n = Worker(wid, out), 0
        stored = {True: "ok", False: "fail"}

        def incr(mc):
            got = mc.incr(k, 1)
            return ("fail", None) if got is None else ("ok", str(got))
        while not stopped():
            time.sleep(rng.uniform(0, spec["pause"]))    # a client's think time: the load's pace
            n += 1
            x = rng.random()
            if x < 0.3:
                k = rng.choice(spec["counters"])
                w.op("incr", k, incr)
            elif x < 0.45:
                k = rng.choice(spec["counters"])
                w.get(k)
                continue
            k = rng.choice(spec["lists"])
            tok = "%d:%d" % (wid, n)
            if x < 0.7:
                ev = w.op("append", k, lambda mc: (stored[mc.append(k, (history.SEP + tok).encode())], None), tok)
                if ev["r"] == "fail":       # no list yet: make one
                    n += 1
                    tok = "%d:%d" % (wid, n)
                    w.op("add", k, lambda mc: (stored[mc.add(k, tok.encode())], None), tok)
            elif x < 0.85:
                w.get(k)
            elif x < 0.95:
                w.op("delete", k, lambda mc: ("ok" if mc.delete(k) else "nf", None))
            else:
                w.op("add", k, lambda mc: (stored[mc.add(k, tok.encode())], None), tok)

    outs = [[] for _ in range(spec["threads"] + spec.get("rmw_threads", 0))]
    if spec.get("final"):
        w = Worker(0, outs[0])
        for k in keys:
            for _ in range(3):
                if w.get(k, final=True)["r"] == "ok":
                    break
                time.sleep(1)   # before the retry of a final read
    else:
        ts = [threading.Thread(target=worker, args=(i, outs[i]), daemon=True) for i in range(spec["threads"])]
        ts += [threading.Thread(target=rmw_worker, args=(i, outs[i]), daemon=True)
               for i in range(spec["threads"], len(outs))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    with open(spec["out"] + ".tmp", "w") as f:
        json.dump([e for o in outs for e in o], f)
    os.replace(spec["out"] + ".tmp", spec["out"])


def probe_main(port):
    """Exit 0 once the gateway on 127.0.0.1:port answers a get with END (it holds a hash space)."""
    import socket
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"get nemesis-probe\r\n")
                if s.recv(100) == b"END\r\n":
                    sys.exit(0)
        except OSError:
            pass
        time.sleep(0.2)     # between polls
    sys.exit(1)


def load_main(port):
    """Write the filler (FILLER_MB of os.urandom under "fill:*") and set every
    counter to 0 through the gateway on 127.0.0.1:port; exit 1 on a failure."""
    from pymemcache.client.base import Client
    mc = Client(("127.0.0.1", port), connect_timeout=10, timeout=30, default_noreply=False, no_delay=True)
    for i in range((FILLER_MB << 20) // FILLER_VALUE):
        if not mc.set("fill:%d" % i, os.urandom(FILLER_VALUE)):
            sys.exit("set fill:%d: not stored" % i)
    for k in COUNTERS:
        if not mc.set(k, b"0"):
            sys.exit("set %s: not stored" % k)
    sys.exit(0)


ARGS = parse_args()
if ARGS.client:
    client_main(ARGS.client)
    sys.exit(0)
if ARGS.probe:
    probe_main(ARGS.probe)
if ARGS.load:
    load_main(ARGS.load)
os.environ.setdefault("KUMO_TEST_TIMEOUT", str(int(ARGS.minutes * 60 + 900) if ARGS.long else 600))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
sys.path.insert(0, HERE)
import kumotest as kt  # noqa: E402
import netns  # noqa: E402
import history  # noqa: E402

tap = kt.tap


class Nemesis:
    def __init__(self, rng, seed):
        self.rng = rng
        self.seed = seed
        self.dir = kt.new_tmpdir("kumo-nemesis-")
        self.net = netns.Net(HOSTS, rng)
        self.d = {}                  # host -> kt.Daemon (managers, servers); gateways by name
        self.db = {}
        self.mnt = os.path.join(self.dir, "disk")
        self.mounted = False
        self.cut = set()             # hosts with nft rules
        self.stopped = set()         # hosts under SIGSTOP
        self.log_lines = []          # the nemesis's own log: (time, text)
        self.detect = []             # (episode, seconds to (fault))
        self.windows = []            # (t0, t1): a server hung or partitioned
        self.disk_survived = []
        self.catchup = []            # (episode, host, seconds from attach to (active), None: never)
        self.spans = []              # (episode, start, end of its heal)
        self.episode = None
        kt.at_cleanup(self.umount)

    # -- plumbing
    def A(self, h):
        return self.net.addr(h)

    def note(self, msg):
        self.log_lines.append((time.monotonic(), msg))
        tap.note("%7.1f s  %s  [%.3f]" % (time.monotonic() - self.t_start, msg, time.monotonic()))

    def sleep(self, lo, hi):
        time.sleep(self.rng.uniform(lo, hi))   # a duration of the scenario (a fault held, a gap between steps)

    def start(self, name, host, argv):
        log = os.path.join(self.dir, name + ".log")
        d = self.d.get(name)
        if d is None:
            d = kt.Daemon(name, self.net.argv(host, argv), log)
            self.d[name] = d
        return d.start()

    def manager(self, h):
        other = "m2" if h == "m1" else "m1"
        return self.start(h, h, [kt.binary("kumo-manager"), "-v", "-o", "-", "-l", "%s:%d" % (self.A(h), MGR_PORT),
                                 "-c", CTL_PORT, "-p", "%s:%d" % (self.A(other), MGR_PORT)])

    def server(self, h):
        tmp = os.path.join(self.dir, "tmp-" + h)
        os.makedirs(tmp, exist_ok=True)
        return self.start(h, h, [kt.binary("kumo-server"), "-v", "-o", "-",
                                 "-m", "%s:%d" % (self.A("m1"), MGR_PORT), "-p", "%s:%d" % (self.A("m2"), MGR_PORT),
                                 "-l", "%s:%d" % (self.A(h), SRV_PORT), "-L", STREAM_PORT, "-s", self.db[h], "-f", tmp,
                                 "-Rr", REPLACE_RATE])

    def gateway(self, port):
        name = "gateway%d" % port
        d = self.start(name, "gw", [kt.binary("kumo-gateway"), "-v", "-o", "-",
                                    "-m", "%s:%d" % (self.A("m1"), MGR_PORT), "-p", "%s:%d" % (self.A("m2"), MGR_PORT),
                                    "-t", "0.0.0.0:%d" % port])
        r = self.net.run("gw", [PY, os.path.abspath(__file__), "--probe", port], timeout=40)
        if r.returncode != 0:
            raise kt.DaemonDied("gateway on %d never answered a get\n%s" % (port, d.tail(20)))

    def kumoctl(self, *args, timeout=15):
        """kumoctl against whichever manager answers (m1 first)."""
        r = None
        for m in ("m1", "m2"):
            if not self.d[m].alive():
                continue
            r = self.net.run("gw", [kt.binary("kumoctl"), "%s:%d" % (self.A(m), CTL_PORT)] + list(args),
                             timeout=timeout)
            if r.returncode == 0 or (args[:1] == ("status",) and r.returncode in kt.STATUS_ANSWERED):
                return r
        return r

    def status(self, m=None):
        if m:
            r = self.net.run("gw", [kt.binary("kumoctl"), "%s:%d" % (self.A(m), CTL_PORT), "status"], timeout=10)
        else:
            r = self.kumoctl("status", timeout=10)
        if r is None or r.returncode not in kt.STATUS_ANSWERED:
            raise OSError("kumoctl status: %s" % (r and (r.stderr or r.stdout).strip()))
        return kt.Status(r.stdout)

    def saddr(self, h):
        return "%s:%d" % (self.A(h), SRV_PORT)

    # -- set-up
    def setup(self):
        self.t_start = time.monotonic()
        self.net.up()
        for h in SERVERS:       # see SOCK_MAX
            for knob in ("net.ipv4.tcp_wmem", "net.ipv4.tcp_rmem"):
                r = self.net.run(h, ["sysctl", "-q", "-w", "%s=4096 16384 %d" % (knob, SOCK_MAX)])
                if r.returncode != 0:
                    raise OSError("sysctl %s in %s: %s" % (knob, h, r.stderr.strip()))
        for h in SERVERS:
            self.db[h] = os.path.join(self.dir, "%s.tch" % h)
        # s5's database on a tmpfs: room for the 64 MiB kumo-server reserves
        # for Tokyo Cabinet's map (store.c reserve_map) and some more. Made
        # small beforehand (a file made with tchmgr keeps its tuning).
        os.makedirs(self.mnt)
        netns.sh(["mount", "-t", "tmpfs", "-o", "size=96m", "nemesis", self.mnt])
        self.mounted = True
        self.db[DISK_HOST] = os.path.join(self.mnt, "%s.tch" % DISK_HOST)
        netns.sh(["tchmgr", "create", self.db[DISK_HOST], "65521"])
        for m in ("m1", "m2"):
            self.manager(m)
        for m in ("m1", "m2"):
            kt.wait_until(lambda: self.status(m), 20, "manager %s answers" % m, daemons=[self.d[m]])
        for h in SERVERS:
            self.server(h)
        self.heal(first=True)
        for p in GW_PORTS:
            self.gateway(p)
        t0 = time.monotonic()
        r = self.net.run("gw", [PY, os.path.abspath(__file__), "--load", GW_PORTS[0]], timeout=180)
        if r.returncode != 0:
            raise OSError("loading the filler: %s" % (r.stderr or r.stdout)[-2000:])
        tap.ok(True, "2 managers, %d servers, 2 gateways in namespaces %s-*; %d MiB of filler, %d counters "
               "written in %.1f s" % (len(SERVERS), self.net.tag, FILLER_MB, len(COUNTERS), time.monotonic() - t0))

    def umount(self):
        if self.mounted:
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
            self.mounted = False

    # -- faults
    def nft(self, h, drop_from):
        """Drop every packet between h and the hosts drop_from (nft, in h's namespace)."""
        addrs = ", ".join(self.A(x) for x in drop_from)
        rules = ("table inet nemesis {\n"
                 " chain in { type filter hook input priority 0; policy accept; ip saddr { %s } drop; }\n"
                 " chain out { type filter hook output priority 0; policy accept; ip daddr { %s } drop; }\n"
                 "}\n" % (addrs, addrs))
        r = subprocess.run(self.net.argv(h, ["nft", "-f", "-"]), input=rules, capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError("nft in %s: %s" % (h, r.stderr.strip()))
        self.cut.add(h)

    def unnft(self, h):
        subprocess.run(self.net.argv(h, ["nft", "delete", "table", "inet", "nemesis"]), capture_output=True)
        self.cut.discard(h)

    def sig(self, h, s):
        d = self.d[h]
        if d.alive():
            os.kill(d.pid, s)
        if s == signal.SIGSTOP:
            self.stopped.add(h)
        elif s == signal.SIGCONT:
            self.stopped.discard(h)

    def kill9(self, h):
        self.sig(h, signal.SIGCONT)
        self.d[h].kill9()

    def wait_fault(self, h, t0, what, record=True):
        """Seconds from t0 until a manager shows h (fault); None after 30 s.
        record: a detection latency (t0 = the moment of the fault)."""
        deadline = t0 + 30
        while time.monotonic() < deadline:
            try:
                if self.status("m1").state(self.saddr(h)) == "fault":
                    dt = time.monotonic() - t0
                    if record:
                        self.detect.append((what, dt))
                    self.note("%s marked fault after %.1f s" % (h, dt))
                    return dt
            except OSError:
                pass
            time.sleep(0.2)     # between polls
        if record:
            self.detect.append((what, None))
        tap.ok(False, "%s (%s) is marked fault by the manager" % (h, what))
        return None

    def heal(self, first=False):
        """Undo every fault, restart what is down, attach, wait for the replace."""
        for h in list(self.cut):
            self.unnft(h)
        for h in list(self.stopped):
            self.sig(h, signal.SIGCONT)
        filler = os.path.join(self.mnt, "filler")
        if os.path.exists(filler):
            os.unlink(filler)
        for m in ("m1", "m2"):
            if not self.d[m].alive():
                self.manager(m)
        for m in ("m1", "m2"):
            kt.wait_until(lambda: self.status(m), 20, "manager %s answers" % m, daemons=[self.d[m]])
        for h in SERVERS:
            if not self.d[h].alive():
                if not first and not self.d[h].expected_exit:
                    tap.ok(False, "%s did not die by itself (exit %s)" % (h, self.d[h].returncode()), self.d[h].tail(20))
                self.server(h)
        want = [self.saddr(h) for h in SERVERS]

        def settled():
            ok = True
            for m in ("m1", "m2"):
                st = self.status(m)
                known = set(st.not_attached) | {a for a, s in st.attached if s == "active"}
                # attach once every server is back (an operator's usual step); with
                # --partial-attach as soon as one is (hash spaces change in quick succession)
                if any(a in st.not_attached for a in want) and (ARGS.partial_attach or all(a in known for a in want)):
                    self.kumoctl("attach")
                    return False
                ok = ok and all(st.state(a) == "active" for a in want) and "replace:" not in st.text
            return ok
        t0 = time.monotonic()
        kt.wait_until(settled, 120, "every server attached, active on both managers, replace finished",
                      interval=0.5, daemons=[self.d[m] for m in ("m1", "m2")])
        if not first:
            self.note("healed in %.1f s" % (time.monotonic() - t0))

    # -- episodes
    def pick(self, n=1, exclude=()):
        return self.rng.sample([h for h in SERVERS if h not in exclude], n)

    def ep_kill(self):
        x, y = self.pick(2)
        self.note("kill -9 %s" % x)
        self.kill9(x)
        self.sleep(2, 5)
        self.note("kill -9 %s while %s is down" % (y, x))
        self.kill9(y)
        self.sleep(2, 5)
        if self.rng.random() < 0.5:
            self.wait_fault(y, time.monotonic(), "kill", record=False)    # detach needs it fault
            r = self.kumoctl("detach")
            self.note("kumoctl detach: %s" % (r.stdout.strip() or r.returncode))
            self.sleep(2, 4)
        self.note("restart %s and %s on their databases" % (x, y))

    def ep_stop(self):
        x, = self.pick()
        t0 = time.monotonic()
        self.note("SIGSTOP %s" % x)
        self.sig(x, signal.SIGSTOP)
        self.wait_fault(x, t0, "SIGSTOP")
        self.sleep(1, 3)
        self.note("SIGCONT %s" % x)
        self.sig(x, signal.SIGCONT)
        self.windows.append((t0, time.monotonic()))

    def ep_partition(self):
        x, = self.pick()
        kind = self.rng.choice(["all", "managers", "gateways"])
        others = {"all": [h for h in HOSTS if h != x], "managers": ["m1", "m2"], "gateways": ["gw"]}[kind]
        t0 = time.monotonic()
        self.note("partition %s from %s" % (x, kind))
        self.nft(x, others)
        if kind == "gateways":
            self.sleep(4, 7)
        else:
            self.wait_fault(x, t0, "partition from " + kind)
            self.sleep(1, 3)
        self.note("heal the partition of %s" % x)
        self.unnft(x)
        self.windows.append((t0, time.monotonic()))

    def ep_manager(self):
        self.note("kill -9 manager m1")
        self.kill9("m1")
        self.sleep(2, 5)

    def ep_managers(self):
        self.note("kill -9 both managers")
        self.kill9("m1")
        self.kill9("m2")
        self.sleep(3, 6)

    def ep_disk(self):
        self.note("fill the tmpfs of %s" % DISK_HOST)
        with open(os.path.join(self.mnt, "filler"), "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        self.sleep(4, 7)
        alive = self.d[DISK_HOST].alive()
        self.disk_survived.append(alive)
        self.note("%s %s on a full disk; free it" % (
            DISK_HOST, "kept running" if alive else "died (exit %s)" % self.d[DISK_HOST].returncode()))
        if not alive:
            self.d[DISK_HOST].expected_exit = True
        os.unlink(os.path.join(self.mnt, "filler"))

    def ep_stale(self):
        x, = self.pick()
        snap = os.path.join(self.dir, "stale-%s.tch" % x)
        self.sig(x, signal.SIGSTOP)          # a consistent copy: as if killed at this instant
        try:
            shutil.copyfile(self.db[x], snap)
        finally:
            self.sig(x, signal.SIGCONT)
        self.note("copied %s's database; load goes on" % x)
        self.sleep(4, 8)
        self.note("kill -9 %s, restart it on the stale copy" % x)
        self.kill9(x)
        shutil.copyfile(snap, self.db[x])
        os.unlink(snap)

    # -- an operator's steps (the episodes below)
    def term(self, h):
        """SIGTERM h (it must exit 0), wait until a manager shows it (fault)."""
        t0 = time.monotonic()
        code, killed = self.d[h].stop(timeout=15)
        if code != 0 or killed:
            tap.ok(False, "%s: SIGTERM -> exit 0" % h, "status %s, killed %s\n%s" % (code, killed, self.d[h].tail(20)))
        self.wait_fault(h, t0, "SIGTERM", record=False)

    def restart_attach(self, h):
        """Start h on its database; as soon as a manager lists it under "not
        attached node", `kumoctl attach`. Returns the time of the attach."""
        self.server(h)
        kt.wait_until(lambda: self.saddr(h) in self.status().not_attached, 30,
                      "%s under not attached node" % h, interval=0.1, daemons=[self.d[h]])
        r = self.kumoctl("attach")
        t = time.monotonic()
        self.note("%s restarted, kumoctl attach: %s" % (h, (r.stdout.strip() or r.returncode) if r else "no manager"))
        return t

    def wait_active(self, h, t_attach, timeout=90):
        """Poll `kumoctl status` every 0.2 s until h shows (active); records
        the seconds from its attach (the catch-up time)."""
        try:
            kt.wait_until(lambda: self.status().state(self.saddr(h)) == "active", timeout,
                          "%s (active) in kumoctl status" % h, interval=0.2, daemons=[self.d[h]])
        except TimeoutError as e:
            self.catchup.append((self.episode, h, None))
            tap.ok(False, "%s shows (active) after its attach" % h, str(e))
            return None
        dt = time.monotonic() - t_attach
        self.catchup.append((self.episode, h, dt))
        self.note("%s (active) %.1f s after the attach" % (h, dt))
        return dt

    def ring(self):
        return kt.Ring(self.status().attached_addrs())

    def first_owner_of_most(self, keys):
        """The server that is the first owner of the most of keys (ties: the seed's choice)."""
        ring = self.ring()
        by = {h: 0 for h in SERVERS}
        host = {self.saddr(h): h for h in SERVERS}
        for k in keys:
            by[host[ring.owners(k.encode())[0]]] += 1
        top = max(by.values())
        return self.rng.choice(sorted(h for h in SERVERS if by[h] == top)), top

    def owners_of_most(self, keys):
        """The three servers that together own the most of keys, in an order the seed draws."""
        ring = self.ring()
        host = {self.saddr(h): h for h in SERVERS}
        by = {}
        for k in keys:
            trio = tuple(sorted(host[a] for a in ring.owners(k.encode())))
            by[trio] = by.get(trio, 0) + 1
        top = max(by.values())
        trio = list(self.rng.choice(sorted(t for t in by if by[t] == top)))
        self.rng.shuffle(trio)
        return trio, top

    def ep_restart_rmw(self):
        x, n = self.first_owner_of_most(COUNTERS + LISTS)
        self.note("SIGTERM %s (first owner of %d counters and lists)" % (x, n))
        self.term(x)
        self.sleep(3, 6)                     # its keys change meanwhile
        t = self.restart_attach(x)           # and read-modify-write goes on at once
        self.wait_active(x, t)

    def ep_rolling(self):
        trio, n = self.owners_of_most(self.client_keys)
        self.note("rolling restart of %s (together the owners of %d keys)" % (" ".join(trio), n))
        for x in trio:                       # the next stop as soon as the previous shows (active)
            self.note("SIGTERM %s" % x)
            self.term(x)
            self.sleep(1, 3)
            t = self.restart_attach(x)
            if self.wait_active(x, t) is None:
                break

    def ep_reattach(self):
        x, = self.pick()
        self.note("SIGTERM %s" % x)
        self.term(x)
        self.sleep(1, 3)
        r = self.kumoctl("detach")
        self.note("kumoctl detach: %s" % ((r.stdout.strip() or r.returncode) if r else "no manager"))
        t0 = time.monotonic()
        try:    # the operator waits for the detach's replace, under load
            kt.wait_until(lambda: "replace:" not in self.status().text and
                          self.status().state(self.saddr(x)) is None, 90,
                          "the replace after detaching %s" % x, interval=0.2)
            self.note("the replace after the detach finished in %.1f s" % (time.monotonic() - t0))
        except TimeoutError as e:
            tap.ok(False, "the replace after the detach of %s finishes" % x, str(e))
        self.sleep(1, 3)
        t = self.restart_attach(x)
        self.wait_active(x, t)

    def ep_emptydb(self):
        x, = self.pick()
        self.note("SIGTERM %s, its database moved aside" % x)
        self.term(x)
        shutil.move(self.db[x], os.path.join(self.dir, "%s-%d.tch" % (x, len(self.spans))))
        if x == DISK_HOST:      # a small file, as in setup
            netns.sh(["tchmgr", "create", self.db[x], "65521"])
        self.sleep(2, 4)
        t = self.restart_attach(x)
        self.wait_active(x, t)

    def ep_backup(self):
        # not s5: its database and the 64 MiB reserved ahead of it leave its
        # tmpfs too little room for a backup beside it (which may then fail)
        x, = self.pick(exclude=(DISK_HOST,))
        suffix = "nemesis%d" % len(self.spans)
        r = self.kumoctl("backup", suffix, timeout=60)
        old = os.path.join(self.dir, "backup-%s.tch" % x)
        made = [self.db[h] + "-" + suffix for h in SERVERS]
        if not os.path.exists(made[SERVERS.index(x)]):
            tap.ok(False, "kumoctl backup %s wrote %s" % (suffix, made[SERVERS.index(x)]),
                   r and (r.stdout + r.stderr))
            return
        shutil.move(made[SERVERS.index(x)], old)
        for f in made:
            if os.path.exists(f):
                os.unlink(f)
        self.note("kumoctl backup (exit %s); %s's copy kept, load goes on (overwrites, deletes)" % (
            r.returncode if r else "-", x))
        self.sleep(5, 8)
        self.note("SIGTERM %s, restore its backup" % x)
        self.term(x)
        shutil.copyfile(old, self.db[x])
        os.unlink(old)
        t = self.restart_attach(x)
        self.wait_active(x, t)

    def run_episode(self, name):
        self.episode = name
        t0 = time.monotonic()
        getattr(self, "ep_" + name)()
        self.heal()
        self.spans.append((name, t0, time.monotonic()))

    # -- clients
    def start_clients(self, nkeys, threads, rmw_threads):
        self.keys = ["nk%d" % i for i in range(nkeys)]
        self.client_keys = self.keys + COUNTERS + LISTS
        self.stop_file = os.path.join(self.dir, "clients.stop")
        spec = {"keys": self.keys, "seed": self.seed, "threads": threads, "stop": self.stop_file,
                "out": os.path.join(self.dir, "history.json"), "timeout": 60, "pause": 0.004,
                "rmw_threads": rmw_threads, "counters": COUNTERS, "lists": LISTS}
        path = os.path.join(self.dir, "clients.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        self.clients = self.start("clients", "gw", [PY, os.path.abspath(__file__), "--client", path])
        self.client_out = spec["out"]

    def stop_clients(self):
        with open(self.stop_file, "w"):
            pass
        self.clients.expected_exit = True
        kt.wait_until(lambda: os.path.exists(self.client_out) or not self.clients.alive(), 150,
                      "the clients to finish their last ops", interval=0.5)
        self.clients.stop()
        with open(self.client_out) as f:
            return json.load(f)

    def final_reads(self):
        spec = {"keys": self.keys, "seed": self.seed, "threads": 1, "final": True,
                "out": os.path.join(self.dir, "final.json"), "timeout": 60, "stop": self.stop_file, "pause": 0}
        path = os.path.join(self.dir, "final-spec.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        r = self.net.run("gw", [PY, os.path.abspath(__file__), "--client", path], timeout=600)
        if r.returncode != 0:
            raise OSError("final reads: %s" % r.stderr[-2000:])
        with open(spec["out"]) as f:
            return json.load(f)

    # -- the copies on disk
    def copies(self, final):
        """Stop the servers, read their files; returns (under-replicated descriptions, disagreements
        between the final read and the newest record)."""
        st = self.status("m1")
        ring = kt.Ring(st.attached_addrs())
        for p in GW_PORTS:
            self.d["gateway%d" % p].stop()
        held = {}
        for h in SERVERS:
            code, killed = self.d[h].stop()
            if code != 0 or killed:
                tap.ok(False, "%s: SIGTERM -> exit 0" % h, "status %s, killed %s" % (code, killed))
            recs = {}
            for k, v in kt.tch_records(self.db[h]):
                rec = kt.Record(k, v)
                recs[rec.key.decode()] = rec
            held[self.saddr(h)] = recs
        last = {e["k"]: e for e in final if e["r"] == "ok"}
        under, differ = [], []
        for k in self.keys:
            recs = [(a, held[a][k]) for a in held if k in held[a]]
            if not recs:
                if last.get(k, {}).get("v") is not None:
                    differ.append("%s: final read %s, no record anywhere" % (k, last[k]["v"][:30]))
                continue
            newest = max(r.clocktime for _, r in recs)
            top = [r for _, r in recs if r.clocktime == newest][0]
            want = None if top.tombstone else history.decode(k, top.payload.decode("utf-8", "replace"))
            if k in last and last[k]["v"] != want:
                differ.append("%s: final read %s, newest record %s" % (k, kt.short(last[k]["v"], 40), kt.short(want, 40)))
            owners = ring.owners(k.encode())
            have = [a for a in owners if k in held[a] and held[a][k].clocktime == newest]
            if top.tombstone:   # a deleted key: no owner may still hold a live value
                have = [a for a in owners if k not in held[a] or held[a][k].tombstone]
            if len(have) < 3:
                under.append("%s: newest (%s) on %s of owners %s" % (
                    k, "tombstone" if top.tombstone else "value", have, owners))
        return under, differ


def body():
    why = netns.available()
    if why:
        tap.skip_all(why)
    kt.require_binaries()
    kt.require_module("pymemcache")
    for tool in ("nft", "tchmgr"):
        if not shutil.which(tool):
            tap.bail("%s is not installed (quickstart installs it)" % tool)
    seed = ARGS.seed if ARGS.seed is not None else int(os.environ.get("KUMO_TEST_SEED") or
                                                         int.from_bytes(os.urandom(4), "big"))
    tap.note("seed %d (rerun: %s --seed %d%s%s%s)" % (
        seed, sys.argv[0], seed, " --long --minutes %g" % ARGS.minutes if ARGS.long else "",
        " --partial-attach" if ARGS.partial_attach else "", " --episodes " + ARGS.episodes if ARGS.episodes else ""))
    rng = random.Random(seed)
    n = Nemesis(rng, seed)
    try:
        n.setup()
        n.start_clients(nkeys=100 if ARGS.long else 30, threads=4, rmw_threads=2)
        time.sleep(3)   # a duration: the clients run a while before the first episode
        t_end = time.monotonic() + ARGS.minutes * 60
        pool = ARGS.episodes.split(",") if ARGS.episodes else list(EPISODES)
        order = list(pool)
        if not ARGS.episodes:
            rng.shuffle(order)
        done = []
        while True:
            name = order.pop(0) if order else (None if not ARGS.long else rng.choice(pool))
            if name is None or (ARGS.long and not order and time.monotonic() > t_end and done):
                break
            n.note("== episode %d: %s" % (len(done) + 1, name))
            n.run_episode(name)
            done.append(name)
            time.sleep(rng.uniform(1, 3))   # a duration: a quiet gap between episodes
        tap.ok(True, "schedule of %d episodes ran: %s" % (len(done), " ".join(done)))
        events = n.stop_clients()
        n.keys = sorted({e["k"] for e in events})
        n.heal()
        n.t_final = time.monotonic()
        final = n.final_reads()
        rep = history.check(events + final)
        under, differ = n.copies(final)
        figures(n, rep, events, final, under)
        for cls in history.CLASSES:
            tap.ok(rep.count[cls] == 0, "checker: %s = 0" % cls, "\n".join(rep.examples[cls]))
        tap.ok(rep.acked_writes > 100 and rep.reads > 100, "the clients got work done (%d acknowledged writes, "
               "%d reads)" % (rep.acked_writes, rep.reads))
        rmw = {f: sum(1 for e in events if e["f"] == f and e["r"] == "ok") for f in ("incr", "append", "add")}
        tap.ok(all(rmw.values()), "the read-modify-write clients got work done (acknowledged: %s)"
               % ", ".join("%s %d" % kv for kv in rmw.items()))
        final_err = [e for e in final if e["r"] != "ok" and not any(
            f["k"] == e["k"] and f["r"] == "ok" for f in final)]
        tap.ok(not final_err, "every key reads after the heal", "\n".join(str(e) for e in final_err[:5]))
        tap.ok(not under, "every key's newest record is on its 3 owners (%d keys)" % len(n.keys),
               "\n".join(under[:10]))
        tap.ok(not differ, "the final reads agree with the newest record on disk", "\n".join(differ[:10]))
        bad = [e for e in events if e["f"] == "get" and e["r"] != "ok" and
               any(e["t0"] < w1 and e["t1"] > w0 for w0, w1 in n.windows)]
        tap.ok(not bad, "no read failed while a server was hung or partitioned (%d windows)" % len(n.windows),
               "\n".join("%s %s: %s" % (e["k"], e["f"], e.get("err")) for e in bad[:10]))
        tap.ok(all(dt is not None for _, dt in n.detect), "every hung/partitioned/detached server was marked fault")
        if n.disk_survived:
            if all(n.disk_survived):
                tap.ok(True, "%s kept running on a full disk" % DISK_HOST)
            else:
                tap.ok(False, "%s kept running on a full disk" % DISK_HOST, n.d[DISK_HOST].tail(10))
    finally:
        for h in list(n.stopped):
            n.sig(h, signal.SIGCONT)
        kt.stop_all()
        n.umount()
        n.net.down()


def by_episode(n, rep):
    """"restart_rmw: stale 3 wrong 5; ..." — the anomalies by the episode last
    begun when the offending operation completed (its damage may outlast its
    heal); "final" for the final reads."""
    out = {}
    for cls in history.CLASSES:
        for t in rep.times[cls]:
            begun = [ep for ep, t0, _ in n.spans if t0 <= t]
            where = "final" if t >= n.t_final else begun[-1] if begun else "before the first episode"
            out.setdefault(where, {}).setdefault(cls, 0)
            out[where][cls] += 1
    return "; ".join("%s: %s" % (ep, " ".join("%s %d" % kv for kv in sorted(c.items()))) for ep, c in out.items())


def figures(n, rep, events, final, under):
    lat = [dt for _, dt in n.detect if dt is not None]
    errs = [e for e in events if e["r"] == "info"]
    by = {}
    for e in errs:
        by[e["f"]] = by.get(e["f"], 0) + 1
    lines = [
        "figures (seed %d):" % n.seed,
        "  ops %d (final reads %d), acknowledged writes %d, indeterminate %d (%s), reads %d, read errors %d" % (
            len(events), len(final), rep.acked_writes, rep.indeterminate,
            " ".join("%s %d" % kv for kv in sorted(by.items())) or "-", rep.reads, rep.read_errors),
        "  lost %d, stale reads %d, torn %d, phantom %d, resurrected %d, under-replicated keys %d" % (
            rep.count["lost"], rep.count["stale"], rep.count["torn"], rep.count["phantom"],
            rep.count["resurrected"], len(under)),
        "  wrong answers %d (read-modify-write answered from an old or missing copy)" % rep.count["wrong"],
        "  by kind of key: %s" % ("; ".join("%s: %s" % (cls, " ".join("%s %d" % kv for kv in sorted(
            rep.by_model[cls].items()))) for cls in history.CLASSES if rep.count[cls]) or "-"),
        "  by episode (the operation's completion): %s" % (by_episode(n, rep) or "-"),
        "  catch-up (attach to (active)): %s" % (", ".join(
            "%s %s %s" % (ep, h, "%.1f s" % dt if dt is not None else "never") for ep, h, dt in n.catchup) or "-"),
        "  detection latency: %s" % (", ".join("%s %.1f s" % (w, dt) if dt is not None else "%s never" % w
                                               for w, dt in n.detect) or "-"),
        "  detection min/max %s" % ("%.1f / %.1f s" % (min(lat), max(lat)) if lat else "-"),
        "  full disk: %s" % (", ".join("survived" if s else "died" for s in n.disk_survived) or "-"),
    ]
    gets = sorted(e["t1"] - e["t0"] for e in events if e["f"] == "get" and e["r"] == "ok")
    if gets:
        lines.append("  get latency p50 %.3f s, p99 %.3f s, max %.1f s" % (
            gets[len(gets) // 2], gets[int(len(gets) * 0.99)], gets[-1]))
    for line in lines:
        tap.note(line)
        if ARGS.long:
            sys.stderr.write(line + "\n")


if __name__ == "__main__":
    kt.main(body)

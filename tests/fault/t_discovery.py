#!/usr/bin/python3
"""t_discovery — a cluster in network namespaces found entirely through DNS.

Hosts are network namespaces on one bridge (tests/fault/netns.py): m1, m2
(managers), s1..s4 (servers), gw (gateway), cl (the client), m1b (where
manager 1 moves), dns (a dnsmasq serving kumo.test; every host's
/etc/netns/NS/resolv.conf names it). Every daemon runs with --metrics 9100,
read from inside its namespace, to count its links.

  a. One name, two A records: managers.kumo.test -> m1, m2. The managers run
     `-a -Rs 1 -p managers.kumo.test` (a partner name that also names the
     manager itself; if kumo-manager refuses a name, the partner's address
     is given and that is reported). Servers in s1, s2 started with
     `-m managers.kumo.test` and no -l: they announce their namespace
     address and are attached with no kumoctl; each links to both managers;
     kumoctl reaches a manager by name; a gateway `-m managers.kumo.test`
     links to both; a client in `cl` sets and gets through it.
  b. SRV: `-m dnssrv+_kumo-manager._tcp.kumo.test` for a third server (the
     cluster grows by itself) and for a restarted gateway.
  c. Manager 1 moves: SIGTERM (exit 0), the records now give m1b's address,
     SIGHUP to dnsmasq, manager 1 starts in m1b. Within 40 s the servers and
     the gateway link to it (and drop the old address), kumoctl against the
     new address shows every server active, manager 2 finds its partner
     again; a client keeps reading and writing through the gateway all along.
  d. Bad names: a server named by late.kumo.test (not in DNS) logs it,
     keeps retrying and joins once the name is added; a gateway named by an
     SRV record without a port logs it and keeps running; a server waiting
     for a name stops with exit 0 on SIGTERM.
  e. IPv6: a manager on [fd00:..]:19700, four servers with no -l named to it
     through an AAAA record, a gateway on [::]; the client uses the gateway's
     v6 address; every key is on the three owners computed with the 18-byte
     node identity (port BE + 16 address bytes).

Needs root, `ip netns`, dnsmasq, pymemcache under /usr/bin/python3. Skips
(1..0 # SKIP) only without root or ip netns; a missing dnsmasq is a failure
(quickstart must install it). Namespaces, /etc/netns dirs and dnsmasq are
removed at exit, also on failure, a signal or the watchdog.
"""
import json
import os
import shutil
import socket
import struct
import bisect
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
sys.path.insert(0, HERE)
import kumotest as kt  # noqa: E402
import netns  # noqa: E402

tap = kt.tap
PY = "/usr/bin/python3"
MGR_PORT, CTL_PORT, SRV_PORT, GW_PORT, METRICS = 19700, 19799, 19800, 11211, 9100
HOSTS = ["m1", "m2", "s1", "s2", "s3", "s4", "gw", "cl", "m1b", "dns", "bh"]
MOVE_WITHIN = 40.0

CLIENT = r'''
import json, sys, time
req = json.load(sys.stdin)
op = req["op"]
if op == "metrics":
    import urllib.request
    try:
        out = {"text": urllib.request.urlopen(req["url"], timeout=3).read().decode()}
    except Exception as e:
        out = {"error": repr(e)}
    print(json.dumps(out))
    sys.exit(0)
from pymemcache.client.base import Client
host, port = req["server"]
def client():
    return Client((host, port), connect_timeout=3, timeout=5, default_noreply=False, no_delay=True)
deadline = time.time() + req.get("deadline", 20)
if op == "version":
    try:
        print(json.dumps({"version": client().version().decode()}))
    except Exception as e:
        print(json.dumps({"error": repr(e)}))
elif op == "set":
    failed, c = [], None
    for k, v in req["keys"].items():
        while True:
            try:
                if c is None:
                    c = client()
                if c.set(k, v.encode()) is True:
                    break
            except Exception:
                c = None
            if time.time() > deadline:
                failed.append(k)
                break
            time.sleep(0.2)     # before the retry
    print(json.dumps({"failed": failed}))
elif op == "get":
    keys, got, c, err = req["keys"], {}, None, None
    while True:
        try:
            if c is None:
                c = client()
            miss = [k for k in keys if k not in got]
            for i in range(0, len(miss), 50):
                for k, v in c.get_many(miss[i:i + 50]).items():
                    got[k] = v.decode("utf-8", "replace")
        except Exception as e:
            c, err = None, repr(e)
        if len(got) == len(keys) or time.time() > deadline:
            break
        time.sleep(0.3)     # between the rounds of a polling loop
    print(json.dumps({"got": got, "error": err}))
elif op == "loop":
    # until the stop file appears: set a new key, read it back; count and time it
    res = {"ok": 0, "errors": 0, "wrong": 0, "max_stall": 0.0, "last_error": None}
    c, i, last_ok = None, 0, time.time()
    while not __import__("os").path.exists(req["stop"]):
        k, v = "loop:%d" % i, "value-%d" % i
        try:
            if c is None:
                c = client()
            if c.set(k, v.encode()) is True and c.get(k) == v.encode():
                res["ok"] += 1
                i += 1
                res["max_stall"] = max(res["max_stall"], time.time() - last_ok)
                last_ok = time.time()
            else:
                res["wrong"] += 1
        except Exception as e:
            c = None
            res["errors"] += 1
            res["last_error"] = repr(e)
            time.sleep(0.2)     # before the retry on a new connection
        time.sleep(0.05)        # the loop's pace
    res["max_stall"] = max(res["max_stall"], time.time() - last_ok)
    res["keys"] = i
    with open(req["out"], "w") as f:
        json.dump(res, f)
'''


def die_skip_or_fail():
    why = netns.available()
    if why:
        tap.skip_all(why)
    kt.require_binaries(("kumo-manager", "kumo-server", "kumo-gateway", "kumoctl"))
    if not shutil.which("dnsmasq") and not os.access("/usr/sbin/dnsmasq", os.X_OK):
        tap.bail("dnsmasq is not installed (apt-get install dnsmasq; quickstart test must install it)")
    r = kt.subprocess.run([PY, "-c", "import pymemcache"], capture_output=True)
    if r.returncode != 0:
        tap.bail("pymemcache not importable by %s (apt-get install python3-pymemcache)" % PY)


# ---------------------------------------------------------------- placement (v4 and v6)

def identity(addr):
    """docs/protocol.md §2.1 node identity: port BE + 4 (IPv4) or 16 (IPv6) address bytes."""
    host, port = addr.rsplit(":", 1)
    if host.startswith("["):
        return struct.pack(">H", int(port)) + socket.inet_pton(socket.AF_INET6, host[1:-1])
    return struct.pack(">H", int(port)) + socket.inet_aton(host)


def owners_fn(nodes, keys=None):
    """Owners by the 0.4 rule over nodes (addresses), each placed by its
    ring key in keys (kt.ring_key_of) or, if it has none, its address."""
    vn = []
    for idx, a in enumerate(nodes):
        h = kt.khash((keys or {}).get(a) or identity(a))
        for _ in range(kt.VNODES):
            vn.append((h, idx))
            h = kt.khash(struct.pack("<Q", h))
    vn.sort(key=lambda x: x[0])
    hashes = [h for h, _ in vn]
    owner = [i for _, i in vn]

    def owners(key):
        i = bisect.bisect_left(hashes, kt.khash(key))
        out = []
        for j in range(len(hashes)):
            n = owner[(i + j) % len(hashes)]
            if n not in out:
                out.append(n)
                if len(out) == min(kt.REPLICAS, len(nodes)):
                    break
        return [nodes[k] for k in out]
    return owners


# ---------------------------------------------------------------- the test

class T:
    def __init__(self):
        self.rng = kt.make_rng()
        self.dir = kt.new_tmpdir("kumo-discovery-")
        self.logdir = os.path.join(self.dir, "logs")
        os.makedirs(self.logdir)
        self.client_py = os.path.join(self.dir, "client.py")
        with open(self.client_py, "w") as f:
            f.write(CLIENT)
        self.net = netns.Net(HOSTS, self.rng)
        self.d = {}            # name -> kt.Daemon
        self.partner_arg = "managers.kumo.test"

    # -- helpers
    def A(self, h):
        return self.net.addr(h)

    def log(self, name):
        return os.path.join(self.logdir, name + ".log")

    def start(self, name, host, argv):
        d = kt.Daemon(name, self.net.argv(host, argv), self.log(name)).start()
        self.d[name] = d
        return d

    def manager(self, name, host, partner):
        return self.start(name, host, [kt.binary("kumo-manager"), "-v", "-o", "-", "-l",
                                       "%s:%d" % (self.A(host), MGR_PORT), "-c", CTL_PORT, "-a", "-Rs", "1",
                                       "-p", partner, "--metrics", METRICS])

    def server(self, name, host, mgr, extra=()):
        db = os.path.join(self.dir, "%s-%s.tch" % (name, host))
        tmp = os.path.join(self.dir, "tmp-" + name)
        os.makedirs(tmp, exist_ok=True)
        d = self.start(name, host, [kt.binary("kumo-server"), "-v", "-o", "-", "-m", mgr, "-s", db, "-f", tmp,
                                    "--metrics", METRICS] + list(extra))
        d.db = db
        return d

    def gateway(self, name, host, mgr, listen=str(GW_PORT)):
        return self.start(name, host, [kt.binary("kumo-gateway"), "-v", "-o", "-", "-m", mgr, "-t", listen,
                                       "--metrics", METRICS])

    def kumoctl(self, host, target, *args, timeout=15):
        return self.net.run(host, [kt.binary("kumoctl"), target] + list(args), timeout=timeout)

    def status(self, target, host="cl"):
        r = self.kumoctl(host, target, "status", timeout=10)
        if r.returncode not in kt.STATUS_ANSWERED:
            raise OSError("kumoctl %s status: exit %s: %s" % (target, r.returncode, (r.stderr or r.stdout).strip()))
        return kt.Status(r.stdout)

    def client(self, req, timeout=60):
        r = self.net.run("cl", [PY, self.client_py], input=json.dumps(req), timeout=timeout)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise OSError("client %s: exit %s: %s %s" % (req["op"], r.returncode, r.stdout[-500:], r.stderr[-2000:]))

    def metric(self, host, name):
        out = self.client({"op": "metrics", "url": "http://%s:%d/metrics" % (self.A(host), METRICS)}, timeout=15)
        if "text" not in out:
            raise OSError("metrics of %s: %s" % (host, out.get("error")))
        for line in out["text"].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise ValueError("%s: no metric %s" % (host, name))

    def live(self):
        return [d for d in self.d.values() if not d.expected_exit]

    def wait(self, cond, timeout, what, interval=0.3):
        return kt.wait_until(cond, timeout, what, interval=interval, daemons=self.live())

    def set_keys(self, server, keys, deadline=30):
        return self.client({"op": "set", "server": server, "keys": keys, "deadline": deadline},
                           timeout=deadline + 30)["failed"]

    def get_keys(self, server, keys, deadline=30):
        out = self.client({"op": "get", "server": server, "keys": list(keys), "deadline": deadline},
                          timeout=deadline + 30)
        return out["got"]

    def log_has(self, name, *needles):
        """Every needle (case-insensitive) in the daemon's own log lines (not the harness's)."""
        try:
            with open(self.log(name), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return False
        text = "\n".join(l for l in text.splitlines() if not l.startswith("=== kumotest")).lower()
        return all(n.lower() in text for n in needles)

    def records(self, extra=()):
        a = self.A
        recs = [("managers", a("m1")), ("managers", a("m2")), ("m1", a("m1")), ("m2", a("m2")),
                ("gw", a("gw")), ("s1", a("s1")), ("v6managers", self.net.addr6("m1")), ("gw6", self.net.addr6("gw"))]
        return recs + list(extra)

    # -- the parts
    def setup(self):
        t0 = time.time()
        self.net.up()
        srv = [("_kumo-manager._tcp", "m1", MGR_PORT, 0, 10), ("_kumo-manager._tcp", "m2", MGR_PORT, 1, 10),
               ("_noport._tcp", "m2", 0, 0, 10)]
        self.net.dns("dns", self.records(), srv, workdir=self.dir)
        tap.note("namespaces %s-* on 10.%d.%d.0/24 and fd00:%x:%x::/64 (%.2f s); dnsmasq in %s, log %s" % (
            self.net.tag, self.net.a, self.net.b, self.net.a, self.net.b, time.time() - t0,
            self.net.ns["dns"], self.net.dnsmasq.log))
        self.wait(lambda: "managers.kumo.test" in self.net.run("cl", ["getent", "ahosts", "managers.kumo.test"],
                                                                 timeout=5).stdout, 10, "dnsmasq answering")
        r = self.net.run("cl", ["getent", "ahosts", "managers.kumo.test"], timeout=5)
        got = {l.split()[0] for l in r.stdout.splitlines() if l.strip()}
        tap.ok({self.A("m1"), self.A("m2")} <= got, "DNS in a namespace: managers.kumo.test has both A records",
               r.stdout + r.stderr)

    def part_a(self):
        tap.note("a. two managers under one name (managers.kumo.test), servers with no -l, -a -Rs 1")
        m1 = self.manager("manager1", "m1", self.partner_arg)
        try:    # until it either answers kumoctl status or has exited (refusing the option)
            kt.wait_until(lambda: not m1.alive() or self.status("%s:%d" % (self.A("m1"), CTL_PORT)), 20,
                          "manager 1 to answer or exit", interval=0.2)
        except TimeoutError as e:
            tap.note(str(e))
        if not m1.alive():
            tap.note("kumo-manager refused -p managers.kumo.test (exit %s): giving partners by address" %
                     m1.returncode())
            tap.ok(False, "kumo-manager accepts a partner name (-p managers.kumo.test) that also names itself",
                   m1.tail(10))
            self.partner_arg = None
            m1 = self.manager("manager1", "m1", "%s:%d" % (self.A("m2"), MGR_PORT))
        m2 = self.manager("manager2", "m2", self.partner_arg or "%s:%d" % (self.A("m1"), MGR_PORT))
        if self.partner_arg:
            tap.ok(m1.alive() and m2.alive(), "both managers run with -p managers.kumo.test (a name for both)")
        self.wait(lambda: self.metric("m1", "kumo_manager_partner_connected") == 1 and
                  self.metric("m2", "kumo_manager_partner_connected") == 1, 20, "the managers linked as partners")
        tap.ok(True, "the managers found each other as partners")

        self.server("server1", "s1", "managers.kumo.test")
        self.server("server2", "s2", "managers.kumo.test")
        want = ["%s:%d" % (self.A(h), SRV_PORT) for h in ("s1", "s2")]

        def attached(target, addrs):
            st = self.status(target)
            return all(st.state(a) == "active" for a in addrs) and st
        self.wait(lambda: attached("%s:%d" % (self.A("m1"), CTL_PORT), want), 30,
                  "both servers (active) with no kumoctl attach")
        tap.ok(True, "servers with no -l are attached automatically as %s" % " ".join(want))
        tap.ok(self.log_has("server1", "no -l given: this server is %s" % want[0]),
               "server1 logs the address it announces (%s)" % want[0])
        st2 = self.status("%s:%d" % (self.A("m2"), CTL_PORT))
        tap.ok(all(st2.state(a) == "active" for a in want), "manager 2 shows the same servers active", repr(st2))
        r = self.kumoctl("cl", "m2.kumo.test", "status")
        tap.ok(r.returncode in kt.STATUS_ANSWERED and all(a in r.stdout for a in want), "kumoctl m2.kumo.test status (a name)",
               r.stdout + r.stderr)
        r = self.kumoctl("cl", "managers.kumo.test", "status")
        tap.ok(r.returncode in kt.STATUS_ANSWERED and all(a in r.stdout for a in want),
               "kumoctl managers.kumo.test status (a name with two A records)", r.stdout + r.stderr)
        r = self.net.run("cl", [kt.binary("kumostat"), "s1.kumo.test", "items"], timeout=15)
        tap.ok(r.returncode == 0 and r.stdout.strip(), "kumostat s1.kumo.test items (a server by name)",
               r.stdout + r.stderr)
        self.wait(lambda: all(self.metric(h, "kumo_server_manager_connections") == 2 for h in ("s1", "s2")), 15,
                  "each server linked to both managers")
        tap.ok(True, "each server is linked to both managers named by one name")
        for h in ("m1", "m2"):
            tap.eq(self.metric(h, "kumo_manager_server_connections"), 2.0, "manager %s has both servers connected" % h)

        self.gateway("gateway", "gw", "managers.kumo.test")
        self.wait(lambda: self.metric("gw", "kumo_gateway_manager_connections") == 2, 15,
                  "the gateway linked to both managers")
        tap.ok(True, "the gateway (-m managers.kumo.test) is linked to both managers")
        self.keys = {"a:%d:%d" % (i, self.rng.randrange(1 << 30)): "va-%d" % i for i in range(150)}
        gw = ["gw.kumo.test", GW_PORT]
        failed = self.set_keys(gw, self.keys)
        tap.ok(not failed, "client in another namespace: %d sets through gw.kumo.test:%d" % (len(self.keys), GW_PORT),
               "failed: %s" % failed[:5])
        got = self.get_keys(gw, self.keys)
        tap.ok(got == self.keys, "client: every key reads back (%d/%d)" % (
            sum(got.get(k) == v for k, v in self.keys.items()), len(self.keys)))

    def part_b(self):
        tap.note("b. SRV: -m dnssrv+_kumo-manager._tcp.kumo.test")
        srvname = "dnssrv+_kumo-manager._tcp.kumo.test"
        self.server("server3", "s3", srvname)
        want = ["%s:%d" % (self.A(h), SRV_PORT) for h in ("s1", "s2", "s3")]
        self.wait(lambda: all(self.status("%s:%d" % (self.A("m1"), CTL_PORT)).state(a) == "active" for a in want),
                  30, "server3 (SRV) attached automatically")
        tap.ok(True, "a server named to its managers by SRV joins: the cluster grows to 3 by itself")
        self.wait(lambda: self.metric("s3", "kumo_server_manager_connections") == 2, 15,
                  "server3 linked to both SRV targets")
        tap.ok(True, "the SRV server is linked to both SRV targets")
        st, killed = self.d["gateway"].stop()
        tap.ok(st == 0 and not killed, "gateway: SIGTERM -> exit 0", "status %s" % st)
        self.gateway("gateway", "gw", srvname)
        self.wait(lambda: self.metric("gw", "kumo_gateway_manager_connections") == 2, 15,
                  "the SRV gateway linked to both managers")
        tap.ok(True, "a gateway named to its managers by SRV links to both")
        gw = ["gw.kumo.test", GW_PORT]
        got = self.get_keys(gw, self.keys)
        tap.ok(got == self.keys, "through the SRV gateway every key of (a) reads back (%d/%d)" % (
            sum(got.get(k) == v for k, v in self.keys.items()), len(self.keys)))
        more = {"b:%d" % i: "vb-%d" % i for i in range(100)}
        failed = self.set_keys(gw, more)
        tap.ok(not failed, "100 more sets through the SRV gateway", "failed %s" % failed[:5])
        self.keys.update(more)

    def part_c(self):
        tap.note("c. manager 1 moves from %s to %s" % (self.A("m1"), self.A("m1b")))
        stop = os.path.join(self.dir, "loop.stop")
        out = os.path.join(self.dir, "loop.json")
        req = {"op": "loop", "server": ["gw.kumo.test", GW_PORT], "stop": stop, "out": out}
        with open(os.path.join(self.dir, "loop.req"), "w") as f:
            json.dump(req, f)
        loop = kt.Daemon("client-loop", ["sh", "-c", 'exec "$@" < "$0"', os.path.join(self.dir, "loop.req")] +
                         self.net.argv("cl", [PY, self.client_py]), self.log("client-loop")).start()
        time.sleep(1.0)     # a duration: the client loop runs a while before the move
        st, killed = self.d["manager1"].stop()
        tap.ok(st == 0 and not killed, "manager 1: SIGTERM -> exit 0", "status %s" % st)
        recs = [r for r in self.records() if r[0] not in ("managers", "m1")]
        recs += [("managers", self.A("m1b")), ("managers", self.A("m2")), ("m1", self.A("m1b"))]
        self.net.set_records(recs)
        self.net.reload_dns()
        self.wait(lambda: self.A("m1b") in self.net.run("cl", ["getent", "ahosts", "m1.kumo.test"], timeout=5).stdout,
                  10, "dnsmasq serving the new address after SIGHUP")
        t_move = time.time()
        self.manager("manager1b", "m1b", self.partner_arg or "%s:%d" % (self.A("m2"), MGR_PORT))
        servers = [("s%d" % i) for i in (1, 2, 3)]
        want = ["%s:%d" % (self.A(h), SRV_PORT) for h in servers]
        new_ctl = "%s:%d" % (self.A("m1b"), CTL_PORT)

        def found():
            return (self.metric("m1b", "kumo_manager_server_connections") == len(servers) and
                    self.metric("gw", "kumo_gateway_manager_connections") == 2 and
                    all(self.metric(h, "kumo_server_manager_connections") == 2 for h in servers))
        try:
            self.wait(found, MOVE_WITHIN, "servers and gateway linked to the moved manager", interval=1.0)
            tap.ok(True, "servers and gateway found the moved manager (%.1f s after it started)" % (
                time.time() - t_move))
        except TimeoutError as e:
            detail = []
            for h in servers:
                try:
                    detail.append("%s manager links %s" % (h, self.metric(h, "kumo_server_manager_connections")))
                except (OSError, ValueError) as e2:
                    detail.append("%s: %s" % (h, e2))
            tap.ok(False, "servers and gateway found the moved manager within %.0f s" % MOVE_WITHIN,
                   "%s\n%s" % (e, "\n".join(detail)))
        st = self.status(new_ctl)
        tap.ok(all(st.state(a) == "active" for a in want),
               "kumoctl %s status (the new address) shows every server active" % new_ctl, st.text)
        try:
            self.wait(lambda: self.metric("m2", "kumo_manager_partner_connected") == 1 and
                      self.metric("m1b", "kumo_manager_partner_connected") == 1, 20, "partners linked again")
            tap.ok(True, "manager 2 and the moved manager 1 are partners again")
        except TimeoutError as e:
            tap.ok(False, "manager 2 and the moved manager 1 are partners again", str(e))
        for h in servers:
            tap.ok(self.log_has("server%s" % h[1:], "no longer named"),
                   "server %s dropped the old manager address" % h)
        with open(stop, "w"):
            pass
        self.wait(lambda: os.path.exists(out) or not loop.alive(), 20, "client loop finished")
        loop.stop()
        try:
            with open(out) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            res = {"error": str(e)}
        tap.ok(res.get("ok", 0) > 20 and res.get("wrong", 1) == 0 and res.get("max_stall", 99) < 10,
               "the gateway kept serving during the move (%s)" % ", ".join(
                   "%s=%s" % (k, ("%.1f" % v) if isinstance(v, float) else v)
                   for k, v in sorted(res.items()) if k != "last_error"), json.dumps(res))
        got = self.get_keys(["gw.kumo.test", GW_PORT], self.keys)
        tap.ok(got == self.keys, "after the move every key reads back (%d/%d)" % (
            sum(got.get(k) == v for k, v in self.keys.items()), len(self.keys)))

    def part_d(self):
        tap.note("d. names that do not resolve (yet)")
        # m1 is free now: a server there named by late.kumo.test
        t0 = time.time()
        s4 = self.server("server4", "s4", "late.kumo.test")
        self.gateway("gateway-noport", "m1", "dnssrv+_noport._tcp.kumo.test", listen="11212")
        self.gateway("gateway-late", "dns", "late.kumo.test")
        waiter = self.server("server-never", "cl", "never.kumo.test")
        try:    # until each has logged the name it cannot resolve, then running on for a while
            self.wait(lambda: self.log_has("server4", "late.kumo.test", "resolve") and
                      self.log_has("gateway-late", "late.kumo.test", "resolve") and
                      self.log_has("gateway-noport", "_noport._tcp.kumo.test", "without a port"), 30,
                      "the unresolved names logged")
            kt.holds_for(lambda: all(self.d[n].alive() for n in ("server4", "gateway-late", "gateway-noport")),
                         2.0, "the daemons named to unknown names running", interval=0.2)
        except TimeoutError as e:
            tap.note(str(e))
        tap.ok(s4.alive() and self.log_has("server4", "late.kumo.test", "resolve"),
               "a server named to an unknown name keeps running and logs the name", s4.tail(10))
        gl = self.d["gateway-late"]
        tap.ok(gl.alive() and self.log_has("gateway-late", "late.kumo.test", "resolve"),
               "a gateway named to an unknown name keeps running and logs the name", gl.tail(10))
        r = self.client({"op": "version", "server": [self.A("dns"), GW_PORT]})
        tap.ok(r.get("version"), "meanwhile that gateway answers clients (version %s)" % r.get("version"),
               json.dumps(r))
        tap.ok(self.d["gateway-noport"].alive() and
               self.log_has("gateway-noport", "_noport._tcp.kumo.test", "without a port"),
               "a gateway named by an SRV record without a port logs it and keeps running",
               self.d["gateway-noport"].tail(10))
        st, killed = waiter.stop(timeout=10)
        tap.ok(st == 0 and not killed, "a server still waiting for its manager's name: SIGTERM -> exit 0",
               "exit status %s%s\n%s" % (st, " (SIGKILL needed)" if killed else "", waiter.tail(5)))
        recs = [r for r in self.records() if r[0] not in ("managers", "m1")]
        recs += [("managers", self.A("m1b")), ("managers", self.A("m2")), ("m1", self.A("m1b")),
                 ("late", self.A("m1b")), ("late", self.A("m2"))]
        self.net.set_records(recs)
        self.net.reload_dns()
        t_add = time.time()
        addr = "%s:%d" % (self.A("s4"), SRV_PORT)
        try:
            self.wait(lambda: self.status("%s:%d" % (self.A("m2"), CTL_PORT)).state(addr) == "active", 40,
                      "server4 attached once late.kumo.test resolves")
            tap.ok(True, "the server joins once the name is added (%.1f s after, %.1f s after its start)" % (
                time.time() - t_add, time.time() - t0))
        except TimeoutError as e:
            tap.ok(False, "the server joins once the name is added", "%s\n%s" % (e, s4.tail(20)))
        try:
            self.wait(lambda: self.metric("dns", "kumo_gateway_manager_connections") == 2, 40,
                      "gateway-late linked to both managers")
            got = self.get_keys([self.A("dns"), GW_PORT], self.keys, deadline=20)
            tap.ok(got == self.keys, "the gateway named by late.kumo.test links once it resolves and serves "
                   "every key (%d/%d)" % (sum(got.get(k) == v for k, v in self.keys.items()), len(self.keys)))
        except TimeoutError as e:
            tap.ok(False, "the gateway named by late.kumo.test links once the name is added", str(e))

    def part_f(self):
        tap.note("f. a name server that never answers")
        # In bh every DNS packet is dropped, with a resolver that waits 5 s
        # twice per query: each lookup blocks its caller for 10 s or more.
        ns = self.net.ns["bh"]
        rules = ("table inet blackhole {\n chain out {\n type filter hook output priority 0;\n"
                 " udp dport 53 drop\n tcp dport 53 drop\n }\n}\n")
        r = self.net.run("bh", ["nft", "-f", "-"], input=rules, timeout=10)
        tap.ok(r.returncode == 0, "bh: DNS packets dropped (nftables)", r.stderr)
        with open(os.path.join("/etc/netns", ns, "resolv.conf"), "w") as f:
            f.write("nameserver %s\nsearch kumo.test\noptions timeout:5 attempts:2\n" % self.A("dns"))
        addr = "%s:%d" % (self.A("bh"), SRV_PORT)
        d = self.server("server-bh", "bh", "%s:%d" % (self.A("m2"), MGR_PORT),
                        extra=["-p", "managers.kumo.test", "-l", addr])
        ctl = "%s:%d" % (self.A("m2"), CTL_PORT)
        try:
            self.wait(lambda: self.status(ctl).state(addr) == "active", 40,
                      "the server in bh (manager by address, partner by a black-holed name) attached")
        except TimeoutError as e:
            tap.ok(False, "a server whose partner name never resolves is attached", "%s\n%s" % (e, d.tail(20)))
            return
        tap.ok(True, "a server whose partner name never resolves is attached (-a)")
        # 25 s: several lookups of 10 s+ are tried meanwhile; the loop must
        # keep answering keepalives and scrapes.
        states, worst, t_end = set(), 0.0, time.time() + 25
        while time.time() < t_end:
            states.add(self.status(ctl).state(addr))
            t1 = time.time()
            try:
                self.metric("bh", "kumo_server_items")
            except (OSError, ValueError):
                worst = 99.0
            worst = max(worst, time.time() - t1)
            time.sleep(1.0)     # the pace of a check that must hold for the whole 25 s
        tap.ok(states == {"active"}, "it stays (active) for 25 s: its loop answers every keepalive",
               "states seen: %s" % sorted(states))
        tap.ok(worst < 4.0, "its /metrics answers within %.1f s every time (the lookups run off the loop)" % worst)
        tap.ok(self.log_has("server-bh", "managers.kumo.test", "resolve"),
               "the name that does not resolve is logged", d.tail(10))
        st, killed = d.stop(timeout=10)
        tap.ok(st == 0 and not killed, "server-bh: SIGTERM -> exit 0 while a lookup hangs",
               "status %s killed %s" % (st, killed))

    def part_e(self):
        tap.note("e. IPv6: a manager on [%s]:%d, servers with no -l, client over v6" % (
            self.net.addr6("m1"), MGR_PORT))
        names = [n for n in list(self.d) if self.d[n].alive()]
        for n in ("gateway", "gateway-noport", "gateway-late", "server1", "server2", "server3", "server4",
                  "manager1b", "manager2"):
            if n in names:
                st, killed = self.d[n].stop()
                if st != 0 or killed:
                    tap.ok(False, "%s: SIGTERM -> exit 0" % n, "status %s killed %s" % (st, killed))
        tap.ok(all(not d.alive() for d in self.d.values()), "the IPv4 cluster stopped")
        v6m = "[%s]:%d" % (self.net.addr6("m1"), MGR_PORT)
        self.start("manager6", "m1", [kt.binary("kumo-manager"), "-v", "-o", "-", "-l", v6m, "-c", CTL_PORT,
                                      "-a", "-Rs", "1", "--metrics", METRICS])
        hosts = ["s1", "s2", "s3", "s4"]
        for i, h in enumerate(hosts):
            self.server("server6-%d" % (i + 1), h, "v6managers.kumo.test" if i % 2 == 0 else v6m)
        want = ["[%s]:%d" % (self.net.addr6(h), SRV_PORT) for h in hosts]
        ctl6 = "[%s]:%d" % (self.net.addr6("m1"), CTL_PORT)
        try:
            st = self.wait(lambda: (lambda s: all(s.state(a) == "active" for a in want) and s)(self.status(ctl6)),
                           40, "4 IPv6 servers attached")
            tap.ok(True, "4 servers (no -l, manager by AAAA name or [v6]:port) attached as %s" % " ".join(want))
        except TimeoutError as e:
            tap.ok(False, "IPv6 servers attached", str(e))
            return
        self.gateway("gateway6", "gw", v6m, listen="[::]:%d" % GW_PORT)
        gw6 = [self.net.addr6("gw"), GW_PORT]
        self.wait(lambda: self.metric("gw", "kumo_gateway_manager_connections") == 1, 15, "v6 gateway linked")
        # the replace of the last attach finishes before writing
        no_replace = lambda: "replace:" not in self.status(ctl6).text  # noqa: E731
        self.wait(no_replace, 60, "the replace of the last attach to finish")
        kt.holds_for(no_replace, 1.0, "no replace running", interval=0.2)
        keys = {"v6:%d:%d" % (i, self.rng.randrange(1 << 30)): "v6-%d" % i for i in range(200)}
        failed = self.set_keys(gw6, keys)
        tap.ok(not failed, "client over IPv6 ([%s]:%d): %d sets" % (gw6[0], GW_PORT, len(keys)), "%s" % failed[:5])
        got = self.get_keys(gw6, keys)
        tap.ok(got == keys, "client over IPv6: every key reads back (%d/%d)" % (
            sum(got.get(k) == v for k, v in keys.items()), len(keys)))
        got = self.get_keys(["gw6.kumo.test", GW_PORT], list(keys)[:20])
        tap.ok(len(got) == 20, "the gateway is reachable by an AAAA name (gw6.kumo.test)")
        st = self.status(ctl6)
        order = [a for a, _ in st.attached]
        for n in ("gateway6",) + tuple("server6-%d" % (i + 1) for i in range(4)):
            s, killed = self.d[n].stop()
            if s != 0 or killed:
                tap.ok(False, "%s: SIGTERM -> exit 0" % n, "status %s" % s)
        by_addr = {want[i]: self.d["server6-%d" % (i + 1)].db for i in range(4)}
        # Servers without -l place a new database by a random id, written
        # beside it (architecture.md §9.1): the rule, with those keys.
        owners = owners_fn(order, {a: kt.ring_key_of(db) for a, db in by_addr.items()})
        held = {}
        for a, db in by_addr.items():
            try:
                held[a] = {kt.Record(k, v).key.decode() for k, v in kt.tch_records(db)
                           if not kt.Record(k, v).tombstone}
            except (OSError, ValueError) as e:
                tap.ok(False, "read %s" % db, str(e))
                return
        bad = []
        for k in keys:
            miss = [a for a in owners(k.encode()) if k not in held[a]]
            if miss:
                bad.append("%s not on %s" % (k, miss))
        tap.ok(not bad, "every key is on its 3 owners computed from the ids beside the databases (%d keys, 4 nodes)" %
               len(keys), "\n".join(bad[:10]))
        extra = sum(1 for k in keys for a in held if k in held[a] and a not in owners(k.encode()))
        tap.note("copies on non-owners: %d (0 expected once the replace is done)" % extra)


def body():
    die_skip_or_fail()
    t0 = time.time()
    t = T()
    try:
        t.setup()
        t.part_a()
        t.part_b()
        t.part_c()
        t.part_d()
        t.part_f()
        t.part_e()
    finally:
        tap.note("t_discovery took %.1f s" % (time.time() - t0))
        kt.stop_all()   # SIGTERM to every daemon (by pid) before their namespaces go
        t.net.down()    # also registered with kt.at_cleanup; idempotent


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_split — two managers that cannot disagree (issue 25, first half).

Hosts are network namespaces on one bridge (tests/fault/netns.py): m1, m2
(managers, `-l own -p other`, --metrics), s1..s5 (servers, `-m m1 -p m2`),
gw (the gateway, `-m m1 -p m2`, and the clients: threads moved into gw's
namespace). Each scenario starts a fresh cluster on the same namespaces:
s1..s4 attached, 10000 keys written through the gateway, then a
kumotest.LoadClient (sets of its own keys, overwrites of 300 loaded keys,
reads) runs through every step until the final reads. Partitions are nft
drop rules inside the namespaces.

  A  m1 cut from m2 only (each still reaches every server and the gateway).
     Before the cut: kill -9 s4, both managers show it (fault); s5 started
     (a newcomer). During it: `kumoctl m2 detach` and `kumoctl m1 attach`,
     in an order the seed draws.
  B  The same with the kill -9 of s4 while partitioned and the commands in
     the other order.
  C  m1 and s1 cut from m2, s2, s3, s4 and gw (s5, a newcomer, reaches
     both sides). m2 marks s1 fault; m1, linked to a minority, marks none
     of s2..s4. `kumoctl m1 attach` and `kumoctl m1 detach` must each
     exit non-zero and say why (a change a majority of the attached
     servers did not confirm); `kumoctl m2 attach` must attach s5.

During each partition: both managers log "lost partner" (or that the
partner does not answer), their `kumoctl status` health names the partner
as not linked, and kumo_manager_partner_connected is 0 on both.

After the heal (every wait polls, with a deadline):
  * a command that exited 0 is not undone: after a detach s4 is listed on
    neither manager, after an attach s5 is attached (active) on both; one
    that failed exited non-zero with a message;
  * both managers list the same attached and not-attached servers, and
    every running server is in one of the lists on both;
  * no "replace:" in either status within 60 s, and no "retrying in" in
    either manager's log for the 8 s after;
  * every acknowledged write (and every loaded key not overwritten) reads
    its last value through the gateway;
  * the servers stopped, their files read: every key's last value is on 3
    of the live attached servers, or both managers said degraded (status
    exit 2) just before.
Then the figures the issue judges: commands lost (exited 0, undone),
replaces that never finished, servers missing from status, keys left
under-replicated without a report.

Usage: t_split.py [--seed N] [--scenarios A,B,C]
Binaries from KUMO_BUILD_DIR (default: the repository root). Needs root and
`ip netns` (skips without), nft, tchmgr, pymemcache. Namespaces, nft tables
and every process are removed at exit, also on failure, a signal or the
watchdog.
"""
import argparse
import os
import random
import re
import shutil
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MGR_PORT, CTL_PORT, SRV_PORT, STREAM_PORT, METRICS_PORT, GW_PORT = 19700, 19799, 19800, 19900, 19780, 11211
SERVERS = ["s1", "s2", "s3", "s4", "s5"]
HOSTS = ["m1", "m2"] + SERVERS + ["gw"]
MANAGERS = ("m1", "m2")
NKEYS = 10000
NOVER = 300                 # loaded keys the load client overwrites
SETTLE = 60.0               # after the heal: agreement and no replace within this
QUIET = 8.0                 # then no "retrying in" for this long (the retry is every 3 s)
SCENARIOS = ["A", "B", "C"]


def parse_args():
    ap = argparse.ArgumentParser(description="two managers under partitions (issue 25)")
    ap.add_argument("--seed", type=int, help="seed (default: random, printed)")
    ap.add_argument("--scenarios", default="A,B,C", help="comma-separated, of A,B,C")
    args = ap.parse_args()
    if not set(args.scenarios.split(",")) <= set(SCENARIOS):
        ap.error("--scenarios: of %s" % ",".join(SCENARIOS))
    return args


ARGS = parse_args()
os.environ.setdefault("KUMO_TEST_TIMEOUT", "480")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
sys.path.insert(0, HERE)
import kumotest as kt  # noqa: E402
import netns  # noqa: E402

tap = kt.tap


class NsLoad(kt.LoadClient):
    """kt.LoadClient whose thread runs inside a namespace (the gateway's 127.0.0.1)."""

    def __init__(self, net, host, *a, **kw):
        super().__init__(*a, **kw)
        self.ns = net.ns[host]

    def run(self):
        netns.enter(self.ns)
        super().run()


class Split:
    def __init__(self, rng, seed):
        self.rng = rng
        self.seed = seed
        self.dir = kt.new_tmpdir("kumo-split-")
        self.net = netns.Net(HOSTS, rng)
        self.cut = set()
        self.figures = []       # (scenario, {figure: n})
        self.t0 = time.monotonic()

    # -- plumbing
    def A(self, h):
        return self.net.addr(h)

    def saddr(self, h):
        return "%s:%d" % (self.A(h), SRV_PORT)

    def note(self, msg):
        tap.note("%6.1f s  %s" % (time.monotonic() - self.t0, msg))

    def start(self, name, host, argv):
        d = kt.Daemon("%s-%s" % (self.label, name), self.net.argv(host, argv),
                      os.path.join(self.sdir, name + ".log"))
        self.d[name] = d
        return d.start()

    def manager(self, h):
        other = "m2" if h == "m1" else "m1"
        return self.start(h, h, [kt.binary("kumo-manager"), "-v", "-o", "-", "-l", "%s:%d" % (self.A(h), MGR_PORT),
                                 "-c", CTL_PORT, "-p", "%s:%d" % (self.A(other), MGR_PORT),
                                 "--metrics", "%s:%d" % (self.A(h), METRICS_PORT)])

    def server(self, h):
        tmp = os.path.join(self.sdir, "tmp-" + h)
        os.makedirs(tmp, exist_ok=True)
        return self.start(h, h, [kt.binary("kumo-server"), "-v", "-o", "-",
                                 "-m", "%s:%d" % (self.A("m1"), MGR_PORT), "-p", "%s:%d" % (self.A("m2"), MGR_PORT),
                                 "-l", self.saddr(h), "-L", STREAM_PORT, "-s", self.db(h), "-f", tmp])

    def db(self, h):
        return os.path.join(self.sdir, "%s.tch" % h)

    def kumoctl(self, m, *args, timeout=30):
        """kumoctl against manager m, run in m's own namespace (it reaches m on every side of a cut)."""
        return self.net.run(m, [kt.binary("kumoctl"), "%s:%d" % (self.A(m), CTL_PORT)] + list(args), timeout=timeout)

    def status_rc(self, m):
        r = self.kumoctl(m, "status", timeout=15)
        if r.returncode not in kt.STATUS_ANSWERED:
            raise OSError("kumoctl %s status: exit %s: %s" % (m, r.returncode, (r.stderr or r.stdout).strip()))
        return r.returncode, kt.Status(r.stdout)

    def status(self, m):
        return self.status_rc(m)[1]

    def metric(self, m, name):
        def scrape():
            with urllib.request.urlopen("http://%s:%d/metrics" % (self.A(m), METRICS_PORT), timeout=5) as f:
                return f.read().decode()
        text = self.net.call(m, scrape, timeout=10)
        found = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
        if not found:
            raise ValueError("%s not in %s's metrics" % (name, m))
        return float(found.group(1))

    def log_text(self, name, since=0):
        with open(self.d[name].log, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_size(self, name):
        return os.path.getsize(self.d[name].log)

    def running(self):
        return [h for h in SERVERS if h in self.d and self.d[h].alive()]

    def mgr_daemons(self):
        return [self.d[m] for m in MANAGERS]

    # -- partitions
    def nft(self, h, drop_from):
        """Drop every packet between h and the hosts drop_from (nft, in h's namespace)."""
        addrs = ", ".join(self.A(x) for x in drop_from)
        rules = ("table inet split {\n"
                 " chain in { type filter hook input priority 0; policy accept; ip saddr { %s } drop; }\n"
                 " chain out { type filter hook output priority 0; policy accept; ip daddr { %s } drop; }\n"
                 "}\n" % (addrs, addrs))
        r = self.net.run(h, ["nft", "-f", "-"], input=rules)
        if r.returncode != 0:
            raise OSError("nft in %s: %s" % (h, r.stderr.strip()))
        self.cut.add(h)

    def heal(self):
        for h in sorted(self.cut):
            r = self.net.run(h, ["nft", "delete", "table", "inet", "split"])
            if r.returncode != 0:
                raise OSError("nft delete in %s: %s" % (h, r.stderr.strip()))
        self.cut.clear()

    def partition(self, side1, side2):
        """Cut side1 from side2: rules in every host of side1."""
        self.note("partition: %s | %s" % (" ".join(side1), " ".join(side2)))
        self.log_mark = {m: self.log_size(m) for m in MANAGERS}
        for h in side1:
            self.nft(h, side2)

    # -- a cluster
    def up_cluster(self, label):
        self.label = label
        self.sdir = os.path.join(self.dir, label)
        os.makedirs(self.sdir)
        self.d = {}
        self.commands = []      # (manager, command, exit status, output)
        for m in MANAGERS:
            self.manager(m)
        for m in MANAGERS:
            kt.wait_until(lambda: self.status(m), 20, "manager %s answers" % m, daemons=self.mgr_daemons())
        first = SERVERS[:4]
        for h in first:
            self.server(h)
        want = {self.saddr(h) for h in first}
        kt.wait_until(lambda: all(want <= set(self.status(m).not_attached) for m in MANAGERS), 30,
                      "s1..s4 under not attached node on both managers", interval=0.2, daemons=self.mgr_daemons())
        r = self.kumoctl("m1", "attach")
        if r.returncode != 0:
            raise OSError("kumoctl m1 attach: exit %s: %s" % (r.returncode, r.stderr.strip()))

        def settled():
            return all(all(self.status(m).state(a) == "active" for a in want) and
                       "replace:" not in self.status(m).text for m in MANAGERS)
        kt.wait_until(settled, 60, "s1..s4 active on both managers, no replace", interval=0.3,
                      daemons=self.mgr_daemons())
        self.start("gw", "gw", [kt.binary("kumo-gateway"), "-v", "-o", "-", "-m", "%s:%d" % (self.A("m1"), MGR_PORT),
                                "-p", "%s:%d" % (self.A("m2"), MGR_PORT), "-t", "127.0.0.1:%d" % GW_PORT])
        kt.wait_until(lambda: self.net.call("gw", probe, timeout=10), 30, "the gateway answers a get",
                      interval=0.2, daemons=[self.d["gw"]])
        t = time.monotonic()
        self.initial = {("split:%d" % i).encode(): ("%s loaded %d " % (label, i)).encode() +
                        self.rng.randbytes(self.rng.randrange(0, 60)) for i in range(NKEYS)}
        failed = self.net.call("gw", load_keys, self.initial, timeout=300)
        if failed:
            raise OSError("loading %d keys: %d not stored, e.g. %s" % (NKEYS, len(failed), failed[:5]))
        keys = sorted(self.initial)
        over = self.rng.sample(keys, NOVER)
        known = {k: self.initial[k] for k in self.rng.sample(keys, 2000) if k not in over}
        self.load = NsLoad(self.net, "gw", GW_PORT, known, self.rng, prefix="%s-load" % label,
                           overwrite={k: self.initial[k] for k in over}, retry_for=5.0, timeout=5.0, pause=0.01)
        self.over = set(over)
        self.load.start()
        tap.ok(self.load.wait_progress(20, 30), "%s: cluster up (s1..s4 attached), %d keys loaded in %.1f s, "
               "the load client runs" % (label, NKEYS, time.monotonic() - t))

    def down_cluster(self):
        if self.load.is_alive():
            self.load.stop()
        self.heal()
        for d in self.d.values():
            d.stop()

    # -- the steps of a scenario
    def kill_s4(self):
        self.note("kill -9 s4")
        self.d["s4"].kill9()
        self.wait_both("s4 (fault) on both managers", lambda st: st.state(self.saddr("s4")) == "fault")

    def start_s5(self):
        self.note("start s5 (a newcomer)")
        self.server("s5")
        self.wait_both("s5 under not attached node on both managers",
                       lambda st: self.saddr("s5") in st.not_attached)

    def wait_both(self, what, cond, timeout=30):
        t = time.monotonic()
        try:
            kt.wait_until(lambda: all(cond(self.status(m)) for m in MANAGERS), timeout, what, interval=0.2,
                          daemons=self.mgr_daemons())
            self.note("%s after %.1f s" % (what, time.monotonic() - t))
            return True
        except TimeoutError as e:
            tap.ok(False, "%s: %s" % (self.label, what), "%s\nm1: %s\nm2: %s" % (
                e, self.safe_status("m1"), self.safe_status("m2")))
            return False

    def safe_status(self, m):
        try:
            return self.status(m)
        except OSError as e:
            return str(e)

    def partner_down(self, what):
        """Both managers see the partner gone: metrics, status health, log."""
        seen = {m: {"metric": False, "status": False, "log": False} for m in MANAGERS}

        def check():
            for m in MANAGERS:
                s = seen[m]
                if not s["metric"]:
                    try:
                        s["metric"] = self.metric(m, "kumo_manager_partner_connected") == 0
                    except (OSError, ValueError, TimeoutError):
                        pass
                if not s["status"]:
                    s["status"] = any("partner" in line and "not linked" in line or "does not answer" in line
                                      for line in self.status(m).text.splitlines())
                if not s["log"]:
                    s["log"] = bool(re.search(r"lost partner|partner \S+ does not answer",
                                              self.log_text(m, self.log_mark[m])))
            return all(all(s.values()) for s in seen.values())
        t = time.monotonic()
        try:
            kt.wait_until(check, 30, "both managers to see the partner gone", interval=0.3,
                          daemons=self.mgr_daemons())
            self.note("both managers see the partner gone after %.1f s" % (time.monotonic() - t))
        except TimeoutError:
            pass
        for m in MANAGERS:
            tap.ok(seen[m]["log"], "%s: %s logged \"lost partner\" during the partition (%s)" % (self.label, m, what))
            tap.ok(seen[m]["status"], "%s: %s's kumoctl status named the partner not linked" % (self.label, m),
                   str(self.safe_status(m).text if not isinstance(self.safe_status(m), str) else ""))
            tap.ok(seen[m]["metric"], "%s: %s's kumo_manager_partner_connected was 0" % (self.label, m))

    def command(self, m, cmd):
        t = time.monotonic()
        r = self.kumoctl(m, cmd, timeout=60)
        out = (r.stdout + r.stderr).strip()
        self.commands.append((m, cmd, r.returncode, out))
        self.note("kumoctl %s %s: exit %s in %.1f s: %s" % (m, cmd, r.returncode, time.monotonic() - t,
                                                             out.replace("\n", " / ") or "(no output)"))
        return r.returncode, out

    # -- after the heal
    def after_heal(self, fig):
        """The checks after the heal, for this scenario's commands."""
        label = self.label
        self.note("heal")
        self.heal()
        s4, s5 = self.saddr("s4"), self.saddr("s5")
        # A command that exited 0 saying it had nothing to do changed nothing.
        detached = any(c == "detach" and rc == 0 and not out.startswith("nothing") for _, c, rc, out in self.commands)
        attached = any(c == "attach" and rc == 0 and not out.startswith("nothing") for _, c, rc, out in self.commands)
        for m, c, rc, out in self.commands:
            tap.ok(rc == 0 or (rc not in (-999, None) and len(out.split()) >= 3),
                   "%s: kumoctl %s %s took effect or failed saying why (exit %s: %s)" % (
                       label, m, c, rc, kt.short(out.replace("\n", " / "), 150)))
        last = {}

        def kept(st):
            return (not detached or s4 not in st.attached_addrs()) and (not attached or st.state(s5) == "active")

        def agree(a, b):
            return sorted(a.attached) == sorted(b.attached) and sorted(a.not_attached) == sorted(b.not_attached)

        def missing(st):
            return [h for h in self.running() if self.saddr(h) not in st.attached_addrs() + st.not_attached]

        def settled():
            for m in MANAGERS:
                last[m] = self.status(m)
            return (all(kept(last[m]) and not missing(last[m]) and "replace:" not in last[m].text for m in MANAGERS)
                    and agree(last["m1"], last["m2"]))
        t = time.monotonic()
        try:
            kt.wait_until(settled, SETTLE, "both managers to settle", interval=0.5, daemons=self.mgr_daemons())
            self.note("settled %.1f s after the heal" % (time.monotonic() - t))
        except TimeoutError:
            self.note("not settled %.0f s after the heal" % SETTLE)
        if len(last) < 2:
            tap.ok(False, "%s: both managers answer kumoctl status after the heal" % label)
            return
        sts = "(statuses below)"
        failed0 = tap.failed
        lost = []
        if detached:
            lost += ["detach: s4 listed again on %s" % m for m in MANAGERS if s4 in last[m].attached_addrs()]
        if attached:
            lost += ["attach: s5 %s on %s" % (last[m].state(s5) or "not attached", m)
                     for m in MANAGERS if last[m].state(s5) != "active"]
        fig["commands lost"] = len({x.split(":")[0] for x in lost})
        tap.ok(not lost, "%s: no command that exited 0 is undone (detach %s, attach %s)" % (
            label, "exited 0" if detached else "failed", "exited 0" if attached else "failed"),
            "\n".join(lost) + "\n" + sts)
        tap.ok(agree(last["m1"], last["m2"]), "%s: both managers list the same attached and not-attached servers"
               % label, sts)
        miss = {m: missing(last[m]) for m in MANAGERS}
        fig["servers missing from status"] = len({h for v in miss.values() for h in v})
        tap.ok(not any(miss.values()), "%s: every running server is attached or not attached on both managers" % label,
               "missing: %s\n%s" % (miss, sts))
        looping = [m for m in MANAGERS if "replace:" in last[m].text]
        tap.ok(not looping, "%s: no replace: line on either manager within %.0f s of the heal" % (label, SETTLE),
               "still replacing: %s\n%s" % (looping, sts))
        if tap.failed > failed0:
            tap.diag("after the heal:\nm1: %s\nm2: %s" % (last["m1"].text, last["m2"].text))
        mark = {m: self.log_size(m) for m in MANAGERS}
        try:
            kt.holds_for(lambda: not any("retrying in" in self.log_text(m, mark[m]) for m in MANAGERS), QUIET,
                         "no \"retrying in\" in the managers' logs", interval=0.5)
            retrying = []
        except kt.NotHeld:
            retrying = [m for m in MANAGERS if "retrying in" in self.log_text(m, mark[m])]
        fig["replaces never finished"] = len(set(looping) | set(retrying))
        tap.ok(not retrying, "%s: neither manager's log prints \"retrying in\" in the %.0f s after" % (label, QUIET),
               "\n".join("%s: %s" % (m, [x for x in self.log_text(m, mark[m]).splitlines() if "retrying in" in x][:3])
                         for m in retrying))
        tap.ok(self.load.wait_progress(20, 20), "%s: the load client's sets and gets go through after the heal (%s)"
               % (label, self.load.summary()), "last failures: %s" % "\n".join(self.load.failures()[-5:]))
        self.check_data(fig)

    def check_data(self, fig):
        label = self.label
        self.load.stop()
        self.note("load client: %s; %d failures during the run%s" % (
            self.load.summary(), len(self.load.failures()),
            (", e.g. " + "; ".join(self.load.failures()[:3])) if self.load.failures() else ""))
        want = {k: v for k, v in self.initial.items() if k not in self.over}
        want.update(self.load.acked())
        bad = self.net.call("gw", read_back, want, timeout=300)
        fig["acknowledged writes read wrong"] = len(bad)
        tap.ok(not bad, "%s: every acknowledged write reads its last value (%d keys, %d written under load)" % (
            label, len(want), len(self.load.acked())), "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        rcs = {m: self.status_rc(m) for m in MANAGERS}
        live = sorted(set.union(*[set(rcs[m][1].attached_addrs()) for m in MANAGERS]) &
                      {self.saddr(h) for h in self.running()})
        host = {self.saddr(h): h for h in SERVERS}
        self.d["gw"].stop()
        held = {}
        for a in live:
            self.d[host[a]].stop()
            held[a] = {}
            for k, v in kt.tch_records(self.db(host[a])):
                rec = kt.Record(k, v)
                held[a][rec.key] = rec
        need = min(3, len(live))
        under = []
        for k, v in want.items():
            n = sum(1 for a in live if k in held[a] and not held[a][k].tombstone and held[a][k].payload == v)
            if n < need:
                under.append("%s: last value on %d of %s" % (k.decode(), n, [host[a] for a in live]))
        degraded = all(rcs[m][0] == 2 for m in MANAGERS)
        fig["keys under-replicated without a report"] = 0 if degraded else len(under)
        tap.ok(not under or degraded, "%s: every key's last value is on %d of the live attached servers %s, or both "
               "managers said degraded (%d under-replicated; status exit m1 %d, m2 %d)" % (
                   label, need, " ".join(host[a] for a in live), len(under), rcs["m1"][0], rcs["m2"][0]),
               "\n".join(under[:10]))

    # -- the scenarios
    def scenario_AB(self, label, kill_in_partition, order):
        self.up_cluster(label)
        fig = {}
        if not kill_in_partition:
            self.kill_s4()
            self.start_s5()
        self.partition(["m1"], ["m2"])
        self.partner_down("m1 | m2")
        if kill_in_partition:
            self.kill_s4()
            self.start_s5()
        for m, cmd in order:
            self.command(m, cmd)
        self.after_heal(fig)
        self.figures.append((label, fig))
        self.down_cluster()

    def scenario_C(self):
        label = "C"
        self.up_cluster(label)
        fig = {}
        self.start_s5()
        self.partition(["m1", "s1"], ["m2", "s2", "s3", "s4", "gw"])
        self.partner_down("m1 s1 | m2 s2 s3 s4 gw")
        # m2 reaches 3 of the 4 attached servers and marks s1 fault; m1, cut
        # off with one, cannot tell the others dead from out of its reach, and
        # marks none (its marks would take them out of service everywhere once
        # the partition heals).
        unmarked = [r"server %s is not marked fault" % re.escape(self.saddr(h)) for h in ("s2", "s3", "s4")]
        try:
            kt.wait_until(lambda: self.status("m2").state(self.saddr("s1")) == "fault"
                          and all(re.search(u, self.log_text("m1")) for u in unmarked), 30,
                          "m2 shows s1 (fault), m1 found s2..s4 lost", interval=0.3, daemons=self.mgr_daemons())
            self.note("m2 shows s1 (fault); m1 found s2..s4 lost")
        except TimeoutError as e:
            self.note(str(e))
        st1 = self.safe_status("m1")
        tap.ok(not isinstance(st1, str) and all(st1.state(self.saddr(h)) == "active" for h in ("s2", "s3", "s4")),
               "C: m1, linked to 1 of 4 attached servers, marks none of s2..s4 fault", getattr(st1, "text", st1))
        for cmd in self.rng.sample(["attach", "detach"], 2):
            rc, out = self.command("m1", cmd)
            # m1 marked nothing fault, so its detach may find nothing to do.
            nothing = cmd == "detach" and rc == 0 and out.startswith("nothing to detach")
            tap.ok(nothing or rc not in (0, -999, None) and len(out.split()) >= 3,
                   "C: kumoctl m1 %s (m1 with 1 of 4 attached servers) exits non-zero saying why, or has nothing "
                   "to do (exit %s: %s)" % (cmd, rc, kt.short(out.replace("\n", " / "), 150)))
        st1 = self.safe_status("m1")
        if not isinstance(st1, str):
            tap.ok(st1.state(self.saddr("s5")) is None and all(st1.state(self.saddr(h)) for h in SERVERS[:4]),
                   "C: m1's lists are unchanged by its refused commands", st1.text)
        rc, out = self.command("m2", "attach")
        tap.ok(rc == 0 and self.saddr("s5") in out, "C: kumoctl m2 attach (m2 with 3 of 4) attaches s5 (exit %s: %s)"
               % (rc, kt.short(out.replace("\n", " / "), 150)))
        self.after_heal(fig)
        st1 = self.safe_status("m1")
        tap.ok(not isinstance(st1, str) and st1.state(self.saddr("s5")) == "active",
               "C: after the heal m1 shows m2's change (s5 attached, active)", str(getattr(st1, "text", st1)))
        self.figures.append((label, fig))
        self.down_cluster()


# -- run inside gw's namespace (Net.call)
def probe():
    import socket
    with socket.create_connection(("127.0.0.1", GW_PORT), timeout=2) as s:
        s.sendall(b"get split-probe\r\n")
        return s.recv(100) == b"END\r\n"


def load_keys(kv):
    """Set every key; the keys not stored."""
    mc = kt.mc_client(GW_PORT, timeout=30)
    failed = []
    items = sorted(kv.items())
    for i in range(0, len(items), 200):
        failed += mc.set_many(dict(items[i:i + 200]), noreply=False)
    mc.close()
    return failed


def read_back(want, budget=60.0):
    """get_many in batches of 100, a failed batch retried on a fresh connection; after
    `budget` s in all, the keys not read yet count as read wrong. One line per key read wrong."""
    keys = sorted(want)
    bad = []
    deadline = time.time() + budget
    mc = kt.mc_client(GW_PORT, timeout=5)
    for i in range(0, len(keys), 100):
        batch = keys[i:i + 100]
        got, err = None, "not read within %.0f s" % budget
        while time.time() < deadline:
            try:
                got = mc.get_many(batch)
                break
            except Exception as e:      # timeouts, SERVER_ERROR, a closed connection
                err = "%s: %s" % (type(e).__name__, e)
                mc.close()
                mc = kt.mc_client(GW_PORT, timeout=5)
                time.sleep(0.5)     # between retries
        if got is None:
            bad += ["%s: %s" % (k.decode(), err) for k in batch]
            continue
        for k in batch:
            if k in got and got[k] != want[k] or k not in got and want[k] is not None:
                bad.append("%s: got %s, want %s" % (k.decode(), kt.short(got.get(k), 50), kt.short(want[k], 50)))
    mc.close()
    return bad


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
    tap.note("seed %d (rerun: %s --seed %d --scenarios %s)" % (seed, sys.argv[0], seed, ARGS.scenarios))
    rng = random.Random(seed)
    order = [("m2", "detach"), ("m1", "attach")]
    if rng.random() < 0.5:
        order.reverse()
    sp = Split(rng, seed)
    try:
        sp.net.up()
        tap.ok(True, "namespaces up (%s-*)" % sp.net.tag)
        for name in ARGS.scenarios.split(","):
            tap.note("== scenario %s" % name)
            if name == "A":
                sp.scenario_AB("A", False, order)
            elif name == "B":
                sp.scenario_AB("B", True, order[::-1])
            else:
                sp.scenario_C()
    finally:
        for label, fig in sp.figures:
            tap.note("figures %s: %s" % (label, ", ".join("%s %d" % kv for kv in fig.items())))
        kt.stop_all()
        sp.net.down()


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_rejoin — a server restarted on its own database never serves its stale
copy: no wrong answer, no lost write, no resurrected delete.

Every cluster: 3 kumo-servers with `-Rr 1` (replace copies at 1 MiB/s per
stream) and FILLER_MB (12 MiB) of incompressible filler values (os.urandom,
keys "fill:*"), so that a catch-up copy takes seconds, as on a real data
set. With 3 servers and 3 replicas every server owns every key. Why 12 MiB
and not less: measured on 48bffc3, a rejoin's copy took 0.24 s with 6 MiB of
filler, 4.1 s with 8, 4.5 s with 12, 8.6 s with 16 and 12.3 s with 24. The
stream file is sent with evbuffer_add_file (sendfile), whose writes the
bufferevent rate limit does not cut to size: the first one goes out whole,
as much as the socket takes (~4 MiB), and the limit only delays the next.

  A. restart, then read-modify-write at once. A server S is chosen; 250 keys
     whose first owner (the coordinator) is S, in five kinds, are written.
     S is stopped (SIGTERM); while it is down each key is changed and every
     change acknowledged:
       append  "a0"        -> append "|down"   -> now: append "|rush" (STORED)
       incr    "1000"      -> incr d           -> now: incr 1 (1001 + d)
       set     "old"       -> set "new"        -> now: append "|rush" (STORED)
       new     (absent)    -> set "new"        -> now: delete (DELETED)
       gone    "doomed"    -> delete           -> now: delete (NOT_FOUND) or
                                                  append (NOT_STORED)
     S is restarted on its database, shows under "not attached node",
     `kumoctl attach`, and at once (not waiting for the replace) the "now"
     commands go through the gateway. Every answer must be the model's: two
     in-sync owners remain, so a SERVER_ERROR is a failure too (counted
     apart). After the cluster settles (every server (active), no
     "replace:" in `kumoctl status`, every server's whs the manager's,
     hsccheck true) each key reads its model value through the gateway and,
     with the cluster stopped, every server's Tokyo Cabinet file holds it
     (a deleted key: a tombstone or nothing).
  B. rolling restart at an operator's pace. 1000 "ow" and 1000 "del" keys;
     S1 stopped; every ow key overwritten, every del key deleted; S1
     restarted on its database, attach, `kumoctl status` polled every 0.2 s
     until it shows (active); at once S2 is stopped, restarted, attached,
     waited for; then S3. After the cluster settles no ow key reads its old
     value or misses, no del key comes back, and every file holds the newest
     record of every key.

Environment: KUMO_TEST_SEED (printed), KUMO_TEST_ONLY=A or B to run one
scenario, and kumotest's usual variables.
"""
import os
import random
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
OP_TIMEOUT = 10.0
SERVER_ARGS = ["-Rr", "1"]          # replace rate: 1 MiB/s per stream
FILLER_MB = 12                      # total; see the note in the docstring
FILLER_VALUE = 64 << 10
PER_KIND = 50                       # scenario A: keys of each kind
NROLL = 1000                        # scenario B: ow keys and del keys each
SETTLE_TIMEOUT = 90.0
ACTIVE_TIMEOUT = 60.0
SHOW = 15                           # diagnostic lines per failed check


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def name(k):
    return k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)


def listing(items):
    items = list(items)
    head = "\n".join(items[:SHOW])
    more = len(items) - SHOW
    return head + ("\n... and %d more" % more if more > 0 else "") if items else "(none)"


def per_kind(pairs, kind_of):
    """", by kind: append 3 incr 5" for [(key, text)], or "" when empty."""
    n = {}
    for k, _ in pairs:
        n[kind_of[k]] = n.get(kind_of[k], 0) + 1
    return ", by kind: " + " ".join("%s %d" % (kd, n[kd]) for kd in KINDS if kd in n) if n else ""


class Gateway:
    """One pymemcache connection to the gateway; call() classifies the outcome
    as ("ok", answer), ("server_error", text) or ("error", text) and opens a
    fresh connection after an exception."""

    def __init__(self, port):
        self.port = port
        self.mc = None

    def call(self, op, *args):
        from pymemcache.exceptions import MemcacheServerError
        try:
            if self.mc is None:
                self.mc = kt.mc_client(self.port, timeout=OP_TIMEOUT)
            fn = getattr(self.mc, op)
            if op in ("get",):
                return "ok", fn(*args)
            return "ok", fn(*args, noreply=False)
        except MemcacheServerError as e:
            self.close()
            return "server_error", "SERVER_ERROR %s" % e
        except Exception as e:      # timeouts, CLIENT_ERROR, a closed connection
            self.close()
            return "error", "%s: %s" % (type(e).__name__, e)

    def close(self):
        mc, self.mc = self.mc, None
        if mc is not None:
            mc.close()          # pymemcache's close() swallows socket errors


def load_filler(port):
    """FILLER_MB of os.urandom values under "fill:*" (incompressible: the
    replace deflates its streams)."""
    gw = Gateway(port)
    n = (FILLER_MB << 20) // FILLER_VALUE
    bad = []
    t0 = time.time()
    for i in range(n):
        kind, r = gw.call("set", b"fill:%d" % i, os.urandom(FILLER_VALUE))
        if (kind, r) != ("ok", True):
            bad.append("fill:%d: %s %s" % (i, kind, kt.short(r, 60)))
    gw.close()
    tap.ok(not bad, "%d MiB of incompressible filler written (%d values of %d KiB, %.1f s)"
           % (FILLER_MB, n, FILLER_VALUE >> 10, time.time() - t0), listing(bad))


def apply_ops(port, ops):
    """ops: [(key, op, args, expected answer)], sent in order on one connection.
    Returns {"wrong": [...], "server_error": [...], "error": [...]}: for each
    answer that is not the expected one, (key, "op key args: got X, want Y")."""
    gw = Gateway(port)
    bad = {"wrong": [], "server_error": [], "error": []}
    for k, op, args, want in ops:
        kind, got = gw.call(op, k, *args)
        if kind == "ok" and got == want:
            continue
        what = " ".join([op, name(k)] + [kt.short(a, 30) for a in args])
        bad["wrong" if kind == "ok" else kind].append(
            (k, "%s: %s %s, want %s" % (what, "answered" if kind == "ok" else "failed:",
                                       kt.short(got, 40), kt.short(want, 40))))
    gw.close()
    return bad


def read_all(port, keys):
    """{key: (outcome, answer)} of a single get of each key, in order, on one connection."""
    gw = Gateway(port)
    out = {k: gw.call("get", k) for k in keys}
    gw.close()
    return out


def texts(pairs):
    return [t for _, t in pairs]


def all_failures(bad):
    return bad["wrong"] + bad["server_error"] + bad["error"]


def status_text(c):
    r = c.kumoctl("status")
    if r.returncode not in kt.STATUS_ANSWERED:
        raise OSError("kumoctl status: exit %s: %s" % (r.returncode, (r.stderr or r.stdout).strip()))
    return r.stdout


def live_daemons(c):
    return [d for d in c.daemons() if not d.expected_exit]


def wait_fault(c, s, timeout=30):
    t0 = time.time()
    kt.wait_until(lambda: c.status().state(s.addr) == "fault", timeout,
                  "%s (fault) in kumoctl status" % s.addr, interval=0.2, daemons=live_daemons(c))
    return time.time() - t0


def restart_attach(c, s):
    """Start s on its own database, wait for it under "not attached node",
    `kumoctl attach` (not waiting for anything more). Returns the time of the attach."""
    c.start_server(s)
    c.wait_not_attached([s], timeout=30)
    r = c.kumoctl("attach")
    t = time.time()
    if r.returncode != 0:
        raise OSError("kumoctl attach: exit %s: %s" % (r.returncode, (r.stderr + r.stdout).strip()))
    return t


def wait_active(c, s, timeout=ACTIVE_TIMEOUT):
    """Poll `kumoctl status` every 0.2 s until s shows (active)."""
    t0 = time.time()
    kt.wait_until(lambda: c.status().state(s.addr) == "active", timeout,
                  "%s (active) in kumoctl status" % s.addr, interval=0.2, daemons=live_daemons(c))
    return time.time() - t0


def wait_settled(c, what, timeout=SETTLE_TIMEOUT):
    """Until every server is (active) in `kumoctl status` and it shows no
    replace, every server's whs is the manager's and its hsccheck is true;
    and stays so for 2 s. Returns the seconds it took."""
    def cond():
        text = status_text(c)
        if "replace:" in text:
            return False
        st = kt.Status(text)        # a server still catching up is not "active"
        if any(st.state(s.addr) != "active" for s in c.servers):
            return False
        for s in c.servers:
            w = c.hash_space(s, "whs")
            if w.timestamp != st.timestamp or w.attached != st.attached or not c.hsccheck(s):
                return False
        return True
    t0 = time.time()
    kt.wait_until(cond, timeout, what + " to settle (all (active), no replace in status, "
                  "whs = manager's, hsccheck true)", interval=0.3, daemons=live_daemons(c))
    kt.holds_for(cond, 2.0, what + " to stay settled", interval=0.3, daemons=live_daemons(c))
    took = time.time() - t0
    tap.note("%s settled in %.1f s" % (what, took))
    return took


def stop_cluster(c):
    bad = ["%s: status %s%s" % (d.name, st, ", needed SIGKILL" if killed else "")
           for d, st, killed in c.stop(timeout=15) if st != 0 or killed]
    tap.ok(not bad, "every daemon exits 0 on SIGTERM", "\n".join(bad))


def disk_check(label, c, model, kind_of=None):
    """With the cluster stopped: every server's file holds each key's newest
    record (model[key] = value, or None: a tombstone or no record).
    Returns the descriptions of the wrong copies."""
    wrong = []
    per_server = []
    for s in c.servers:
        n0 = len(wrong)
        try:
            recs = {}
            for dbkey, value in kt.tch_records(s.db):
                r = kt.Record(dbkey, value)
                recs[r.key] = r
        except (OSError, ValueError) as e:
            wrong.append("%s: cannot read %s: %s" % (s.addr, s.db, e))
            per_server.append("%s unreadable" % s.addr)
            continue
        for k, want in model.items():
            r = recs.get(k)
            if r is None:
                held = "no record"
            elif r.tombstone:
                held = "tombstone"
            else:
                held = kt.short(r.payload, 40)
            if want is None:
                ok = r is None or r.tombstone
            else:
                ok = r is not None and not r.tombstone and r.payload == want
            if not ok:
                wrong.append("%s%s on %s: %s, want %s" % (
                    name(k), " (%s)" % kind_of[k] if kind_of else "", s.addr, held,
                    "deleted" if want is None else kt.short(want, 40)))
        per_server.append("%s %d" % (s.addr, len(wrong) - n0))
    tap.ok(not wrong, "%s: every server's Tokyo Cabinet file holds the newest record of each of %d keys "
           "(wrong copies: %s)" % (label, len(model), ", ".join(per_server)), listing(wrong))
    return wrong


# --------------------------------------------------------------------------
# A. restart, then read-modify-write at once
# --------------------------------------------------------------------------

KINDS = ("append", "incr", "set", "new", "gone")


def primary_keys(ring, addr, rng, kind, n):
    """n keys "rmw:<kind>:..." whose first owner in ring is addr."""
    out = []
    tag = rng.randrange(1 << 30)
    i = 0
    while len(out) < n:
        k = ("rmw:%s:%d:%d" % (kind, tag, i)).encode()
        if ring.owners(k)[0] == addr:
            out.append(k)
        i += 1
    return out


def scenario_a(rng):
    tap.note("== A. a server restarted on its own database, read-modify-write at once")
    with kt.Cluster(nservers=3, server_args=SERVER_ARGS) as c:
        port = c.gateway_port
        load_filler(port)
        ring = c.ring()
        victim = rng.choice(c.servers)
        keys = {kind: primary_keys(ring, victim.addr, rng, kind, PER_KIND) for kind in KINDS}
        kind_of = {k: kind for kind, ks in keys.items() for k in ks}
        tap.note("S = %s; %d keys whose first owner is S (%d of each kind: %s)"
                 % (victim.addr, len(kind_of), PER_KIND, " ".join(KINDS)))

        # before: (key, op, args, expected answer); model = the value after the acknowledged op
        model = {}
        before, down, rush = [], [], []
        for kind, ks in keys.items():
            for i, k in enumerate(ks):
                if kind == "append":
                    before.append((k, "set", (b"a0",), True))
                    down.append((k, "append", (b"|down",), True))
                    rush.append((k, "append", (b"|rush",), True))
                    model[k] = b"a0|down|rush"
                elif kind == "incr":
                    d = rng.randrange(1, 1000)
                    before.append((k, "set", (b"1000",), True))
                    down.append((k, "incr", (d,), 1000 + d))
                    rush.append((k, "incr", (1,), 1001 + d))
                    model[k] = b"%d" % (1001 + d)
                elif kind == "set":
                    new = b"new %d %d" % (i, rng.randrange(1 << 30))
                    before.append((k, "set", (b"old %d" % i,), True))
                    down.append((k, "set", (new,), True))
                    rush.append((k, "append", (b"|rush",), True))
                    model[k] = new + b"|rush"
                elif kind == "new":
                    down.append((k, "set", (b"new %d" % i,), True))
                    rush.append((k, "delete", (), True))
                    model[k] = None
                else:   # gone
                    before.append((k, "set", (b"doomed %d" % i,), True))
                    down.append((k, "delete", (), True))
                    rush.append((k, "delete", (), False) if i % 2 == 0 else (k, "append", (b"|rush",), False))
                    model[k] = None
        bad = all_failures(apply_ops(port, before))
        tap.ok(not bad, "%d keys written with S up" % len(before), listing(texts(bad)))

        tap.note("stopping S = %s with SIGTERM" % victim.addr)
        st, killed = victim.daemon.stop(timeout=15)
        tap.ok(st == 0 and not killed, "S exits 0 on SIGTERM", "status %s, killed %s" % (st, killed))
        tap.note("S shown (fault) after %.1f s" % wait_fault(c, victim))
        bad = all_failures(apply_ops(port, down))
        tap.ok(not bad, "while S is down: %d changes (append, incr, set, delete) all acknowledged"
               % len(down), listing(texts(bad)))
        for k, _ in bad:        # its value is unknown now: leave the key out
            model.pop(k, None)
        rush = [r for r in rush if r[0] in model]
        rng.shuffle(rush)

        tap.note("restarting S on its own database, kumoctl attach, then at once %d delete/incr/append"
                 % len(rush))
        t_attach = restart_attach(c, victim)
        bad = apply_ops(port, rush)
        wrong, serr, err = bad["wrong"], bad["server_error"], bad["error"]
        t_done = time.time() - t_attach
        try:
            text = status_text(c)
        except OSError as e:
            text = str(e)
        still = "replace:" in text or "catch" in text.lower()
        tap.note("the %d commands took %.2f s after the attach; %s" % (
            len(rush), t_done, "a replace or catch-up was still running then" if still
            else "NO replace was running any more (the copy was quicker than the commands)"))
        tap.ok(not wrong, "every answer during the catch-up is the model's (%d of %d wrong%s)"
               % (len(wrong), len(rush), per_kind(wrong, kind_of)), listing(texts(wrong)))
        tap.ok(not serr, "no SERVER_ERROR during the catch-up with two in-sync owners left (%d%s)"
               % (len(serr), per_kind(serr, kind_of)), listing(texts(serr)))
        tap.ok(not err, "no other error during the catch-up (%d%s)" % (len(err), per_kind(err, kind_of)),
               listing(texts(err)))

        try:
            wait_settled(c, "the cluster after the rejoin")
            tap.ok(True, "the cluster settles after the rejoin")
        except (TimeoutError, OSError) as e:
            tap.ok(False, "the cluster settles after the rejoin", str(e))
        final = [(k, "%s (%s): %s %s, want %s" % (name(k), kind_of[k], "reads" if kind == "ok" else "failed:",
                                                  kt.short(got, 40), kt.short(model[k], 40)))
                 for k, (kind, got) in read_all(port, model).items() if (kind, got) != ("ok", model[k])]
        tap.ok(not final, "through the gateway every key reads its model value (%d of %d wrong%s)"
               % (len(final), len(model), per_kind(final, kind_of)), listing(texts(final)))
        c.check_running()
        stop_cluster(c)
        copies = disk_check("A, on disk", c, model, kind_of)
        figures = (len(wrong), len(serr), len(err), len(rush), len(final), len(copies), len(model) * len(c.servers))
        (tap.diag if any(figures[:3] + figures[4:6]) else tap.note)(
            "A: %d wrong answers, %d SERVER_ERROR, %d other errors (of %d), %d wrong final values, "
            "%d wrong copies on disk (of %d)" % figures)


# --------------------------------------------------------------------------
# B. rolling restart at an operator's pace
# --------------------------------------------------------------------------

def scenario_b(rng):
    tap.note("== B. rolling restart, the next server stopped as soon as the previous one is (active)")
    with kt.Cluster(nservers=3, server_args=SERVER_ARGS) as c:
        port = c.gateway_port
        load_filler(port)
        tag = rng.randrange(1 << 30)
        old = {("ow:%d:%d" % (tag, i)).encode(): b"ow old %d %s" % (i, rng.randbytes(8).hex().encode())
               for i in range(NROLL)}
        new = {k: b"ow NEW " + v[7:] for k, v in old.items()}
        dels = {("del:%d:%d" % (tag, i)).encode(): b"del %d %s" % (i, rng.randbytes(8).hex().encode())
                for i in range(NROLL)}
        first = [(k, "set", (v,), True) for k, v in list(old.items()) + list(dels.items())]
        bad = all_failures(apply_ops(port, first))
        tap.ok(not bad, "%d ow and %d del keys written" % (NROLL, NROLL), listing(texts(bad)))

        order = list(c.servers)
        rng.shuffle(order)
        tap.note("restart order: %s" % " ".join(s.addr for s in order))
        s1 = order[0]
        st, killed = s1.daemon.stop(timeout=15)
        tap.ok(st == 0 and not killed, "S1 exits 0 on SIGTERM", "status %s, killed %s" % (st, killed))
        tap.note("S1 shown (fault) after %.1f s" % wait_fault(c, s1))
        change = [(k, "set", (v,), True) for k, v in new.items()] + [(k, "delete", (), True) for k in dels]
        bad = all_failures(apply_ops(port, change))
        tap.ok(not bad, "while S1 is down: %d ow keys overwritten, %d del keys deleted"
               % (NROLL, NROLL), listing(texts(bad)))

        t0 = time.time()
        for i, s in enumerate(order, 1):
            if i > 1:
                st, killed = s.daemon.stop(timeout=15)
                tap.ok(st == 0 and not killed, "S%d exits 0 on SIGTERM" % i, "status %s, killed %s" % (st, killed))
            try:
                restart_attach(c, s)
                took = wait_active(c, s)
                tap.ok(True, "S%d = %s restarted on its database, attached, (active) after %.1f s"
                       % (i, s.addr, took))
            except (TimeoutError, OSError) as e:
                tap.ok(False, "S%d = %s restarted on its database, attached, (active)" % (i, s.addr), str(e))
        tap.note("the rolling restart took %.1f s" % (time.time() - t0))
        try:
            wait_settled(c, "the cluster after the rolling restart")
            tap.ok(True, "the cluster settles after the rolling restart")
        except (TimeoutError, OSError) as e:
            tap.ok(False, "the cluster settles after the rolling restart", str(e))

        stale, missing, other, back, errors = [], [], [], [], []
        for k, (kind, got) in read_all(port, list(new) + list(dels)).items():
            if kind != "ok":
                errors.append("get %s: %s" % (name(k), got))
            elif k in dels:
                if got is not None:
                    back.append("%s: deleted, reads %s" % (name(k), kt.short(got, 40)))
            elif got == old[k]:
                stale.append("%s: reads the old %s, want %s" % (name(k), kt.short(got, 40), kt.short(new[k], 40)))
            elif got is None:
                missing.append("%s: misses, want %s" % (name(k), kt.short(new[k], 40)))
            elif got != new[k]:
                other.append("%s: reads %s, want %s" % (name(k), kt.short(got, 40), kt.short(new[k], 40)))
        tap.ok(not stale, "no ow key reads its old value (%d of %d do)" % (len(stale), NROLL), listing(stale))
        tap.ok(not missing, "no ow key misses (%d of %d do)" % (len(missing), NROLL), listing(missing))
        tap.ok(not other, "no ow key reads anything else (%d)" % len(other), listing(other))
        tap.ok(not back, "no deleted key comes back (%d of %d do)" % (len(back), NROLL), listing(back))
        tap.ok(not errors, "every get answers (%d errors)" % len(errors), listing(errors))
        c.check_running()
        stop_cluster(c)
        model = dict(new)
        model.update({k: None for k in dels})
        copies = disk_check("B, on disk", c, model)
        figures = (len(stale), len(missing), len(back), len(other) + len(errors), len(copies))
        (tap.diag if any(figures) else tap.note)(
            "B: %d old values read, %d ow misses, %d deleted keys back, %d other wrong reads, "
            "%d wrong copies on disk" % figures)


SCENARIOS = [("A", scenario_a), ("B", scenario_b)]


def body():
    kt.require_module("pymemcache")
    kt.require_binaries()
    if not shutil.which("tchmgr"):     # reads the servers' files
        (tap.bail if kt.REQUIRE else tap.skip_all)("tchmgr not installed (apt-get install tokyocabinet-bin)")
    rng = kt.make_rng()
    only = {x.strip().upper() for x in os.environ.get("KUMO_TEST_ONLY", "").split(",") if x.strip()}
    seeds = [rng.randrange(1 << 32) for _ in SCENARIOS]
    for (label, fn), seed in zip(SCENARIOS, seeds):
        if only and label not in only:
            continue
        t0 = time.time()
        try:
            fn(random.Random(seed))
        except kt.DaemonDied as e:
            tap.ok(False, "scenario %s: daemons stay up" % label, str(e))
        except Exception:
            tap.ok(False, "scenario %s raised no exception" % label, traceback.format_exc())
        tap.note("scenario %s took %.1f s" % (label, time.time() - t0))


if __name__ == "__main__":
    kt.main(body)

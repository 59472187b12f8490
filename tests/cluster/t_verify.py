#!/usr/bin/python3
"""t_verify — anti-entropy: `kumoctl verify` names exactly the keys one
replica lacks or holds old, `kumoctl repair` restores them (docs/anti-entropy.md,
docs/anti-entropy.md).

  1. 3 servers, a gateway; 3,000 keys set through the gateway (pymemcache),
     40 of them deleted (their tombstones agree everywhere).
  2. `kumoctl verify` on the healthy cluster: exit 0, 0 keys divergent.
     SRV_DIGEST and SRV_RANGE_KEYS answer a caller without the values flag
     in the three-element forms an older kumoctl reads, and one with it
     with the value digests (docs/protocol.md §5.5).
  3. Divergence planted in ONE server's Tokyo Cabinet file (the victim):
       - missing values: records removed (`tchmgr out`);
       - stale values: a record overwritten by an older version of itself
         (ClockTime 5 s older, another payload of the same length:
         `tchmgr put`);
       - missing tombstones: keys deleted through the gateway, then their
         tombstone removed from the victim (`tchmgr out`).
     Most of them have the victim as their primary, so a client reading
     through the gateway sees the damage (misses, old values) before the
     repair and the right answers after it.
  4. `kumoctl verify`: exit 1, the keys it prints are exactly the planted
     ones, and its summary counts them.
  5. `kumoctl repair`: exit 0, a "repaired" line per planted key, its
     re-verify finds nothing; reads through the gateway are right again;
     a second `verify` exits 0.
  6. 17,000 more keys (20,000 in all): `verify` is timed and its rate
     printed as a note (never asserted).
  7. The cluster stopped: the three database files hold the same record
     (same ClockTime) for every key (tchmgr list).

How the divergence is planted, and why this way. The server keeps its
database open with a 1 GiB mmap, and restarting it would let the catch-up
copy restore the keys before `verify` could see them. So the
victim is frozen with SIGSTOP, `tchmgr out -nl` / `tchmgr put -nl -sx`
edit its file, and SIGCONT follows well within the 4 s after which the
manager declares a silent server lost (the window is measured, noted, and
the victim must still be active afterwards). That is safe enough because
(Tokyo Cabinet 1.4.48, tchdb.c):
  - a stopped server has nothing in flight; its reads walk the bucket
    tree through the shared mapping (MAP_SHARED, no record cache without
    #rcnum), so it sees the edited tree at once: its later reads of a
    removed key miss (checked below through the gateway);
  - `out` unlinks the record and frees its block in tchmgr's own free-block
    pool only: the server never reuses that block (a small leak);
  - `put` of a value of the record's own size rewrites it in place. A
    larger one would be appended at the end of the file, past the end the
    server knows of, and the server's next append would overwrite it:
    never done here (a stale record keeps its length; a lost tombstone is
    removed, not replaced by a longer value);
  - on close tchmgr truncates the file to the header's size, dropping the
    32 KiB that TC extends the file by ahead of its writes; the server
    would then write to mapped pages past the end of the file (SIGBUS).
    The file's size is therefore restored (os.truncate) before SIGCONT;
  - tchmgr also clears the header's "open" flag and saves its free-block
    list; the server rewrites both when it closes.

Environment: KUMO_TEST_SEED (printed), KUMO_VERIFY_KEYS (the timed run's
size, default 20000), and kumotest's usual variables.
"""
import os
import re
import signal
import struct
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
OP_TIMEOUT = 10.0
NKEYS = 3000
NDELETED = 40
TIMED_KEYS = int(os.environ.get("KUMO_VERIFY_KEYS", "20000"))
STOP_BUDGET = 2.0  # s a server may stay SIGSTOPped (the manager's limit is 4 s)


def set_many(port, items):
    """pymemcache set_many in chunks; returns the keys not stored."""
    mc = kt.mc_client(port, timeout=OP_TIMEOUT)
    failed = []
    keys = list(items)
    for i in range(0, len(keys), 500):
        chunk = {k: items[k] for k in keys[i:i + 500]}
        failed += mc.set_many(chunk, noreply=False)
    mc.close()
    return failed


def make_items(rng, prefix, n):
    return {("%s:%05d:%d" % (prefix, i, rng.randrange(1 << 30))).encode(): rng.randbytes(rng.randrange(8, 120))
            for i in range(n)}


def tch(*args):
    r = kt.subprocess.run(["tchmgr"] + [str(a) for a in args], capture_output=True, timeout=10)
    if r.returncode != 0:
        raise OSError("tchmgr %s: exit %d: %s" % (" ".join(map(str, args[:2])), r.returncode,
                                                   r.stderr.decode("utf-8", "replace").strip()))
    return r.stdout


def plant(server, removals, puts):
    """Edit a running server's database under SIGSTOP (see the docstring):
    `tchmgr out` of each dbkey in removals, `tchmgr put` of each (dbkey,
    record) in puts, the file's size restored, SIGCONT. Returns the seconds
    the server was stopped."""
    pid = server.daemon.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.time()
    try:
        size = os.stat(server.db).st_size
        for dbkey in removals:
            tch("out", "-nl", "-sx", server.db, dbkey.hex(" "))
        for dbkey, rec in puts:
            tch("put", "-nl", "-sx", server.db, dbkey.hex(" "), rec.hex(" "))
        if os.stat(server.db).st_size < size:
            os.truncate(server.db, size)
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.time() - t0


def verify(c, cmd="verify", timeout=120):
    t0 = time.time()
    r = c.kumoctl(cmd, timeout=timeout)
    return r, time.time() - t0


def listed_keys(out):
    """The keys a verify report prints (the indented lines under each pair)."""
    return {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.strip()}


def summary(out):
    """verify's summary: (ranges compared, ranges divergent, keys divergent)."""
    m = re.search(r"^verify: (\d+) ranges compared, (\d+) ranges divergent, (\d+) keys divergent", out, re.M)
    return tuple(int(x) for x in m.groups()) if m else None


def load(c, rng, prefix):
    """NKEYS keys set through the gateway, NDELETED of them deleted: {key: value} of the live ones."""
    items = make_items(rng, prefix, NKEYS)
    tap.eq(set_many(c.gateway_port, items), [], "%d keys set through the gateway" % NKEYS)
    mc = kt.mc_client(c.gateway_port, timeout=OP_TIMEOUT)
    deleted = sorted(items)[:NDELETED]
    tap.ok(all(mc.delete(k, noreply=False) for k in deleted), "%d of them deleted" % NDELETED)
    mc.close()
    for k in deleted:
        del items[k]
    return items


def plant_divergence(c, rng, items, check_visible=True):
    """Missing values, stale values and lost tombstones on one server (see
    the docstring). Returns (victim, {planted key: its right value or None}).
    items loses the keys deleted here."""
    ring = c.ring()
    victim = rng.choice(c.servers)
    live = sorted(items)
    primary = [k for k in live if ring.primary(k) == victim.addr]
    others = [k for k in live if ring.primary(k) != victim.addr]
    rng.shuffle(primary)
    rng.shuffle(others)
    missing = primary[:5] + others[:2]
    stale = primary[5:8]
    tomb_keys = primary[8:11]
    tap.note("victim %s; missing %d, stale %d, lost tombstones %d" % (
        victim.addr, len(missing), len(stale), len(tomb_keys)))
    mc = kt.mc_client(c.gateway_port, timeout=OP_TIMEOUT)
    stale_recs = []
    for k in stale:
        v, cas = mc.gets(k)
        tap.ok(v == items[k], "gets %s before planting" % k.decode())
        rec = struct.pack(">QHII", int(cas) - (5 << 32), 1, 0, 0) + b"S" * len(v)
        stale_recs.append((kt.record_key(k), rec))
    for k in tomb_keys:
        tap.ok(mc.delete(k, noreply=False), "delete %s (to lose its tombstone on the victim)" % k.decode())
        del items[k]
    mc.close()
    stopped = plant(victim, [kt.record_key(k) for k in missing + tomb_keys], stale_recs)
    tap.note("victim stopped for %.2f s while its file was edited" % stopped)
    tap.ok(stopped < STOP_BUDGET, "the victim was stopped for less than %.0f s" % STOP_BUDGET)
    seen = []

    def all_active():
        seen[:] = [c.status()]
        return all(s == "active" for _, s in seen[0].attached)
    try:
        kt.holds_for(all_active, 2.0, "every server (active)", interval=0.2, daemons=c.daemons())
        tap.ok(True, "every server still active after the edit", repr(seen))
    except kt.NotHeld as e:
        tap.ok(False, "every server still active after the edit", "%s: %r" % (e, seen))
    c.check_running("every daemon runs after the edit")
    if check_visible:  # the damage is visible through the victim's reads
        seen = {k: None for k in missing if k in primary}
        seen.update({k: b"S" * len(items[k]) for k in stale})
        bad = kt.read_mismatches(c.gateway_port, seen, timeout=OP_TIMEOUT)
        tap.ok(not bad, "the victim now misses the removed keys and serves the stale values it was given",
               "\n".join(bad[:10]))
    return victim, {k: items.get(k) for k in missing + stale + tomb_keys}


def walk_result(port, method, start, poll):
    """Start a walk with params `start`, poll it with `poll(job)`: its result."""
    err, res = kt.rpc_call(port, method, start)
    for _ in range(100):
        if err is not None or res[3] is not None:
            break
        time.sleep(0.05)
        err, res = kt.rpc_call(port, method, poll(res[0]))
    if err is not None:
        raise OSError("method %d: %s" % (method, err))
    return res[3]


def check_wire_forms(c):
    """SRV_DIGEST (40) and SRV_RANGE_KEYS (41) answer an older caller (no
    values flag) in the three-element forms, a newer one with vdigest and
    the value's hash (docs/protocol.md §5.5)."""
    port = c.servers[0].port
    try:
        old = walk_result(port, 40, [0], lambda j: [j])
        new = walk_result(port, 40, [0], lambda j: [j, 1])
        tap.ok(old[3] and all(len(e) == 3 for e in old[3]) and all(len(e) == 4 for e in new[3]),
               "SRV_DIGEST: [vnode, count, digest] without values, with vdigest when asked for",
               "%r / %r" % (old[3][:2], new[3][:2]))
        spans = [[0, (1 << 64) - 1]]
        old = walk_result(port, 41, [0, spans], lambda j: [j])
        new = walk_result(port, 41, [0, spans, 1], lambda j: [j])
        tap.ok(old[2] and all(len(e) == 3 for e in old[2]) and all(len(e) == 4 for e in new[2]) and
               len(old[2]) == len(new[2]),
               "SRV_RANGE_KEYS: [dbkey, clocktime, tombstone] without values, with the value's hash when asked for",
               "%r / %r" % (old[2][:2], new[2][:2]))
    except (OSError, TypeError, IndexError) as e:
        tap.ok(False, "SRV_DIGEST and SRV_RANGE_KEYS in both forms", str(e))


def scenario_kumoctl(rng):
    with kt.Cluster(nservers=3) as c:
        items = load(c, rng, "ae")
        check_wire_forms(c)
        r, _ = verify(c)
        tap.ok(r.returncode == 0 and summary(r.stdout) is not None and summary(r.stdout)[2] == 0,
               "verify on a healthy cluster: exit 0, 0 keys divergent",
               "exit %s\n%s%s" % (r.returncode, r.stdout, r.stderr))
        if summary(r.stdout):
            tap.note("healthy: %d ranges compared" % summary(r.stdout)[0])

        victim, want = plant_divergence(c, rng, items)
        planted = {k.decode() for k in want}
        r, secs = verify(c)
        got = listed_keys(r.stdout)
        tap.eq(r.returncode, 1, "verify after planting: exit 1")
        tap.ok(got == planted, "verify names exactly the %d planted keys" % len(planted),
               "not planted: %s\nnot named: %s\n%s%s" % (sorted(got - planted), sorted(planted - got),
                                                       r.stdout[-3000:], r.stderr))
        sm = summary(r.stdout)
        tap.ok(sm is not None and sm[2] == len(planted) and sm[1] >= 1,
               "its summary counts %d divergent keys" % len(planted), r.stdout[-500:])
        pairs = [line for line in r.stdout.splitlines() if line.endswith("keys differ")]
        tap.ok(len(pairs) == 2 and all(victim.addr in p for p in pairs),
               "the divergence is reported for the victim's two pairs", "\n".join(pairs))
        tap.note("verify with divergence: %.2f s; its report:\n%s" % (secs, r.stdout.rstrip()))

        r, secs = verify(c, "repair")
        repaired = {m.group(1) for m in re.finditer(r"^repaired (\S+):", r.stdout, re.M)}
        tap.eq(r.returncode, 0, "repair: exit 0 (its re-verify agrees)")
        tap.ok(repaired == planted, "repair pushed exactly the planted keys",
               "%s%s" % (r.stdout[-3000:], r.stderr))
        tap.ok(re.search(r"^re-verify: %d ranges listed again, 0 keys divergent$" % sm[1], r.stdout, re.M),
               "repair's re-verify: 0 keys divergent in the %d divergent ranges" % sm[1], r.stdout[-500:])
        tap.note("repair: %.2f s; its report:\n%s" % (secs, r.stdout.rstrip()))

        bad = kt.read_mismatches(c.gateway_port, want, timeout=OP_TIMEOUT)
        tap.ok(not bad, "every planted key reads right through the gateway after the repair", "\n".join(bad[:10]))
        r, _ = verify(c)
        tap.ok(r.returncode == 0 and summary(r.stdout) and summary(r.stdout)[2] == 0,
               "verify after the repair: exit 0", "exit %s\n%s%s" % (r.returncode, r.stdout[-2000:], r.stderr))

        # -- the timed run
        more = make_items(rng, "ae-timed", max(0, TIMED_KEYS - NKEYS))
        tap.eq(set_many(c.gateway_port, more), [], "%d more keys set" % len(more))
        items.update(more)
        total = NKEYS + len(more)
        r, secs = verify(c)
        tap.ok(r.returncode == 0, "verify of %d keys on 3 servers: exit 0" % total,
               "exit %s\n%s%s" % (r.returncode, r.stdout[-2000:], r.stderr))
        tap.note("verify of %d keys (%d records on 3 servers): %.2f s, %.0f keys/s" % (
            total, 3 * total, secs, total / secs if secs > 0 else 0))

        same_on_disk(c)


def same_on_disk(c):
    """Stop the cluster; every server's database must hold the same (key, ClockTime) pairs."""
    tap.note("stopping the cluster to read the databases")
    c.stop(timeout=15)
    disks = {}
    for s in c.servers:
        disks[s.addr] = {k: kt.Record(k, v).clocktime for k, v in kt.tch_records(s.db)}
    first = disks[c.servers[0].addr]
    diff = ["%s: %s" % (s.addr, sorted(set(disks[s.addr].items()) ^ set(first.items()))[:5])
            for s in c.servers[1:] if disks[s.addr] != first]
    tap.ok(not diff, "the three databases hold the same %d records (key and ClockTime)" % len(first),
           "\n".join(diff))


class MetricsCluster(kt.Cluster):
    """Servers with --verify-interval and each its own --metrics port."""

    def __init__(self, interval, **kw):
        super().__init__(server_args=["--verify-interval", str(interval)], **kw)
        self.metrics_port = {s.addr: kt.free_port() for s in self.servers}

    def server_argv(self, s):
        return super().server_argv(s) + ["--metrics", "127.0.0.1:%d" % self.metrics_port[s.addr]]

    def counter(self, name):
        """The sum of a metric over the servers."""
        total = 0
        for port in self.metrics_port.values():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                m = re.search(r"^%s(?:_total)? (\S+)$" % name, r.read().decode(), re.M)
            total += int(float(m.group(1))) if m else 0
        return total


def scenario_background(rng):
    """--verify-interval: the servers find the planted divergence by themselves."""
    interval = 2
    with MetricsCluster(interval, nservers=3) as c:
        items = load(c, rng, "bg")
        kt.wait_until(lambda: c.counter("kumo_server_verify_passes") >= 3, 15,
                      "a background pass on every server", interval=0.3)
        moved0 = c.counter("kumo_server_verify_records_sent") + c.counter("kumo_server_verify_records_fetched")
        tap.eq(moved0, 0, "passes over a healthy cluster move nothing")
        victim, want = plant_divergence(c, rng, items, check_visible=False)
        t0 = time.time()

        def moved():
            return c.counter("kumo_server_verify_records_sent") + c.counter("kumo_server_verify_records_fetched")
        try:
            kt.wait_until(lambda: moved() >= len(want), 6 * interval + 10, "the passes to copy the planted keys",
                          interval=0.3)
        except TimeoutError as e:
            tap.diag(str(e))
        tap.note("the background passes copied %d records within %.1f s of the edit (interval %d s)" % (
            moved(), time.time() - t0, interval))
        sent, fetched = c.counter("kumo_server_verify_records_sent"), c.counter("kumo_server_verify_records_fetched")
        tap.ok(sent + fetched == len(want) and sent >= 1 and fetched >= 1,
               "the passes moved exactly the %d planted records: sent to the victim by the ranges' coordinators, "
               "fetched by the victim where it coordinates" % len(want), "sent %d, fetched %d" % (sent, fetched))
        r, _ = verify(c)
        tap.ok(r.returncode == 0, "kumoctl verify then finds nothing", "exit %s\n%s%s" % (
            r.returncode, r.stdout[-2000:], r.stderr))
        bad = kt.read_mismatches(c.gateway_port, want, timeout=OP_TIMEOUT)
        tap.ok(not bad, "every planted key reads right through the gateway", "\n".join(bad[:10]))
        tap.eq(c.counter("kumo_server_verify_failures"), 0, "no pass failed")
        same_on_disk(c)


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    kt.require_program("tchmgr", "tokyocabinet-bin")
    rng = kt.make_rng()
    only = os.environ.get("KUMO_TEST_ONLY", "1,2").split(",")
    if "1" in only:
        tap.note("1. kumoctl verify and repair")
        scenario_kumoctl(rng)
    if "2" in only:
        tap.note("2. the background pass (--verify-interval)")
        scenario_background(rng)


if __name__ == "__main__":
    kt.main(body)

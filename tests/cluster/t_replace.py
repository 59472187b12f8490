#!/usr/bin/python3
"""t_replace — rebalancing: attach, detach, full-replace, backup/merge/restore,
rejoin of a stale server (docs/architecture.md §11).

Each scenario runs on its own fresh cluster (manager, servers, gateway on
loopback) and ends with a clean stop (SIGTERM) and, where it says so, a look
at every server's Tokyo Cabinet file with `tchmgr list` (kumotest.tch_records):

  1. attach under load: 3 servers, keys written and some deleted; a client
     thread does continuous gets (no retries: any failure counts) and sets of
     its own keys; a 4th server is started, shows under "not attached node",
     `kumoctl attach`; wait until every server's whs is the manager's and
     `kumostat hsccheck` is true everywhere and `kumoctl status` shows no
     "replace:"; no read failed or returned a wrong/older value; on disk each
     live key is on exactly its three owners under the 4-node ring (Python
     placement) and nowhere else; deleted keys miss (and `delete` answers
     NOT_FOUND) and are on disk only as tombstones.
  2. kill -9 one server of 4, `kumoctl detach`, wait for the replace: every
     key on the three live servers again (on disk).
  3. full-replace repairs a server whose database was removed: stop it,
     delete its .tch, restart it (attach if the manager saw it go),
     `kumoctl full-replace`: every key it owns is on its disk again.
  4. backup -> kumomergedb -> restore: `kumoctl backup s1` prints
     "addr  path" per server, kumomergedb merges the four backups (live
     values only, newest wins), the merged file copied to every server's
     database path with the cluster stopped, start, attach: every key reads
     back, deleted keys stay deleted. Bad input: backup into a full disk
     (the temporary file is a symlink to /dev/full) and into a read-only
     directory (chattr +i as root, chmod 0555 otherwise) -> kumoctl exit 1
     with a message, data untouched; kumomergedb on a corrupt, truncated,
     empty, text or foreign Tokyo Cabinet file -> non-zero exit, a message,
     the source file unchanged.
  5. rejoin of a stale server: kill -9 one of 3, overwrite and delete keys,
     restart it on its old database, attach: no get (many rounds, during and
     after the replace) returns an old value or a deleted key; on disk its
     records are the newest ones.

Environment: KUMO_TEST_SEED (printed), KUMO_TEST_ONLY=1,3 to run some
scenarios only, and kumotest's usual variables.
"""
import hashlib
import os
import re
import random
import shutil
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
OP_TIMEOUT = 10.0
REPLACE_TIMEOUT = 60.0


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def add_server(c):
    """A new kumo-server (not started) with its own ports, database and -f dir."""
    i = len(c.servers) + 1
    tmp = os.path.join(c.dir, "tmp%d" % i)
    os.makedirs(tmp, exist_ok=True)
    s = kt.Server(i, kt.free_port(), kt.free_port(), os.path.join(c.dir, "server%d.tch" % i), tmp)
    c.servers.append(s)
    return s


def make_values(rng, prefix, n, tag="v1"):
    return {("%s:%d:%d" % (prefix, i, rng.randrange(1 << 30))).encode():
            ("%s %s %d " % (prefix, tag, i)).encode() + rng.randbytes(rng.randrange(0, 200))
            for i in range(n)}


def write_all(port, items):
    """Sets through the gateway; returns the keys not answered STORED."""
    mc = kt.mc_client(port, timeout=OP_TIMEOUT)
    bad = []
    for k, v in items.items():
        try:
            if mc.set(k, v) is not True:
                bad.append(k)
        except Exception as e:
            bad.append(k)
            mc.close()
            mc = kt.mc_client(port, timeout=OP_TIMEOUT)
    mc.close()
    return bad


def delete_all(port, keys):
    """Deletes; returns [(key, answer)] of those not answered DELETED."""
    mc = kt.mc_client(port, timeout=OP_TIMEOUT)
    bad = []
    for k in keys:
        try:
            r = mc.delete(k, noreply=False)
        except Exception as e:
            r = "%s: %s" % (type(e).__name__, e)
            mc.close()
            mc = kt.mc_client(port, timeout=OP_TIMEOUT)
        if r is not True:
            bad.append((k, r))
    mc.close()
    return bad


def status_text(c):
    r = c.kumoctl("status")
    if r.returncode not in kt.STATUS_ANSWERED:
        raise OSError("kumoctl status: exit %s: %s" % (r.returncode, (r.stderr or r.stdout).strip()))
    return r.stdout


def wait_replaced(c, live, timeout=REPLACE_TIMEOUT, what="the replace"):
    """Until: `kumoctl status` shows no "replace:", every live server's whs is
    the manager's (same timestamp and nodes) and its hsccheck is true; and
    stays so for 2 s. Returns the manager's Status."""
    def cond():
        text = status_text(c)
        if "replace:" in text:
            return False
        st = kt.Status(text)
        for s in live:
            w = c.hash_space(s, "whs")
            if w.timestamp != st.timestamp or w.attached != st.attached:
                return False
            if not c.hsccheck(s):
                return False
        return st
    t0 = time.time()
    kt.wait_until(cond, timeout, what + " to finish (no 'replace:' in status, whs = manager's, hsccheck true)",
                  interval=0.3, daemons=[d for d in c.daemons() if not d.expected_exit])
    st = kt.holds_for(cond, 2.0, what + " to stay finished", interval=0.3,
                      daemons=[d for d in c.daemons() if not d.expected_exit])
    tap.note("%s finished in %.1f s" % (what, time.time() - t0))
    return st


def stop_clean(c, skip=()):
    """SIGTERM gateway, servers, manager; each must exit 0 without SIGKILL."""
    tap.note("stopping the cluster with SIGTERM")
    bad = []
    for d, status, killed in c.stop(timeout=15):
        if d in skip:
            continue
        if status != 0 or killed:
            bad.append("%s: status %s%s" % (d.name, status, ", needed SIGKILL" if killed else ""))
    tap.ok(not bad, "every daemon exits 0 on SIGTERM", "\n".join(bad))


def read_disks(servers):
    """{addr: [Record]} of each server's database (cluster stopped)."""
    out = {}
    for s in servers:
        recs = []
        for dbkey, value in kt.tch_records(s.db):
            recs.append(kt.Record(dbkey, value))
        out[s.addr] = recs
    return out


def disk_check(label, servers, ring, live, deleted, only_owner=None):
    """On-disk placement: each key of `live` (bytes -> bytes) on exactly its
    owners in `ring` among `servers`, with its value; each key of `deleted`
    absent or a tombstone everywhere; no other records. With only_owner
    (an addr), only check that the keys that server owns are on its disk."""
    try:
        disks = read_disks(servers)
    except (OSError, ValueError) as e:
        tap.ok(False, "%s: tchmgr reads every database" % label, str(e))
        return False
    held = {}
    stray, live_tomb, wrong_val, del_live = [], [], [], []
    for addr, recs in disks.items():
        for r in recs:
            if r.key in live:
                held.setdefault(r.key, set()).add(addr)
                if r.tombstone:
                    live_tomb.append("%s on %s" % (r.key, addr))
                elif r.payload != live[r.key]:
                    wrong_val.append("%s on %s: %s, want %s" % (r.key, addr, kt.short(r.payload, 40),
                                                                kt.short(live[r.key], 40)))
            elif r.key in deleted:
                if not r.tombstone:
                    del_live.append("%s on %s: %s" % (r.key, addr, kt.short(r.payload, 40)))
            else:
                stray.append("%s on %s" % (kt.short(r.key, 60), addr))
    tap.note("%s: %s" % (label, ", ".join("%s %d records" % (a, len(r)) for a, r in disks.items())))
    ok = True
    if only_owner:
        mine = [k for k in live if only_owner in ring.owners(k)]
        missing = [k for k in mine if only_owner not in held.get(k, ())]
        ok &= tap.ok(mine and not missing, "%s: all %d keys %s owns are on its disk" % (label, len(mine), only_owner),
                     "%d missing, e.g. %s" % (len(missing), missing[:10]))
    wrong = []
    for k in live:
        want = set(ring.owners(k))
        got = held.get(k, set())
        if got != want:
            wrong.append("%s: on %s, owners %s" % (k, sorted(got), sorted(want)))
    ok &= tap.ok(not wrong, "%s: each of %d live keys is on exactly its %d owners, nowhere else"
                 % (label, len(live), kt.REPLICAS),
                 "%d wrong, e.g.\n%s" % (len(wrong), "\n".join(wrong[:10])))
    ok &= tap.ok(not live_tomb and not wrong_val, "%s: every copy of a live key holds its last value" % label,
                 "\n".join((live_tomb + wrong_val)[:10]))
    if deleted:
        ok &= tap.ok(not del_live, "%s: each of %d deleted keys is a tombstone or absent on every server"
                     % (label, len(deleted)), "%d live copies, e.g.\n%s" % (len(del_live), "\n".join(del_live[:10])))
    ok &= tap.ok(not stray, "%s: no record of an unknown key" % label, "\n".join(stray[:10]))
    return ok


def deleted_miss(port, deleted, label, ndelete=10):
    """Deleted keys miss on get; `delete` of some of them answers NOT_FOUND."""
    bad = kt.read_mismatches(port, {k: None for k in deleted}, timeout=OP_TIMEOUT)
    tap.ok(not bad, "%s: each of %d deleted keys misses through the gateway" % (label, len(deleted)),
           "%d found, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
    mc = kt.mc_client(port, timeout=OP_TIMEOUT)
    got = []
    for k in sorted(deleted)[:ndelete]:
        try:
            r = mc.delete(k, noreply=False)
        except Exception as e:
            r = "%s: %s" % (type(e).__name__, e)
        if r is not False:
            got.append((k, r))
    mc.close()
    tap.ok(not got, "%s: delete of %d deleted keys answers NOT_FOUND" % (label, min(ndelete, len(deleted))),
           "answers other than NOT_FOUND: %s" % got[:10])


def load_client(port, known, rng, nown=100):
    """Continuous gets of known keys (expected value or miss), a multi-get every
    10 rounds, and sets of its own keys (own:0 .. own:nown-1), each read back
    and reread later. No retries: every error or wrong answer counts."""
    return kt.LoadClient(port, known, rng, prefix="own", nown=nown, timeout=OP_TIMEOUT,
                         multi_every=10, reread_every=3, pause=0.002)


def wait_fault(c, victim, timeout=30):
    t0 = time.time()
    kt.wait_until(lambda: c.status().state(victim.addr) == "fault", timeout,
                  "%s (fault) in kumoctl status" % victim.addr, interval=0.25,
                  daemons=[d for d in c.daemons() if not d.expected_exit])
    tap.ok(True, "kumoctl status shows %s (fault) after %.1f s" % (victim.addr, time.time() - t0))


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------

def s1_attach_under_load(rng):
    tap.note("== 1. a 4th server attached under continuous reads and writes")
    with kt.Cluster(nservers=3) as c:
        port = c.gateway_port
        base = make_values(rng, "base", 2000)
        bad = write_all(port, base)
        tap.ok(not bad, "2000 keys written", "failed: %s" % bad[:10])
        deleted = set(rng.sample(sorted(base), 200))
        bad = delete_all(port, deleted)
        tap.ok(not bad, "200 of them deleted (DELETED)", "answers: %s" % bad[:10])
        live = {k: v for k, v in base.items() if k not in deleted}
        known = dict(live)
        known.update({k: None for k in deleted})

        load = load_client(port, known, rng)
        load.start()
        load.wait_progress(20, 30)      # the client runs before the new server; checked below
        s4 = add_server(c)
        tap.note("starting a 4th server %s while the client runs" % s4.addr)
        c.start_server(s4)
        try:
            c.wait_not_attached([s4], timeout=30)
            tap.ok(True, "%s shows under 'not attached node'" % s4.addr)
        except TimeoutError as e:
            tap.ok(False, "%s shows under 'not attached node'" % s4.addr, str(e))
        load.wait_progress(20, 30)      # with the new server up, not attached yet
        r = c.kumoctl("attach")
        tap.ok(r.returncode == 0, "kumoctl attach exits 0", "exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        try:
            st = wait_replaced(c, c.servers, what="the attach's replace")
            tap.eq(sorted(st.attached), sorted((s.addr, "active") for s in c.servers),
                   "status: the 4 servers attached and (active)")
            tap.ok(s4.addr not in st.not_attached, "status: nothing left under 'not attached node'")
        except TimeoutError as e:
            tap.ok(False, "the replace after attach finishes", str(e) + "\n" + status_text(c))
            st = c.status()
        # kumostat moved: the old owners sent records, the new server applied them
        moved = {srv.addr: c.kumostat(srv, "moved") for srv in c.servers}
        nums = {a: [int(x) for x in re.findall(r"\d+", line.split(":  ")[-1])] for a, line in moved.items()}
        tap.ok(sum(v[0] for a, v in nums.items() if a != s4.addr) > 0 and nums[s4.addr][2] > 0,
               "kumostat moved: the old owners sent records and %s applied them" % s4.addr, repr(moved))
        load.wait_progress(20, 30)      # reads after the replace too
        load.stop()
        tap.ok(load.gets > 100 and not load.errors,
               "no read failed or returned a wrong or older value during the attach (%s)" % load.summary(),
               "%d errors:\n%s" % (len(load.errors), "\n".join(load.errors[:15])))
        tap.ok(not load.set_errors, "every set of the client was acknowledged (%d sets)" % load.sets,
               "\n".join(load.set_errors[:10]))

        live.update(load.own)
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "all %d live keys read back through the gateway" % len(live),
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        deleted_miss(port, deleted, "after attach")
        c.check_running()
        ring = kt.Ring(st.attached_addrs())
        stop_clean(c)
        own_keys = {k for k in load.own}
        disk_check("on disk after attach (4-node ring)", c.servers, ring, live, deleted)
        if own_keys:
            tap.note("(%d of the live keys were written by the client during the attach)" % len(own_keys))


def s2_kill_detach(rng):
    tap.note("== 2. kill -9 one server of 4, detach, back to three copies")
    with kt.Cluster(nservers=4) as c:
        port = c.gateway_port
        base = make_values(rng, "det", 400)
        bad = write_all(port, base)
        tap.ok(not bad, "400 keys written", "failed: %s" % bad[:10])
        deleted = set(rng.sample(sorted(base), 40))
        bad = delete_all(port, deleted)
        tap.ok(not bad, "40 of them deleted", "answers: %s" % bad[:10])
        live = {k: v for k, v in base.items() if k not in deleted}
        victim = rng.choice(c.servers)
        tap.note("kill -9 %s" % victim.addr)
        victim.daemon.kill9()
        wait_fault(c, victim)
        # writes while it is fault (two copies) must also end up three times
        extra = make_values(rng, "during", 50)
        bad = write_all(port, extra)
        tap.ok(not bad, "50 keys written while %s is fault" % victim.addr, "failed: %s" % bad[:10])
        live.update(extra)
        r = c.kumoctl("detach")
        tap.ok(r.returncode == 0, "kumoctl detach exits 0", "exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        rest = [s for s in c.servers if s is not victim]
        try:
            st = wait_replaced(c, rest, what="the detach's replace")
        except TimeoutError as e:
            tap.ok(False, "the replace after detach finishes", str(e) + "\n" + status_text(c))
            st = c.status()
        tap.eq(sorted(st.attached), sorted((s.addr, "active") for s in rest),
               "status: the 3 live servers attached and (active), %s gone" % victim.addr)
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "all %d live keys read back" % len(live),
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        deleted_miss(port, deleted, "after detach", ndelete=5)
        c.check_running()
        ring = kt.Ring(st.attached_addrs())
        stop_clean(c, skip=[victim.daemon])
        disk_check("on disk after detach (3 live servers)", rest, ring, live, deleted)


def s3_full_replace(rng):
    tap.note("== 3. full-replace repairs a server whose database was removed")
    with kt.Cluster(nservers=4) as c:
        port = c.gateway_port
        live = make_values(rng, "full", 400)
        bad = write_all(port, live)
        tap.ok(not bad, "400 keys written", "failed: %s" % bad[:10])
        st0 = c.status()
        victim = rng.choice(c.servers)
        ring = kt.Ring(st0.attached_addrs())
        mine = [k for k in live if victim.addr in ring.owners(k)]
        tap.note("victim %s owns %d keys; stopping it, removing %s, restarting it" % (
            victim.addr, len(mine), victim.db))
        status, killed = victim.daemon.stop()
        tap.ok(status == 0 and not killed, "%s exits 0 on SIGTERM" % victim.addr)
        os.unlink(victim.db)
        for extra in (victim.db + ".flush",):
            if os.path.exists(extra):
                os.unlink(extra)
        c.start_server(victim)
        kt.wait_until(lambda: c.hash_space(victim, "whs").attached, 20,
                      "restarted %s to hold a hash space" % victim.addr, interval=0.2,
                      daemons=[victim.daemon, c.manager])
        # The manager probes the old link's address: either a probe reaches the
        # restarted server and it stays (active), or the manager marks it lost.
        # Nothing to wait for in the first case, so: (active) for 3 s, or the
        # moment it is not.
        try:
            kt.holds_for(lambda: c.status().state(victim.addr) == "active", 3.0,
                         "%s (active)" % victim.addr, interval=0.25, daemons=[victim.daemon, c.manager])
        except kt.NotHeld:
            pass
        st = c.status()
        tap.note("after the restart the manager shows %s as %s%s" % (
            victim.addr, st.state(victim.addr),
            ", under 'not attached node'" if victim.addr in st.not_attached else ""))
        if victim.addr in st.not_attached or st.state(victim.addr) != "active":
            c.wait_not_attached([victim], timeout=30)
            r = c.kumoctl("attach")
            tap.ok(r.returncode == 0, "kumoctl attach exits 0", r.stderr)
            try:
                wait_replaced(c, c.servers, what="the attach's replace")
            except TimeoutError as e:
                tap.ok(False, "the replace after attach finishes", str(e))
        else:
            tap.note("it came back before the manager declared it lost: still (active), nothing to attach")
        try:
            tap.note("kumostat %s items before full-replace: %s" % (victim.addr, c.items(victim)))
        except (OSError, ValueError) as e:
            tap.note("kumostat items: %s" % e)
        r = c.kumoctl("full-replace")
        tap.ok(r.returncode == 0, "kumoctl full-replace exits 0", "exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        try:
            st = wait_replaced(c, c.servers, what="the full-replace")
        except TimeoutError as e:
            tap.ok(False, "the full-replace finishes", str(e) + "\n" + status_text(c))
            st = c.status()
        try:
            n = c.items(victim)
        except (OSError, ValueError) as e:
            n = "error: %s" % e
        tap.eq(n, len(mine), "kumostat %s items = the %d keys it owns" % (victim.addr, len(mine)))
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "all %d keys read back" % len(live), "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        c.check_running()
        ring = kt.Ring(st.attached_addrs())
        stop_clean(c)
        disk_check("on disk after full-replace", c.servers, ring, live, set(), only_owner=victim.addr)


def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def mergedb(*args):
    return kt.run_tool([kt.binary("kumomergedb")] + list(args), timeout=60)


def s4_backup_merge_restore(rng):
    tap.note("== 4. backup -> kumomergedb -> restore; backup and merge errors")
    have_merge = os.access(kt.binary("kumomergedb"), os.X_OK)
    if not have_merge:
        tap.ok(False, "kumomergedb is built", kt.binary("kumomergedb"))
        return
    with kt.Cluster(nservers=4) as c:
        port = c.gateway_port
        base = make_values(rng, "bk", 300)
        bad = write_all(port, base)
        tap.ok(not bad, "300 keys written", "failed: %s" % bad[:10])
        keys = sorted(base)
        rng.shuffle(keys)
        upd = {k: base[k] + b" (v2)" for k in keys[:100]}
        deleted = set(keys[100:150])
        bad = write_all(port, upd)
        tap.ok(not bad, "100 of them overwritten", "failed: %s" % bad[:10])
        bad = delete_all(port, deleted)
        tap.ok(not bad, "50 of them deleted", "answers: %s" % bad[:10])
        live = {k: v for k, v in base.items() if k not in deleted}
        live.update(upd)

        r = c.kumoctl("backup", "s1", timeout=60)
        tap.ok(r.returncode == 0, "kumoctl backup s1 exits 0", "exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        printed = {}
        for line in r.stdout.splitlines():
            f = line.split()
            if len(f) == 2:
                printed[f[0]] = f[1]
        want = {s.addr: s.db + "-s1" for s in c.servers}
        tap.eq(printed, want, "kumoctl backup prints 'addr  <db path>-s1' for each of the 4 servers")
        backups = [s.db + "-s1" for s in c.servers]
        missing = [p for p in backups if not os.path.isfile(p)]
        tap.ok(not missing, "the 4 backup files exist beside the databases", "missing: %s" % missing)
        if missing:
            return
        try:
            per = [len(kt.tch_records(p)) for p in backups]
            tap.note("records per backup: %s" % per)
        except OSError as e:
            tap.ok(False, "tchmgr reads the backups", str(e))

        merged = os.path.join(c.dir, "merged.tch")
        r = mergedb(merged, *backups)
        tap.ok(r.returncode == 0, "kumomergedb merged.tch <4 backups> exits 0",
               "exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        try:
            recs = [kt.Record(k, v) for k, v in kt.tch_records(merged)]
            got = {x.key: x for x in recs}
            tomb = [x.key for x in recs if x.tombstone]
            tap.ok(not tomb, "merged.tch holds no tombstone", "%d tombstones, e.g. %s" % (len(tomb), tomb[:5]))
            tap.eq(sorted(got), sorted(live), "merged.tch holds exactly the %d live keys" % len(live))
            wrong = [k for k in live if k in got and got[k].payload != live[k]]
            tap.ok(not wrong, "merged.tch holds the newest value of each key",
                   "%d wrong, e.g. %s" % (len(wrong), wrong[:5]))
        except (OSError, ValueError) as e:
            tap.ok(False, "tchmgr reads merged.tch", str(e))

        # -- bad input: backup into a full disk / a read-only directory
        backup_errors(c, live, port)

        # -- restore (the cluster stopped; merged.tch to every database path)
        stop_clean(c)
        tap.note("restore: merged.tch copied to every server's database path, cluster restarted, attach")
        for s in c.servers:
            shutil.copyfile(merged, s.db)
            if os.path.exists(s.db + ".flush"):
                os.unlink(s.db + ".flush")
        try:
            c.start()
            tap.ok(True, "restarted cluster: the 4 servers attached with kumoctl attach")
            wait_replaced(c, c.servers, what="the restore's replace")
        except (TimeoutError, OSError, kt.DaemonDied) as e:
            tap.ok(False, "restarted cluster comes up and attaches", str(e))
            return
        bad = kt.read_mismatches(c.gateway_port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "after restore all %d live keys read back with their newest value" % len(live),
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        deleted_miss(c.gateway_port, deleted, "after restore", ndelete=5)
        c.check_running()

    merge_errors(rng)


def backup_errors(c, live, port):
    s1 = c.servers[0]
    items_before = {s.addr: c.items(s) for s in c.servers}

    tap.note("backup into a full disk: %s-full.tmp is a symlink to /dev/full" % s1.db)
    tmp = s1.db + "-full.tmp"
    try:
        os.symlink("/dev/full", tmp)
        r = c.kumoctl("backup", "full", timeout=60)
        tap.ok(r.returncode == 1, "kumoctl backup with a full disk on %s exits 1" % s1.addr,
               "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr))
        tap.ok(s1.addr in r.stderr and "fail" in r.stderr.lower(),
               "kumoctl names %s and the failure on stderr (%s)" % (s1.addr, r.stderr.strip()[:160]))
        others = [s for s in c.servers if s is not s1]
        tap.ok(all(("%s  %s-full" % (s.addr, s.db)) in r.stdout for s in others),
               "the other 3 servers' backups are still printed", r.stdout)
        tap.ok(not os.path.exists(s1.db + "-full"), "no %s-full left behind" % os.path.basename(s1.db))
    finally:
        if os.path.islink(tmp):
            os.unlink(tmp)

    d = os.path.dirname(s1.db)
    root = os.geteuid() == 0
    tap.note("backup into a read-only directory: %s (%s)" % (d, "chattr +i" if root else "chmod 0555"))
    locked = False
    try:
        if root:
            locked = subprocess.run(["chattr", "+i", d], capture_output=True).returncode == 0
        else:
            os.chmod(d, 0o555)
            locked = True
        if not locked:
            tap.skip("kumoctl backup into a read-only directory exits 1", "chattr +i failed on %s" % d)
        else:
            r = c.kumoctl("backup", "ro", timeout=60)
            tap.ok(r.returncode == 1, "kumoctl backup into a read-only directory exits 1",
                   "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr))
            named = [s.addr for s in c.servers if s.addr not in r.stderr]
            tap.ok(not named, "kumoctl reports the failure of each server on stderr (%s)" %
                   (r.stderr.strip().splitlines() or [""])[0][:160], "not named: %s\n%s" % (named, r.stderr))
    finally:
        if locked:
            if root:
                subprocess.run(["chattr", "-i", d], capture_output=True)
            else:
                os.chmod(d, 0o755)
    left = [p for s in c.servers for p in (s.db + "-ro", s.db + "-ro.tmp") if os.path.exists(p)]
    tap.ok(not left, "no partial backup file left behind", "%s" % left)
    items_after = {s.addr: c.items(s) for s in c.servers}
    tap.eq(items_after, items_before, "kumostat items unchanged by the failed backups")
    bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
    tap.ok(not bad, "all keys still read back after the failed backups",
           "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))


def merge_errors(rng):
    tap.note("kumomergedb on files that are not kumofs databases")
    d = kt.new_tmpdir("kumotest-merge-")
    good = os.path.join(d, "good.tch")
    r = subprocess.run(["tchmgr", "create", good], capture_output=True)
    for i in range(50):
        k = ("k%d" % i).encode()
        dbkey = kt.record_key(k)
        val = (1 << 32 | i).to_bytes(8, "big") + b"\x00\x00" + b"value %d" % i
        subprocess.run(["tchmgr", "put", "-sx", good, dbkey.hex(" "), val.hex(" ")], check=True)
    size = os.path.getsize(good)

    cases = []
    corrupt = os.path.join(d, "corrupt-header.tch")
    shutil.copyfile(good, corrupt)
    with open(corrupt, "r+b") as f:
        f.write(rng.randbytes(256))
    cases.append(("a file with a garbage header", corrupt))
    trunc = os.path.join(d, "truncated.tch")
    shutil.copyfile(good, trunc)
    with open(trunc, "r+b") as f:
        f.truncate(size // 3)
    cases.append(("a truncated database", trunc))
    body = os.path.join(d, "corrupt-body.tch")
    shutil.copyfile(good, body)
    with open(body, "r+b") as f:
        f.seek(size - 2048 if size > 4096 else size // 2)
        f.write(b"\xff" * 1024)
    cases.append(("a database with garbage over its records", body))
    text = os.path.join(d, "text.tch")
    with open(text, "wb") as f:
        f.write(b"hello, this is not a database\n" * 10)
    cases.append(("a text file", text))
    empty = os.path.join(d, "empty.tch")
    open(empty, "wb").close()
    cases.append(("an empty file", empty))
    foreign = os.path.join(d, "foreign.tch")
    subprocess.run(["tchmgr", "create", foreign], capture_output=True)
    subprocess.run(["tchmgr", "put", foreign, "hello", "world"], capture_output=True)
    subprocess.run(["tchmgr", "put", foreign, "another", "record"], capture_output=True)
    cases.append(("a Tokyo Cabinet file without kumofs records", foreign))

    for i, (what, path) in enumerate(cases):
        before = file_digest(path)
        dst = os.path.join(d, "out%d.tch" % i)
        r = mergedb(dst, path)
        msg = (r.stderr.strip() or r.stdout.strip())
        tap.ok(r.returncode not in (0, -999) and r.stderr.strip(),
               "kumomergedb on %s exits non-zero with a message (exit %s: %s)" % (what, r.returncode, msg[:120]),
               "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr))
        tap.ok(file_digest(path) == before, "kumomergedb leaves %s unchanged" % what,
               "size now %d bytes" % os.path.getsize(path))
        if path == body:
            try:
                n = len(kt.tch_records(dst))
            except OSError as e:
                n = 0
            tap.ok("damaged" in r.stderr and 0 < n < 50,
                   "the records it could read are merged (%d of 50), and the message says what was stepped over" % n,
                   r.stderr)

    before = file_digest(good)
    r = mergedb(os.path.join(d, "ok.tch"), good)
    tap.ok(r.returncode == 0, "kumomergedb on the intact file exits 0 (control)", r.stdout + r.stderr)
    tap.ok(file_digest(good) == before, "kumomergedb leaves an intact source unchanged")
    try:
        n = len(kt.tch_records(os.path.join(d, "ok.tch")))
    except OSError as e:
        n = str(e)
    tap.eq(n, 50, "the intact file's 50 records merged (control)")

    merge_newest(d)


def tch_put(path, items):
    """items: [(key bytes, be64 clocktime, payload bytes or None = tombstone, meta)]"""
    subprocess.run(["tchmgr", "create", path], check=True, capture_output=True)
    for k, ct, payload, meta in items:
        val = ct.to_bytes(8, "big")
        if payload is not None:
            val += meta.to_bytes(2, "big") + payload
        subprocess.run(["tchmgr", "put", "-sx", path, kt.record_key(k).hex(" "), val.hex(" ")],
                       check=True, capture_output=True)


def merge_newest(d):
    tap.note("kumomergedb keeps the newest write of each key (crafted sources, both orders)")
    T = 1 << 32
    a = os.path.join(d, "a.tch")
    b = os.path.join(d, "b.tch")
    flags_exp = (7).to_bytes(4, "big") + (0).to_bytes(4, "big")
    tch_put(a, [(b"k1", 100 * T, b"k1 old in a", 0),
                (b"k2", 300 * T, b"k2 new in a", 0),
                (b"k3", 100 * T, b"k3 live, deleted later in b", 0),
                (b"k4", 50 * T, None, 0),
                (b"k6", 400 * T, None, 0)])
    tch_put(b, [(b"k1", 200 * T, b"k1 new in b", 0),
                (b"k2", 150 * T, b"k2 old in b", 0),
                (b"k3", 200 * T, None, 0),
                (b"k5", 10 * T, flags_exp + b"k5 with flags", 1),
                (b"k6", 300 * T, b"k6 live, deleted later in a", 0)])
    want = {b"k1": b"k1 new in b", b"k2": b"k2 new in a", b"k5": b"k5 with flags"}
    for order in ((a, b), (b, a)):
        out = os.path.join(d, "merged-%s.tch" % "".join(os.path.basename(x)[0] for x in order))
        r = mergedb(out, *order)
        label = "kumomergedb %s" % " ".join(os.path.basename(x) for x in order)
        tap.ok(r.returncode == 0, "%s exits 0" % label, r.stdout + r.stderr)
        try:
            got = {x.key: x for x in (kt.Record(k, v) for k, v in kt.tch_records(out))}
        except (OSError, ValueError) as e:
            tap.ok(False, "%s: tchmgr reads the result" % label, str(e))
            continue
        tap.eq({k: (None if x.tombstone else x.payload) for k, x in got.items() if k not in (b"k3", b"k6")},
               {k: v for k, v in want.items()}, "%s: newest value of k1, k2; k5 (meta=1) kept; k4 (only a tombstone) dropped"
               % label)
        tap.ok(b"k3" not in got and b"k6" not in got,
               "%s: a key whose newest write is a delete (k3, k6) is not resurrected from an older value" % label,
               "k3: %r\nk6: %r" % (got.get(b"k3"), got.get(b"k6")))
        if b"k5" in got:
            tap.ok(got[b"k5"].flags == 7 and got[b"k5"].clocktime == 10 * T, "%s: k5 keeps its clocktime and flags" % label,
                   repr(got[b"k5"]))


def s5_stale_rejoin(rng):
    tap.note("== 5. a server rejoins with an old database")
    with kt.Cluster(nservers=3) as c:
        port = c.gateway_port
        base = make_values(rng, "stale", 400)
        bad = write_all(port, base)
        tap.ok(not bad, "400 keys written", "failed: %s" % bad[:10])
        victim = rng.choice(c.servers)
        tap.note("kill -9 %s" % victim.addr)
        victim.daemon.kill9()
        wait_fault(c, victim)
        keys = sorted(base)
        rng.shuffle(keys)
        upd = {k: b"NEW " + base[k][:40] for k in keys[:150]}
        deleted = set(keys[150:250])
        bad = write_all(port, upd)
        tap.ok(not bad, "150 keys overwritten while it is down", "failed: %s" % bad[:10])
        bad = delete_all(port, deleted)
        tap.ok(not bad, "100 keys deleted while it is down", "answers: %s" % bad[:10])
        want = {k: upd.get(k, base[k]) for k in base}
        want.update({k: None for k in deleted})

        tap.note("restarting %s on its old database" % victim.addr)
        c.start_server(victim)
        c.wait_not_attached([victim], timeout=30)
        load = load_client(port, want, rng, nown=20)
        load.start()
        r = c.kumoctl("attach")
        tap.ok(r.returncode == 0, "kumoctl attach exits 0", r.stderr)
        try:
            st = wait_replaced(c, c.servers, what="the rejoin's replace")
        except TimeoutError as e:
            tap.ok(False, "the replace after the rejoin finishes", str(e))
            st = c.status()
        load.wait_progress(20, 30)      # gets after the replace too
        load.stop()
        tap.ok(not load.errors, "no get during and after the attach returned an old value or a deleted key (%s)"
               % load.summary(), "%d errors:\n%s" % (len(load.errors), "\n".join(load.errors[:15])))
        rounds, bad = 5, []
        for i in range(rounds):
            bad += ["round %d: %s" % (i, b) for b in kt.read_mismatches(port, want, timeout=OP_TIMEOUT)]
        tap.ok(not bad, "%d rounds of gets of all %d keys: newest values, deleted keys miss" % (rounds, len(want)),
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:15])))
        try:
            before = int(c.kumostat(victim, "cmd_get").split()[-1])
            ring = kt.Ring(st.attached_addrs())
            primary = {k: v for k, v in want.items() if ring.owners(k)[0] == victim.addr}
            bad = kt.read_mismatches(port, primary, timeout=OP_TIMEOUT)
            after = int(c.kumostat(victim, "cmd_get").split()[-1])
            tap.ok(not bad and after > before,
                   "gets of the %d keys %s is primary for reach it (cmd_get %d -> %d) and are newest"
                   % (len(primary), victim.addr, before, after), "\n".join(bad[:10]))
        except (OSError, ValueError) as e:
            tap.ok(False, "kumostat cmd_get of %s" % victim.addr, str(e))
        c.check_running()
        live = {k: v for k, v in want.items() if v is not None}
        live.update(load.own)
        ring = kt.Ring(st.attached_addrs())
        stop_clean(c)
        disk_check("on disk after the rejoin", c.servers, ring, live, deleted)


SCENARIOS = [s1_attach_under_load, s2_kill_detach, s3_full_replace, s4_backup_merge_restore, s5_stale_rejoin]


def body():
    kt.require_module("pymemcache")
    kt.require_binaries()
    if not shutil.which("tchmgr"):
        if kt.REQUIRE:
            tap.bail("tchmgr not installed (apt-get install tokyocabinet-bin)")
        tap.skip_all("tchmgr not installed (apt-get install tokyocabinet-bin)")
    rng = kt.make_rng()
    only = os.environ.get("KUMO_TEST_ONLY")
    only = {int(x) for x in only.split(",") if x.strip()} if only else None
    seeds = [rng.randrange(1 << 32) for _ in SCENARIOS]
    for i, fn in enumerate(SCENARIOS, 1):
        if only and i not in only:
            continue
        t0 = time.time()
        try:
            fn(random.Random(seeds[i - 1]))
        except kt.DaemonDied as e:
            tap.ok(False, "scenario %d (%s): daemons stay up" % (i, fn.__name__), str(e))
        except Exception:
            tap.ok(False, "scenario %d (%s) raised no exception" % (i, fn.__name__), traceback.format_exc())
        tap.note("scenario %d took %.1f s" % (i, time.time() - t0))


if __name__ == "__main__":
    kt.main(body)

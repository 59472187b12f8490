#!/usr/bin/python3
"""t_placement — data lands where the placement rule says, in the 0.4 record
layout (docs/protocol.md §7, §8).

Five servers, so that each key lives on three of them and the owner sets
differ (with three servers every key is on every server and placement would
go untested). For 200 keys the three owners are computed here in Python
(SHA-1 ring, nodes in the order of `kumoctl status`'s attached list; the
Python ring is first checked against the known answers of kumofs 0.4.13 kept in
kumotest.py). The
keys are set through the gateway; `kumostat <server> items` must equal the
keys the server owns and `kumostat <server> cmd_set` the keys it is primary
for (the primary takes the gateway's set, replicas get it from the primary);
the cluster is stopped with SIGTERM, and each server's Tokyo Cabinet file is
read with `tchmgr list -pv -px`: every key must be stored on exactly its
three owners as be64(hash)|key -> be64(clocktime)|be16(meta)|data, with the
payload (and, for meta=1, be32 flags|be32 exptime) matching what was set.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
NKEYS = 200
NSERVERS = 5


def body():
    kt.require_module("pymemcache")
    kt.require_binaries()
    if not shutil.which("tchmgr"):
        if kt.REQUIRE:
            tap.bail("tchmgr not installed (apt-get install tokyocabinet-bin)")
        tap.skip_all("tchmgr not installed (apt-get install tokyocabinet-bin)")
    rng = kt.make_rng()

    bad = kt.ring_selftest()
    tap.ok(not bad, "Python placement agrees with the known answers", "\n".join(bad))

    with kt.Cluster(nservers=NSERVERS) as c:
        st = c.status()
        order = st.attached_addrs()
        tap.note("attached list, in ring order: %s" % ", ".join(order))
        tap.eq(sorted(order), sorted(s.addr for s in c.servers), "the %d servers are attached" % NSERVERS)
        ring = kt.Ring(order)

        keys = {}
        for i in range(NKEYS):
            k = ("place:%d:%s" % (i, rng.randrange(1 << 30))).encode()
            payload = rng.randbytes(rng.randrange(0, 300))
            flags = rng.choice([0, 0, 1, 0xffff, 0x10000, 0xffffffff, rng.randrange(1 << 32)])
            keys[k] = (payload, flags)
        owners = {k: ring.owners(k) for k in keys}
        primaries = {}
        for k in keys:
            primaries[owners[k][0]] = primaries.get(owners[k][0], 0) + 1
        tap.note("primaries per server: %s" % primaries)

        tap.note("setting %d keys through the gateway (with flags)" % NKEYS)
        failed = []
        with kt.Raw(c.gateway_port, timeout=30) as r:
            for k, (payload, flags) in keys.items():
                r.send(b"set %s %d 0 %d\r\n%s\r\n" % (k, flags, len(payload), payload))
                line = r.readline()
                if line != b"STORED\r\n":
                    failed.append((k, line))
        tap.ok(not failed, "all %d sets answered STORED" % NKEYS, "%d failed, e.g. %r" % (len(failed), failed[:5]))

        expect_count = {s.addr: sum(1 for k in keys if s.addr in owners[k]) for s in c.servers}
        tap.note("keys each server should hold: %s" % expect_count)
        for s in c.servers:
            try:
                n = c.items(s)
            except (OSError, ValueError) as e:
                n = "error: %s" % e
            tap.eq(n, expect_count[s.addr], "kumostat %s items = %d" % (s.addr, expect_count[s.addr]))
        for s in c.servers:
            try:
                n = int(c.kumostat(s, "cmd_set").split()[-1])
            except (OSError, ValueError) as e:
                n = "error: %s" % e
            want = primaries.get(s.addr, 0)
            tap.eq(n, want, "kumostat %s cmd_set = %d (the keys it is primary for)" % (s.addr, want))
        c.check_running()

        tap.note("stopping the cluster with SIGTERM (gateway, servers, manager)")
        for d, status, killed in c.stop(timeout=15):
            tap.ok(status == 0 and not killed, "%s exits 0 on SIGTERM" % d.name,
                   "exit status %s%s" % (status, ", needed SIGKILL" if killed else ""))

        tap.note("reading each server's database with tchmgr")
        held = {}        # key -> {addr: Record}
        stray = []
        for s in c.servers:
            try:
                recs = kt.tch_records(s.db)
            except OSError as e:
                tap.ok(False, "tchmgr reads %s" % s.db, str(e))
                continue
            tap.ok(True, "tchmgr reads %s (%d records)" % (os.path.basename(s.db), len(recs)))
            badrec = []
            for dbkey, value in recs:
                try:
                    rec = kt.Record(dbkey, value)
                except ValueError as e:
                    badrec.append("%r: %s" % (dbkey[:40], e))
                    continue
                if rec.key in keys:
                    held.setdefault(rec.key, {})[s.addr] = rec
                else:
                    stray.append((s.addr, rec))
            tap.ok(not badrec, "every record of %s parses as be64(hash)|key -> be64(ct)|be16(meta)|data"
                   % os.path.basename(s.db), "\n".join(badrec[:10]))
            nkeys = sum(1 for k in held if s.addr in held[k])
            tap.eq(nkeys, expect_count[s.addr], "%s holds %d of the keys (kumostat items agreed above)"
                   % (s.addr, expect_count[s.addr]))
        tap.ok(not stray, "no records other than the test's keys",
               "\n".join("%s: %r" % x for x in stray[:10]))

        wrong_place, wrong_hash, wrong_value, differ = [], [], [], []
        for k, (payload, flags) in keys.items():
            where = held.get(k, {})
            if sorted(where) != sorted(owners[k]):
                wrong_place.append("%s: on %s, owners %s" % (k, sorted(where), owners[k]))
            for addr, rec in where.items():
                if rec.hash != kt.khash(k):
                    wrong_hash.append("%s on %s: prefix %016x want %016x" % (k, addr, rec.hash, kt.khash(k)))
                ok = (not rec.tombstone and rec.payload == payload and rec.flags == flags
                      and rec.exptime == 0 and rec.clocktime != 0
                      and (rec.meta == 1 or (rec.meta == 0 and flags == 0)))
                if not ok:
                    wrong_value.append("%s on %s: %r (set flags=%d payload=%s)" % (
                        k, addr, rec, flags, kt.short(payload, 40)))
            if len({rec.value for rec in where.values()}) > 1:
                differ.append("%s: %s" % (k, {a: r.clocktime for a, r in where.items()}))
        tap.ok(not wrong_place, "each key is stored on exactly its three owners",
               "%d wrong, e.g.\n%s" % (len(wrong_place), "\n".join(wrong_place[:10])))
        tap.ok(not wrong_hash, "each stored key starts with be64(SHA-1 hash)", "\n".join(wrong_hash[:10]))
        tap.ok(not wrong_value, "each stored value is be64(clocktime)|be16(meta)|[flags|exptime]|payload as set",
               "%d wrong, e.g.\n%s" % (len(wrong_value), "\n".join(wrong_value[:10])))
        tap.ok(not differ, "the three replicas of a key hold identical bytes (same clocktime)",
               "\n".join(differ[:10]))


if __name__ == "__main__":
    kt.main(body)

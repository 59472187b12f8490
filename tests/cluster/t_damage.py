#!/usr/bin/python3
"""t_damage — a server whose database file is damaged (docs/architecture.md §11.2).

A cluster of 4 servers holds 3000 keys of about 600 bytes, and part of one
server's Tokyo Cabinet file is overwritten with random bytes: 1 MiB in the
middle of its records (with KUMO_TEST_DAMAGE=head, a record header claiming
2 GiB sizes instead; =free0, a free block of size 0). Twice:

  1. the server is stopped, its file damaged, and it is started again;
  2. its file is damaged under the running server, and a walk (kumoctl
     backup) finds it: the backup fails, naming the database, and the
     server stops with exit status 75; it is started again, as systemd or
     Docker would.

Then, each time:
  - it starts: no "out of memory" exit, no hang; its log names the file and
    the damaged offset, and says the file was rebuilt;
  - it is a newcomer ("not attached node"), and kumoctl attach catches it up;
    no get through the gateway misses or returns a wrong value meanwhile;
  - the catch-up finishes: every server (active), no "replace:" left;
  - a 5th server is attached, and that replace finishes too: one bad file
    does not block the cluster;
  - afterwards, on disk (read with kumomergedb), every key the repaired
    server owns is there with its value;
  - its metrics count the damage the check at open stepped over
    (kumo_server_db_damaged_spots, _bytes), the other servers' count none.

Then damage that the file's structure does not show, each time on a stopped
server of 4, followed by its restart, attach, the detach of another server
and kumoctl verify (docs/anti-entropy.md):
  3. a torn last record: the file cut 20 bytes before its end, as a crash
     in the middle of an append leaves it (Tokyo Cabinet alone refuses such
     a file: "invalid meta data"). The check at open rebuilds it without the
     torn record; the attach brings that back; verify finds nothing.
  4. a bit flipped in the payload of 20 values the server holds (keys it is
     the primary of, that the detach does not move): Tokyo Cabinet keeps no
     checksum, so the server serves the flipped bytes, and the attach's
     catch-up (newer wins, and the ClockTime is the same) keeps them. The
     background pass that a rejoin starts must write the bytes of the
     owners' majority over exactly those 20 copies
     (kumo_server_verify_records_mended). Then 20 more values are flipped
     in the file under the running server (it reads through its map, so it
     serves them at once), another server is detached, and `kumoctl
     verify` must name exactly those keys, `kumoctl repair` mend them, and
     no get through the gateway return a wrong value afterwards. Last, one
     key flipped differently on two of its three owners has no majority:
     verify names it with its three copies, repair says so, sends nothing
     and exits 1.

KUMO_TEST_ONLY=3,4 runs only those scenarios.
"""
import os
import random
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
OP_TIMEOUT = 10.0


def status_text(c):
    r = c.kumoctl("status")
    if r.returncode not in kt.STATUS_ANSWERED:
        raise OSError("kumoctl status: exit %s: %s" % (r.returncode, (r.stderr or r.stdout).strip()))
    return r.stdout


def settled(c, live):
    """The manager shows every server of `live` (active) and no replace."""
    text = status_text(c)
    if "replace:" in text:
        return False
    st = kt.Status(text)
    return all(st.state(s.addr) == "active" for s in live) and st


def damage(path, how, keys, rng):
    """Overwrite part of the records of a stopped server's file; returns a note."""
    with open(path, "rb") as f:
        data = f.read()
    if how == "noise":
        # the records start after TC's bucket array: locate them by their keys
        spots = sorted(m.start() for m in re.finditer(rb"dmg:[0-9]+", data))
        mid = spots[len(spots) // 2]
        size = min(1 << 20, (spots[-1] - mid) // 2)
        with open(path, "r+b") as f:
            f.seek(mid)
            f.write(rng.randbytes(size))
        return "%d random bytes at offset %d (of %d)" % (size, mid, len(data))
    # A record: magic 0xc8, hash, two 64-bit links, padding size, key and
    # value lengths (1 and 2 bytes here), then the key: 8 bytes of hash and
    # the memcached key.
    want = set(keys)
    held = sorted((m.start(), m.group()) for m in re.finditer(rb"dmg:[0-9]+", data) if m.group() in want)
    pos, k = held[len(held) // 2]
    at = pos - 8 - 23
    if data[at] != 0xc8:
        raise ValueError("no record header found before %r at %d" % (k, pos))
    patch = (bytes([0xc8, 0] + [0] * 18 + [0xfe, 0xfe, 0xfe, 0xfe, 0x07] * 2) if how == "head"
             else bytes([0xb0, 0, 0, 0, 0]))
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(patch)
    return "the record of %r at offset %d overwritten (%s)" % (k, at, how)


def tc_header_size(path):
    """The file size Tokyo Cabinet's header records (big-endian, offset 56)."""
    with open(path, "rb") as f:
        head = f.read(64)
    return int.from_bytes(head[56:64], "big")


def tear(path):
    """Cut a stopped server's file 20 bytes before its end: its last record torn."""
    end = min(os.path.getsize(path), tc_header_size(path))
    os.truncate(path, end - 20)
    return "the file cut from %d to %d bytes (its header says %d)" % (end, end - 20, tc_header_size(path))


def flip_bits(path, live, keys, rng):
    """Flip one bit in the stored payload of each of keys in a stopped
    server's file, past the "value N " prefix. Returns the keys flipped."""
    with open(path, "rb") as f:
        data = f.read()
    flipped = []
    with open(path, "r+b") as f:
        for k in keys:
            at = data.find(live[k])
            if at < 0 or data.find(live[k], at + 1) >= 0:
                continue
            pos = at + 20 + rng.randrange(len(live[k]) - 20)
            f.seek(pos)
            f.write(bytes([data[pos] ^ (1 << rng.randrange(8))]))
            flipped.append(k)
    return flipped


class DamageCluster(kt.Cluster):
    """Every server with its own --metrics port (servers added later too)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.metrics_port = {}

    def server_argv(self, s):
        port = self.metrics_port.setdefault(s.addr, kt.free_port())
        return super().server_argv(s) + ["--metrics", "127.0.0.1:%d" % port]

    def metric(self, s, name):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port[s.addr], timeout=5) as r:
            m = re.search(r"^%s(?:_total)? (\S+)$" % name, r.read().decode(), re.M)
        return int(float(m.group(1))) if m else None


def check_damage_metrics(c, victim):
    try:
        spots = c.metric(victim, "kumo_server_db_damaged_spots")
        nbytes = c.metric(victim, "kumo_server_db_damaged_bytes")
        others = [(s.addr, c.metric(s, "kumo_server_db_damaged_spots")) for s in c.servers
                  if s is not victim and s.daemon and s.daemon.alive()]
    except OSError as e:
        tap.ok(False, "the damage metrics of the servers read", str(e))
        return
    tap.ok(spots is not None and spots >= 1 and nbytes >= 1,
           "%s's metrics count the damage its check at open stepped over (%s spots, %s bytes)" % (
               victim.addr, spots, nbytes))
    tap.ok(all(n == 0 for _, n in others), "the other servers count no damage", repr(others))


def merged_records(c, db):
    """{key: Record} of a server's database, read by kumomergedb's walk."""
    out = os.path.join(c.dir, "read-%d.tch" % random.randrange(1 << 30))
    r = kt.run_tool([kt.binary("kumomergedb"), out, db], timeout=120)
    if r.returncode != 0:
        raise OSError("kumomergedb: exit %d: %s" % (r.returncode, r.stderr.strip()))
    return {x.key: x for x in (kt.Record(k, v) for k, v in kt.tch_records(out))}


def stop_and_read(c, victim, live, st):
    """Stop the cluster; on disk, every key the victim owns in the layout of
    status st must be there with its value."""
    ring = kt.Ring(st.attached_addrs())
    c.stop(timeout=15)
    try:
        got = merged_records(c, victim.db)
        mine = [k for k in live if victim.addr in ring.owners(k)]
        wrong = [k for k in mine if k not in got or got[k].payload != live[k]]
        tap.ok(mine and not wrong, "on disk: all %d keys %s owns are there with their value" % (
            len(mine), victim.addr), "%d missing or wrong, e.g. %s" % (len(wrong), wrong[:5]))
    except (OSError, ValueError) as e:
        tap.ok(False, "kumomergedb reads the repaired database", str(e))


def main():
    how = os.environ.get("KUMO_TEST_DAMAGE", "noise")
    rng = kt.make_rng("t_damage")
    only = os.environ.get("KUMO_TEST_ONLY", "1,2,3,4").split(",")
    if "1" in only:
        tap.note("== 1. damaged while the server was stopped: the check at start rebuilds the file")
        scenario(rng, how, "stopped")
    if "2" in only:
        tap.note("== 2. damaged under a running server: the next walk (a backup) stops it with exit status 75")
        scenario(rng, how, "running")
    if "3" in only:
        tap.note("== 3. a torn last record, then attach, detach and verify")
        scenario_hidden(rng, "torn")
    if "4" in only:
        tap.note("== 4. a bit flipped in 20 values, then attach, detach, verify and repair")
        scenario_hidden(rng, "bitflip")


def scenario(rng, how, when):
    with DamageCluster(nservers=4) as c:
        port = c.gateway_port
        live = write_keys(c, rng, "dmg")
        victim = c.servers[1]
        vlog = c.log("server%d" % victim.index)
        if when == "stopped":
            status, killed = victim.daemon.stop()
            tap.ok(status == 0 and not killed, "%s stopped with SIGTERM" % victim.addr)
            tap.note("damage: " + damage(victim.db, how, list(live), rng))
        else:
            tap.note("damage: " + damage(victim.db, how, list(live), rng))
            r = c.kumoctl("backup", "walk", timeout=60)
            tap.ok(r.returncode != 0 and ("damaged" in r.stdout + r.stderr or victim.addr in r.stdout + r.stderr),
                   "kumoctl backup fails, naming the damaged database (exit %s)" % r.returncode,
                   r.stdout + r.stderr)
            try:
                kt.wait_until(lambda: not victim.daemon.alive(), 30, "%s to stop" % victim.addr)
                tap.eq(victim.daemon.returncode(), 75, "%s stops with exit status 75 after the walk" % victim.addr)
            except TimeoutError as e:
                tap.ok(False, "%s stops with exit status 75 after the walk" % victim.addr, str(e))
                victim.daemon.stop()
            tap.ok("a walk stepped over" in open(vlog).read(), "%s logs why it stops" % victim.addr)
            victim.daemon.expected_exit = True

        c.start_server(victim)  # as systemd or Docker would
        try:
            kt.wait_until(lambda: "rebuilt from" in open(vlog).read(), 60,
                          "%s to rebuild its file at start" % victim.addr, daemons=[victim.daemon])
            text = open(vlog).read()
            tap.ok("damaged at offset" in text or "record at offset" in text,
                   "%s logs the damaged offset of its file, and rebuilds it" % victim.addr)
        except (TimeoutError, kt.DaemonDied) as e:
            tap.ok(False, "%s logs the damaged offset of its file, and rebuilds it" % victim.addr, str(e))
        check_damage_metrics(c, victim)
        # A new process is a lost server to the manager: it waits under
        # "not attached node" until attach catches it up.
        reads = kt.LoadClient(port, live, rng, prefix="dmgload", nown=50)
        try:
            c.wait_not_attached([victim], timeout=30)
            reads.start()  # from here on: the gateways route around the newcomer
            r = c.kumoctl("attach")
            tap.ok(r.returncode == 0, "kumoctl attach of %s exits 0" % victim.addr, r.stderr)
        except (TimeoutError, kt.DaemonDied, OSError) as e:
            tap.ok(False, "%s waits under 'not attached node', and kumoctl attach takes it" % victim.addr, str(e))
        try:
            kt.wait_until(lambda: settled(c, c.servers), 90, "the catch-up of %s to finish" % victim.addr,
                          interval=0.5, daemons=c.daemons())
            tap.ok(True, "the catch-up finishes: every server (active), no replace left")
        except (TimeoutError, kt.DaemonDied, OSError) as e:
            tap.ok(False, "the catch-up finishes: every server (active), no replace left", str(e))
        mlog = open(c.log("manager")).read()
        tap.ok("attach %s" % victim.addr in mlog, "the manager caught %s up at attach" % victim.addr)
        if reads.is_alive():
            reads.stop()
        tap.ok(reads.gets > 0 and not reads.failures(),
               "no get missed or returned a wrong value during the catch-up (%s)" % reads.summary(),
               "\n".join(reads.failures()[:10]))
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "all 3000 keys read back", "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))

        # one bad file does not block the next replace
        s5 = kt.Server(5, kt.free_port(), kt.free_port(), os.path.join(c.dir, "server5.tch"),
                       os.path.join(c.dir, "tmp5"))
        os.makedirs(s5.tmpdir, exist_ok=True)
        c.servers.append(s5)
        c.start_server(s5)
        try:
            c.wait_not_attached([s5], timeout=30)
            r = c.kumoctl("attach")
            tap.ok(r.returncode == 0, "kumoctl attach of a 5th server exits 0", r.stderr)
            st = kt.wait_until(lambda: settled(c, c.servers), 90, "the attach's replace to finish", interval=0.5,
                               daemons=c.daemons())
            tap.ok(True, "the attach's replace finishes")
        except (TimeoutError, kt.DaemonDied, OSError) as e:
            tap.ok(False, "the attach's replace finishes", str(e))
            st = kt.Status(status_text(c))
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "all 3000 keys read back after the attach", "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        c.check_running()
        stop_and_read(c, victim, live, st)


def write_keys(c, rng, prefix):
    live = {("%s:%d" % (prefix, i)).encode(): (b"value %d " % i) + rng.randbytes(rng.randrange(400, 800))
            for i in range(3000)}
    mc = kt.mc_client(c.gateway_port, timeout=OP_TIMEOUT)
    bad = [k for k, v in live.items() if mc.set(k, v) is not True]
    mc.close()
    tap.ok(not bad, "3000 keys written", "failed: %s" % bad[:10])
    return live


def no_majority(c, rng, victim, live, ring, keys):
    """One key flipped differently on two of its three owners: no majority.
    verify names it, repair says so and changes nothing. The key is then
    left out of `live` (its copies stay as they are)."""
    k = keys[0]
    other = c.server_by_addr(next(a for a in ring.owners(k) if a != victim.addr))
    n = len(flip_bits(victim.db, live, [k], rng) + flip_bits(other.db, live, [k], rng))
    tap.eq(n, 2, "%s flipped on %s and %s, each its own bit" % (k.decode(), victim.addr, other.addr))
    r = c.kumoctl("verify", timeout=120)
    tap.ok(r.returncode == 1 and listed_keys(r.stdout) == {k.decode()} and r.stdout.count("bytes#") == 6,
           "verify names it, with three different copies", "exit %s\n%s%s" % (r.returncode, r.stdout, r.stderr))
    r = c.kumoctl("repair", timeout=120)
    tap.ok(r.returncode == 1 and ("no majority for %s:" % k.decode()) in r.stdout and not re.search(r"^repaired ", r.stdout, re.M),
           "repair: no majority for it, nothing sent, exit 1", "exit %s\n%s%s" % (r.returncode, r.stdout, r.stderr))
    del live[k]


def listed_keys(out):
    """The keys a verify report prints (the indented lines under each pair)."""
    return {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.strip()}


def scenario_hidden(rng, how):
    """A torn last record or flipped bits on a stopped server, then restart,
    attach, a detach of another server, verify (and repair)."""
    with DamageCluster(nservers=4) as c:
        port = c.gateway_port
        live = write_keys(c, rng, "dmg")
        ring = kt.Ring(kt.Status(status_text(c)).attached_addrs())
        victim, spare = c.servers[1], c.servers[3]
        vlog = c.log("server%d" % victim.index)
        status, killed = victim.daemon.stop()
        tap.ok(status == 0 and not killed, "%s stopped with SIGTERM" % victim.addr)
        flipped = []
        mine = [k for k in live if ring.primary(k) == victim.addr and spare.addr not in ring.owners(k)]
        rng.shuffle(mine)
        if how == "torn":
            tap.note("damage: " + tear(victim.db))
        else:
            flipped = flip_bits(victim.db, live, mine[:20], rng)
            tap.eq(len(flipped), 20, "a bit flipped in the stored payload of 20 keys %s is the primary of" %
                   victim.addr)
        c.start_server(victim)
        if how == "torn":
            try:
                kt.wait_until(lambda: "rebuilt from" in open(vlog).read(), 60,
                              "%s to rebuild its file at start" % victim.addr, daemons=[victim.daemon])
                tap.ok("torn at the end" in open(vlog).read(),
                       "%s starts: its log says the file was torn at the end, and rebuilt" % victim.addr)
            except (TimeoutError, kt.DaemonDied) as e:
                tap.ok(False, "%s starts and rebuilds its torn file" % victim.addr, str(e))
            check_damage_metrics(c, victim)
        try:
            c.wait_not_attached([victim], timeout=30)
            r = c.kumoctl("attach")
            tap.ok(r.returncode == 0, "kumoctl attach of %s exits 0" % victim.addr, r.stderr)
            kt.wait_until(lambda: settled(c, c.servers), 90, "the catch-up of %s to finish" % victim.addr,
                          interval=0.5, daemons=c.daemons())
            tap.ok(True, "the catch-up finishes: every server (active), no replace left")
        except (TimeoutError, kt.DaemonDied, OSError) as e:
            tap.ok(False, "%s is attached and caught up" % victim.addr, str(e))
        if flipped:
            def mended():
                return sum(c.metric(s, "kumo_server_verify_records_mended") or 0 for s in c.servers)
            try:
                kt.wait_until(lambda: mended() >= len(flipped) and not any(
                    c.metric(s, "kumo_server_verify_running") for s in c.servers), 30,
                    "the rejoin's passes to mend the flipped copies and end", interval=0.3, daemons=c.daemons())
            except (TimeoutError, OSError) as e:
                tap.diag(str(e))
            unmended = sum(c.metric(s, "kumo_server_verify_keys_unmended") or 0 for s in c.servers)
            tap.ok(mended() == len(flipped) and unmended == 0,
                   "the background pass after the rejoin wrote the majority's bytes over exactly the %d flipped "
                   "copies" % len(flipped), "mended %s, without a majority %s" % (mended(), unmended))
            bad = kt.read_mismatches(port, {k: live[k] for k in flipped}, timeout=OP_TIMEOUT)
            tap.ok(not bad, "the flipped keys read right through the gateway", "\n".join(bad[:10]))
            flipped = flip_bits(victim.db, live, mine[20:40], rng)
            tap.eq(len(flipped), 20, "a bit flipped in 20 more values, under the running %s" % victim.addr)
            bad = kt.read_mismatches(port, {k: live[k] for k in flipped}, timeout=OP_TIMEOUT)
            tap.note("%d of them read wrong through the gateway now" % len(bad))
        else:
            bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
            tap.ok(not bad, "all 3000 keys read back after the attach",
                   "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))

        # a detach: another server stops for good
        status, killed = spare.daemon.stop()
        rest = [s for s in c.servers if s is not spare]
        try:
            kt.wait_until(lambda: kt.Status(status_text(c)).state(spare.addr) == "fault", 30,
                          "%s (fault)" % spare.addr, interval=0.25, daemons=[s.daemon for s in rest])
            r = c.kumoctl("detach")
            tap.ok(r.returncode == 0, "kumoctl detach of %s exits 0" % spare.addr, r.stdout + r.stderr)
            kt.wait_until(lambda: settled(c, rest) and spare.addr not in status_text(c), 90,
                          "the detach's replace to finish", interval=0.5, daemons=[s.daemon for s in rest])
            tap.ok(True, "the detach's replace finishes")
        except (TimeoutError, kt.DaemonDied, OSError) as e:
            tap.ok(False, "%s detached, its replace finished" % spare.addr, str(e))

        r = c.kumoctl("verify", timeout=120)
        got = listed_keys(r.stdout)
        want = {k.decode() for k in flipped}
        if flipped:
            tap.eq(r.returncode, 1, "verify after the bit flips: exit 1")
            tap.ok(got == want, "verify names exactly the %d keys whose bytes were flipped" % len(want),
                   "not flipped: %s\nnot named: %s\n%s%s" % (sorted(got - want), sorted(want - got),
                                                            r.stdout[-3000:], r.stderr))
            r = c.kumoctl("repair", timeout=120)
            repaired = {m.group(1) for m in re.finditer(r"^repaired (\S+):", r.stdout, re.M)}
            tap.eq(r.returncode, 0, "repair: exit 0 (its re-verify agrees)")
            tap.ok(repaired == want, "repair wrote the majority's bytes over exactly the flipped keys",
                   "%s%s" % (r.stdout[-3000:], r.stderr))
            r = c.kumoctl("verify", timeout=120)
        tap.ok(r.returncode == 0 and not listed_keys(r.stdout), "verify: exit 0, nothing left to repair",
               "exit %s\n%s%s" % (r.returncode, r.stdout[-3000:], r.stderr))
        bad = kt.read_mismatches(port, live, timeout=OP_TIMEOUT)
        tap.ok(not bad, "no get through the gateway returns a wrong value: all 3000 keys read back",
               "%d wrong, e.g.\n%s" % (len(bad), "\n".join(bad[:10])))
        if flipped:
            no_majority(c, rng, victim, live, ring, mine[40:])
        c.check_running()
        stop_and_read(c, victim, live, kt.Status(status_text(c)))


if __name__ == "__main__":
    kt.main(main)

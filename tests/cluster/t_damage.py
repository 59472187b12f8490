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
    server owns is there with its value.
"""
import os
import random
import re
import sys
import time

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


def merged_records(c, db):
    """{key: Record} of a server's database, read by kumomergedb's walk."""
    out = os.path.join(c.dir, "read-%d.tch" % random.randrange(1 << 30))
    r = kt.run_tool([kt.binary("kumomergedb"), out, db], timeout=120)
    if r.returncode != 0:
        raise OSError("kumomergedb: exit %d: %s" % (r.returncode, r.stderr.strip()))
    return {x.key: x for x in (kt.Record(k, v) for k, v in kt.tch_records(out))}


def main():
    how = os.environ.get("KUMO_TEST_DAMAGE", "noise")
    rng = kt.make_rng("t_damage")
    tap.note("== 1. damaged while the server was stopped: the check at start rebuilds the file")
    scenario(rng, how, "stopped")
    tap.note("== 2. damaged under a running server: the next walk (a backup) stops it with exit status 75")
    scenario(rng, how, "running")


def scenario(rng, how, when):
    with kt.Cluster(nservers=4) as c:
        port = c.gateway_port
        live = {("dmg:%d" % i).encode(): (b"value %d " % i) + rng.randbytes(rng.randrange(400, 800))
                for i in range(3000)}
        mc = kt.mc_client(port, timeout=OP_TIMEOUT)
        bad = [k for k, v in live.items() if mc.set(k, v) is not True]
        mc.close()
        tap.ok(not bad, "3000 keys written", "failed: %s" % bad[:10])
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
        ring = kt.Ring(st.attached_addrs())
        for d, status, killed in c.stop(timeout=15):
            pass
        try:
            got = merged_records(c, victim.db)
            mine = [k for k in live if victim.addr in ring.owners(k)]
            wrong = [k for k in mine if k not in got or got[k].payload != live[k]]
            tap.ok(mine and not wrong, "on disk: all %d keys %s owns are there with their value" % (len(mine), victim.addr),
                   "%d missing or wrong, e.g. %s" % (len(wrong), wrong[:5]))
        except (OSError, ValueError) as e:
            tap.ok(False, "kumomergedb reads the repaired database", str(e))


if __name__ == "__main__":
    kt.main(main)

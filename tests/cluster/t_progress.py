#!/usr/bin/python3
"""t_progress — a replace shows how far it is, with totals (docs/operations.md,
"Watch a replace").

Two servers hold NKEYS keys written through the gateway; the walk of a
copy to a third server lasts about a second. While it runs:

  * `kumoctl status` shows, under "replace:", a line per server with
    "walk: N of M records" or "send: N of M records sent" and an ETA, or
    "done: walked N records";
  * `kumostat -m ... progress` answers the same for each server;
  * kumotop shows "Copying walk N%" (or send) in the state column;
  * a server's /metrics has the walk's total and the records walked.
Afterwards every server says "done", and the two old ones walked every
record they held (the walk's total is the database's record count). Then
`kumoctl backup`: kumostat progress says each server's backup copied N of N
records, and so does /metrics.
"""
import os
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
NKEYS = 30000  # the walk takes about a second: long enough to be seen
PROGRESS = re.compile(r"^  (\S+): (walk: \d+ of \d+ records|send: \d+ of \d+ records sent|done: walked \d+ records)")


def metric(port, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    metrics_port = kt.free_port()
    c = kt.Cluster(nservers=3, start=False)
    old, new = c.servers[:2], c.servers[2]
    with c:
        c.start_manager()
        old[0].daemon = kt.Daemon("kumo-server[1]", c.server_argv(old[0]) + ["--metrics", "127.0.0.1:%d" % metrics_port],
                                  c.log("server1")).start()
        c.start_server(old[1])
        c.wait_not_attached(old)
        c.attach(old)
        c.start_gateway()
        mc = kt.mc_client(c.gateway_port)
        rng = kt.make_rng()
        keys = [("p%05d" % i).encode() for i in range(NKEYS)]
        for at in range(0, NKEYS, 500):
            failed = mc.set_many({k: rng.randbytes(256) for k in keys[at:at + 500]})
            if failed:
                raise OSError("set_many failed for %d keys" % len(failed))
        mc.close()
        items = {s.addr: c.items(s) for s in old}
        tap.ok(all(n == NKEYS for n in items.values()), "each of the two servers holds every key", repr(items))

        c.start_server(new)
        c.wait_not_attached([new])
        r = c.kumoctl("attach")
        tap.ok(r.returncode == 0 and r.stdout == "attached %s\n" % new.addr, "attach prints the new server",
               r.stdout + r.stderr)
        # Each tool is asked in turn until it has been seen mid-copy or the
        # replace is over.
        seen, stat_seen, top_seen, deadline = [], None, None, time.time() + 60
        while time.time() < deadline and not (seen and stat_seen and top_seen):
            r = c.kumoctl("status")
            if "replace:" not in r.stdout:
                break
            lines = [l for l in r.stdout.splitlines() if PROGRESS.match(l)]
            if not seen and any(re.search(r"(walk|send): ", l) for l in lines) and re.search(r"ETA (\d+ s|unknown)",
                                                                                          r.stdout):
                seen = lines
            st = kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "progress"])
            if not stat_seen and st.returncode == 0 and re.search(r":  (walk|send)\S*: \d+ of \d+", st.stdout):
                stat_seen = st.stdout
            top = kt.run_tool([kt.binary("kumotop"), "-m", c.mgr_addr, "-n", "1", "-i", "0.1"])
            if not top_seen and re.search(r" Copying (walk|send) \d+%", top.stdout):
                top_seen = top.stdout
            time.sleep(0.02)    # between the polls of a polling loop
        tap.note("seen: " + " | ".join(seen))
        tap.ok(seen, "kumoctl status during the replace: a line per server with its totals and an ETA",
               r.stdout)
        tap.ok(stat_seen and all(re.match(r"^127\.0\.0\.1:\d+:  (walk|send|done|idle)", l)
                                 for l in stat_seen.splitlines()),
               "kumostat -m progress during the replace: each server's copy with totals", stat_seen)
        tap.ok(top_seen, "kumotop during the replace: 'Copying walk N%' or 'Copying send N%'", top_seen)
        kt.wait_until(lambda: "replace:" not in c.kumoctl("status").stdout, 120, "the replace to finish",
                      interval=0.3, daemons=c.daemons())
        st = kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "progress"])
        done = {l.split(":  ")[0]: l for l in st.stdout.splitlines()}
        walked_all = all(re.search(r"done: walked %d records in [\d.]+ s, sent \d+ records" % NKEYS, done.get(s.addr, ""))
                         for s in old)
        tap.ok(st.returncode == 0 and walked_all,
               "afterwards each old server says done, having walked every record it held (%d)" % NKEYS, st.stdout)
        r = c.kumoctl("backup", "t1")
        st = kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "progress"])
        counts = {s.addr: c.items(s) for s in c.servers}
        want = ["%s:  backup done: %d of %d records in " % (a, n, n) for a, n in counts.items()]
        tap.ok(r.returncode == 0 and all(w in st.stdout for w in want),
               "after kumoctl backup, kumostat -m progress: each server's backup done, N of N records",
               r.stdout + r.stderr + st.stdout)
        tap.eq(metric(metrics_port, "kumo_server_backup_walked_records"), float(counts[old[0].addr]),
               "an old server's /metrics: the backup's records")
        total = metric(metrics_port, "kumo_server_replace_walk_total_records")
        walked = metric(metrics_port, "kumo_server_replace_walked_records")
        tap.ok(total == NKEYS and walked == total,
               "an old server's /metrics: records walked = the walk's total = its records (%s of %s)" % (walked, total))


if __name__ == "__main__":
    kt.main(body)

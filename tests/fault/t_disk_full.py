#!/usr/bin/python3
"""t_disk_full — a server whose filesystem fills up refuses writes, and only writes.

Server 1's database lives on a tmpfs of its own (96 MiB). When the server
opens it, it reserves the blocks 64 MiB past the file's end (src/lib/store.c,
"reservation"). A filler file then takes every block left, so the next
reservation cannot happen. Writes of 1 KiB values go through the gateway
(`-S 0`: a refused set is not retried) until one fails. Every key lives on
all three servers, so server 1 takes part in each write. Checks:

  - a set fails with SERVER_ERROR before the reserved blocks run out
    (the server refuses it; Tokyo Cabinet writing through its map into a
    page with no block under it would be SIGBUS instead);
  - server 1 is still running, and its log has
    "<db path>: no space left on the device for the database to grow";
  - every acknowledged key still reads back with its value, through the
    gateway and from server 1's own file (tchmgr);
  - once the filler is removed, writes succeed again within a few seconds,
    with no restart (the server tries the reservation again once a second).

Needs root (mount). Skips (1..0 # SKIP) without it. The tmpfs is unmounted
at exit, also on failure.
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
import kumotest as kt  # noqa: E402

tap = kt.tap
MAX_SETS = 200000           # 1 KiB each: far past the 64 MiB reserved
VALUE = b"d" * 1024


def set_until_refused(mc, start, n=MAX_SETS):
    """-> (keys acknowledged, the first error or None) of n sets from key `start` on."""
    acked = []
    for i in range(start, start + n):
        k = "full:%07d" % i
        try:
            mc.set(k, VALUE)
        except Exception as e:              # pymemcache raises MemcacheServerError on SERVER_ERROR
            return acked, e
        acked.append(k)
    return acked, None


def body():
    if os.geteuid() != 0:
        tap.skip_all("needs root to mount a tmpfs")
    kt.require_binaries()
    kt.require_module("pymemcache")
    from pymemcache.exceptions import MemcacheServerError

    c = kt.Cluster(nservers=3, gateway_args=["-S", "0"], start=False)
    mnt = os.path.join(c.dir, "disk")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "kumo-disk-full", mnt], check=True)
    kt.at_cleanup(lambda: subprocess.run(["umount", "-l", mnt], capture_output=True))
    s1 = c.servers[0]
    s1.db = os.path.join(mnt, "server1.tch")
    c.start()

    filler = os.path.join(mnt, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    tap.note("tmpfs full: %s is %d MiB, the filler %d MiB" % (
        s1.db, os.path.getsize(s1.db) >> 20, os.path.getsize(filler) >> 20))

    mc = kt.mc_client(c.gateway_port)
    acked, err = set_until_refused(mc, 0)
    tap.ok(isinstance(err, MemcacheServerError),
           "a set is refused with SERVER_ERROR once the reserved blocks run out",
           "after %d sets: %r" % (len(acked), err))
    tap.note("%d sets (%d MiB of values) acknowledged before the first refusal: %s" % (
        len(acked), len(acked) * len(VALUE) >> 20, err))
    tap.ok(s1.daemon.alive(), "server 1 is still running on the full filesystem",
           "exit %s" % s1.daemon.returncode())
    want_line = "%s: no space left on the device for the database to grow" % s1.db
    log = open(c.log("server1"), errors="replace").read()
    tap.ok(want_line in log, "server 1 logs the refusal naming its file", "no %r in %s" % (want_line, c.log("server1")))

    bad = kt.read_mismatches(c.gateway_port, {k: VALUE for k in acked})
    tap.ok(not bad, "every acknowledged key reads back through the gateway", "; ".join(bad[:5]) if bad else None)

    os.unlink(filler)
    resumed, last = None, None
    t0 = time.time()
    while time.time() - t0 < 15 and resumed is None:
        try:
            mc.set("full:after", VALUE)
            resumed = time.time() - t0
        except MemcacheServerError as e:
            last = e
            time.sleep(0.2)     # between the tries of a polling loop
    tap.ok(resumed is not None, "writes succeed again once the filler is removed, without a restart",
           "still refused after 15 s: %s" % last)
    if resumed is not None:
        tap.note("the first set after the filler went accepted after %.1f s" % resumed)
        more, err = set_until_refused(mc, len(acked), 2000)
        tap.ok(err is None, "2000 more sets are acknowledged", "after %d: %r" % (len(more), err))
        acked += more + ["full:after"]
    mc.close()
    c.check_running()
    c.stop()
    held = {k[8:] for k, _ in kt.tch_records(s1.db)}
    missing = [k for k in acked if k.encode() not in held]
    tap.ok(not missing, "server 1's file holds every acknowledged key (tchmgr)", "missing %s" % missing[:5])


if __name__ == "__main__":
    kt.main(body)

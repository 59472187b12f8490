#!/usr/bin/python3
"""t_stale_coordinator — a server that was lost and comes back still
believing it coordinates must not write its stale copy over the cluster's
(docs/architecture.md section 7, step 4, and section 12.2).

A server that is stopped (SIGSTOP, a paused VM) or cut off long enough is
marked fault, and another owner coordinates its keys. When it runs again it
holds the hash space it had: until a manager reaches it, it takes itself for
the coordinator, and requests that waited in its socket, or come from a
gateway that has not heard of the fault, run on its stale copy. Before the
replicas checked who sends, the first such incr failed ("holds a newer
version") and moved the stale server's clock ahead, so the next one won
everywhere: 20 acknowledged increments were undone and their numbers were
handed out again.

One cluster of 3 servers (each owns every key), a manager and a gateway:
  1. `ctr` incremented 10 times; its coordinator A SIGSTOPped; incrs queued
     to A through the gateway while it is stopped; A shown (fault); 20 incrs
     through the gateway, coordinated by B.
  2. The manager SIGSTOPped, so that nothing tells A its hash space is
     stale; A SIGCONTed; 3 incrs sent straight to A as a gateway with an
     old hash space would (SRV_SET): each must fail, none may answer a
     number.
  3. The manager SIGCONTed; A attached again and (active).
  4. No number was answered twice (queued, direct and gateway incrs
     together); `ctr` reads the last number answered, through the gateway
     and straight from each server (A's own copy is the one its stale
     write went to); one more incr answers that number + 1.

Then, on 5 servers, a stale coordinator that holds the only in-sync copy:
  5. A, B, C own `blk`: 5 incrs; B and C SIGSTOPped until (fault); 5 incrs
     coordinated by A alone; B and C resumed and attached (catching up),
     while an nft rule keeps them from pulling A's copy; A SIGSTOPped until
     (fault): the catch-up is blocked on A. The manager SIGSTOPped, A
     resumed, one incr sent straight to A: B and C refuse it.
  6. The rule removed, the manager resumed, A attached: once every server
     is (active), `blk` reads 10 on A, B and C. A first version of the fix
     gave the refused record the oldest ClockTime instead of putting back
     the one it replaced, and the exchange then let B's and C's 5 win.

And on 3 servers with `-S 1` (one replication retry), a stale
coordinator whose replicas do not answer at all:
  7. ctr to 10; A SIGSTOPped until (fault); 20 incrs through B; the
     manager, B and C SIGSTOPped, A resumed, one incr sent straight to A:
     it times out on both replicas. Everything resumed, A attached: every
     copy holds 30 and the next incr answers 31. Before failed writes made
     outside the view's lease were undone, A's 11 won everywhere.

The test runs in a network namespace of its own (unshare -n, loopback
only) so that the nft rule touches nothing else; without root, unshare or
nft, part 5-6 is skipped.
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
KEY = b"ctr"
SRV_GET, SRV_SET, OP_INCR, RPC_ROLE_GATEWAY = 34, 35, 7, 2


def roundtrip(port, data, lines, timeout=30.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while buf.count(b"\r\n") < lines:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    return buf


def incrs(port, n):
    """n incrs through the gateway on one connection: the numbers answered."""
    out = roundtrip(port, b"incr %s 1\r\n" % KEY * n, n).split(b"\r\n")[:n]
    return [int(x) for x in out if x.isdigit()], [x for x in out if not x.isdigit()]


def direct_incr(server, key=KEY):
    """SRV_SET incr straight to a server, as a gateway would send it:
    (error, number or None)."""
    header = struct.pack(">QHII", 0, 1, 0, 0)   # record_mc_header(ct 0, flags 0, exptime 0)
    err, res = kt.rpc_call(server.port, SRV_SET, [OP_INCR, 0, kt.record_key(key), header, 0, 1, 0],
                           role=RPC_ROLE_GATEWAY, timeout=30)
    return err, (res[2] if not err and isinstance(res, list) else None)


def held(server, key=KEY):
    """The value of key in the server's own database (SRV_GET), or its error."""
    err, res = kt.rpc_call(server.port, SRV_GET, [kt.record_key(key)], role=RPC_ROLE_GATEWAY)
    if err or res is None:
        return err or "miss"
    return int(kt.Record(kt.record_key(key), res).payload)


def stale_coordinator():
    with kt.Cluster(nservers=3) as c:
        port = c.gateway_port
        tap.eq(roundtrip(port, b"set %s 0 0 1\r\n0\r\n" % KEY, 1), b"STORED\r\n", "ctr set to 0")
        out = subprocess.run([kt.binary("kumohash"), "-m", c.mgr_addr, "assign", KEY.decode()],
                             capture_output=True, text=True, timeout=20).stdout.splitlines()
        a = next(s for s in c.servers if len(out) > 1 and s.addr in out[1])
        tap.note("ctr's coordinator: %s" % a.addr)
        answered, errors = incrs(port, 10)
        tap.eq(answered, list(range(1, 11)), "10 incrs answer 1..10")

        os.kill(a.daemon.pid, signal.SIGSTOP)
        queued = socket.create_connection(("127.0.0.1", port), timeout=60)
        queued.sendall(b"incr %s 1\r\n" % KEY * 3)   # to A, which does not run
        kt.wait_until(lambda: c.status().state(a.addr) == "fault", 20, "%s shown (fault)" % a.addr,
                      interval=0.2, daemons=[c.manager])
        got, errors = incrs(port, 20)
        answered += got
        tap.ok(len(got) == 20, "20 incrs through the gateway while %s is fault" % a.addr, errors)

        os.kill(c.manager.pid, signal.SIGSTOP)
        time.sleep(1.5)   # A's clock now reads past B's last write of ctr
        os.kill(a.daemon.pid, signal.SIGCONT)
        time.sleep(0.5)
        direct = [direct_incr(a) for _ in range(3)]
        os.kill(c.manager.pid, signal.SIGCONT)
        tap.ok(all(err and n is None for err, n in direct),
               "3 incrs sent straight to %s, which still takes itself for the coordinator, all fail" % a.addr,
               direct)
        answered += [n for _, n in direct if n is not None]

        buf = b""
        queued.settimeout(30)
        while buf.count(b"\r\n") < 3:
            d = queued.recv(4096)
            if not d:
                break
            buf += d
        queued.close()
        answered += [int(x) for x in buf.split(b"\r\n")[:3] if x.isdigit()]
        tap.note("the 3 incrs queued to %s answered %r" % (a.addr, buf))

        c.wait_not_attached([a], timeout=30)
        c.attach([a], timeout=60)
        dup = sorted({n for n in answered if answered.count(n) > 1})
        tap.ok(not dup, "no incr number answered twice", "answered twice: %s" % dup)
        last = max(answered)
        tap.eq(roundtrip(port, b"get %s\r\n" % KEY, 2), b"VALUE %s 0 %d\r\n%d\r\nEND\r\n" % (
            KEY, len(str(last)), last), "ctr reads %d, the last number answered" % last)
        copies = {s.addr: held(s) for s in c.servers}
        tap.ok(all(v == last for v in copies.values()),
               "every server's own copy of ctr is %d, %s's included" % (last, a.addr), copies)
        got, errors = incrs(port, 1)
        tap.eq(got, [last + 1], "the next incr answers %d" % (last + 1))
        c.check_running()


def nft(*rules):
    for r in rules:
        subprocess.run(["nft"] + r.split(), check=True, capture_output=True, timeout=20)


def only_in_sync_copy():
    key = b"blk"
    with kt.Cluster(nservers=5) as c:
        port = c.gateway_port
        roundtrip(port, b"set %s 0 0 1\r\n0\r\n" % key, 1)
        out = subprocess.run([kt.binary("kumohash"), "-m", c.mgr_addr, "assign", key.decode()],
                             capture_output=True, text=True, timeout=20).stdout.splitlines()
        a, b, cc = [next(s for s in c.servers if s.addr in line) for line in out[1:4]]
        tap.note("blk's owners: A %s, B %s, C %s" % (a.addr, b.addr, cc.addr))
        first = roundtrip(port, b"incr %s 1\r\n" % key * 5, 5)
        for s in (b, cc):
            os.kill(s.daemon.pid, signal.SIGSTOP)
        kt.wait_until(lambda: {c.status().state(s.addr) for s in (b, cc)} == {"fault"}, 20,
                      "B and C shown (fault)", interval=0.2, daemons=[c.manager])
        alone = roundtrip(port, b"incr %s 1\r\n" % key * 5, 5)
        tap.eq(first + alone, b"".join(b"%d\r\n" % i for i in range(1, 11)),
               "10 incrs answer 1..10, the last 5 coordinated by A alone")
        nft("add table ip stale", "add chain ip stale out { type filter hook output priority 0 ; }",
            "add rule ip stale out tcp dport %d tcp flags syn drop" % a.stream_port)
        for s in (b, cc):
            os.kill(s.daemon.pid, signal.SIGCONT)
        c.wait_not_attached([b, cc], timeout=30)
        tap.eq(c.kumoctl("attach").returncode, 0, "kumoctl attach of B and C")
        kt.wait_until(lambda: {c.hash_space(a).state(s.addr) for s in (b, cc)} == {"catching up"}, 20,
                      "A's whs to show B and C (catching up)", interval=0.2)
        os.kill(a.daemon.pid, signal.SIGSTOP)
        kt.wait_until(lambda: c.status().state(a.addr) == "fault", 20, "A shown (fault)", interval=0.2,
                      daemons=[c.manager])
        tap.ok("catch-up blocked" in c.kumoctl("status").stdout,
               "kumoctl status: catch-up blocked (A holds the only in-sync copy)")
        os.kill(c.manager.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(a.daemon.pid, signal.SIGCONT)
        time.sleep(0.5)
        err, n = direct_incr(a, key)
        os.kill(c.manager.pid, signal.SIGCONT)
        tap.ok(err and n is None, "an incr sent straight to A, refused by B and C, fails", (err, n))
        nft("delete table ip stale")
        c.wait_not_attached([a], timeout=30)
        c.attach([a], timeout=90)
        kt.wait_until(lambda: all(c.status().state(s.addr) == "active" for s in c.servers), 90,
                      "every server (active)", interval=0.5, daemons=c.daemons())
        copies = {s.addr: held(s, key) for s in (a, b, cc)}
        tap.ok(all(v == 10 for v in copies.values()), "A, B and C hold blk = 10 after the exchange", copies)
        c.check_running()


def unanswered():
    with kt.Cluster(nservers=3, server_args=["-S", "1"]) as c:
        port = c.gateway_port
        roundtrip(port, b"set %s 0 0 1\r\n0\r\n" % KEY, 1)
        out = subprocess.run([kt.binary("kumohash"), "-m", c.mgr_addr, "assign", KEY.decode()],
                             capture_output=True, text=True, timeout=20).stdout.splitlines()
        a = next(s for s in c.servers if len(out) > 1 and s.addr in out[1])
        others = [s for s in c.servers if s is not a]
        incrs(port, 10)
        os.kill(a.daemon.pid, signal.SIGSTOP)
        kt.wait_until(lambda: c.status().state(a.addr) == "fault", 20, "%s shown (fault)" % a.addr,
                      interval=0.2, daemons=[c.manager])
        got, errors = incrs(port, 20)
        tap.eq(got, list(range(11, 31)), "20 incrs coordinated by another owner answer 11..30")
        for d in [c.manager] + [s.daemon for s in others]:
            os.kill(d.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(a.daemon.pid, signal.SIGCONT)
        err, n = direct_incr(a)
        tap.ok(err and n is None, "an incr sent straight to %s, whose replicas do not answer, fails" % a.addr,
               (err, n))
        for d in [s.daemon for s in others] + [c.manager]:
            os.kill(d.pid, signal.SIGCONT)
        c.wait_not_attached([a], timeout=30)
        c.attach([a], timeout=90)
        copies = {s.addr: held(s) for s in c.servers}
        tap.ok(all(v == 30 for v in copies.values()), "every server's own copy of ctr is 30", copies)
        got, errors = incrs(port, 1)
        tap.eq(got, [31], "the next incr answers 31")
        c.check_running()


def body():
    kt.require_module("msgpack")
    kt.require_binaries()
    stale_coordinator()
    unanswered()
    if os.environ.get("KUMO_TEST_OWN_NETNS") == "1" and shutil.which("nft"):
        only_in_sync_copy()
    else:
        tap.skip("the only in-sync copy put back", "needs root, unshare and nft (a network namespace of its own)")


def own_netns():
    """Run again in a network namespace of our own, with its loopback up."""
    if os.environ.get("KUMO_TEST_OWN_NETNS") or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    os.environ["KUMO_TEST_OWN_NETNS"] = "1"
    script = "ip link set lo up && exec \"$0\" \"$@\""
    os.execvp("unshare", ["unshare", "-n", "sh", "-c", script, sys.executable, os.path.abspath(__file__)]
              + sys.argv[1:])


if __name__ == "__main__":
    own_netns()
    kt.main(body)

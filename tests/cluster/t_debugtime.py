#!/usr/bin/python3
"""t_debugtime — the debug clock: the text command `debugtime <seconds>`
(kumo-gateway and kumo-server --debug-time; docs/architecture.md §5.1).

A cluster of 3 servers (every key on all three) and a gateway, all with
--debug-time:

  - `debugtime` without an argument or with two answers ERROR; a bad number
    (letters, a sign alone, 20 digits, a NUL) CLIENT_ERROR bad command line
    format; a move past ten years CLIENT_ERROR debugtime out of range (the
    offset is unchanged); random junk after the word answers one line each,
    and the gateway keeps serving;
  - a key set with a 100 s TTL reads back from each of its three owners
    (SRV_GET on each server); after `debugtime 101` none of them has it, nor
    the gateway: the offset reached every owner;
  - the offset moves the time exptimes are judged by only: a write's CAS
    unique (its ClockTime) and every server's ClockTime stay on the real
    clock after the clock moved a day on, and `stats` shows `time` moved;
  - a relative exptime is resolved at write time on the debug clock: a key
    set with a 30 s TTL after the move is there 20 s on and gone 31 s on;
  - SRV_DEBUG_TIME with a bad offset answers "bad params";
  - a gateway without --debug-time answers ERROR to every debugtime, as a
    memcached built without debugging;
  - a gateway with --debug-time over a server without it answers
    SERVER_ERROR, and the server refuses SRV_DEBUG_TIME.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
SRV_GET, SRV_DEBUG_TIME = 34, 39
TEN_YEARS = 10 * 365 * 86400


def line(port, req):
    """One request on a fresh connection: its first answer line."""
    return kt.raw_roundtrip(port, req, timeout=15)


def owners_holding(c, key):
    """How many servers answer SRV_GET for key with a value (errors count as not)."""
    n = 0
    for s in c.servers:
        err, res = kt.rpc_call(s.port, SRV_GET, [kt.record_key(key)])
        n += err is None and res is not None
    return n


def parsing(port):
    tap.note("debugtime's arguments")
    tap.eq(line(port, b"debugtime\r\n"), b"ERROR\r\n", "debugtime without an argument -> ERROR")
    tap.eq(line(port, b"debugtime 1 2\r\n"), b"ERROR\r\n", "debugtime with two arguments -> ERROR")
    for bad in (b"x", b"5s", b"-", b"-+5", b"p", b"99999999999999999999", b"1\x002"):
        tap.eq(line(port, b"debugtime " + bad + b"\r\n"), b"CLIENT_ERROR bad command line format\r\n",
               "debugtime %r -> CLIENT_ERROR bad command line format" % bad)
    tap.eq(line(port, b"debugtime %d\r\n" % (TEN_YEARS + 1)), b"CLIENT_ERROR debugtime out of range\r\n",
           "a move past ten years -> CLIENT_ERROR debugtime out of range")
    tap.eq(line(port, b"debugtime -9223372036854775808\r\n"), b"CLIENT_ERROR bad command line format\r\n",
           "INT64_MIN -> CLIENT_ERROR (no overflow)")
    tap.eq(line(port, b"debugtime 9223372036854775807\r\n"), b"CLIENT_ERROR debugtime out of range\r\n",
           "INT64_MAX -> out of range (no overflow)")
    rng = kt.make_rng("debugtime")
    odd = 0
    with kt.Raw(port, timeout=15) as r:
        for _ in range(200):
            junk = bytes(rng.choice(b"0123456789-+ x\x00\t") for _ in range(rng.randint(1, 24)))
            r.send(b"debugtime " + junk + b"\r\n")
            got = r.readline()
            odd += not re.match(rb"(OK|ERROR|CLIENT_ERROR [a-z ]+)\r\n\Z", got or b"")
        r.send(b"version\r\n")
        odd += not (r.readline() or b"").startswith(b"VERSION ")
    tap.ok(odd == 0, "200 debugtime lines with random arguments: one answer line each, then version", "%d odd" % odd)


def body():
    kt.require_binaries()
    with kt.Cluster(nservers=3, server_args=kt.DEBUG_TIME_ARGS, gateway_args=kt.DEBUG_TIME_ARGS) as c:
        port = c.gateway_port
        mc = kt.mc_client(port, timeout=10)
        parsing(port)

        def offset():
            """The debug clock's offset, as stats shows it (within a second)."""
            st, _ = kt.raw_stats(port)
            return int(st["time"]) - int(time.time())
        # the junk above moved the clock by some sum: back to about 0
        tap.eq(line(port, b"debugtime %d\r\n" % -offset()), b"OK\r\n", "debugtime back by the offset stats shows")
        tap.ok(abs(offset()) <= 2, "the offset is back to about 0 (%d)" % offset())

        tap.note("the offset reaches every owner of a key")
        mc.set("k100", b"v", expire=100)
        tap.eq(owners_holding(c, "k100"), 3, "a key with a 100 s TTL: all three owners hold it")
        tap.eq(line(port, b"debugtime 101\r\n"), b"OK\r\n", "debugtime 101 -> OK")
        tap.eq(owners_holding(c, "k100"), 0, "after debugtime 101 no owner holds it (each judges it expired)")
        tap.eq(mc.get("k100"), None, "nor does the gateway read it")

        tap.note("ClockTimes stay on the real clock")
        before = offset()
        tap.eq(line(port, b"debugtime 86400\r\n"), b"OK\r\n", "debugtime 86400 -> OK")
        moved = offset() - before
        tap.ok(86395 <= moved <= 86405, "stats time moved a day on (%d s)" % moved)
        mc.set("ct", b"v")
        _, cas = mc.gets("ct")
        cas = int(cas) if cas is not None else None
        tap.ok(cas is not None and abs((cas >> 32) - time.time()) < 10,
               "a new write's CAS unique (ClockTime) is on the real clock", "cas %r" % cas)
        clocks = [int(c.kumostat(s, "clocktime").split()[-1].strip("()")) >> 32 for s in c.servers]
        tap.ok(all(abs(ct - time.time()) < 10 for ct in clocks), "every server's ClockTime is on the real clock",
               "%r at %d" % (clocks, time.time()))

        tap.note("a relative exptime is resolved on the debug clock")
        mc.set("k30", b"v", expire=30)
        tap.eq(line(port, b"debugtime 20\r\n"), b"OK\r\n", "debugtime 20")
        tap.eq(mc.get("k30"), b"v", "a 30 s TTL set after the move: there 20 s on")
        tap.eq(line(port, b"debugtime 11\r\n"), b"OK\r\n", "debugtime 11")
        tap.eq(mc.get("k30"), None, "gone 31 s on")
        tap.eq(line(port, b"debugtime 0\r\n"), b"OK\r\n", "debugtime 0 sends the offset again -> OK")

        tap.note("SRV_DEBUG_TIME's parameters")
        srv = c.servers[0].port
        for params in (["x"], [], [TEN_YEARS + 1], [-(TEN_YEARS + 1)], [1 << 63]):
            err, _ = kt.rpc_call(srv, SRV_DEBUG_TIME, params)
            tap.ok(isinstance(err, str) and err.startswith("bad params"), "SRV_DEBUG_TIME %r -> bad params" % params,
                   repr(err))
        tap.eq(line(port, b"debugtime 0\r\n"), b"OK\r\n", "the cluster still takes debugtime")

        tap.note("a gateway without --debug-time")
        c.gateway.stop()
        c.gateway_args = []
        c.start_gateway()
        for req in (b"debugtime 5\r\n", b"debugtime x\r\n", b"debugtime\r\n", b"debugtime 0\r\n"):
            tap.eq(line(port, req), b"ERROR\r\n", "without --debug-time: %r -> ERROR" % req)
        mc = kt.mc_client(port, timeout=10)
        mc.set("k2", b"v", expire=100)
        tap.eq(mc.get("k2"), b"v", "the servers' offset stays as it was set; the gateway serves on")
        c.check_running()

    tap.note("servers without --debug-time")
    with kt.Cluster(nservers=1, gateway_args=kt.DEBUG_TIME_ARGS) as c:
        tap.eq(line(c.gateway_port, b"debugtime 5\r\n"), b"SERVER_ERROR debugtime not taken by every server\r\n",
               "a gateway with --debug-time over a server without -> SERVER_ERROR")
        err, _ = kt.rpc_call(c.servers[0].port, SRV_DEBUG_TIME, [5])
        tap.ok(isinstance(err, str) and "not enabled" in err, "the server refuses SRV_DEBUG_TIME", repr(err))
        mc = kt.mc_client(c.gateway_port, timeout=10)
        mc.set("k", b"v", expire=100)
        tap.eq(mc.get("k"), b"v", "its exptimes stay on the real clock")
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

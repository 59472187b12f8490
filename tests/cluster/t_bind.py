#!/usr/bin/python3
"""t_bind — daemons listen where -l tells them (docs/architecture.md §3).

  1. Two managers on one host, at 127.0.0.1 and 127.0.0.2 with the same
     port, both start and each answers kumoctl.
  2. Two servers at 127.0.0.1 and 127.0.0.2 with the same -l and -L ports
     both start, are attached through one manager, and serve through a
     gateway.
  3. A server told an address that is not this host's (a NAT or published
     address, here TEST-NET-1) says so in its log and listens on every
     interface at that port.
"""
import os

import kumotest as kt
from kumotest import tap


def log_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    tmp = kt.new_tmpdir()
    log = lambda n: os.path.join(tmp, n + ".log")
    port, ctl1, ctl2 = kt.free_port(), kt.free_port(), kt.free_port()
    m1 = kt.Daemon("manager@127.0.0.1", [kt.binary("kumo-manager"), "-v", "-o", "-", "-l", "127.0.0.1:%d" % port,
                                         "-c", "127.0.0.1:%d" % ctl1], log("m1")).start()
    m2 = kt.Daemon("manager@127.0.0.2", [kt.binary("kumo-manager"), "-v", "-o", "-", "-l", "127.0.0.2:%d" % port,
                                         "-c", "127.0.0.2:%d" % ctl2], log("m2")).start()
    for addr, m in (("127.0.0.1:%d" % ctl1, m1), ("127.0.0.2:%d" % ctl2, m2)):
        kt.wait_until(lambda: kt.run_tool([kt.binary("kumoctl"), addr, "status"], timeout=5).returncode
                      in kt.STATUS_ANSWERED, 20, "kumoctl %s status" % addr, interval=0.2, daemons=[m1, m2])
    tap.ok(m1.alive() and m2.alive(), "two managers on port %d, at 127.0.0.1 and 127.0.0.2, both run" % port)

    sport, stream = kt.free_port(), kt.free_port()
    servers = []
    for host in ("127.0.0.1", "127.0.0.2"):
        servers.append(kt.Daemon("server@" + host, [
            kt.binary("kumo-server"), "-v", "-o", "-", "-m", "127.0.0.1:%d" % port, "-l", "%s:%d" % (host, sport),
            "-L", stream, "-s", os.path.join(tmp, host + ".tch"), "-f", tmp], log("s-" + host)).start())
    ctl = "127.0.0.1:%d" % ctl1

    def status():
        return kt.Status(kt.run_tool([kt.binary("kumoctl"), ctl, "status"]).stdout)
    want = ["127.0.0.1:%d" % sport, "127.0.0.2:%d" % sport]
    kt.wait_until(lambda: all(a in status().not_attached for a in want), 30, "both servers under 'not attached'",
                  interval=0.2, daemons=[m1] + servers)
    kt.run_tool([kt.binary("kumoctl"), ctl, "attach"])
    st = kt.wait_until(lambda: (lambda st: all(st.state(a) == "active" for a in want) and st)(status()), 60,
                       "both servers active", interval=0.2, daemons=[m1] + servers)
    tap.ok(bool(st), "two servers on -l port %d and -L %d, at 127.0.0.1 and 127.0.0.2, both attached and active (%r)"
           % (sport, stream, st.attached))
    gport = kt.free_port()
    gw = kt.Daemon("gateway", [kt.binary("kumo-gateway"), "-v", "-o", "-", "-m", "127.0.0.1:%d" % port,
                               "-t", "127.0.0.1:%d" % gport], log("gw")).start()
    kt.wait_until(lambda: kt.raw_roundtrip(gport, b"get probe\r\n") == b"END\r\n", 30, "the gateway",
                  interval=0.2, daemons=[gw, m1] + servers)
    mc = kt.mc_client(gport)
    bad = [i for i in range(50) if not mc.set("bind-%d" % i, b"v%d" % i) or mc.get("bind-%d" % i) != b"v%d" % i]
    mc.close()
    tap.ok(not bad, "sets and gets through them", repr(bad[:5]))

    nat_port = kt.free_port()
    nat = kt.Daemon("server@192.0.2.1", [
        kt.binary("kumo-server"), "-v", "-o", "-", "-m", "127.0.0.1:%d" % port, "-l", "192.0.2.1:%d" % nat_port,
        "-L", kt.free_port(), "-s", os.path.join(tmp, "nat.tch"), "-f", tmp], log("nat")).start()
    kt.wait_until(lambda: "not an address of this host" in log_text(log("nat")), 20, "the NAT notice",
                  interval=0.2, daemons=[nat])
    tap.ok(kt.port_open(nat_port), "-l 192.0.2.1:%d (not this host's): logged, and listening on every interface"
           % nat_port)
    for d in [nat, gw] + servers + [m1, m2]:
        tap.ok(d.alive(), "%s still running" % d.name)
        d.stop()


if __name__ == "__main__":
    kt.main(body)

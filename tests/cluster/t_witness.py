#!/usr/bin/python3
"""t_witness — a server's vote on the next version of the membership
(docs/architecture.md §11.1, src/server/witness.c).

A cluster of 3 servers is attached and settles. Then this test plays two
managers against one server, speaking the node protocol directly:

  - the server answers SRV_STATUS whs with a seed of 3 elements, the third
    its version;
  - SRV_HS_PREPARE for version v + 1 with ballot B1 is promised, with no
    pair accepted yet; a lower ballot B0 is then refused, naming B1;
  - SRV_HS_ACCEPT with B0 is refused; with B1 accepted; the server still
    holds version v (a pair is installed only when a manager pushes it);
  - a later SRV_HS_PREPARE with a higher ballot B2 is promised and answers
    B1's pair: the second manager learns what the first proposed;
  - SRV_HS_PREPARE for v (held) answers HS_STALE with the server's own
    pair; for v + 5 HS_BEHIND;
  - malformed calls get "bad params" (a seed of another version, a ballot
    that is no ballot) and the server keeps serving;
  - the vote outlives a restart of the server (<db>.vote): the accepted
    pair and the promise are answered as before; a damaged vote file is
    named in the log and ignored;
  - the pushed pair (SRV_HS_SYNC) of version v + 1 is adopted, and an older
    version pushed after it is not.
"""
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
SRV_HS_SYNC, SRV_HS_PREPARE, SRV_HS_ACCEPT, SRV_STATUS = 2, 4, 5, 97
ST_RHS, ST_WHS = 9, 10
HS_OK, HS_REFUSED, HS_STALE, HS_BEHIND = 0, 1, 2, 3


def ident(port):
    """A manager identity: port (big-endian), then 127.0.0.1."""
    return port.to_bytes(2, "big") + bytes([127, 0, 0, 1])


def main():
    kt.require_binaries()
    with kt.Cluster(nservers=3, gateway=True) as c:
        kt.wait_until(lambda: "replace:" not in c.kumoctl("status").stdout, 30, "the attach's replace to end")
        port = c.servers[0].port
        err, whs = kt.rpc_call(port, SRV_STATUS, [ST_WHS])
        err2, rhs = kt.rpc_call(port, SRV_STATUS, [ST_RHS])
        tap.ok(err is None and err2 is None and isinstance(whs, list) and len(whs) == 3 and whs[2] >= 1
               and rhs[2] == whs[2], "whs and rhs seeds carry one version (>= 1 after an attach)", repr(whs)[:200])
        v = whs[2]
        b0, b1, b2 = [10, ident(1000)], [20, ident(1000)], [20, ident(2000)]
        nodes = whs[0][:2]  # a change: the third server detached
        w1, r1 = [nodes, whs[1] + 1, v + 1], [nodes, whs[1] + 1, v + 1]

        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, b1])
        tap.eq(res, (None, [HS_OK, v, None, None, None]), "prepare v+1 with B1: promised, nothing accepted yet")
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, b0])
        tap.eq(res, (None, [HS_REFUSED, v, b1, None, None]), "prepare with a lower ballot: refused, naming B1")
        res = kt.rpc_call(port, SRV_HS_ACCEPT, [v + 1, b0, w1, r1])
        tap.eq(res[1][:3] if res[1] else res, [HS_REFUSED, v, b1], "accept with the lower ballot: refused")
        res = kt.rpc_call(port, SRV_HS_ACCEPT, [v + 1, b1, w1, r1])
        tap.eq(res, (None, [HS_OK, v, None, None, None]), "accept with B1: accepted")
        err, held = kt.rpc_call(port, SRV_STATUS, [ST_WHS])
        tap.ok(held == whs, "an accepted pair is not installed: the server still holds version v", repr(held)[:200])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, b2])
        tap.ok(res[0] is None and res[1][:3] == [HS_OK, v, b1] and res[1][3] == w1 and res[1][4] == r1,
               "prepare with a higher ballot: promised, and B1's pair comes back", repr(res)[:300])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v, b2])
        tap.ok(res[0] is None and res[1][0] == HS_STALE and res[1][3] == whs and res[1][4] == rhs,
               "prepare for the version held: stale, with the server's own pair", repr(res)[:300])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 5, b2])
        tap.eq(res, (None, [HS_BEHIND, v, None, None, None]), "prepare for a version far ahead: behind")

        for name, params in (("a ballot that is no ballot", [v + 1, [1, b"short"]]),
                             ("no ballot", [v + 1]),
                             ("a version that is a string", ["x", b1]),
                             ("seeds of another version", [v + 1, b2, [nodes, 5, v + 2], [nodes, 5, v + 2]]),
                             ("a seed that is no seed", [v + 1, b2, [1, 2, 3], r1])):
            method = SRV_HS_ACCEPT if len(params) == 4 else SRV_HS_PREPARE
            err, res = kt.rpc_call(port, method, params)
            tap.ok(err is not None and "bad params" in str(err), "%s: bad params" % name, repr((err, res)))
        c.check_running("every daemon survives the malformed votes")
        mc = kt.mc_client(c.gateway_port)
        tap.ok(mc.set("after", b"votes") and mc.get("after") == b"votes", "the cluster still serves")
        mc.close()

        # The vote outlives the process: stop the server, start it again.
        srv = c.servers[0]
        srv.daemon.stop()
        c.start_server(srv)
        kt.wait_until(lambda: kt.rpc_call(port, SRV_STATUS, [ST_WHS])[1][2] == v, 30,
                      "the restarted server holds version v again", daemons=[srv.daemon])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, [30, ident(2000)]])
        tap.ok(res[0] is None and res[1][:3] == [HS_OK, v, b1] and res[1][3] == w1,
               "after a restart, the accepted pair of v+1 is still answered (<db>.vote)", repr(res)[:300])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, b2])
        tap.eq(res[1][:3] if res[1] else res, [HS_REFUSED, v, [30, ident(2000)]],
               "and the promise too: an older ballot is refused")
        srv.daemon.stop()
        with open(srv.db + ".vote", "wb") as f:
            f.write(b"\xc1 not a vote")
        c.start_server(srv)
        kt.wait_until(lambda: kt.rpc_call(port, SRV_STATUS, [ST_WHS])[1][2] == v, 30,
                      "the server with a damaged vote file starts and holds version v", daemons=[srv.daemon])
        with open(c.log("server%d" % srv.index), errors="replace") as f:
            log = f.read()
        tap.ok("%s.vote is not a vote" % srv.db in log, "a damaged vote file is named in the log and ignored",
               log[-800:])

        # A pushed pair: a newer version is adopted, then an older one is not.
        w2 = [whs[0], whs[1] + 2, v + 1]
        err, res = kt.rpc_call(port, SRV_HS_SYNC, [w2, w2])
        err, held = kt.rpc_call(port, SRV_STATUS, [ST_WHS])
        tap.ok(held and held[2] == v + 1, "a pushed pair of version v+1 is adopted", repr(held)[:200])
        err, res = kt.rpc_call(port, SRV_HS_SYNC, [[nodes, whs[1] + 50, v], [nodes, whs[1] + 50, v]])
        err, held = kt.rpc_call(port, SRV_STATUS, [ST_WHS])
        tap.ok(held and held[2] == v + 1 and len(held[0]) == 3,
               "an older version pushed later is not, though its ClockTime is newer", repr(held)[:200])
        res = kt.rpc_call(port, SRV_HS_PREPARE, [v + 1, [99, ident(3000)]])
        tap.ok(res[0] is None and res[1][0] == HS_STALE and res[1][1] == v + 1,
               "once v+1 is held, a vote for it answers stale", repr(res)[:200])



if __name__ == "__main__":
    kt.main(main)

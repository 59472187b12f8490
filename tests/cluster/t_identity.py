#!/usr/bin/python3
"""t_identity — a server's place on the ring follows its database, not its
address (docs/architecture.md §9.1, src/server/identity.h).

  1. Servers started with -l are placed by that address, as in 0.4: each
     database gets "<db>.node" saying so, and a database started under
     another server's -l (a swapped volume) is refused, the file named.
  2. Servers with --node-name: everything stops, the managers lose their
     state, and every database comes back at another server's address (a
     compose project recreated, volumes dealt out again). Attached anew,
     the cluster serves every key, and no record moved: each database holds
     what it held.
  3. With the manager up, one named server comes back at a new address: its
     ring entry follows it (fault, then attached and caught up), the old
     address is gone from the layout, and the keys written while it was
     away read back.
  4. A copy of a live server's database (a copied volume) is refused by the
     manager; a database started under another --node-name is refused by
     the server.
"""
import os
import shutil

import kumotest as kt
from kumotest import tap

KEYS = 400


def node_line(path):
    with open(path + ".node") as f:
        return f.read().strip()


def write_keys(c, prefix, n):
    want = {("%s-%d" % (prefix, i)).encode(): os.urandom(24) for i in range(n)}
    mc = kt.mc_client(c.gateway_port)
    try:
        for k, v in want.items():
            if not mc.set(k, v):
                raise AssertionError("set %r was not stored" % k)
    finally:
        mc.close()
    return want


def log_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def address_placed():
    tap.note("1. -l servers: placed by address; a swapped volume is refused")
    with kt.Cluster(nservers=3) as c:
        lines = [node_line(s.db) for s in c.servers]
        tap.ok(lines == ["kumofs-node 1 addr %s" % s.addr for s in c.servers],
               "each database has <db>.node naming its -l address", repr(lines))
        want = write_keys(c, "addr", 100)
        a, b = c.servers[0], c.servers[1]
        a.daemon.stop()
        b.daemon.stop()
        argv = [kt.binary("kumo-server"), "-o", "-", "-m", c.mgr_addr, "-l", a.addr, "-L", kt.free_port(),
                "-s", b.db, "-f", a.tmpdir]
        rc, out = kt.run_expect_exit(argv, timeout=20)
        tap.ok(rc not in (None, 0) and (b.db + ".node") in out and "swapped" in out,
               "server %s started on %s's database exits (%s), naming %s.node" % (a.addr, b.addr, rc, b.db),
               out[-600:])
        for s in (a, b):
            c.start_server(s)
        c.wait_not_attached([a, b])
        c.attach(c.servers, timeout=60)
        bad = kt.read_mismatches(c.gateway_port, want)
        tap.ok(not bad, "both back on their own databases: every key reads", "\n".join(bad[:5]))
        c.check_running()


def named_cluster():
    c = kt.Cluster(nservers=5, start=False)   # more servers than copies: placement decides who holds a key
    argv = c.server_argv
    for s in c.servers:
        s.name = "node-%d" % s.index
    c.server_argv = lambda s: argv(s) + ["--node-name", s.name]
    return c


def items_by_name(c):
    return {s.name: c.items(s) for s in c.servers}


def shuffled(c):
    tap.note("2. named servers: managers lose their state and the databases change addresses")
    want = write_keys(c, "named", KEYS)
    tap.ok([node_line(s.db) for s in c.servers] == ["kumofs-node 1 name %s" % s.name for s in c.servers],
           "each database has <db>.node naming its --node-name")
    before = items_by_name(c)
    c.stop()
    # Deal the databases out again: the one of node-1 now runs at server 2's
    # address, and so on (what a recreated compose project does).
    dbs = [(s.db, s.name) for s in c.servers]
    for i, s in enumerate(c.servers):
        s.db, s.name = dbs[(i + 1) % len(dbs)]
    c.start_manager()   # no state: it knows no server
    for s in c.servers:
        c.start_server(s)
    c.wait_not_attached(c.servers)
    c.attach(c.servers, timeout=60)
    c.start_gateway()
    bad = kt.read_mismatches(c.gateway_port, want)
    tap.ok(not bad, "after the shuffle and a fresh manager: %d of %d keys read back" % (KEYS - len(bad), KEYS),
           "\n".join(bad[:10]))
    kt.wait_until(lambda: "replace:" not in c.kumoctl("status").stdout, 60, "no replace to be running",
                  interval=0.5, daemons=c.daemons())
    after = items_by_name(c)
    tap.ok(after == before, "no record moved: each node's database holds what it held (%r)" % after,
           "before %r" % before)
    return want


def moved(c, want):
    tap.note("3. the manager up, one named server comes back at a new address")
    s = c.servers[0]
    old = s.addr
    s.daemon.stop()
    kt.wait_until(lambda: c.status().state(old) == "fault", 30, "%s to be fault" % old, interval=0.2,
                  daemons=[c.manager])
    more = write_keys(c, "while-away", 100)
    s.port, s.stream_port = kt.free_port(), kt.free_port()
    c.start_server(s)
    st = kt.wait_until(lambda: (lambda st: st.state(old) is None and st.state(s.addr) == "fault" and st)(c.status()),
                       30, "the entry of %s to move from %s to %s" % (s.name, old, s.addr), interval=0.2,
                       daemons=c.daemons())
    tap.ok(len(st.attached) == len(c.servers), "the layout still has its servers, %s among them and %s gone" % (s.addr, old),
           repr(st))
    tap.ok("holds the database of node name %s" % s.name in log_text(c.log("manager")),
           "the manager logged the move")
    c.wait_not_attached([s])
    c.attach(c.servers, timeout=90)
    kt.wait_until(lambda: "replace:" not in c.kumoctl("status").stdout, 90, "the catch-up to finish",
                  interval=0.5, daemons=c.daemons())
    want = dict(want)
    want.update(more)
    bad = kt.read_mismatches(c.gateway_port, want)
    tap.ok(not bad, "every key reads back, those written while it was away too (%d)" % len(want),
           "\n".join(bad[:10]))


def refused(c):
    tap.note("4. a copied database, and one under another name")
    src = c.servers[1]
    copy = kt.Server(9, kt.free_port(), kt.free_port(), os.path.join(c.dir, "copy.tch"),
                     os.path.join(c.dir, "tmp9"))
    os.makedirs(copy.tmpdir)
    shutil.copyfile(src.db, copy.db)
    shutil.copyfile(src.db + ".node", copy.db + ".node")
    copy.name = src.name
    c.start_server(copy)
    marker = "presents the database of node name %s" % src.name
    kt.wait_until(lambda: marker in log_text(c.log("manager")), 30, "the manager to refuse the copy",
                  interval=0.2, daemons=c.daemons())
    st = c.status()
    tap.ok(copy.addr not in st.not_attached and st.state(copy.addr) is None and len(st.attached) == len(c.servers),
           "a copy of %s's database is refused and listed nowhere" % src.name, repr(st))
    copy.daemon.stop()
    argv = [kt.binary("kumo-server"), "-o", "-", "-m", c.mgr_addr, "-l", copy.addr, "-L", kt.free_port(),
            "-s", copy.db, "-f", copy.tmpdir, "--node-name", "someone-else"]
    rc, out = kt.run_expect_exit(argv, timeout=20)
    tap.ok(rc not in (None, 0) and (copy.db + ".node") in out and "someone-else" in out,
           "--node-name someone-else on %s's database exits (%s), naming the file" % (src.name, rc), out[-600:])


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    address_placed()
    c = named_cluster()
    with c:
        c.start()
        want = shuffled(c)
        moved(c, want)
        refused(c)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

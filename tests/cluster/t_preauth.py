#!/usr/bin/python3
"""t_preauth.py — nothing buffered before authentication (issue 19,
docs/hostile-input.md).

A keyed cluster (--cluster-key-file): a manager, one server, a gateway.

  * Hello floods: 16 connections each send a partial 60 MiB hello to the
    server's -l port, then to the manager's -c and -l ports. The daemon's
    RSS (VmRSS) stays under RSS_BOUND throughout, every connection is closed,
    and the daemon serves afterwards. A hello over RPC_MAX_HELLO bytes and a
    silent peer are closed too (the latter after RPC_HELLO_TIMEOUT).

No assertion is about speed: every wait is a bounded poll.
"""
import os
import select
import socket
import struct
import time

import kumotest as kt
from kumotest import tap

msgpack = None               # python3-msgpack, checked in body()

RSS_BOUND = 64 << 20         # docs/hostile-input.md: a daemon under a pre-auth flood
FLOOD_CONNS = 16
FLOOD_BYTES = 60 << 20
RPC_MAX_HELLO = 512          # src/lib/rpc.h
RPC_HELLO_TIMEOUT = 5        # src/lib/rpc.h, seconds
ROLE_TOOL = 3


def rss(pid):
    """VmRSS of pid in bytes (0 once it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def ready(socks, events, timeout):
    """The sockets of socks that poll() finds ready for events within timeout s
    (poll, not select: descriptors may be above FD_SETSIZE here)."""
    p = select.poll()
    by_fd = {}
    for s in socks:
        p.register(s, events | select.POLLERR | select.POLLHUP)
        by_fd[s.fileno()] = s
    return [by_fd[fd] for fd, _ in p.poll(timeout * 1000)]


def wait_closed(socks, timeout, got=None):
    """Poll until the peer has closed every socket (EOF or reset) or timeout
    passes; returns how many it closed. What they sent is added to
    got[socket] when got (a dict) is given."""
    closed = set()
    for s in socks:
        s.setblocking(False)
    deadline = time.time() + timeout
    while len(closed) < len(socks) and time.time() < deadline:
        for s in ready([s for s in socks if s not in closed], select.POLLIN, 0.5):
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        closed.add(s)
                        break
                    if got is not None:
                        got[s] = got.get(s, b"") + d
            except BlockingIOError:
                pass
            except OSError:
                closed.add(s)
    return len(closed)


def hello_flood(port, pid):
    """FLOOD_CONNS connections each send a hello [2, server, bin32 of 60 MiB
    ...] and as much of its 60 MiB as the daemon takes (a partial hello:
    the object never ends). Returns (peak RSS, bytes the daemon took,
    connections the daemon closed)."""
    head = bytes([0x97, 0x02, 0x01, 0xc6]) + struct.pack(">I", FLOOD_BYTES)
    zeros = bytes(1 << 20)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(FLOOD_CONNS)]
    for s in socks:
        s.setblocking(False)
    sent = [0] * FLOOD_CONNS
    done = [False] * FLOOD_CONNS   # all sent, or the daemon closed it
    peak = rss(pid)
    deadline = time.time() + 60
    while not all(done) and time.time() < deadline:
        for s in ready([s for i, s in enumerate(socks) if not done[i]], select.POLLOUT, 0.2):
            i = socks.index(s)
            off = sent[i]
            data = (head[off:] if off < len(head) else b"") + zeros
            data = data[:len(head) + FLOOD_BYTES - 1 - off]
            try:
                sent[i] += s.send(data)
            except BlockingIOError:
                pass
            except OSError:
                done[i] = True
            if sent[i] >= len(head) + FLOOD_BYTES - 1:
                done[i] = True
        peak = max(peak, rss(pid))
    # What is still in flight settles: sample a little longer.
    end = time.time() + 2
    while time.time() < end:
        peak = max(peak, rss(pid))
        time.sleep(0.1)
    closed = wait_closed(socks, RPC_HELLO_TIMEOUT + 10)
    for s in socks:
        s.close()
    return peak, sum(sent), closed


def rpc_floods(c):
    srv = c.servers[0]
    targets = (("server -l", srv.port, srv.daemon), ("manager -c", c.ctl_port, c.manager),
               ("manager -l", c.mgr_port, c.manager))
    for name, port, d in targets:
        before = rss(d.pid)
        peak, took, closed = hello_flood(port, d.pid)
        tap.note("%s: %d partial 60 MiB hellos: RSS %.1f MiB before, peak %.1f MiB; %d bytes sent before "
                 "the daemon closed" % (name, FLOOD_CONNS, before / 1048576, peak / 1048576, took))
        tap.ok(peak < RSS_BOUND, "%s: RSS stays under %d MiB under %d partial 60 MiB hellos (peak %.1f MiB)"
               % (name, RSS_BOUND >> 20, FLOOD_CONNS, peak / 1048576))
        tap.ok(closed == FLOOD_CONNS, "%s: the daemon closed every flooding connection (%d of %d)"
               % (name, closed, FLOOD_CONNS))
        tap.ok(d.alive(), "%s: the daemon is up" % name)
    r = c.kumoctl("status")
    tap.ok(r.returncode == 0, "kumoctl status after the floods", r.stderr)
    tap.ok(c.kumostat(srv, "pid") == str(srv.daemon.pid), "kumostat pid after the floods")

    # A well-formed hello that is simply too big: an extra element of 600
    # bytes. The daemon closes it without a proof (it answers a hello it has
    # read with one).
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(msgpack.packb([2, ROLE_TOOL, b"", 1, 0, 0, os.urandom(32), b"x" * 600], use_bin_type=True))
    got = {}
    closed = wait_closed([s], 10, got) == 1
    s.close()
    up = msgpack.Unpacker(raw=False)
    up.feed(got.get(s, b""))
    kinds = [o[0] for o in up if isinstance(o, list) and o]
    tap.ok(closed and 3 not in kinds, "a hello over %d bytes is closed, unanswered" % RPC_MAX_HELLO,
           "closed=%s frames=%r" % (closed, kinds))
    # Silent peers, and one that stops half-way through its hello.
    socks = [socket.create_connection(("127.0.0.1", p), timeout=5) for p in (srv.port, c.ctl_port, c.mgr_port)]
    half = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    half.sendall(msgpack.packb([2, ROLE_TOOL, b"", 1, 0, 0, os.urandom(32)], use_bin_type=True)[:20])
    n = wait_closed(socks + [half], RPC_HELLO_TIMEOUT + 15)
    tap.ok(n == 4, "silent peers and a half hello are closed (RPC_HELLO_TIMEOUT = %d s): %d of 4"
           % (RPC_HELLO_TIMEOUT, n))
    for s in socks + [half]:
        s.close()


def body():
    global msgpack
    msgpack = kt.require_module("msgpack")
    kt.require_binaries()
    tmp = kt.new_tmpdir()
    key_path = os.path.join(tmp, "cluster.key")
    with open(key_path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key_path, 0o600)
    with kt.Cluster(nservers=1, key_file=key_path) as c:
        rpc_floods(c)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

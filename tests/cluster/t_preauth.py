#!/usr/bin/python3
"""t_preauth.py — nothing buffered before authentication, and daemons that
keep serving at their descriptor limit (docs/hostile-input.md).

A keyed cluster (--cluster-key-file): a manager, one server started under
`prlimit --nofile=256`, a gateway.

  * Hello floods: 16 connections each send a partial 60 MiB hello to the
    server's -l port, then to the manager's -c and -l ports. The daemon's
    RSS (VmRSS) stays under RSS_BOUND throughout, every connection is closed,
    and the daemon serves afterwards. A hello over RPC_MAX_HELLO bytes and a
    silent peer are closed too (the latter after RPC_HELLO_TIMEOUT).
  * Per-address limit: 100 silent connections from 127.0.0.1 to the
    server's -l; the server holds at most its per-address limit of them
    (ADMIT_PER_ADDR, cut to a quarter of what its descriptors allow), a
    peer from 127.0.0.2 completes its handshake at once, and kumostat from
    127.0.0.1 gets in once the flood's oldest is ADMIT_GRACE old.
  * Stream port: 3,000 idle connections to -L (more than the server's
    descriptors): the server stays up, holds few of them, answers kumostat
    and sets through the gateway meanwhile, and once they are gone a new
    server is attached and its replace copies through -L.
  * Descriptor limit: authenticated connections use up the server's
    descriptors; it does not spin, the gateway's sets are still served,
    `kumostat accept` (through a connection opened before) says accepting
    failed, and once they close kumostat connects again.

No assertion is about speed: every wait is a bounded poll.
"""
import hashlib
import hmac
import os
import resource
import select
import socket
import struct
import time
import urllib.request

import kumotest as kt
from kumotest import tap

msgpack = None               # python3-msgpack, checked in body()

RSS_BOUND = 64 << 20         # docs/hostile-input.md: a daemon under a pre-auth flood
FLOOD_CONNS = 16
FLOOD_BYTES = 60 << 20
RPC_MAX_HELLO = 512          # src/lib/rpc.h
RPC_HELLO_TIMEOUT = 5        # src/lib/rpc.h, seconds
ADMIT_PER_ADDR = 64          # src/lib/admit.h
SERVER_NOFILE = 256          # the server's descriptor limit here
STREAM_FLOOD = 3000
ROLE_TOOL = 3
SRV_STATUS, ST_PID, ST_ACCEPT = 97, 0, 14
CTL_STATUS = 99


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


def nfds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


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
    # What is still in flight settles: sample a little longer (a measured
    # period: the peak memory in it).
    end = time.time() + 2
    while time.time() < end:
        peak = max(peak, rss(pid))
        time.sleep(0.1)
    closed = wait_closed(socks, RPC_HELLO_TIMEOUT + 10)
    for s in socks:
        s.close()
    return peak, sum(sent), closed


def proof(key, connected, role, receiver_nonce, sender_nonce):
    """docs/protocol.md §1.1."""
    msg = b"kumofs-auth-v1" + (b"C" if connected else b"A") + bytes([role]) + receiver_nonce + sender_nonce
    return hmac.new(key, msg, hashlib.sha256).digest()


class Peer:
    """An RPC connection that completed the keyed handshake by hand (role tool)."""

    def __init__(self, port, key, source="127.0.0.1", timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.up = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0
        nonce = os.urandom(32)
        try:
            self.s.sendall(msgpack.packb([2, ROLE_TOOL, b"", 1, 0, 0, nonce], use_bin_type=True))
            h = self._next()
            if not (isinstance(h, list) and h[:1] == [2] and len(h) >= 7):
                raise ConnectionError("no hello: %r" % (h,))
            self.s.sendall(msgpack.packb([3, proof(key, True, ROLE_TOOL, h[6], nonce)], use_bin_type=True))
            p = self._next()
            if p != [3, proof(key, False, h[1], nonce, h[6])]:
                raise ConnectionError("wrong proof from the daemon: %r" % (p,))
        except BaseException:
            self.s.close()
            raise

    def _next(self):
        while True:
            for o in self.up:
                return o
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed by the daemon")
            self.up.feed(d)

    def call(self, method, params):
        self.msgid += 1
        self.s.sendall(msgpack.packb([0, self.msgid, method, params], use_bin_type=True))
        while True:
            o = self._next()
            if isinstance(o, list) and len(o) == 4 and o[0] == 1 and o[1] == self.msgid:
                return o[2], o[3]

    def close(self):
        self.s.close()


def metric(c, series, port=None):
    """One sample of the first server's /metrics, or of the daemon's at
    port (0 when absent)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (port or c.metrics_port), timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0


def accept_stats(c, srv):
    """`kumostat <srv> accept` as a dict."""
    out = c.kumostat(srv, "accept")
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def rpc_floods(c, key):
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
    failed = metric(c, "kumo_manager_unauthenticated_failed_total", c.manager_metrics_port)
    tap.ok(failed >= 2 * FLOOD_CONNS + 2, "the manager's /metrics counts the connections it closed before their "
           "hello was done (%d)" % failed)
    tap.ok(metric(c, 'kumo_manager_accept_paused{port="control"}', c.manager_metrics_port) == 0,
           "... and shows its control port accepting")


def per_address(c, key):
    srv = c.servers[0]
    limit = accept_stats(c, srv)["unauthenticated_per_address_limit"]
    tap.note("per-address limit %d (ADMIT_PER_ADDR = %d, at most a quarter of the %d the server's descriptors "
             "allow)" % (limit, ADMIT_PER_ADDR, accept_stats(c, srv)["unauthenticated_limit"]))
    def handled():
        """Connections from 127.0.0.1 the server holds unauthenticated, refused or evicted (asked from 127.0.0.3)."""
        p = Peer(srv.port, key, source="127.0.0.3")
        try:
            err, st = p.call(SRV_STATUS, [ST_ACCEPT])
        finally:
            p.close()
        if err is not None or not isinstance(st, dict):
            raise OSError("SRV_STATUS accept: %r" % ((err, st),))
        return st.get("rpc_unauthenticated", 0) + st.get("rpc_refused", 0) + st.get("rpc_evicted", 0)
    before = handled()
    socks = []
    for _ in range(100):
        socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
    try:    # until the daemon has taken them all in (no assertion on time: the checks below say it)
        kt.wait_until(lambda: handled() >= before + 100, 30, "the server to accept the 100 connections",
                      interval=0.1, daemons=c.daemons())
    except TimeoutError as e:
        tap.note(str(e))
    try:
        p = Peer(srv.port, key, source="127.0.0.2")
        err, pid = p.call(SRV_STATUS, [ST_PID])
        p.close()
        ok = err is None and pid == srv.daemon.pid
    except OSError as e:
        ok, err = False, e
    tap.ok(ok, "100 silent connections from 127.0.0.1: a peer from 127.0.0.2 is served at once", repr(err))
    # A peer from the flood's own address gets in once the flood's oldest
    # connection is ADMIT_GRACE old: it takes its place.
    st = kt.wait_until(lambda: accept_stats(c, srv), 10, "kumostat from 127.0.0.1 to be served",
                       interval=0.2, daemons=c.daemons())
    tap.ok(st.get("rpc_unauthenticated", 999) <= limit,
           "the server holds at most %d unauthenticated connections from one address" % limit, repr(st))
    tap.ok(st.get("rpc_refused", 0) + st.get("rpc_evicted", 0) >= 100 - limit,
           "the others were refused or evicted, and counted", repr(st))
    closed = wait_closed(socks, RPC_HELLO_TIMEOUT + 15)
    tap.ok(closed == len(socks), "all 100 are closed in the end (%d)" % closed)
    for s in socks:
        s.close()


def stream_flood(c, key):
    srv = c.servers[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = STREAM_FLOOD + 500
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    n = min(STREAM_FLOOD, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500)
    tap.note("stream port %d: %d idle connections (the server's limit is %d descriptors)"
             % (srv.stream_port, n, SERVER_NOFILE))
    socks, failures, peak_fds = [], 0, 0
    for i in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", srv.stream_port), timeout=2))
        except OSError:
            failures += 1
            if failures >= 20:
                break
        if i % 100 == 0:
            peak_fds = max(peak_fds, nfds(srv.daemon.pid))
    tap.ok(len(socks) == n, "%d of %d connections to -L were accepted" % (len(socks), n),
           "%d connects failed" % failures)
    tap.ok(srv.daemon.alive(), "the server is up")
    served = False
    try:
        served = c.kumostat(srv, "pid") == str(srv.daemon.pid)
    except OSError as e:
        tap.diag(str(e))
    tap.ok(served, "kumostat is answered while the idle connections are open")
    bad = []
    mc = kt.mc_client(c.gateway_port, timeout=10)
    try:
        for i in range(30):
            k = "during-stream-flood-%d" % i
            if not mc.set(k, b"v%d" % i) or mc.get(k) != b"v%d" % i:
                bad.append(k)
    except Exception as e:
        bad.append("%s: %s" % (type(e).__name__, e))
    finally:
        mc.close()
    tap.ok(not bad, "30 sets and gets through the gateway meanwhile", "; ".join(bad[:5]))
    st = accept_stats(c, srv)
    peak_fds = max(peak_fds, nfds(srv.daemon.pid))
    limit = st.get("unauthenticated_per_address_limit", 0)
    tap.ok(st.get("stream_refused", 0) + st.get("stream_evicted", 0) > 0 and
           st.get("stream_unauthenticated", 999) <= limit,
           "kumostat accept: at most %d held, the rest refused or evicted" % limit, repr(st))
    tap.ok(peak_fds < SERVER_NOFILE, "the server never used all its descriptors (peak %d of %d)"
           % (peak_fds, SERVER_NOFILE))
    m = metric(c, 'kumo_server_unauthenticated_refused_total{port="stream"}') + \
        metric(c, 'kumo_server_unauthenticated_evicted_total{port="stream"}')
    tap.ok(m > 0 and m >= st.get("stream_refused", 0) + st.get("stream_evicted", 0),
           "/metrics counts them too (%d refused or evicted)" % m)
    for s in socks:
        s.close()
    kt.wait_until(lambda: accept_stats(c, srv).get("stream_unauthenticated") == 0, 30,
                  "the server to hold no stream connection", interval=0.5, daemons=c.daemons())

    tap.note("after the flood: a new server is attached and its replace copies through -L")
    want = {("pre-%d" % i).encode(): os.urandom(40) for i in range(200)}
    mc = kt.mc_client(c.gateway_port)
    for k, v in want.items():
        mc.set(k, v)
    mc.close()
    extra = kt.Server(2, kt.free_port(), kt.free_port(), os.path.join(c.dir, "server2.tch"),
                      os.path.join(c.dir, "tmp2"))
    os.makedirs(extra.tmpdir)
    c.servers.append(extra)
    c.start_server(extra)
    c.wait_not_attached([extra])
    c.attach(c.servers)
    kt.wait_until(lambda: all(c.hsccheck(s) for s in c.servers) and "replace:" not in c.kumoctl("status").stdout,
                  60, "the replace to finish", interval=0.5, daemons=c.daemons())
    moved = c.kumostat(srv, "moved")
    tap.ok(c.items(extra) > 0 and not moved.startswith("sent 0 "),
           "the new server got its keys through the stream port", moved)
    bad = kt.read_mismatches(c.gateway_port, want)
    tap.ok(not bad, "every key reads back", "\n".join(bad[:10]))


def descriptor_limit(c, key):
    srv = c.servers[0]
    watch = Peer(srv.port, key)       # opened before the limit is reached
    peers, failed = [], None
    for i in range(SERVER_NOFILE + 50):
        try:
            peers.append(Peer(srv.port, key, timeout=2))
        except OSError as e:
            failed = e
            break
    tap.ok(failed is not None, "the server ran out of descriptors after %d authenticated connections"
           % len(peers), "all %d were accepted" % len(peers))

    def cpu():
        f = open("/proc/%d/stat" % srv.daemon.pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    cpu0 = cpu()
    time.sleep(3)   # a measured period (CPU used in it), not a wait
    used = cpu() - cpu0
    tap.ok(used < 1.0, "at its limit the server does not spin (%.2f s CPU in 3 s)" % used)
    bad = []
    mc = kt.mc_client(c.gateway_port, timeout=10)
    try:
        for i in range(10):
            k = "at-limit-%d" % i
            if not mc.set(k, b"x") or mc.get(k) != b"x":
                bad.append(k)
    except Exception as e:
        bad.append("%s: %s" % (type(e).__name__, e))
    finally:
        mc.close()
    tap.ok(not bad, "sets through the gateway are served at the limit", "; ".join(bad))
    # accepting resumes every 100 ms to try again: ask a few times
    for _ in range(20):
        err, res = watch.call(SRV_STATUS, [ST_ACCEPT])
        if err is not None or not isinstance(res, dict) or res.get("accept_paused") == 1:
            break
        time.sleep(0.03)    # between the polls of a short polling loop
    tap.ok(err is None and isinstance(res, dict) and res.get("accept_paused") == 1 and res.get("accept_failures", 0) > 0,
           "SRV_STATUS accept (a connection opened before): accepting paused, failures counted", repr((err, res)))
    for p in peers:
        p.close()
    watch.close()
    kt.wait_until(lambda: c.kumostat(srv, "pid") == str(srv.daemon.pid), 30, "kumostat to be served again",
                  interval=0.5, daemons=c.daemons())
    st = accept_stats(c, srv)
    tap.ok(st.get("accept_paused") == 0 and st.get("accept_failures", 0) > 0,
           "kumostat accept: accepting again, the failures still counted", repr(st))
    with open(srv.daemon.log, "rb") as f:
        log = f.read().decode("utf-8", "replace")
    tap.ok("not accepting for" in log, "the server logged the paused accepts")


def body():
    global msgpack
    msgpack = kt.require_module("msgpack")
    kt.require_binaries()
    kt.require_program("prlimit", "util-linux")
    tmp = kt.new_tmpdir()
    key_path = os.path.join(tmp, "cluster.key")
    raw = os.urandom(32)
    with open(key_path, "wb") as f:
        f.write(raw)
    # The key is the file's bytes without one trailing newline
    # (docs/protocol.md §1.1): one random key in 256 ends in one.
    key = raw[:-1] if raw.endswith(b"\n") else raw
    os.chmod(key_path, 0o600)
    with kt.Cluster(nservers=1, key_file=key_path, start=False) as c:
        argv = c.server_argv
        c.metrics_port = kt.free_port()
        c.manager_metrics_port = kt.free_port()
        c.manager_args += ["--metrics", "127.0.0.1:%d" % c.manager_metrics_port]
        c.server_argv = lambda s: (["prlimit", "--nofile=%d:%d" % (SERVER_NOFILE, SERVER_NOFILE)] + argv(s) +
                                   ["--metrics", "127.0.0.1:%d" % c.metrics_port] if s.index == 1 else argv(s))
        c.start()
        rpc_floods(c, key)
        per_address(c, key)
        stream_flood(c, key)
        descriptor_limit(c, key)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_memory — one client cannot make any daemon hold more than a bounded
amount of memory (flow control from the client to the servers).

64 values of 1 MiB are stored. Then:

  1. a client pipelines 10 multi-gets of all 64 keys in one write (640 MiB
     asked for) and reads normally: every answer arrives whole and correct;
  2. a second client pipelines 100 such multi-gets (6.4 GiB asked for) and
     does not read for 8 s; meanwhile a third client sets and gets small
     keys, and the cluster must go on serving it with no error, keep every
     server (active) (keepalives flow), and the gateway must show the
     stalled connection as paused in its metrics.

Every daemon runs in a memory cgroup of 512 MiB (when this machine lets us
make one), so an unbounded daemon is OOM-killed rather than the machine
swapping. Checks: no daemon died and no OOM kill; the peak anonymous RSS of
each daemon (sampled every 20 ms) stays under 256 MiB, the bound that
docs/architecture.md §15 documents for the default limits; the third
client's operations all succeeded.
"""
import hashlib
import os
import socket
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cluster"))
import kumotest as kt  # noqa: E402

tap = kt.tap
NKEYS = 64
VSIZE = 1 << 20
BOUND = 256 << 20
CGROUP_LIMIT = 512 << 20


def value(i):
    seed = hashlib.sha256(b"mem:%d" % i).digest()
    return (seed * (VSIZE // len(seed) + 1))[:VSIZE]


class Sampler(threading.Thread):
    """Peak anonymous RSS of each daemon, every 20 ms."""

    def __init__(self, daemons):
        super().__init__(daemon=True)
        self.daemons = daemons
        self.peak = {d.name: 0 for d in daemons}
        self.stopping = False

    def run(self):
        while not self.stopping:
            for d in self.daemons:
                if d.alive():
                    v = kt.rss_anon(d.pid) or 0
                    if v > self.peak[d.name]:
                        self.peak[d.name] = v
            time.sleep(0.02)    # the sampling interval


def metric(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def read_gets(sock, nget, keys):
    """Read nget multi-get answers for keys; -> number of wrong values."""
    r = kt.Raw.__new__(kt.Raw)
    r.sock, r.buf = sock, b""
    wrong = 0
    for _ in range(nget):
        got, _ = r.read_get_reply()
        for i, k in enumerate(keys):
            v = got.get(k)
            if v is None or v[1] != value(i):
                wrong += 1
    return wrong


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    mport = kt.free_port()
    c = kt.Cluster(nservers=3, gateway_args=["--metrics", "127.0.0.1:%d" % mport], start=False)
    c.start()
    groups = []
    if kt.MemCgroup.available():
        for d in c.daemons():
            g = kt.MemCgroup(d.name.replace("[", "").replace("]", ""), CGROUP_LIMIT)
            g.add(d.pid)
            groups.append(g)
        tap.note("every daemon in a memory cgroup of %d MiB" % (CGROUP_LIMIT >> 20))
    else:
        tap.note("no memory cgroup here (not root, or no writable hierarchy): RSS is still sampled")
    mc = kt.mc_client(c.gateway_port, timeout=30)
    keys = [b"mem:%02d" % i for i in range(NKEYS)]
    for i, k in enumerate(keys):
        mc.set(k, value(i))
    sampler = Sampler(c.daemons())
    sampler.start()
    line = b"get " + b" ".join(keys) + b"\r\n"

    tap.note("1. 10 pipelined multi-gets of 64 x 1 MiB, read normally")
    s = socket.create_connection(("127.0.0.1", c.gateway_port), timeout=60)
    s.sendall(line * 10)
    wrong = read_gets(s, 10, keys)
    s.close()
    tap.ok(wrong == 0, "640 values of 1 MiB came back whole and in order", "%d wrong or missing" % wrong)

    tap.note("2. 100 pipelined multi-gets (6.4 GiB) from a client that does not read, for 8 s")
    stall = socket.create_connection(("127.0.0.1", c.gateway_port), timeout=60)
    stall.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stall.sendall(line * 100)
    errors, ops = [], 0
    paused = None
    t_end = time.time() + 8
    other = kt.mc_client(c.gateway_port, timeout=10)
    while time.time() < t_end:
        k = "other:%d" % ops
        try:
            other.set(k, b"v%d" % ops)
            if other.get(k) != b"v%d" % ops:
                errors.append("%s read back wrong" % k)
        except Exception as e:
            errors.append("%s: %r" % (k, e))
        ops += 1
        if paused is None and ops > 50:
            paused = metric(mport, "kumo_gateway_paused_connections")
    st = c.status()
    tap.ok(not errors and ops > 100, "another client is served meanwhile: %d set+get, 0 errors" % ops,
           "; ".join(errors[:5]))
    tap.ok(all(s == "active" for _, s in st.attached) and len(st.attached) == 3,
           "every server stays (active): keepalives flow", st.text)
    tap.ok(paused is not None and paused >= 1, "the gateway shows the stalled connection as paused",
           "kumo_gateway_paused_connections %r" % paused)
    stall.close()
    time.sleep(1)   # a measured period: the peaks go on being sampled while the gateway lets go of the stall
    sampler.stopping = True
    sampler.join()

    c.check_running("no daemon died")
    kills = sum(g.oom_kills() for g in groups)
    tap.ok(kills == 0, "no OOM kill in the daemons' cgroups", "%d OOM kills" % kills)
    for name, peak in sorted(sampler.peak.items()):
        tap.ok(peak < BOUND, "%s: peak anonymous RSS %.0f MiB < %d MiB" % (name, peak / 2**20, BOUND >> 20))
    mc.close()
    other.close()
    c.stop()


kt.main(body)

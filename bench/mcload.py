#!/usr/bin/env python3
"""mcload.py - small memcached text-protocol load generator (asyncio).

Copied unchanged in behaviour from the benchmark anchors the project
started from (bench/README.md, "Credits"); bench/compare
runs it for the pipelined (--depth 8) workload and for bench/compare --replace.

Fixed key space, optional prefill, N connections, pipelined get/set,
uniform random keys, reports ops/s and exact latency percentiles.

Latency of an op = time from writing its pipelined batch to parsing its
response (so with --depth > 1 it includes queueing behind earlier ops of
the same batch).  Closed loop: each connection sends its next batch only
after the whole previous batch has been answered.

Uses uvloop when importable (Debian: python3-uvloop, run with
/usr/bin/python3).  --procs N forks N worker processes that share the
connections, to lift the client's own ceiling (each Python process tops
out at one core).

Output: one human line, plus (with --json) one JSON line.
Traffic only goes where --host/--port say; intended for 127.0.0.1.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

try:
    import uvloop  # type: ignore
except ImportError:  # pragma: no cover
    uvloop = None


class Conn(asyncio.Protocol):
    """One memcached connection; parses a stream of text responses."""

    def __init__(self, worker):
        self.w = worker
        self.buf = bytearray()
        self.pending = 0          # responses still expected in this batch
        self.t0 = 0.0
        self.done = None          # future resolved when batch complete
        self.transport = None
        self.errors = 0
        self.misses = 0
        self.hits = 0
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.lost = exc or ConnectionError("closed")
        if self.done is not None and not self.done.done():
            self.done.set_exception(self.lost)

    def send_batch(self, payload, n):
        self.pending = n
        self.done = asyncio.get_running_loop().create_future()
        self.t0 = time.perf_counter()
        self.transport.write(payload)
        return self.done

    def data_received(self, data):
        buf = self.buf
        buf += data
        lat = self.w.lat
        pos = 0
        blen = len(buf)
        while self.pending:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            c = buf[pos]
            if c == 86:  # 'V' VALUE <key> <flags> <bytes>
                sp = buf.rfind(b" ", pos, eol)
                nbytes = int(buf[sp + 1:eol])
                end = eol + 2 + nbytes + 2
                # need data + "\r\n" + "END\r\n"
                if blen < end + 5:
                    break
                pos = end + 5
                self.hits += 1
            elif c == 69 and buf[pos:eol] == b"END":  # miss
                pos = eol + 2
                self.misses += 1
            elif c == 83 and buf[pos:eol] == b"STORED":
                pos = eol + 2
            else:  # ERROR / SERVER_ERROR / CLIENT_ERROR / NOT_STORED ...
                self.errors += 1
                pos = eol + 2
            self.pending -= 1
            if self.w.measuring:
                lat.append(time.perf_counter() - self.t0)
        if pos:
            del buf[:pos]
        if not self.pending and self.done is not None and not self.done.done():
            self.done.set_result(None)


class Worker:
    def __init__(self, a, conns, seed):
        self.a = a
        self.nconns = conns
        self.rng = random.Random(seed)
        self.lat = []
        self.measuring = False
        self.gets = 0
        self.sets = 0
        ks = a.key_size
        self.keys = [b"key:" + (b"%0*d" % (ks - 4, i)) for i in range(a.keys)]
        self.value = b"v" * a.value_size
        self.set_tail = b" 0 0 %d\r\n" % a.value_size + self.value + b"\r\n"

    def build(self, n):
        rng = self.rng
        keys = self.keys
        nk = len(keys)
        gr = self.a.get_ratio
        parts = []
        for _ in range(n):
            k = keys[int(rng.random() * nk)]
            if rng.random() < gr:
                parts.append(b"get " + k + b"\r\n")
                self.gets += 1
            else:
                parts.append(b"set " + k + self.set_tail)
                self.sets += 1
        return b"".join(parts)

    async def connect(self):
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(self.nconns):
            _, p = await loop.create_connection(lambda: Conn(self), self.a.host, self.a.port)
            out.append(p)
        return out

    async def prefill(self, conns, lo, hi):
        # sets keys[lo:hi] round-robin over connections, pipelined 64 deep
        idx = list(range(lo, hi))
        chunks = [idx[i:i + 64] for i in range(0, len(idx), 64)]

        async def run(c, my):
            for ch in my:
                payload = b"".join(b"set " + self.keys[i] + self.set_tail for i in ch)
                await c.send_batch(payload, len(ch))

        await asyncio.gather(*(run(c, chunks[j::len(conns)]) for j, c in enumerate(conns)))



def worker_main(a, wid, nconns, wfd, start_at, prefill_range):
    if uvloop is not None and not a.no_uvloop:
        uvloop.install()
    w = Worker(a, nconns, a.seed + wid)

    async def main():
        conns = await w.connect()
        if prefill_range is not None:
            await w.prefill(conns, *prefill_range)
        # wait for common start
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        t_start = time.perf_counter()
        t_meas = t_start + a.warmup
        t_end = t_meas + a.duration
        depth = a.depth

        marks = {}

        def set_measuring(v):
            w.measuring = v
            t = os.times()
            marks[v] = (time.time(), t[0] + t[1])
        loop.call_later(a.warmup, set_measuring, True)
        loop.call_later(a.warmup + a.duration, set_measuring, False)

        async def loop_one(c):
            while time.perf_counter() < t_end:
                await c.send_batch(w.build(depth), depth)
            return 0

        res = await asyncio.gather(*(loop_one(c) for c in conns), return_exceptions=True)
        errs = [r for r in res if isinstance(r, BaseException)]
        out = {
            "ops": len(w.lat), "secs": a.duration, "lat": w.lat,
            "hits": sum(c.hits for c in conns), "misses": sum(c.misses for c in conns),
            "errors": sum(c.errors for c in conns) + len(errs),
            "exc": [repr(e) for e in errs[:3]],
            "cpu": os.times()[0] + os.times()[1],
            "meas_start": marks.get(True, (0, 0))[0], "meas_end": marks.get(False, (0, 0))[0],
            "cpu_meas": marks.get(False, (0, 0))[1] - marks.get(True, (0, 0))[1],
        }
        for c in conns:
            c.transport.close()
        return out

    out = asyncio.run(main())
    # latencies as compact floats in microseconds
    out["lat"] = [int(x * 1e6) for x in out["lat"]]
    data = json.dumps(out).encode()
    os.write(wfd, len(data).to_bytes(8, "little"))
    while data:
        n = os.write(wfd, data)
        data = data[n:]
    os.close(wfd)


def read_all(fd):
    hdr = b""
    while len(hdr) < 8:
        ch = os.read(fd, 8 - len(hdr))
        if not ch:
            return None
        hdr += ch
    n = int.from_bytes(hdr, "little")
    parts = []
    while n:
        ch = os.read(fd, min(n, 1 << 20))
        if not ch:
            break
        parts.append(ch)
        n -= len(ch)
    return json.loads(b"".join(parts))


def pct(sorted_lat, p):
    if not sorted_lat:
        return 0
    i = min(len(sorted_lat) - 1, int(p / 100.0 * len(sorted_lat)))
    return sorted_lat[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11211)
    ap.add_argument("--conns", type=int, default=50, help="total connections")
    ap.add_argument("--procs", type=int, default=1, help="worker processes")
    ap.add_argument("--depth", type=int, default=1, help="pipelined requests per batch per connection")
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--key-size", type=int, default=32)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--get-ratio", type=float, default=0.9, help="0.0 = set only, 1.0 = get only")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    ap.add_argument("--prefill", action="store_true", help="set every key once before the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args()
    if a.key_size < 10:
        ap.error("--key-size must be >= 10")

    procs = max(1, a.procs)
    per = [a.conns // procs + (1 if i < a.conns % procs else 0) for i in range(procs)]
    # prefill split by worker
    ranges = []
    for i in range(procs):
        lo = a.keys * i // procs
        hi = a.keys * (i + 1) // procs
        ranges.append((lo, hi) if a.prefill else None)
    start_at = time.time() + 0.5 + (a.keys / 50000.0 if a.prefill else 0) + 0.05 * a.conns / 10
    kids = []
    for i in range(procs):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                worker_main(a, i, per[i], wfd, start_at, ranges[i])
                os._exit(0)
            except BaseException as e:  # report and exit non-zero
                sys.stderr.write("worker %d: %r\n" % (i, e))
                os._exit(1)
        os.close(wfd)
        kids.append((pid, r))
    results = []
    for pid, r in kids:
        res = read_all(r)
        os.close(r)
        os.waitpid(pid, 0)
        if res is None:
            sys.exit("worker %d failed" % pid)
        results.append(res)
    ops = sum(r["ops"] for r in results)
    secs = max(r["secs"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    out = {
        "label": a.label, "host": a.host, "port": a.port, "conns": a.conns, "procs": procs,
        "depth": a.depth, "keys": a.keys, "key_size": a.key_size, "value_size": a.value_size,
        "get_ratio": a.get_ratio, "duration": round(secs, 3),
        "ops_per_s": round(ops / secs, 1) if secs > 0 else 0,
        "p50_us": pct(lat, 50), "p90_us": pct(lat, 90), "p99_us": pct(lat, 99),
        "p999_us": pct(lat, 99.9), "max_us": lat[-1] if lat else 0,
        "hits": sum(r["hits"] for r in results), "misses": sum(r["misses"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "client_cpu_s": round(sum(r["cpu"] for r in results), 2),
        "client_cpu_meas_s": round(sum(r["cpu_meas"] for r in results), 3),
        "client_cpu_pct": round(100.0 * sum(r["cpu_meas"] for r in results) / secs, 1) if secs > 0 else 0,
        "meas_start": min(r["meas_start"] for r in results),
        "meas_end": max(r["meas_end"] for r in results),
        "uvloop": bool(uvloop) and not a.no_uvloop,
    }
    print("%s ops/s=%.0f p50=%dus p90=%dus p99=%dus p99.9=%dus max=%dus hits=%d misses=%d errors=%d client_cpu=%.0f%%" % (
        a.label or "%s:%d" % (a.host, a.port), out["ops_per_s"], out["p50_us"], out["p90_us"],
        out["p99_us"], out["p999_us"], out["max_us"], out["hits"], out["misses"], out["errors"],
        out["client_cpu_pct"]))
    if a.json:
        print(json.dumps(out))
    if out["errors"]:
        sys.exit(2)


if __name__ == "__main__":
    main()

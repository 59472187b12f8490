#!/usr/bin/python3
"""The requests of one connection take effect in the order they were sent.

A plain memcached runs beside the cluster and gets the same bytes; every
answer is compared byte for byte:
  - the two exchanges that went wrong before (a flush_all overtaking gets
    sent before it, and a set overtaking a flush_all sent before it);
  - get then write pipelines, where the get must not see the write;
  - random pipelines of mixed commands (classic and meta, noreply, flush_all,
    multi-gets) over a handful of keys, each sent in one write.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap


def exchange(port, data, timeout=10.0):
    """Send data in one write, then `mn`; the answers up to its MN."""
    with kt.Raw(port, timeout=timeout) as r:
        r.send(data + b"mn\r\n")
        deadline = time.time() + timeout
        while not (r.buf == b"MN\r\n" or r.buf.endswith(b"\r\nMN\r\n")):
            if time.time() > deadline:
                raise TimeoutError("no MN after %r" % r.buf[-200:])
            r._fill()
        return r.buf[:-4]


def compare(ports, data, name):
    got = [exchange(p, data) for p in ports]
    same = got[0] == got[1]
    diag = None
    if not same:
        diag = "sent:\n%s\nmemcached:\n%s\nkumofs:\n%s" % (
            kt.short(data, 2000), kt.short(got[0], 2000), kt.short(got[1], 2000))
    return tap.ok(same, name, diag)


def cmd(rng, keys):
    k = rng.choice(keys)
    v = str(rng.randrange(100)).encode()
    nr = b" noreply" if rng.random() < 0.15 else b""
    pick = rng.randrange(15)
    if pick == 0:
        return b"set %s 0 0 %d%s\r\n%s\r\n" % (k, len(v), nr, v)
    if pick == 1:
        return b"add %s 0 0 %d%s\r\n%s\r\n" % (k, len(v), nr, v)
    if pick == 2:
        return b"append %s 0 0 %d%s\r\n%s\r\n" % (k, len(v), nr, v)
    if pick == 3:
        return b"delete %s%s\r\n" % (k, nr)
    if pick == 4:
        return b"incr %s %d%s\r\n" % (k, rng.randrange(5), nr)
    if pick == 5:
        return b"flush_all%s\r\n" % (b" noreply" if nr else b"")
    if pick == 6:
        return b"get %s\r\n" % b" ".join(rng.sample(keys, rng.randrange(1, len(keys) + 1)))
    if pick == 7:
        return b"mg %s v k f\r\n" % k
    if pick == 8:
        return b"ms %s %d T0 F%d\r\n%s\r\n" % (k, len(v), rng.randrange(3), v)
    if pick == 9:
        return b"md %s q\r\n" % k
    if pick == 10:
        return b"ma %s N0 J7 v\r\n" % k
    if pick == 11:
        return b"replace %s 0 0 %d\r\n%s\r\n" % (k, len(v), v)
    if pick == 12:
        return b"prepend %s 0 0 %d\r\n%s\r\n" % (k, len(v), v)
    if pick == 13:
        return b"touch %s 0\r\n" % k
    return b"get %s\r\n" % k


def body():
    rng = kt.make_rng("order")
    with kt.PlainMemcached() as mc, kt.Cluster(nservers=3) as c:
        ports = (mc.gateway_port, c.gateway_port)

        tap.note("a flush_all does not overtake the gets sent before it")
        for p in ports:
            exchange(p, b"set o1 0 0 2\r\nv1\r\n")
        compare(ports, b"get o1\r\nget o1\r\nflush_all\r\n", "get, get, flush_all: VALUE, VALUE, OK")

        tap.note("a set does not overtake the flush_all sent before it")
        compare(ports, b"flush_all\r\nset o8 0 0 2\r\nv8\r\nget o8\r\n", "flush_all, set, get: OK, STORED, VALUE")
        compare(ports, b"set o9 0 0 1\r\na\r\nflush_all\r\nget o9\r\nset o9 0 0 1\r\nb\r\nget o9\r\n",
                "set, flush_all, get (miss), set, get (hit)")

        tap.note("a write does not overtake the gets sent before it")
        for i in range(5):
            keys = b" ".join(b"w%d:%d" % (i, j) for j in range(20))
            data = b"".join(b"set w%d:%d 0 0 3\r\nold\r\n" % (i, j) for j in range(20))
            data += b"get %s\r\n" % keys
            data += b"".join(b"set w%d:%d 0 0 3\r\nnew\r\n" % (i, j) for j in range(20))
            data += b"delete w%d:3\r\nget %s\r\n" % (i, keys)
            compare(ports, data, "20 sets, a multi-get, 20 overwrites, a delete, a multi-get (round %d)" % i)

        tap.note("random pipelines of mixed commands, each sent in one write")
        bad = 0
        for rnd in range(60):
            keys = [b"r%d:%d" % (rnd, j) for j in range(4)]
            data = b"".join(cmd(rng, keys) for _ in range(rng.randrange(5, 40)))
            got = [exchange(p, data) for p in ports]
            if got[0] != got[1]:
                bad += 1
                if bad <= 3:
                    tap.diag("sent:\n%s\nmemcached:\n%s\nkumofs:\n%s" % (
                        kt.short(data, 3000), kt.short(got[0], 3000), kt.short(got[1], 3000)))
        tap.ok(bad == 0, "60 random pipelines answered exactly as memcached does", "%d differ" % bad)
        c.check_running()


kt.main(body)

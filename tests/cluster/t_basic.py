#!/usr/bin/python3
"""t_basic — kumofs 0.4's localhost cluster (a manager, three servers, a
gateway), driven with real memcached clients (pymemcache, pylibmc) and raw
sockets: storage commands, cas, delete, multi-get, value sizes, binary
safety, flags, pipelining order, error replies, noreply.

KUMO_TEST_AGAINST=memcached runs the same client checks against a plain
memcached, to check the expectations themselves.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap


def client_checks(port, rng):
    c = kt.mc_client(port)

    tap.note("version")
    v = c.version()
    tap.ok(isinstance(v, bytes) and len(v) > 0, "version answers (%s)" % v.decode("ascii", "replace"))

    tap.note("set / get")
    tap.ok(c.set("k1", b"hello") is True, "set k1 -> STORED")
    tap.eq(c.get("k1"), b"hello", "get k1 returns the value")
    tap.ok(c.set("k1", b"hello again") is True, "set k1 again -> STORED")
    tap.eq(c.get("k1"), b"hello again", "get k1 returns the new value")
    tap.eq(c.get("no-such-key"), None, "get of a missing key -> miss")

    tap.note("gets / cas")
    val, token = c.gets("k1")
    tap.ok(val == b"hello again" and token is not None and token.isdigit(),
           "gets returns the value and a cas unique (%r)" % token)
    tap.ok(c.cas("k1", b"swapped", token) is True, "cas with the current unique -> STORED")
    tap.eq(c.get("k1"), b"swapped", "get after cas sees the swapped value")
    tap.ok(c.cas("k1", b"stale", token) is False, "cas with a stale unique -> EXISTS")
    tap.eq(c.get("k1"), b"swapped", "value unchanged after the failed cas")
    val2, token2 = c.gets("k1")
    tap.ok(token2 is not None and token2 != token, "the cas unique changed with the write")
    tap.ok(c.cas("cas-missing", b"x", b"12345") is None, "cas of a missing key -> NOT_FOUND")
    tap.eq(c.get("cas-missing"), None, "cas of a missing key stored nothing")

    tap.note("delete")
    tap.ok(c.delete("k1") is True, "delete k1 -> DELETED")
    tap.eq(c.get("k1"), None, "get after delete -> miss")
    tap.ok(c.delete("k1") is False, "second delete -> NOT_FOUND")
    tap.ok(c.delete("never-set") is False, "delete of a never-set key -> NOT_FOUND")

    tap.note("multi-get of 100 keys (+5 missing)")
    want = {}
    for i in range(100):
        k = "multi:%03d" % i
        want[k] = ("value-%d-" % i).encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        c.set(k, want[k])
    got = c.get_many(list(want) + ["multi:missing:%d" % i for i in range(5)])
    bad = [k for k in want if got.get(k) != want[k]]
    tap.ok(not bad and len(got) == 100, "get of 100 keys in one request returns all 100 values",
           "wrong or missing: %s; extra: %s" % (bad[:10], sorted(set(got) - set(want))[:10]))

    tap.note("value sizes and binary safety")
    tap.ok(c.set("empty", b"") is True, "set a zero-length value -> STORED")
    tap.eq(c.get("empty"), b"", "get returns the zero-length value (not a miss)")
    big = rng.randbytes(1024 * 1024 - 1024)
    tap.ok(c.set("big", big) is True, "set a 1 MiB - 1 KiB value -> STORED")
    g = c.get("big")
    tap.ok(g == big, "get returns the 1 MiB - 1 KiB value intact",
           None if g == big else "got %s bytes" % (None if g is None else len(g)))
    evil = bytes(range(256)) + b"\r\nEND\r\nVALUE x 0 1\r\n\r\n\x00"
    tap.ok(c.set("binary", evil) is True, "set a value with every byte, CRLF and END inside")
    tap.eq(c.get("binary"), evil, "the binary value comes back byte for byte")
    k250 = "k" * 250
    tap.ok(c.set(k250, b"long key") is True, "set with a 250-byte key -> STORED")
    tap.eq(c.get(k250), b"long key", "get with a 250-byte key")

    tap.note("flags (32 bits) through a raw socket")
    with kt.Raw(port) as r:
        for fl in (0, 1, 65535, 65536, 4294967295):
            r.send(b"set flags:%d %d 0 3\r\nabc\r\n" % (fl, fl))
            line = r.readline()
            r.send(b"get flags:%d\r\n" % fl)
            got, _ = r.read_get_reply()
            tap.ok(line == b"STORED\r\n" and got.get(b"flags:%d" % fl, (None,))[0] == fl,
                   "flags %d kept" % fl, "set -> %r, get -> %r" % (line, got))
    c.close()


def raw_checks(port):
    tap.note("pipelined requests on one connection (keys spread over the servers)")
    req = b""
    want = b""
    vals = {}
    for i in range(20):
        k = b"pipe:%d" % i
        d = vals[k] = b"v%d" % (i * 7919)
        req += b"set %s 0 0 %d\r\n%s\r\n" % (k, len(d), d)
        want += b"STORED\r\n"
        req += b"get %s\r\n" % k
        want += b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(d), d)
    req += b"delete pipe:3\r\nget pipe:3\r\nget pipe:4 pipe:missing pipe:5\r\n"
    want += b"DELETED\r\nEND\r\n"
    for k in (b"pipe:4", b"pipe:5"):
        want += b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(vals[k]), vals[k])
    want += b"END\r\n"
    req += b"bogus_command_x\r\ndelete pipe:3\r\n"
    want += b"ERROR\r\nNOT_FOUND\r\n"
    with kt.Raw(port) as r:
        r.send(req)
        got = r.read_exact(len(want))
        tap.ok(got == want, "pipelined replies come back complete and in request order",
                    None if got == want else "first difference at byte %d:\n got  %r\n want %r" % (
                        next(i for i in range(len(want)) if got[i] != want[i]),
                        got[:400], want[:400]))
        r.send(b"version\r\n")
        tap.ok(r.readline().startswith(b"VERSION "), "connection still in step after the pipeline")

    tap.note("unknown command")
    with kt.Raw(port) as r:
        r.send(b"frobnicate the key\r\n")
        tap.eq(r.readline(), b"ERROR\r\n", "unknown command -> ERROR")
        r.send(b"set after-error 0 0 2\r\nok\r\nget after-error\r\n")
        tap.eq(r.readline(), b"STORED\r\n", "connection usable after ERROR (set)")
        got, _ = r.read_get_reply()
        tap.eq(got.get(b"after-error", (0, None))[1], b"ok", "connection usable after ERROR (get)")

    tap.note("251-byte key")
    with kt.Raw(port) as r:
        r.send(b"get " + b"x" * 251 + b"\r\n")
        line = r.readline()
        tap.ok(line.startswith(b"CLIENT_ERROR"), "get with a 251-byte key -> CLIENT_ERROR", "got %r" % line)
        r.send(b"version\r\n")
        lines = r.read_until_version()
        tap.ok(lines[-1].startswith(b"VERSION "), "connection usable after the long key", "got %r" % lines)
        r.send(b"set " + b"y" * 251 + b" 0 0 3\r\nabc\r\n")
        line = r.readline()
        tap.ok(line.startswith(b"CLIENT_ERROR"), "set with a 251-byte key -> CLIENT_ERROR", "got %r" % line)
        r.send(b"version\r\n")
        lines = r.read_until_version()
        tap.ok(lines[-1].startswith(b"VERSION ") and all(x == b"ERROR\r\n" for x in lines[:-1]),
               "connection usable after the long-key set", "got %r" % lines)

    tap.note("bad data chunk")
    with kt.Raw(port) as r:
        r.send(b"set badchunk 0 0 3\r\nabcde\r\n")
        tap.eq(r.readline(), b"CLIENT_ERROR bad data chunk\r\n", "data longer than announced -> CLIENT_ERROR bad data chunk")
        r.send(b"version\r\n")
        lines = r.read_until_version()
        tap.ok(lines[-1].startswith(b"VERSION ") and all(x == b"ERROR\r\n" for x in lines[:-1]),
               "connection usable after the bad chunk", "got %r" % lines)
        r.send(b"get badchunk\r\n")
        got, _ = r.read_get_reply()
        tap.eq(got, {}, "the bad chunk was not stored")



def noreply_checks(port):
    tap.note("noreply")
    with kt.Raw(port) as r:
        r.send(b"set quiet 5 0 5 noreply\r\nhello\r\nget quiet\r\n")
        want = b"VALUE quiet 5 5\r\nhello\r\nEND\r\n"
        got = r.read_exact(len(want))
        tap.eq(got, want, "set noreply sends nothing; the following get sees the value")
        r.send(b"delete quiet noreply\r\nget quiet\r\n")
        tap.eq(r.readline(), b"END\r\n", "delete noreply sends nothing; the following get misses")

    # A get may be served by any live owner once its connection has nothing
    # unanswered (a get joins a batch that another connection's get opened
    # in the same loop turn), so a noreply write must count as unanswered
    # until every copy has it. Other connections keep batches open meanwhile.
    tap.note("noreply overwrites read back at once while other connections read")
    stop = threading.Event()

    def reader():
        from pymemcache.client.base import Client
        m = Client(("127.0.0.1", port), connect_timeout=5, timeout=5)
        keys = ["nr:%d" % i for i in range(30)] + ["other:%d" % i for i in range(30)]
        while not stop.is_set():
            m.get_many(keys)
        m.close()

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
    for t in readers:
        t.start()
    stale = []
    try:
        with kt.Raw(port) as r:
            for i in range(1500):
                k = b"nr:%d" % (i % 30)
                d = b"v%d" % i
                r.send(b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, len(d), d))
                if i % 2:
                    time.sleep(0.0001 * (i % 7))    # a jitter, not a wait: varied gaps between set and get
                r.send(b"get %s\r\n" % k)
                got, _ = r.read_get_reply()
                if got.get(k, (0, None))[1] != d:
                    stale.append((k, d, got))
    finally:
        stop.set()
        for t in readers:
            t.join()
    tap.ok(not stale, "every get after a set noreply returns that set's value",
           "%d stale, first %r" % (len(stale), stale[:1]))


def pylibmc_checks(port):
    try:
        import pylibmc
    except ImportError:
        tap.skip("pylibmc text client", "python3-pylibmc not installed")
        return
    tap.note("pylibmc (libmemcached) text client")
    m = pylibmc.Client(["127.0.0.1:%d" % port], binary=False)
    m.behaviors["tcp_nodelay"] = True
    data = {"lmc:%d" % i: ("libmemcached %d" % i).encode() for i in range(20)}
    tap.ok(all(m.set(k, v) for k, v in data.items()), "pylibmc set of 20 keys")
    tap.eq(m.get_multi(list(data)), data, "pylibmc get_multi returns them")
    tap.ok(m.delete("lmc:0") and m.get("lmc:0") is None, "pylibmc delete")
    m.disconnect_all()


def body():
    kt.require_module("pymemcache")
    rng = kt.make_rng()
    if os.environ.get("KUMO_TEST_AGAINST") == "memcached":
        target = kt.PlainMemcached()
    else:
        kt.require_binaries()
        target = kt.Cluster(nservers=3, gateway=True)
    with target as c:
        port = c.gateway_port
        tap.ok(True, "%s up on port %d" % (
            "memcached" if isinstance(c, kt.PlainMemcached) else
            "cluster (manager, 3 servers attached, gateway)", port))
        client_checks(port, rng)
        raw_checks(port)
        noreply_checks(port)
        pylibmc_checks(port)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

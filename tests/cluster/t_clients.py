#!/usr/bin/python3
"""t_clients — real memcached clients against kumo-gateway: the text port (-t)
and the binary-protocol port (-b).

What it checks:
  * pymemcache (text protocol): version, set/get, set_many/get_many, add,
    replace, append, prepend, incr/decr (64-bit wrap, floor at 0), touch,
    gets/cas, delete/delete_many, flush_all, stats, stats settings, a
    default_noreply client;
  * pylibmc (libmemcached) with binary=False on the text port and binary=True on
    the binary port: set/get, set_multi/get_multi, add, replace, append,
    prepend, incr/decr, delete, delete_multi, gets/cas, touch, flush_all,
    get_stats;
  * libmemcached-tools (Debian names): memccp, memccat, memcexist, memctouch,
    memcrm, memcflush, memcstat, each in text mode and with --binary;
  * raw binary-protocol packets for what memccapable does not cover: touch,
    gat, gatq, gatk, gatkq, the error statuses (not found, exists, too large,
    not stored, non-numeric, unknown command), incr with an initial value and
    its wrap, stat groups, version, flush (status codes and payloads; the
    human-readable error texts are not compared);
  * memccapable (libmemcached's conformance suite; it FLUSHES the server):
    `memccapable -a` (27 ascii tests) on the text port and `memccapable -b`
    (27 binary tests) on the binary port and again on the text port: all 81
    must pass, as they do on memcached 1.6;
  * the text port speaks binary to a connection whose first byte is 0x80, as
    memcached does: pylibmc with binary=True, the raw binary checks and
    memccapable -b run there too.

The cluster's gateway is started with `-t PORT -b PORT2`. If kumo-gateway
refuses -b, that is a failure (not a skip): the gateway is restarted without
it and every binary-protocol check fails against the port that is not there.

Run against the cluster:        /usr/bin/python3 tests/cluster/t_clients.py
Prove the expectations against a real memcached 1.6 (started by the harness on
a free port; its one port serves text and binary):
    KUMO_TEST_AGAINST=memcached /usr/bin/python3 tests/cluster/t_clients.py
"""
import importlib.util
import os
import re
import shutil
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
MAX64 = (1 << 64) - 1


def guarded(name, fn, *a):
    """Run a group of checks; an exception fails the group instead of the file."""
    try:
        fn(*a)
    except Exception as e:
        tap.ok(False, "%s: ran without an exception (%s: %s)" % (name, type(e).__name__, e),
               traceback.format_exc())


# --------------------------------------------------------------------------
# pymemcache (text)
# --------------------------------------------------------------------------

def pymemcache_checks(port):
    from pymemcache.client.base import Client
    tap.note("pymemcache %s on the text port %d" % (__import__("pymemcache").__version__, port))
    c = kt.mc_client(port)
    p = "pym:"
    v = c.version()
    tap.ok(isinstance(v, bytes) and v, "pymemcache version (%r)" % v)
    tap.ok(c.set(p + "a", b"alpha", expire=0, noreply=False) is True, "pymemcache set")
    tap.eq(c.get(p + "a"), b"alpha", "pymemcache get")
    tap.eq(c.get(p + "missing"), None, "pymemcache get of a missing key -> None")
    data = {p + "m%d" % i: b"value %d" % i for i in range(50)}
    failed = c.set_many(data, noreply=False)
    tap.eq(failed, [], "pymemcache set_many of 50 keys (no failures)")
    got = c.get_many(list(data) + [p + "nope1", p + "nope2"])
    tap.eq({k: got.get(k) for k in data}, data, "pymemcache get_many returns the 50 values")
    tap.ok(p + "nope1" not in got, "pymemcache get_many leaves misses out")
    tap.ok(c.add(p + "a", b"x", noreply=False) is False, "pymemcache add of an existing key -> False")
    tap.ok(c.add(p + "b", b"beta", noreply=False) is True, "pymemcache add of a new key -> True")
    tap.ok(c.replace(p + "nope", b"x", noreply=False) is False, "pymemcache replace of a missing key -> False")
    tap.ok(c.replace(p + "b", b"BETA", noreply=False) is True, "pymemcache replace -> True")
    tap.ok(c.append(p + "b", b"+", noreply=False) is True and c.prepend(p + "b", b"-", noreply=False) is True,
           "pymemcache append / prepend -> True")
    tap.eq(c.get(p + "b"), b"-BETA+", "pymemcache sees the appended and prepended data")
    tap.ok(c.append(p + "nope", b"+", noreply=False) is False, "pymemcache append of a missing key -> False")

    c.set(p + "n", b"10", noreply=False)
    tap.eq(c.incr(p + "n", 5, noreply=False), 15, "pymemcache incr -> 15")
    tap.eq(c.decr(p + "n", 20, noreply=False), 0, "pymemcache decr below 0 -> 0")
    tap.eq(c.incr(p + "n", MAX64, noreply=False), MAX64, "pymemcache incr to 2^64-1")
    tap.eq(c.incr(p + "n", 1, noreply=False), 0, "pymemcache incr wraps at 2^64")
    tap.eq(c.incr(p + "nope", 1, noreply=False), None, "pymemcache incr of a missing key -> None")

    tap.ok(c.touch(p + "a", 100, noreply=False) is True, "pymemcache touch -> True")
    tap.ok(c.touch(p + "nope", 100, noreply=False) is False, "pymemcache touch of a missing key -> False")

    val, cas = c.gets(p + "a")
    tap.ok(val == b"alpha" and cas is not None, "pymemcache gets -> value and cas (%r)" % cas)
    tap.ok(c.cas(p + "a", b"swapped", cas, noreply=False) is True, "pymemcache cas with the current unique -> True")
    tap.ok(c.cas(p + "a", b"stale", cas, noreply=False) is False, "pymemcache cas with a stale unique -> False")
    tap.ok(c.cas(p + "nope", b"x", cas, noreply=False) is None, "pymemcache cas of a missing key -> None")
    tap.eq(c.get(p + "a"), b"swapped", "pymemcache value after cas")
    gm = c.gets_many([p + "a", p + "b"])
    tap.ok(set(gm) == {p + "a", p + "b"} and all(t[1] for t in gm.values()), "pymemcache gets_many")

    tap.ok(c.delete(p + "a", noreply=False) is True, "pymemcache delete -> True")
    tap.ok(c.delete(p + "a", noreply=False) is False, "pymemcache delete of a missing key -> False")
    tap.ok(c.delete_many([p + "m0", p + "m1"], noreply=False) is True, "pymemcache delete_many")
    tap.eq(c.get_many([p + "m0", p + "m1"]), {}, "pymemcache: deleted keys are gone")

    st = c.stats()
    tap.ok(isinstance(st, dict) and b"pid" in st and b"cmd_get" in st and b"curr_connections" in st,
           "pymemcache stats has pid, cmd_get, curr_connections", "got keys %s" % sorted(st)[:40])
    ss = c.stats("settings")
    tap.ok(isinstance(ss, dict) and b"item_size_max" in ss, "pymemcache stats('settings') has item_size_max",
           "got keys %s" % sorted(ss)[:40])

    q = Client(("127.0.0.1", port), default_noreply=True, connect_timeout=10, timeout=10)
    q.set(p + "quiet", b"shh")
    q.incr(p + "n", 7)
    tap.eq(c.get(p + "quiet"), b"shh", "pymemcache noreply client: set took effect")
    got = c.get(p + "n")
    tap.eq(got.rstrip(b" ") if got else got, b"7", "pymemcache noreply client: incr took effect")
    q.close()

    tap.ok(c.flush_all(noreply=False) is True, "pymemcache flush_all -> True")
    tap.eq(c.get_many([p + "b", p + "quiet", p + "m5"]), {}, "pymemcache: everything gone after flush_all")
    c.set(p + "after", b"1", noreply=False)
    tap.eq(c.get(p + "after"), b"1", "pymemcache: sets after flush_all are kept")
    c.close()


# --------------------------------------------------------------------------
# pylibmc (libmemcached), text and binary
# --------------------------------------------------------------------------

def outcome(fn, *a):
    """fn(*a), or the name of the exception class it raised."""
    try:
        return fn(*a)
    except Exception as e:
        return type(e).__name__


def pylibmc_checks(port, binary, where=""):
    import pylibmc
    mode = "binary" if binary else "text"
    tag = "pylibmc %s%s" % (mode, where)
    tap.note("pylibmc %s (libmemcached) with binary=%s on port %d" % (pylibmc.__version__, binary, port))
    m = pylibmc.Client(["127.0.0.1:%d" % port], binary=binary,
                       behaviors={"tcp_nodelay": True, "cas": True, "connect_timeout": 5000,
                                  "receive_timeout": 5000000, "send_timeout": 5000000})
    p = "lmc%s%s:" % (mode[0], "t" if where else "")
    tap.ok(m.set(p + "a", b"alpha") is True, "%s set" % tag)
    tap.eq(m.get(p + "a"), b"alpha", "%s get" % tag)
    tap.eq(m.get(p + "missing"), None, "%s get of a missing key -> None" % tag)
    data = {p + "m%d" % i: b"multi %d" % i for i in range(40)}
    tap.eq(m.set_multi(data), [], "%s set_multi of 40 keys (no failures)" % tag)
    tap.eq(m.get_multi(list(data) + [p + "nope"]), data, "%s get_multi returns the 40 values, no misses" % tag)
    # what libmemcached reports for a failure differs by protocol (memcached 1.6 + pylibmc 1.6.3):
    # text NOT_STORED -> False; binary "not found" on replace/cas -> pylibmc.NotFound
    nf = "NotFound"
    tap.eq(outcome(m.add, p + "a", b"x"), False, "%s add of an existing key -> False" % tag)
    tap.eq(outcome(m.add, p + "b", b"beta"), True, "%s add of a new key -> True" % tag)
    tap.eq(outcome(m.replace, p + "nope", b"x"), nf if binary else False,
           "%s replace of a missing key -> %s" % (tag, nf if binary else False))
    tap.eq(outcome(m.replace, p + "b", b"BETA"), True, "%s replace -> True" % tag)
    tap.ok(m.append(p + "b", b"+") is True and m.prepend(p + "b", b"-") is True, "%s append / prepend -> True" % tag)
    tap.eq(m.get(p + "b"), b"-BETA+", "%s sees the appended and prepended data" % tag)
    tap.eq(outcome(m.append, p + "nope", b"+"), False, "%s append of a missing key -> False" % tag)
    tap.eq(outcome(m.prepend, p + "nope", b"+"), False, "%s prepend of a missing key -> False" % tag)

    m.set(p + "n", b"10")
    tap.eq(outcome(m.incr, p + "n", 5), 15, "%s incr -> 15" % tag)
    tap.eq(outcome(m.decr, p + "n", 20), 0, "%s decr below 0 -> 0" % tag)
    tap.eq(outcome(m.incr, p + "n", 1000), 1000, "%s incr from 0" % tag)
    m.set(p + "w", b"%d" % MAX64)
    tap.eq(outcome(m.incr, p + "w", 2), 1, "%s incr of 2^64-1 by 2 wraps to 1" % tag)
    tap.eq(outcome(m.incr, p + "nope", 1), nf, "%s incr of a missing key -> NotFound" % tag)
    tap.eq(outcome(m.decr, p + "nope", 1), nf, "%s decr of a missing key -> NotFound" % tag)

    val, cas = m.gets(p + "a")
    tap.ok(val == b"alpha" and cas, "%s gets -> value and cas (%r)" % (tag, cas))
    tap.eq(outcome(m.cas, p + "a", b"swapped", cas), True, "%s cas with the current unique -> True" % tag)
    tap.eq(outcome(m.cas, p + "a", b"stale", cas), False, "%s cas with a stale unique -> False" % tag)
    tap.eq(outcome(m.cas, p + "nope", b"x", cas), nf, "%s cas of a missing key -> NotFound" % tag)
    tap.eq(m.get(p + "a"), b"swapped", "%s value after cas" % tag)

    tap.eq(outcome(m.touch, p + "a", 100), True, "%s touch -> True" % tag)
    tap.eq(outcome(m.touch, p + "nope", 100), False, "%s touch of a missing key -> False" % tag)
    m.set(p + "exp", b"x", time=100)
    # On the debug clock (--debug-time) the TTL is long enough that no load
    # makes it pass by itself; without one (a plain memcached) it is short
    # and waited out for real.
    debug = kt.debugtime(port, 0) == b"OK\r\n"
    ttl = 50 if debug else 1
    tap.eq(outcome(m.touch, p + "exp", ttl), True, "%s touch to %d s" % (tag, ttl))
    if debug:
        tap.eq(m.get(p + "exp"), b"x", "%s the item touched to %d s is there before they pass" % (tag, ttl))
        kt.advance(port, ttl + 1)
    try:
        kt.wait_until(lambda: m.get(p + "exp") is None, 15, "%s: the item touched to %d s to expire" % (tag, ttl),
                      interval=0.2)
    except TimeoutError as e:
        tap.note(str(e))
    tap.eq(m.get(p + "exp"), None, "%s the item touched to %d s expires" % (tag, ttl))

    tap.eq(outcome(m.delete, p + "a"), True, "%s delete -> True" % tag)
    tap.eq(outcome(m.delete, p + "a"), False, "%s delete of a missing key -> False" % tag)
    tap.ok(m.delete_multi([p + "m0", p + "m1"]) is True, "%s delete_multi" % tag)
    tap.eq(m.get_multi([p + "m0", p + "m1"]), {}, "%s deleted keys are gone" % tag)

    big = os.urandom(512 * 1024)
    tap.ok(m.set(p + "big", big) is True and m.get(p + "big") == big, "%s 512 KiB binary value round trip" % tag)
    tap.ok(m.set(p + "empty", b"") is True and m.get(p + "empty") == b"", "%s zero-length value" % tag)

    st = m.get_stats()
    ok = bool(st) and isinstance(st[0][1], dict) and "pid" in st[0][1] and "version" in st[0][1]
    tap.ok(ok, "%s get_stats has pid and version" % tag, "got %r" % (st,) if not ok else None)

    tap.ok(m.flush_all() is True, "%s flush_all" % tag)
    tap.eq(m.get_multi([p + "b", p + "m5", p + "n"]), {}, "%s everything gone after flush_all" % tag)
    tap.ok(m.set(p + "after", b"1") is True and m.get(p + "after") == b"1", "%s sets after flush_all are kept" % tag)
    m.disconnect_all()


# --------------------------------------------------------------------------
# raw binary protocol: what memccapable -b does not cover
# --------------------------------------------------------------------------

def binary_raw_checks(port):
    """touch, gat, gatq, gatk, gatkq, error statuses, incr with an initial value, flush,
    stat groups, version; status codes and payloads as memcached 1.6 answers (the
    human-readable error texts in the body are not compared)."""
    import struct
    tap.note("raw binary protocol on port %d: touch gat gatq gatk gatkq, statuses, stat, version" % port)
    OK, NOT_FOUND, EXISTS, E2BIG, NOT_STORED, NON_NUMERIC, UNKNOWN = 0, 1, 2, 3, 5, 6, 0x81
    r = kt.Raw(port, timeout=10)

    def send(op, key=b"", value=b"", extras=b"", opaque=0, cas=0):
        r.send(kt.bin_packet(op, key, value, extras, opaque, cas))

    def call(*a, **k):
        send(*a, **k)
        return kt.bin_read(r)

    def ex_set(flags=0, exp=0):
        return struct.pack(">II", flags, exp)

    def ex_exp(exp):
        return struct.pack(">I", exp)

    p = call(0x01, b"bk", b"val", ex_set(5), opaque=0x1234)
    tap.ok(p["magic"] == 0x81 and p["opcode"] == 0x01 and p["status"] == OK and p["opaque"] == 0x1234 and p["cas"],
           "binary set: magic 0x81, status 0, opaque echoed, a CAS", repr(p))
    p = call(0x1c, b"bk", extras=ex_exp(100))
    tap.ok(p["opcode"] == 0x1c and p["status"] == OK, "binary touch of an existing key -> status 0", repr(p))
    p = call(0x1c, b"nope", extras=ex_exp(100))
    tap.eq(p["status"], NOT_FOUND, "binary touch of a missing key -> status 1 (not found)")
    p = call(0x1d, b"bk", extras=ex_exp(100))
    tap.ok(p["opcode"] == 0x1d and p["status"] == OK and p["extras"] == struct.pack(">I", 5) and p["value"] == b"val"
           and p["key"] == b"" and p["cas"], "binary gat -> flags, value, CAS, no key", repr(p))
    p = call(0x23, b"bk", extras=ex_exp(100))
    tap.ok(p["opcode"] == 0x23 and p["status"] == OK and p["key"] == b"bk" and p["value"] == b"val",
           "binary gatk -> the key too", repr(p))
    p = call(0x1d, b"nope", extras=ex_exp(100))
    tap.eq(p["status"], NOT_FOUND, "binary gat of a missing key -> status 1")
    send(0x1e, b"nope", extras=ex_exp(100), opaque=1)
    send(0x24, b"bk", extras=ex_exp(100), opaque=2)
    send(0x1e, b"bk", extras=ex_exp(0), opaque=3)
    send(0x0a, opaque=4)
    got = [kt.bin_read(r) for _ in range(3)]
    tap.eq([(x["opcode"], x["status"], x["opaque"], x["key"], x["value"]) for x in got],
           [(0x24, OK, 2, b"bk", b"val"), (0x1e, OK, 3, b"", b"val"), (0x0a, OK, 4, b"", b"")],
           "binary gatq miss is silent; gatkq/gatq hits answer; then noop")

    p = call(0x50, opaque=9)
    tap.ok(p["status"] == UNKNOWN and p["opaque"] == 9, "binary unknown opcode 0x50 -> status 0x81", repr(p))
    p = call(0x01, b"big", b"x" * (2 * 1024 * 1024), ex_set())
    tap.eq(p["status"], E2BIG, "binary set of 2 MiB -> status 3 (too large)")
    p = call(0x0a)
    tap.ok(p["opcode"] == 0x0a and p["status"] == OK, "connection usable after those errors (noop)", repr(p))
    p = call(0x05, b"bk", extras=struct.pack(">QQI", 1, 0, 0))
    tap.eq(p["status"], NON_NUMERIC, "binary incr of a text value -> status 6 (non-numeric)")
    p = call(0x01, b"bk", b"v2", ex_set(), cas=12345)
    tap.eq(p["status"], EXISTS, "binary set with a wrong CAS -> status 2 (exists)")
    p = call(0x01, b"nope", b"v2", ex_set(), cas=12345)
    tap.eq(p["status"], NOT_FOUND, "binary set with a CAS on a missing key -> status 1")
    p = call(0x02, b"bk", b"v2", ex_set())
    tap.eq(p["status"], EXISTS, "binary add of an existing key -> status 2")
    p = call(0x03, b"nope", b"v2", ex_set())
    tap.eq(p["status"], NOT_FOUND, "binary replace of a missing key -> status 1")
    p = call(0x0e, b"nope", b"v2")
    tap.eq(p["status"], NOT_STORED, "binary append to a missing key -> status 5 (not stored)")
    p = call(0x05, b"ctr", extras=struct.pack(">QQI", 1, 42, 0))
    tap.ok(p["status"] == OK and p["value"] == struct.pack(">Q", 42), "binary incr of a missing key with initial 42 creates 42", repr(p))
    p = call(0x05, b"ctr2", extras=struct.pack(">QQI", 1, 42, 0xffffffff))
    tap.eq(p["status"], NOT_FOUND, "binary incr of a missing key with exptime 0xffffffff -> status 1")
    call(0x01, b"wrap", b"%d" % MAX64, ex_set())
    p = call(0x05, b"wrap", extras=struct.pack(">QQI", 2, 0, 0))
    tap.ok(p["status"] == OK and p["value"] == struct.pack(">Q", 1), "binary incr wraps at 2^64", repr(p))
    p = call(0x06, b"wrap", extras=struct.pack(">QQI", 100, 0, 0))
    tap.ok(p["status"] == OK and p["value"] == struct.pack(">Q", 0), "binary decr floors at 0", repr(p))

    send(0x10, b"settings")
    n, bad = 0, []
    while True:
        x = kt.bin_read(r)
        n += 1
        if x["status"] != OK or x["opcode"] != 0x10:
            bad.append(x)
        if not x["key"] or n > 1000:
            break
    tap.ok(n > 1 and not bad, "binary stat 'settings' -> STAT packets, then an empty one (%d)" % n, repr(bad[:2]))
    p = call(0x0b)
    v = p["value"].decode("ascii", "replace")
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", v)
    tap.ok(p["status"] == OK and m and int(m.group(1)) >= 1 and len(v) < 32,
           "binary version -> <major>.<minor>.<micro>, major >= 1, < 32 bytes (%r)" % v)
    p = call(0x08, extras=struct.pack(">I", 0))
    tap.eq(p["status"], OK, "binary flush with a delay of 0 -> status 0")
    p = call(0x00, b"bk")
    tap.eq(p["status"], NOT_FOUND, "binary get after flush -> status 1")
    r.close()


# --------------------------------------------------------------------------
# libmemcached-tools
# --------------------------------------------------------------------------

def tool_checks(port, binary, workdir):
    mode = "--binary" if binary else "text"
    servers = "--servers=127.0.0.1:%d" % port
    flags = [servers] + (["--binary"] if binary else [])
    tap.note("libmemcached-tools (%s) on port %d" % (mode, port))
    key = "toolkey%s" % ("b" if binary else "t")
    path = os.path.join(workdir, key)
    body = ("file body for %s\n" % mode).encode()
    with open(path, "wb") as f:
        f.write(body)

    def run(*args, timeout=20):
        return kt.run_tool(list(args), timeout=timeout)

    def desc(r):
        return "rc %s, stdout %r, stderr %r" % (r.returncode, r.stdout[-300:], r.stderr[-300:])

    r = run("memccp", *flags, "--flags=77", "--expire=1000", path)
    tap.ok(r.returncode == 0, "memccp %s copies a file to key %s" % (mode, key), desc(r))
    r = run("memccat", *flags, key)
    tap.ok(r.returncode == 0 and r.stdout.encode() == body + b"\n", "memccat %s prints the value" % mode, desc(r))
    r = run("memccat", *flags, "--flags", key)
    tap.ok(r.returncode == 0 and r.stdout.startswith("77\n"), "memccat %s --flags shows flags 77" % mode, desc(r))
    r = run("memcexist", *flags, key)
    tap.ok(r.returncode == 0, "memcexist %s: key exists -> rc 0" % mode, desc(r))
    r = run("memctouch", *flags, "--expire=100", key)
    tap.ok(r.returncode == 0, "memctouch %s on an existing key -> rc 0" % mode, desc(r))
    r = run("memctouch", *flags, "--expire=100", key + "-missing")
    tap.ok(r.returncode != 0, "memctouch %s on a missing key -> rc != 0" % mode, desc(r))
    r = run("memcrm", *flags, key)
    tap.ok(r.returncode == 0, "memcrm %s removes the key" % mode, desc(r))
    r = run("memcrm", *flags, key)
    tap.ok(r.returncode != 0, "memcrm %s of a missing key -> rc != 0" % mode, desc(r))
    r = run("memccat", *flags, key)
    tap.ok(r.returncode != 0 and r.stdout == "", "memccat %s of the removed key -> rc != 0, no output" % mode, desc(r))
    r = run("memcexist", *flags, key)
    tap.ok(r.returncode != 0, "memcexist %s: removed key -> rc != 0" % mode, desc(r))
    run("memccp", *flags, path)
    r = run("memcflush", *flags)
    tap.ok(r.returncode == 0, "memcflush %s -> rc 0" % mode, desc(r))
    r = run("memccat", *flags, key)
    tap.ok(r.returncode != 0, "memccat %s after memcflush -> miss" % mode, desc(r))
    r = run("memcstat", *flags)
    tap.ok(r.returncode == 0 and re.search(r"^\s*pid: \d+", r.stdout, re.M) and "version:" in r.stdout,
           "memcstat %s prints the server's stats (pid, version)" % mode, desc(r))
    r = run("memcstat", *flags, "--server-version")   # libmemcached 1.1.4 prints this on stderr
    tap.ok(r.returncode == 0 and re.match(r"127\.0\.0\.1:%d \S+" % port, (r.stdout + r.stderr).strip()),
           "memcstat %s --server-version" % mode, desc(r))


# --------------------------------------------------------------------------
# memccapable
# --------------------------------------------------------------------------

def memccapable(port, which):
    """Run memccapable -a (ascii) or -b (binary); returns (passed, total, output)."""
    # test names go to stderr and results to stdout: read both as one stream
    rc, out = kt.run_expect_exit(["memccapable", "-h", "127.0.0.1", "-p", port, "-t", "5", "-" + which],
                                 timeout=180)
    results = re.findall(r"^(ascii|binary) (.+?)\s+\[(\w+)\]\s*$", out, re.M)
    passed = sum(1 for _, _, st in results if st == "pass")
    return passed, len(results), rc, out


def memccapable_checks(text_port, bin_port):
    tap.note("memccapable (libmemcached's conformance tests; flushes the server)")
    total_pass = 0
    for which, port, name in (("a", text_port, "ascii"), ("b", bin_port, "binary"),
                              ("b", text_port, "binary on the text port")):
        passed, total, rc, out = memccapable(port, which)
        total_pass += passed
        fails = re.findall(r"^(?:ascii|binary) .+?\[(?!pass)\w+\]\s*$", out, re.M)
        tap.ok(total == 27 and passed == 27 and rc == 0,
               "memccapable -%s (%s protocol, port %d): %d of %d tests pass (want 27 of 27)" % (
                   which, name, port, passed, total),
               "rc %s; not passing:\n%s\nlast output:\n%s" % (rc, "\n".join(fails), out[-1500:]))
        tap.note("memccapable -%s: %d/%d pass" % (which, passed, total))
    tap.eq(total_pass, 81, "memccapable: 81 of 81 tests pass in all")


# --------------------------------------------------------------------------

def start_cluster(c):
    """Start the cluster with -b; if the gateway refuses -b, restart it without (a failure)."""
    want_bport = c.gateway_binary_port
    try:
        c.start()
        tap.ok(True, "kumo-gateway starts with -t %d -b %d" % (c.gateway_port, want_bport))
    except kt.DaemonDied as e:
        if c.gateway is None or c.gateway.alive():
            raise
        tap.ok(False, "kumo-gateway starts with -t %d -b %d" % (c.gateway_port, want_bport),
               "%s\n%s" % (e, c.gateway.tail(15)))
        c.gateway.expected_exit = True
        c.gateway_binary_port = None
        c.start_gateway()
        tap.note("kumo-gateway restarted without -b: every binary-protocol check below fails")
    return want_bport


def body():
    kt.require_module("pymemcache")
    have_pylibmc = importlib.util.find_spec("pylibmc") is not None
    tools = ("memccp", "memccat", "memcrm", "memcflush", "memcstat", "memctouch", "memcexist", "memccapable")
    missing_tools = [t for t in tools if not shutil.which(t)]

    with kt.target(nservers=3, gateway=True, gateway_binary=True, start=False, server_args=kt.DEBUG_TIME_ARGS,
                   gateway_args=kt.DEBUG_TIME_ARGS) as c:
        if isinstance(c, kt.Cluster):
            bport = start_cluster(c)
        else:
            bport = c.gateway_binary_port
        tport = c.gateway_port
        tap.ok(True, "%s: text port %d, binary port %d" % (
            "memcached" if kt.against_memcached() else "cluster", tport, bport))
        bin_up = kt.bin_version(bport)
        if not bin_up:
            try:
                bin_up = kt.wait_until(lambda: kt.bin_version(bport), 10, "binary VERSION on %d" % bport)
            except TimeoutError:
                bin_up = False
        tap.ok(bin_up, "the binary port %d answers a binary VERSION request" % bport)

        guarded("pymemcache", pymemcache_checks, tport)
        if have_pylibmc:
            guarded("pylibmc text", pylibmc_checks, tport, False)
            guarded("pylibmc binary", pylibmc_checks, bport, True)
            # memcached serves both protocols on one port, told apart by the first byte
            guarded("pylibmc binary on the text port", pylibmc_checks, tport, True, " on the text port")
        elif kt.REQUIRE:
            tap.ok(False, "python3-pylibmc installed")
        else:
            tap.skip("pylibmc text and binary", "python3-pylibmc not installed")

        guarded("raw binary protocol", binary_raw_checks, bport)
        guarded("raw binary protocol on the text port", binary_raw_checks, tport)

        workdir = kt.new_tmpdir("kumotest-tools-")
        if missing_tools and not kt.REQUIRE:
            tap.skip("libmemcached-tools", "not installed: %s (apt-get install libmemcached-tools)" % " ".join(missing_tools))
        else:
            guarded("libmemcached-tools text", tool_checks, tport, False, workdir)
            guarded("libmemcached-tools binary", tool_checks, bport, True, workdir)
            guarded("memccapable", memccapable_checks, tport, bport)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

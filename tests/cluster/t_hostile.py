#!/usr/bin/python3
"""t_hostile — hostile input against live daemons (docs/hostile-input.md).

One manager, one server and a gateway with both memcached ports. Every port
a daemon listens on gets the same list of hostile inputs:

  * an HTTP request, a line of 16 KiB of spaces, negative and huge lengths,
    a truncated data block or frame (the client then goes away), seeded
    random bytes, a valid request sent one byte every 20 ms (while others
    are served), frames over the size limits;

ports: gateway text (-t) and binary (-b; it serves text too, by the first
byte, as memcached), server RPC (-l) and stream (-L),
manager cluster (-l) and control (-c). Each input must get only error
replies (ERROR / CLIENT_ERROR / SERVER_ERROR, binary error statuses, RPC
error responses) or a disconnect; afterwards every daemon runs and a new
client is served on each port (set/get round trip through the gateway, an
RPC call on the others).

Besides: a hash-space seed of 200,000 nodes, malformed and full SRV_GET_MANY
batches, a replace stream from a fake sender (the test poses as a server
and offers hostile compressed streams: corrupt, truncated, records that
declare huge lengths, malformed records; a good stream first proves the
path works); 10,000 idle connections to the gateway and 2,000 to the
server while both keep serving (the server holds only its per-address
limit of them: they never sent a hello); a gateway at its descriptor limit
keeps its CPU idle and serves again once connections close.
"""
import os
import resource
import socket
import struct
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
msgpack = None              # python3-msgpack, checked in main
QUIET = 1.5                 # seconds of silence after which a reply is complete
RPC_MAX_FRAME = 64 << 20    # src/lib/rpc.h
ROLE_SERVER, ROLE_TOOL = 1, 3
SRV_HS_SYNC, SRV_REPLACE_OFFER, SRV_STATUS, ST_PID = 2, 16, 97, 0
SRV_GET_MANY, SRV_GET_MANY_MAX = 38, 256
MGR_HS_REQUEST, MGR_REPLACE_COPY_END, CTL_STATUS, CTL_AUTO_REPLACE = 1, 10, 99, 103
SLOW_DELAY = 0.02           # seconds between the bytes of a slow client


# --------------------------------------------------------------------------
# talking to a port

def attack(port, chunks, delay=0.0, quiet=QUIET, limit=20.0):
    """Connect, send each chunk (sleeping `delay` between them), then read
    until the peer closes or stays quiet for `quiet` s. Returns (bytes
    received, closed by the peer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got, closed = b"", False
    try:
        for i, c in enumerate(chunks):
            if i and delay:
                time.sleep(delay)       # the attack's pace: the chunks arrive as separate reads
            s.sendall(c)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    deadline = time.time() + limit
    s.settimeout(quiet)
    while not closed and time.time() < deadline:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not d:
            closed = True
            break
        got += d
    s.close()
    return got, closed


def text_lines_ok(got):
    """Every reply line is a memcached error."""
    lines = [ln for ln in got.split(b"\r\n") if ln]
    bad = [ln for ln in lines if not (ln == b"ERROR" or ln.startswith(b"CLIENT_ERROR ")
                                      or ln.startswith(b"SERVER_ERROR "))]
    return not bad and not (got and not got.endswith(b"\r\n")), lines


def bin_responses(got):
    """Binary response packets in got: [(opcode, status)], or None if the bytes are no
    sequence of whole response packets."""
    out, i = [], 0
    while i < len(got):
        if len(got) - i < 24 or got[i] != 0x81:
            return None
        op, status, blen = got[i + 1], struct.unpack(">H", got[i + 6:i + 8])[0], \
            struct.unpack(">I", got[i + 8:i + 12])[0]
        out.append((op, status))
        i += 24 + blen
    return out if i == len(got) else None


hello = kt.rpc_hello
request = kt.rpc_request
rpc_call = kt.rpc_call


def rpc_objects(got):
    """The msgpack objects of a reply stream, the peer's hello dropped; None if
    the bytes do not decode."""
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    up.feed(got)
    try:
        objs = list(up)
    except Exception:
        return None
    return [o for o in objs if not (isinstance(o, list) and o and o[0] == 2)]


def rpc_errors_only(got):
    """Only error responses ([1, id, error, nil] with an error) in got."""
    objs = rpc_objects(got)
    return objs is not None and all(isinstance(o, list) and len(o) == 4 and o[0] == 1 and o[2]
                                    for o in objs), objs


# --------------------------------------------------------------------------
# is everything still served?

class Checker:
    def __init__(self, c):
        self.c = c
        self.n = 0

    def roundtrip_text(self, port=None):
        self.n += 1
        k, v = "served-%d" % self.n, b"v%d" % self.n
        mc = kt.mc_client(port or self.c.gateway_port)
        try:
            return mc.set(k, v) and mc.get(k) == v
        finally:
            mc.close()

    def roundtrip_binary(self):
        self.n += 1
        k, v = b"bserved-%d" % self.n, b"b%d" % self.n
        with kt.Raw(self.c.gateway_binary_port) as r:
            r.send(kt.bin_packet(0x01, k, v, extras=struct.pack(">II", 0, 0)))
            st = kt.bin_read(r)
            r.send(kt.bin_packet(0x00, k))
            gt = kt.bin_read(r)
        return st["status"] == 0 and gt["status"] == 0 and gt["value"] == v

    def each_port(self):
        """{port name: error or None} for a normal client on every port."""
        c = self.c
        srv = c.servers[0]
        checks = {
            "gateway text": self.roundtrip_text,
            "gateway binary": self.roundtrip_binary,
            "server rpc": lambda: rpc_call(srv.port, SRV_STATUS, [ST_PID]) == (None, srv.daemon.pid),
            "manager cluster": lambda: rpc_call(c.mgr_port, MGR_HS_REQUEST, [])[0] is None,
            "manager control": lambda: rpc_call(c.ctl_port, CTL_STATUS, [])[0] is None,
        }
        out = {}
        for name, fn in checks.items():
            try:
                out[name] = None if fn() else "wrong answer"
            except Exception as e:
                out[name] = "%s: %s" % (type(e).__name__, e)
        return out

    def ok(self, after):
        """Every daemon runs and every port serves a new client."""
        dead = [d.name for d in self.c.daemons() if not d.alive()]
        bad = {k: v for k, v in self.each_port().items() if v}
        return tap.ok(not dead and not bad, "after %s: every daemon up, every port serves" % after,
                      "dead: %s; not served: %s" % (dead, bad))


# --------------------------------------------------------------------------
# the hostile inputs

HTTP = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
        b"POST /api HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
SPACES = b" " * 16384


def run_slow(port, payload, enough, others):
    """Send payload one byte every SLOW_DELAY s from a thread, reading the reply
    until enough(reply); meanwhile the main thread runs others() (a normal
    client, true when served). Returns (the slow client's reply, how many
    others() completed while the slow client still had bytes to send, errors)."""
    res = {"got": b""}
    left = [len(payload)]

    def slow():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(len(payload)):
                s.sendall(payload[i:i + 1])
                left[0] -= 1
                time.sleep(SLOW_DELAY)      # the slow client's pace: what the test is about
            s.settimeout(QUIET + 3)
            while not enough(res["got"]):
                d = s.recv(65536)
                if not d:
                    break
                res["got"] += d
        except OSError as e:
            res["error"] = e
        finally:
            s.close()

    t = threading.Thread(target=slow)
    t.start()
    during, errors = 0, []
    while t.is_alive() and left[0] > 3:
        try:
            if others():
                during += left[0] > 3
            else:
                errors.append("wrong answer")
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, e))
        time.sleep(0.05)    # the normal client's pace while the slow one sends
    t.join(60)
    if "error" in res:
        errors.append("slow client: %s" % res["error"])
    return res["got"], during, errors


def text_port(c, chk, rng):
    port = c.gateway_port
    tap.note("gateway text port %d" % port)

    # memcached 1.6's hang-ups (protocol.md §9.1)
    got, closed = attack(port, [HTTP])
    tap.ok(got == b"" and closed, "text: an HTTP request: closed without an answer, as memcached",
           "%s closed=%s" % (kt.short(got, 400), closed))
    got, closed = attack(port, [b" " * 2000 + b"\r\n"])
    tap.ok(got == b"ERROR\r\n" and not closed, "text: 2000 spaces then CRLF: ERROR", kt.short(got))
    got, closed = attack(port, [SPACES])
    tap.ok(got == b"" and closed, "text: 16 KiB of spaces without CRLF: closed without an answer, as memcached",
           "%s closed=%s" % (kt.short(got), closed))
    got, closed = attack(port, [b"get " + b"k" * 70000])
    tap.ok(got.startswith(b"CLIENT_ERROR") and closed, "text: a 70 KB line: CLIENT_ERROR and close",
           "%s closed=%s" % (kt.short(got), closed))

    # memcached itself differs on a few (it stores flags of 2^32, waits for a
    # 4 GiB block): here each is refused at once with its line.
    cases = [b"set k 0 0 -1", b"set k 0 0 -4294967296", b"set k 0 0 99999999999999999999999999",
             b"set k 0 0 4294967296", b"set k 0 0 2000000",        # over -I (1 MiB)
             b"set k 4294967296 0 1\r\nx", b"set k -1 0 1\r\nx", b"incr k -1",
             b"incr k 99999999999999999999999", b"cas k 0 0 1 -1\r\nx", b"touch k 99999999999999999999999",
             b"get " + b"k" * 251, b"ms k -5", b"ms k 99999999999999999999", b"mg k " + b"v " * 40,
             b"verbosity 99999999999999999999999", b"gat -99999999999999999999 k"]
    bad = []
    for line in cases:
        got, closed = attack(port, [line + b"\r\n"], quiet=0.5)
        if not got.startswith((b"CLIENT_ERROR ", b"SERVER_ERROR ")) or not text_lines_ok(got)[0]:
            bad.append("%r -> %r closed=%s" % (line[:60], got[:120], closed))
    tap.ok(not bad, "text: %d negative, huge and out-of-range numbers: CLIENT_ERROR or SERVER_ERROR"
           % len(cases), "\n".join(bad))
    got, closed = attack(port, [b"set k 0 -1 5\r\nhello\r\n"])
    tap.eq(got, b"STORED\r\n", "text: a negative exptime is legal (stored as expired)")

    got, closed = attack(port, [b"set trunc 0 0 10\r\nabc"])
    tap.ok(got == b"" and not closed, "text: a truncated data block waits, then the client leaves",
           kt.short(got))
    # as memcached: the block and 2 bytes are dropped, "f\r\n" is an unknown command
    got, closed = attack(port, [b"set trunc 0 0 3\r\nabcdef\r\nget trunc\r\n"])
    tap.eq(got, b"CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n",
           "text: a data block longer than declared: CLIENT_ERROR bad data chunk, the connection goes on")

    bad = []
    for i in range(4):
        junk = rng.randbytes(65536)
        if junk[0] == 0x80:     # a binary request's magic: the connection would speak binary (protocol.md §9.0)
            junk = b"x" + junk[1:]
        got, closed = attack(port, [junk])
        ok, lines = text_lines_ok(got)
        if not ok:
            bad.append(kt.short(got, 300))
    tap.ok(not bad, "text: 4 x 64 KiB of random bytes: only error lines or a close", "\n".join(bad))
    got, closed = attack(port, [bytes(range(256)) * 8 + b"\r\n"])
    tap.ok(text_lines_ok(got)[0], "text: every byte value (NUL included): only error lines or a close",
           kt.short(got))

    payload = b"set slow-text 5 0 10\r\n0123456789\r\n"
    got, during, errors = run_slow(port, payload, lambda g: g.endswith(b"\r\n"), chk.roundtrip_text)
    tap.ok(got == b"STORED\r\n", "text: a set sent one byte every 20 ms is stored", kt.short(got))
    tap.ok(during >= 1 and not errors, "text: other clients are served meanwhile (%d round trips)" % during,
           "; ".join(errors))
    mc = kt.mc_client(port)
    tap.eq(mc.get("slow-text"), b"0123456789", "text: the slow set reads back")
    mc.close()
    chk.ok("the text port's hostile inputs")


def bin_port(c, chk, rng):
    port = c.gateway_binary_port
    tap.note("gateway binary port %d" % port)
    # -b serves text too: these are text connections, closed as memcached does
    for name, data in (("an HTTP request", HTTP), ("16 KiB of spaces", SPACES)):
        got, closed = attack(port, [data])
        tap.ok(got == b"" and closed, "binary port: %s: closed without an answer" % name, kt.short(got))

    def header(opcode=0x01, klen=0, elen=0, blen=0, magic=0x80):
        return struct.pack(">BBHBBHIIQ", magic, opcode, klen, elen, 0, 0, blen, 0, 0)
    cases = [
        ("body length 2^32-1 on a set", header(0x01, 3, 8, 0xffffffff) + struct.pack(">II", 0, 0) + b"key"),
        ("body length 2^32-1 on a get", header(0x00, 3, 0, 0xffffffff) + b"key"),
        ("key length above the body", header(0x00, 0xffff, 0, 10) + b"x" * 10),
        ("extras length above the body", header(0x01, 0, 0xff, 4) + b"x" * 4),
        ("a 300-byte key", header(0x00, 300, 0, 300) + b"k" * 300),
        ("a 64 MiB + 1 value declared", header(0x01, 1, 8, 8 + 1 + (64 << 20) + 1) + struct.pack(">II", 0, 0) + b"k"),
        ("incr with a short extras", header(0x05, 1, 4, 5) + b"\0\0\0\0k"),
    ]
    for name, data in cases:
        got, closed = attack(port, [data])
        res = bin_responses(got)
        tap.ok(res is not None and all(st != 0 for _, st in res) and (res or closed),
               "binary: %s: an error status or a close" % name, "%s closed=%s" % (kt.short(got), closed))

    got, closed = attack(port, [header(0x01, 3, 8, 8 + 3 + 100) + struct.pack(">II", 0, 0) + b"key" + b"v" * 10])
    tap.ok(got == b"" and not closed, "binary: a truncated packet waits, then the client leaves", kt.short(got))

    bad = []
    for i in range(4):
        junk = rng.randbytes(65536)
        if i % 2:
            junk = b"\x80" + junk[1:]     # past the magic check, into the lengths
        got, closed = attack(port, [junk])
        # a first byte other than 0x80 makes it a text connection
        if (bin_responses(got) is None) if junk[0] == 0x80 else not text_lines_ok(got)[0]:
            bad.append(kt.short(got, 300))
    tap.ok(not bad, "binary port: 4 x 64 KiB of random bytes: binary responses (first byte 0x80) or text "
           "error lines, or a close", "\n".join(bad))

    pkt = kt.bin_packet(0x01, b"slow-bin", b"0123456789", extras=struct.pack(">II", 7, 0))
    got, during, errors = run_slow(port, pkt, lambda g: len(g) >= 24, chk.roundtrip_binary)
    res = bin_responses(got)
    tap.ok(res == [(0x01, 0)], "binary: a set sent one byte every 20 ms is stored", kt.short(got))
    tap.ok(during >= 1 and not errors, "binary: other clients are served meanwhile (%d)" % during,
           "; ".join(errors))
    chk.ok("the binary port's hostile inputs")


def rpc_port(chk, rng, name, port, slow_method, slow_params, param_method):
    """The hostile list against one RPC port (server -l, manager -l and -c);
    param_method answers "bad params" to parameters of the wrong type."""
    tap.note("%s port %d" % (name, port))
    for what, data in (("an HTTP request", HTTP), ("16 KiB of spaces", SPACES)):
        for pre in (b"", hello()):
            got, closed = attack(port, [pre + data])
            ok, objs = rpc_errors_only(got)
            tap.ok(closed and ok and not objs, "%s: %s%s: closed" % (name, what, " after a hello" if pre else ""),
                   "%s closed=%s" % (kt.short(got), closed))

    h = hello()
    huge = [
        ("array32 of 2^32-1 elements", b"\xdd\xff\xff\xff\xff"),
        ("map32 of 2^31 pairs", b"\xdf\x80\x00\x00\x00"),
        ("str32 of 4 GiB", b"\xdb\xff\xff\xff\xff"),
        ("bin32 of 64 MiB + 1", b"\xc6" + struct.pack(">I", RPC_MAX_FRAME + 1)),
        ("ext32 of 2 GiB", b"\xc9\x7f\xff\xff\xff\x01"),
        ("a request whose params declare 2^32-1 elements", b"\x94\x00\x01\x61\xdd\xff\xff\xff\xff"),
        ("a hello whose address declares 4 GiB", b"\x95\x02\x03\xc6\xff\xff\xff\xff"),
        ("a negative msgid", request(-1, slow_method, slow_params)),
        ("a negative method", request(1, -5, [])),
        ("a msgid above 2^32", request(1 << 40, slow_method, slow_params)),
        ("the reserved byte 0xc1", b"\xc1"),
    ]
    for what, data in huge:
        pre = b"" if what.startswith("a hello") else h
        got, closed = attack(port, [pre + data])
        ok, objs = rpc_errors_only(got)
        tap.ok(ok and (closed or objs), "%s: %s: an error or a close" % (name, what),
               "%s closed=%s" % (kt.short(got), closed))
    for what, params in (("negative", [-1, -(1 << 63)]), ("huge", [b"x" * 100000, (1 << 64) - 1])):
        got, closed = attack(port, [h + request(7, param_method, params)])
        ok, objs = rpc_errors_only(got)
        tap.ok(ok and (closed or objs), "%s: %s numbers as params: an error or a close" % (name, what),
               "%s closed=%s" % (kt.short(got), closed))

    req = request(9, slow_method, slow_params)
    got, closed = attack(port, [h + req[:len(req) // 2]])
    ok, objs = rpc_errors_only(got)
    tap.ok(ok and not objs and not closed, "%s: a truncated frame waits, then the client leaves" % name,
           kt.short(got))

    bad = []
    for i in range(4):
        junk = rng.randbytes(65536)
        got, closed = attack(port, [(h if i % 2 else b"") + junk])
        ok, objs = rpc_errors_only(got)
        if not ok:
            bad.append("%s closed=%s" % (kt.short(got, 300), closed))
    tap.ok(not bad, "%s: 4 x 64 KiB of random bytes: errors or a close" % name, "\n".join(bad))

    # A frame really larger than RPC_MAX_FRAME: 1100 bins of 64 KiB in one array.
    part = b"\xc6" + struct.pack(">I", 65536) + b"\0" * 65536
    big = [h + request(11, slow_method, [])[:-1] + b"\xdc" + struct.pack(">H", 1100)] + [part] * 1100
    got, closed = attack(port, big, limit=60)
    tap.ok(closed and rpc_errors_only(got)[0], "%s: a 70 MB frame: closed" % name, kt.short(got))
    # The daemon may still be reading what the kernel buffered of it (up to
    # a second on a manager); the slow client below is about other clients
    # being served while it dribbles, so it starts once everything answers.
    kt.wait_until(lambda: not any(chk.each_port().values()), 30, "every port to serve after the 70 MB frame")

    got, during, errors = run_slow(port, h + request(5, slow_method, slow_params),
                                   lambda g: bool(rpc_objects(g)), lambda: not any(chk.each_port().values()))
    objs = rpc_objects(got)
    tap.ok(objs and objs[0][:3] == [1, 5, None], "%s: a call sent one byte every 20 ms is answered" % name,
           kt.short(got))
    tap.ok(during >= 1 and not errors, "%s: every port serves meanwhile (%d)" % (name, during), "; ".join(errors))
    chk.ok("%s's hostile inputs" % name)


def big_seed(c, chk):
    """A hash-space seed of 200,000 nodes (1.4 MB, well under the frame limit):
    its ring would take 25.6 million SHA-1s and its duplicate check 2*10^10
    comparisons, minutes of a blocked server. It is refused at once."""
    srv = c.servers[0]
    nodes = [b"\x00" + struct.pack(">HI", 1 + i % 60000, i) for i in range(200000)]
    seed = [nodes, 1]
    try:
        res = rpc_call(srv.port, SRV_HS_SYNC, [seed, seed], timeout=20)
    except Exception as e:
        res = e
    tap.ok(res == (None, False), "server rpc: SRV_HS_SYNC with a 200,000-node seed: refused (false)", repr(res))
    with open(srv.daemon.log, "rb") as f:
        tap.ok(b"more than 4096" in f.read(), "the server logs why (more than 4096 nodes)")
    chk.ok("a 200,000-node hash space")


def stream_port(c, chk, rng):
    srv = c.servers[0]
    port = srv.stream_port
    tap.note("server stream port %d (the sender side of a replace)" % port)
    for what, data in (("an HTTP request", HTTP), ("16 KiB of spaces", SPACES),
                       ("64 KiB of random bytes", rng.randbytes(65536)), ("an unknown token", b"\0" * 8)):
        got, closed = attack(port, [data])
        tap.ok(got == b"" and closed, "stream: %s: closed, nothing sent" % what, kt.short(got))
    got, closed = attack(port, [b"\1\2\3"])
    tap.ok(got == b"" and not closed, "stream: a truncated token waits, then the client leaves", kt.short(got))
    got, closed = attack(port, [bytes([b]) for b in rng.randbytes(8)], delay=SLOW_DELAY)
    tap.ok(got == b"" and closed, "stream: a token sent one byte every 20 ms: unknown, closed", kt.short(got))
    chk.ok("the stream port's hostile inputs")


def stream_receiver(c, chk):
    """Pose as a server: offer replace streams from a listener of ours and check
    how the real server, pulling them, takes each one."""
    srv = c.servers[0]
    tap.note("replace streams from a fake sender, pulled by server %s" % srv.addr)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    fake_port = lst.getsockname()[1]
    my_id = struct.pack(">H", fake_port) + socket.inet_aton("127.0.0.1")

    def offer(stream, close_early=False):
        """Offer `stream` (compressed bytes); returns the server's (error, result)."""
        token = int.from_bytes(os.urandom(8), "big")
        served = {}

        def serve():
            lst.settimeout(15)
            try:
                conn, _ = lst.accept()
            except socket.timeout:
                served["err"] = "the server never connected"
                return
            conn.settimeout(15)
            tok = b""
            while len(tok) < 8:
                d = conn.recv(8 - len(tok))
                if not d:
                    break
                tok += d
            served["token"] = tok
            try:
                conn.sendall(stream)
            except OSError:
                pass
            conn.shutdown(socket.SHUT_WR)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass
            conn.close()
        t = threading.Thread(target=serve)
        t.start()
        try:
            return rpc_call(srv.port, SRV_REPLACE_OFFER, [fake_port, token, len(stream)],
                            role=ROLE_SERVER, addr=my_id, timeout=30)
        finally:
            t.join(20)

    def pair(k, v):
        return msgpack.packb([k, v], use_bin_type=True)
    key = b"streamed-key"
    dbkey = struct.pack(">Q", kt.khash(key)) + key
    ct = int(time.time()) << 32
    dbval = struct.pack(">QH", ct, 0) + b"from a stream"
    err, res = offer(zlib.compress(pair(dbkey, dbval)))
    tap.ok(err is None and res == 1, "stream: a good stream of one record is applied (control)",
           "error %r result %r" % (err, res))
    mc = kt.mc_client(c.gateway_port)
    tap.eq(mc.get(key), b"from a stream", "stream: the streamed record reads back through the gateway")
    mc.close()

    good = zlib.compress(pair(dbkey, dbval) * 3)
    cases = [
        ("not zlib", b"this is not zlib at all" * 10, "corrupt stream"),
        ("empty", b"", "ended early"),
        ("cut in the middle", good[:len(good) // 2], "ended early"),
        ("a record declaring a 2 GiB key", zlib.compress(b"\x92\xc6\x7f\xff\xff\xff" + b"x" * 100), "declares more"),
        ("an array of 2^32-1 elements", zlib.compress(b"\xdd\xff\xff\xff\xff"), "declares more"),
        ("a record that is not a pair", zlib.compress(msgpack.packb([1, 2])), "malformed record"),
        ("a record with a 3-byte key", zlib.compress(pair(b"abc", dbval)), "malformed record"),
        ("a record with a 4-byte value", zlib.compress(pair(dbkey, b"1234")), "malformed record"),
        ("a reserved msgpack byte", zlib.compress(b"\xc1\xc1"), ""),
        ("a 64 MiB + 1 bin declared", zlib.compress(b"\x92\xc6" + struct.pack(">I", RPC_MAX_FRAME + 1)),
         "declares more"),
        ("a good record then garbage", zlib.compress(pair(dbkey, dbval) + b"\xc1garbage"), ""),
    ]
    for what, stream, why in cases:
        err, res = offer(stream)
        tap.ok(isinstance(err, str) and err.startswith("stream failed") and why in err,
               "stream: %s: the offer fails (%s)" % (what, why or "stream failed"),
               "error %r result %r" % (err, res))
    lst.close()
    chk.ok("hostile replace streams")


def idle_connections(c, chk):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 12500
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ngw = min(10000, soft - 2600)
    nsrv = min(2000, soft - ngw - 500)
    tap.note("idle connections: %d to the gateway, %d to the server (RLIMIT_NOFILE %d)" % (ngw, nsrv, soft))
    socks = []
    try:
        failed = None
        for port, n in ((c.gateway_port, ngw), (c.servers[0].port, nsrv)):
            for i in range(n):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                except OSError as e:
                    failed = "connection %d to %d: %s" % (i, port, e)
                    break
        tap.ok(failed is None, "%d idle connections opened" % len(socks), failed)
        # each must have been accepted: the gateway answers on the last one
        last = socks[ngw - 1] if len(socks) >= ngw else None
        ans = None
        if last:
            last.sendall(b"version\r\n")
            last.settimeout(20)
            try:
                ans = last.recv(100)
            except OSError as e:
                ans = e
        tap.ok(isinstance(ans, bytes) and ans.startswith(b"VERSION"),
               "the gateway answers on its 10,000th connection", repr(ans))
        # The server's are strangers (no hello): it holds at most its
        # per-address limit of them (src/lib/admit.h) and closes the rest; a
        # new peer from the same address takes the place of the oldest once
        # that one is ADMIT_GRACE (1 s) old.
        st = kt.wait_until(lambda: c.kumostat(c.servers[0], "accept"), 15, "kumostat accept", interval=0.2,
                           daemons=c.daemons())
        st = {k: int(v) for k, v in (ln.split() for ln in st.splitlines())}
        tap.ok(st["rpc_unauthenticated"] <= st["unauthenticated_per_address_limit"] and
               st["rpc_refused"] + st["rpc_evicted"] >= nsrv - st["unauthenticated_per_address_limit"],
               "the server holds at most %d of its idle connections, and counts the others"
               % st["unauthenticated_per_address_limit"], repr(st))
        chk.ok("opening the idle connections")
    finally:
        for s in socks:
            s.close()
    chk.ok("closing the idle connections")


def fd_limit(c, chk):
    """A gateway whose descriptor limit is 64 gets 100 connections."""
    port = kt.free_port()
    argv = ["prlimit", "--nofile=64:64", kt.binary("kumo-gateway"), "-v", "-o", "-", "-m", c.mgr_addr,
            "-t", "127.0.0.1:%d" % port]
    tap.note("a gateway at its descriptor limit: %s" % " ".join(argv))
    d = kt.Daemon("kumo-gateway(64 fds)", argv, c.log("gateway-fdlimit")).start()
    kt.wait_until(lambda: kt.raw_version(port), 30, "the limited gateway", daemons=[d])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]

    def cpu():
        f = open("/proc/%d/stat" % d.pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    size0, cpu0 = os.path.getsize(d.log), cpu()
    time.sleep(3)   # a measured period (CPU and log growth in it), not a wait
    used, grown = cpu() - cpu0, os.path.getsize(d.log) - size0
    # A listener retrying accept() at once burns the whole 3 s (and logs each try).
    tap.ok(used < 1.0, "at its limit the gateway does not spin (%.2f s CPU in 3 s)" % used)
    tap.ok(grown < 10000, "at its limit the gateway does not flood its log (%d bytes in 3 s)" % grown)
    tap.ok(d.alive(), "the limited gateway is up")
    for s in socks:
        s.close()
    ok = False
    try:
        ok = kt.wait_until(lambda: chk.roundtrip_text(port), 20, "the limited gateway to serve again",
                           daemons=[d])
    except TimeoutError as e:
        tap.diag(str(e))
    tap.ok(ok, "once connections close the limited gateway serves again")
    with open(d.log, "rb") as f:
        log = f.read().decode("utf-8", "replace")
    tap.ok("open files limit 64" in log and "not accepting for" in log,
           "it logged its limit and the paused accepts", log[-1500:])
    d.stop()
    chk.ok("the descriptor limit")


def get_many(c, chk):
    """SRV_GET_MANY, the gateway's batched get: malformed parameters get an
    error, a well-formed batch one answer per key in order: the value, nil
    for a miss, the error text for a malformed key."""
    srv = c.servers[0]
    mc = kt.mc_client(c.gateway_port)
    try:
        stored = mc.set("many-present", b"here")
    finally:
        mc.close()
    for what, params in (("no params", []), ("keys not an array", [b"k"]), ("a key that is a number", [[1]]),
                         ("%d keys" % (SRV_GET_MANY_MAX + 1),
                          [[struct.pack(">Q", i) + b"k" for i in range(SRV_GET_MANY_MAX + 1)]])):
        err, res = rpc_call(srv.port, SRV_GET_MANY, params)
        tap.ok(err and "bad params" in err and res is None, "server rpc: SRV_GET_MANY with %s: an error" % what,
               repr((err, res)))

    def dbkey(k):
        return struct.pack(">Q", kt.khash(k)) + k
    keys = [dbkey(b"many-present"), b"short", dbkey(b"many-absent")]
    keys += [dbkey(b"many-absent-%d" % i) for i in range(SRV_GET_MANY_MAX - len(keys))]
    err, res = rpc_call(srv.port, SRV_GET_MANY, [keys])
    ok = (stored and err is None and isinstance(res, list) and len(res) == SRV_GET_MANY_MAX
          and isinstance(res[0], bytes) and res[0].endswith(b"here") and res[1] == "bad key"
          and all(r is None for r in res[2:]))
    tap.ok(ok, "server rpc: SRV_GET_MANY of %d keys: value, error, misses, in order" % SRV_GET_MANY_MAX,
           repr((err, res[:4] if isinstance(res, list) else res)))
    chk.ok("SRV_GET_MANY")


def quit_then_flood(c):
    """`quit` behind large answers the client does not read, then a flood:
    the gateway reads on (a close with unread input would be a reset that
    cuts the answers off) but must drop what it reads, not keep it."""
    port, gw = c.gateway_port, c.gateway.pid
    value = b"q" * 100000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"".join(b"set flood%d 0 0 %d\r\n%s\r\n" % (i, len(value), value) for i in range(20)))
        got, _ = kt.recv_until(s, lambda b: b.count(b"STORED\r\n") == 20, quiet=20)
    keys = b" ".join(b"flood%d" % (i % 20) for i in range(30))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answers (3 MB) wait in the gateway
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(b"get " + keys + b"\r\nquit\r\n")
        time.sleep(0.5)
        rss0 = kt.rss_anon(gw)
        s.setblocking(False)
        chunk, sent, deadline = b"x" * 65536, 0, time.time() + 20
        while sent < (64 << 20) and time.time() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
        rss1 = kt.rss_anon(gw)
        tap.ok(rss1 - rss0 < (16 << 20), "quit behind unread answers, then %d MiB more: the gateway drops it "
               "(heap %+.1f MiB)" % (sent >> 20, (rss1 - rss0) / 1048576.0), "before %d after %d" % (rss0, rss1))
        s.setblocking(True)
        want = b"".join(b"VALUE flood%d 0 %d\r\n%s\r\n" % (i % 20, len(value), value) for i in range(30)) + b"END\r\n"
        got, closed = kt.recv_until(s, quiet=20)
        tap.ok(got == want and closed, "and the client still reads every answer, then the close",
               "%d of %d bytes, closed=%s" % (len(got), len(want), closed))
    finally:
        s.close()


def body():
    global msgpack
    msgpack = kt.require_module("msgpack")
    kt.require_binaries()
    rng = kt.make_rng()
    with kt.Cluster(nservers=1, gateway_binary=True) as c:
        chk = Checker(c)
        tap.ok(not any(chk.each_port().values()), "every port serves before the hostile inputs",
               repr(chk.each_port()))
        text_port(c, chk, rng)
        quit_then_flood(c)
        bin_port(c, chk, rng)
        srv = c.servers[0]
        rpc_port(chk, rng, "server rpc", srv.port, SRV_STATUS, [ST_PID], SRV_STATUS)
        big_seed(c, chk)
        get_many(c, chk)
        rpc_port(chk, rng, "manager cluster", c.mgr_port, MGR_HS_REQUEST, [], MGR_REPLACE_COPY_END)
        rpc_port(chk, rng, "manager control", c.ctl_port, CTL_STATUS, [], CTL_AUTO_REPLACE)
        stream_port(c, chk, rng)
        stream_receiver(c, chk)
        idle_connections(c, chk)
        fd_limit(c, chk)
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

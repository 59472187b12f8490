#!/usr/bin/python3
"""t_memcached_diff — the gateway beside a real memcached 1.6, byte for byte.

The test starts a three-server cluster (so that stale and win-token records
are replicated too) and a plain memcached (`-A`, shutdown
enabled, as the gateway's `-A`) on free ports, sends every exchange below to
both over a fresh connection each, and compares what comes back: the bytes,
and whether the connection was closed. Differences that cannot be avoided are
masked, and only these: CAS uniques (memcached counts, kumofs uses its clock),
the `c` meta flag, the `t` meta flag's seconds, the version string, and the
fields of `me` after the key (memcached's slab class, last access, size).

What it covers:
  * memcached's hang-up rules: HTTP-looking request lines, and lines over 2048
    bytes without a newline that are not get/gets, close the connection;
    look-alikes that do not qualify answer ERROR or wait;
  * both protocols on the text port: a connection whose first byte is 0x80
    speaks binary;
  * the meta protocol: mg ms md ma mn me with their flags, base64 keys (b),
    opaque, quiet mode, stale-while-revalidate (mg N and R, md I, the W X Z
    result flags), the flags memcached 1.6 refuses, and the ones kumofs
    cannot honour (mg h l, ms I with C: answered as memcached answers an
    unknown flag);
  * cache_memlimit, verbosity, shutdown (refused without -A, then with -A on
    both: the connection closes and the process exits).

Each exchange is written at once (or in the listed chunks, 0.2 s apart), then
`mn` is sent and the reply read up to its `MN`, to EOF, or for 0.7 s of silence.
Prints the number of exchanges compared identical.

Run: /usr/bin/python3 tests/cluster/t_memcached_diff.py
"""
import base64
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap

MASKS = [
    (re.compile(rb"^(VALUE \S+ \d+ \d+) \d+\r$", re.M), rb"\1 <CAS>\r"),
    (re.compile(rb"^VERSION [^\r\n]*", re.M), b"VERSION <V>"),
    (re.compile(rb"^(ME \S+) [^\r\n]*", re.M), rb"\1 <ME>"),
    (re.compile(rb"^((?:HD|VA|EN|NS|EX|NF)(?: [^\r\n]*)?)$", re.M), None),  # meta lines: see mask_meta
]
META_LINE = re.compile(rb"^(?:HD|VA \d+|EN|NS|EX|NF)(?: [^\r\n]*)?\r$", re.M)


def mask_meta(m):
    line = m.group(0)
    line = re.sub(rb" c\d+", b" c<CAS>", line)
    line = re.sub(rb" t(\d+)", b" t<TTL>", line)
    return line


def mask(data):
    for rx, rep in MASKS:
        if rep is not None:
            data = rx.sub(rep, data)
    return META_LINE.sub(mask_meta, data)


def exchange(port, chunks, sentinel=True, wait=0.7):
    """Send chunks (0.2 s apart), then `mn` if sentinel; read to MN, EOF or
    `wait` s of silence. Returns (bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mns = b"".join(chunks).count(b"mn\r\n") + 1  # MN lines that end the reply
    try:
        for i, c in enumerate(chunks):
            if i:
                # a duration: the chunks must reach the server as separate reads
                time.sleep(0.2)
            s.sendall(c)
        if sentinel:
            s.sendall(b"mn\r\n")
    except (ConnectionResetError, BrokenPipeError):
        s.close()
        return b"", True
    try:
        return kt.recv_until(s, (lambda buf: buf.endswith(b"MN\r\n") and buf.count(b"MN\r\n") >= mns)
                             if sentinel else None, quiet=wait)
    finally:
        s.close()


def bin_packet(opcode, key=b"", value=b"", extras=b"", opaque=0, cas=0):
    return kt.bin_packet(opcode, key=key, value=value, extras=extras, opaque=opaque, cas=cas)


def bin_mask(data):
    """Binary responses: zero the CAS field of each packet, drop version bodies."""
    out, i = b"", 0
    while i + 24 <= len(data):
        hdr = bytearray(data[i:i + 24])
        blen = int.from_bytes(hdr[8:12], "big")
        body = data[i + 24:i + 24 + blen]
        hdr[16:24] = b"\0" * 8
        if hdr[1] == 0x0b:  # version: the body is the version string
            body = b"<V>"
            hdr[8:12] = b"\0" * 4
        out += bytes(hdr) + body
        i += 24 + blen
    return out + data[i:]


def b64(k):
    return base64.b64encode(k)


LONG_SET = b"set lk 0 0 1" + b" " * 3000
GET_SPREAD = b"get " + b"k123456789abcd " * 200   # 200 keys: within the gateway's 256

# (name, chunks, sentinel). Keys are unique per exchange where state matters.
CASES = [
    # -- hang-up rules
    ("HTTP GET request line", [b"GET / HTTP/1.0\r\n\r\n"], True),
    ("HTTP PUT request", [b"PUT /a HTTP/1.1\r\nHost: x\r\n\r\n"], True),
    ("HTTP DELETE without a path", [b"DELETE HTTP/1.1\r\n"], True),
    ("HTTP version alone", [b"HTTP/1.1\r\n"], True),
    ("HTTP OPTIONS", [b"OPTIONS * HTTP/1.1\r\n"], True),
    ("HTTP after a served request", [b"version\r\n", b"POST /x HTTP/1.1\r\n"], True),
    ("not HTTP: no version token", [b"GET /\r\n"], True),
    ("not HTTP: a g-word", [b"gxx / HTTP/1.1\r\n"], True),
    ("not HTTP: one-letter word", [b"Z HTTP/1.1\r\n"], True),
    ("not HTTP: version not last", [b"FOO HTTP/1.1 x\r\n"], True),
    ("not HTTP: lowercase http", [b"FOO / http/1.1\r\n"], True),
    ("not HTTP: known word", [b"version HTTP/1.1\r\n"], True),
    ("long set line without newline", [LONG_SET], False),
    ("long junk without newline", [b"x" * 3000], False),
    ("long line in two writes", [b"y" * 2000, b"y" * 100], False),
    ("2000 bytes without newline wait", [b"z" * 2000], False),
    ("long get line waits for its newline", [GET_SPREAD, b"\r\n"], True),
    ("long gets line waits", [b"gets " + b"k123456789abcd " * 200, b"\r\n"], True),
    ("long gat line closes", [b"gat 0 " + b"k123456789abcd " * 200], False),
    ("get after 101 spaces closes", [b" " * 101 + GET_SPREAD], False),
    # -- binary on the text port
    ("binary version on the text port", [bin_packet(0x0b, opaque=7)], False),
    ("binary set/get/noop on the text port",
     [bin_packet(0x01, b"bk1", b"hello", extras=b"\0\0\0\x05\0\0\0\0", opaque=1) +
      bin_packet(0x0c, b"bk1", opaque=2) + bin_packet(0x0a, opaque=3)], False),
    ("binary unknown opcode", [bin_packet(0x50, opaque=9) + bin_packet(0x0a, opaque=10)], False),
    ("text after binary is binary", [bin_packet(0x0a, opaque=4) + b"version\r\n" * 3], False),
    # -- -I 2m on both
    ("a value over 1 MiB under -I 2m", [b"set big 0 0 1500000\r\n" + b"v" * 1500000 + b"\r\nmg big s\r\n"], True),
    ("a value over -I 2m", [b"set big2 0 0 2097153\r\n" + b"v" * 2097153 + b"\r\nmg big2 s\r\n"], True),
    # -- administration
    ("cache_memlimit 100", [b"cache_memlimit 100\r\n"], True),
    ("cache_memlimit too small", [b"cache_memlimit 7\r\n"], True),
    ("cache_memlimit bytes", [b"cache_memlimit 2000000000\r\n"], True),
    ("cache_memlimit junk", [b"cache_memlimit x\r\n"], True),
    ("cache_memlimit noreply", [b"cache_memlimit 100 noreply\r\ncache_memlimit x noreply\r\n"], True),
    ("cache_memlimit arity", [b"cache_memlimit\r\ncache_memlimit 1 2 3\r\n"], True),
    ("verbosity", [b"verbosity 1\r\nverbosity 0 noreply\r\nverbosity\r\nverbosity x\r\n"], True),
    ("shutdown bad mode", [b"shutdown now\r\n"], True),
    # -- meta: mn me
    ("mn", [b"mn\r\n"], True),
    ("me miss", [b"me mek1\r\n"], True),
    ("me hit", [b"set mek2 0 0 1\r\nx\r\nme mek2\r\n"], True),
    ("me without key", [b"me\r\n"], True),
    ("me base64 key", [b"set mek3 0 0 1\r\nx\r\nme " + b64(b"mek3") + b" b\r\n"], True),
    # -- mg
    ("mg miss", [b"mg mg1 v\r\n"], True),
    ("mg miss flags", [b"mg mg2 v k Oabc s t f c\r\n"], True),
    ("mg miss quiet", [b"mg mg3 v q\r\nmg mg3 q k\r\n"], True),
    ("mg hit no flags", [b"set mg4 5 0 2\r\nhi\r\nmg mg4\r\n"], True),
    ("mg hit all return flags", [b"set mg5 7 100 3\r\nabc\r\nmg mg5 s v f t k Oxy c q\r\n"], True),
    ("mg hit flags order", [b"set mg6 7 0 3\r\nabc\r\nmg mg6 Oz k f s v\r\n"], True),
    ("mg t without ttl", [b"set mg7 0 0 1\r\na\r\nmg mg7 t v\r\n"], True),
    ("mg T touches", [b"set mg8 0 0 1\r\na\r\nmg mg8 T100 t\r\nmg mg8 t\r\n"], True),
    ("mg duplicate flag", [b"mg mg9 v v\r\n"], True),
    ("mg unknown flag E", [b"mg mg10 E5\r\n"], True),
    ("mg unknown flag x", [b"mg mg10 x\r\n"], True),
    ("mg unknown flag S", [b"mg mg10 S100\r\n"], True),
    ("mg flag u P L accepted", [b"set mg11 0 0 1\r\na\r\nmg mg11 u P L v\r\n"], True),
    ("mg opaque 32 bytes", [b"set mg12 0 0 1\r\na\r\nmg mg12 O" + b"o" * 31 + b"\r\n"], True),
    ("mg opaque too long on hit", [b"set mg13 0 0 1\r\na\r\nmg mg13 O" + b"o" * 32 + b"\r\n"], True),
    ("mg opaque too long on miss", [b"mg mg14 O" + b"o" * 32 + b"\r\n"], True),
    ("mg bad T", [b"mg mg15 Tx\r\n"], True),
    ("mg no key", [b"mg\r\n"], True),
    ("mg key too long", [b"mg " + b"k" * 251 + b" v\r\n"], True),
    ("mg base64 key miss", [b"mg " + b64(b"mg 16") + b" b k v\r\n"], True),
    ("mg base64 key hit", [b"ms " + b64(b"mg\n17") + b" 2 b\r\nhi\r\nmg " + b64(b"mg\n17") + b" b k v s\r\n"], True),
    ("mg base64 same as plain", [b"set mg18 3 0 2\r\nyo\r\nmg " + b64(b"mg18") + b" b v f\r\n"], True),
    ("mg base64 bad", [b"mg !!!! b v\r\n"], True),
    ("mg many flags", [b"mg mg19 " + b" ".join(b"O%d" % i for i in range(20)) + b"\r\n"], True),
    ("mg q on hit answers", [b"set mg20 0 0 1\r\na\r\nmg mg20 q v\r\nmg mg20 q\r\n"], True),
    # -- ms
    ("ms plain", [b"ms ms1 2\r\nhi\r\nget ms1\r\n"], True),
    ("ms flags T F", [b"ms ms2 2 T100 F9\r\nhi\r\nmg ms2 f t v\r\n"], True),
    ("ms return flags", [b"ms ms3 2 k Oab c\r\nhi\r\n"], True),
    ("ms quiet", [b"ms ms4 2 q\r\nhi\r\nms ms4 2 q ME\r\nhi\r\n"], True),
    ("ms mode add", [b"ms ms5 1 ME\r\na\r\nms ms5 1 ME\r\nb\r\nget ms5\r\n"], True),
    ("ms mode replace", [b"ms ms6 1 MR\r\na\r\nset ms6 0 0 1\r\nb\r\nms ms6 1 MR\r\nc\r\nget ms6\r\n"], True),
    ("ms mode append prepend", [b"set ms7 0 0 1\r\nb\r\nms ms7 1 MA\r\nc\r\nms ms7 1 MP\r\na\r\nget ms7\r\n"], True),
    ("ms append miss", [b"ms ms8 1 MA\r\nc\r\n"], True),
    ("ms bad mode", [b"ms ms9 1 MX\r\na\r\nmn\r\n"], True),
    ("ms long mode", [b"ms ms9 1 MXY\r\na\r\n"], True),
    ("ms cas", [b"ms ms10 1\r\na\r\nms ms10 1 C1\r\nb\r\n"], True),
    ("ms no datalen", [b"ms ms11\r\n"], True),
    ("ms bad datalen", [b"ms ms12 x\r\nab\r\n"], True),
    ("ms bad chunk", [b"ms ms13 1\r\nabc\r\n"], True),
    ("ms base64 key", [b"ms " + b64(b"ms 14") + b" 1 b k\r\nz\r\nmg " + b64(b"ms 14") + b" b v\r\n"], True),
    ("ms I without C (no effect)", [b"ms ms15 1 I\r\na\r\n"], True),
    ("ms I with C in add mode (no effect)", [b"ms ms15b 1 I C5 ME\r\na\r\n"], True),
    ("ms lowercase mode", [b"ms ms15c 1 Ms\r\na\r\n"], True),
    ("ma lowercase mode", [b"ma ma15 Mi\r\n"], True),
    ("mg I (no effect)", [b"set mg21 0 0 1\r\na\r\nmg mg21 I v\r\n"], True),
    ("ms unknown flag", [b"ms ms16 1 E5\r\na\r\n"], True),
    ("ms return flags it does not fill", [b"ms ms18 1 f s t h l v u c k\r\na\r\n"], True),
    ("ms flags of other commands", [b"ms ms19 1 D5 J3 N10 R5 C0 ME\r\na\r\nmg ms19 v\r\n"], True),
    ("md return flags", [b"set md7 0 0 1\r\na\r\nmd md7 f s t c v h l u k\r\n"], True),
    ("md T without I", [b"set md8 0 100 1\r\na\r\nmd md8 T5\r\nget md8\r\n"], True),
    ("md miss return flags", [b"md md9 k Ox c\r\n"], True),
    ("ms failures' return flags", [b"ms ms20 1 MR k Ox c\r\na\r\nms ms20 1 MA k c\r\na\r\n"
                                   b"set ms20 0 0 1\r\na\r\nms ms20 1 C1 c k Oy\r\nb\r\nms ms20 1 ME c O1\r\nb\r\n"], True),
    ("ma failures' return flags", [b"ma ma12 k Ox c t v\r\nset ma12 0 0 1\r\nx\r\nma ma12 C1 k c t Oq\r\n"], True),
    ("ma return flags", [b"ma ma11 N0 J5 f s t c k Oz h l u v\r\n"], True),
    ("mg flags of other commands", [b"set mg22 0 0 1\r\na\r\nmg mg22 C5 D1 J2 F3 M1 v\r\n"], True),
    ("ms F not a number", [b"ms ms17 1 Fx\r\na\r\n"], True),
    # -- stale-while-revalidate: N, R, md I and the W X Z result flags. One
    # command a write where a read follows a write: the order of one
    # connection's pipelined requests is another change's (issue 20).
    ("mg N: vivify, one winner", [b"mg sw1 N30 v t\r\n", b"mg sw1 N30 v\r\n", b"mg sw1 v\r\n", b"get sw1\r\n"], True),
    ("mg N: a store clears the token", [b"mg sw2 N30 q v\r\n", b"ms sw2 1\r\nx\r\n", b"mg sw2 v\r\n",
                                        b"mg sw2 N30 v\r\n"], True),
    ("mg N: quiet, k, O", [b"mg sw9 N0 q k Oab\r\n", b"mg sw9 N0 q k Oab v\r\n"], True),
    ("md I: stale, one winner, a set clears it",
     [b"set sw3 0 0 1\r\na\r\n", b"md sw3 I\r\n", b"mg sw3 v c\r\n", b"mg sw3 v\r\n", b"mg sw3 s\r\n",
      b"set sw3 0 0 1\r\nb\r\n", b"mg sw3 v\r\n"], True),
    ("md I T q", [b"set sw4 0 0 1\r\na\r\n", b"md sw4 I T30 q\r\n", b"mg sw4 t v\r\n"], True),
    ("md I miss", [b"md sw5 I k\r\n"], True),
    ("md I with a wrong CAS", [b"set sw6 0 0 1\r\na\r\n", b"md sw6 I C1\r\n", b"mg sw6 v\r\n"], True),
    ("md I twice: a new winner", [b"set sw10 0 0 1\r\na\r\n", b"md sw10 I\r\n", b"mg sw10\r\n", b"md sw10 I\r\n",
                                  b"mg sw10\r\n", b"mg sw10\r\n"], True),
    ("get and gets of a stale item", [b"set sw11 3 0 1\r\na\r\n", b"md sw11 I\r\n", b"get sw11\r\ngets sw11\r\n"], True),
    ("mg R: a win when the TTL is shorter", [b"set sw7 0 100 1\r\na\r\n", b"mg sw7 R30 v\r\n", b"mg sw7 R200 v\r\n",
                                             b"mg sw7 R200 v\r\n", b"mg sw7 v\r\n"], True),
    ("mg R without a TTL", [b"set sw8 0 0 1\r\na\r\n", b"mg sw8 R30 v\r\n"], True),
    ("mg N on a stale item", [b"set sw12 0 0 1\r\na\r\n", b"md sw12 I\r\n", b"mg sw12 N30 v\r\n",
                              b"mg sw12 N30 v\r\n"], True),
    ("ms C0 on an item, on a miss", [b"set sw14 0 0 1\r\na\r\n", b"ms sw14 1 C0\r\nb\r\n", b"ms sw14x 1 C0\r\nb\r\n",
                                      b"get sw14\r\n"], True),
    ("ms I with an older CAS: stored stale, TTL kept",
     [b"set sw15 0 100 1\r\na\r\n", b"ms sw15 1 I C1 T0 F5\r\nb\r\n", b"mg sw15 v t f\r\n", b"mg sw15 v\r\n"], True),
    ("ms I with C: a miss, replace mode, a token kept",
     [b"ms sw16 1 I C1\r\nb\r\n", b"set sw16 0 0 1\r\na\r\n", b"md sw16 I\r\n", b"mg sw16\r\n",
      b"ms sw16 1 I C1 MR\r\nc\r\n", b"mg sw16 v\r\n"], True),
    ("mg T on a stale item", [b"set sw13 0 0 1\r\na\r\n", b"md sw13 I\r\n", b"mg sw13 T30 t\r\n", b"mg sw13 t\r\n"],
     True),
    # -- from memcached 1.6.18's t/metaget.t (its sequences, one command a write)
    ("metaget.t: a line of one space", [b" \n"], True),
    ("metaget.t: me", [b"me mtnone\r\n", b"set mtfoo 0 0 2\r\nhi\r\n", b"me mtfoo\r\n"], True),
    ("metaget.t: ms modes", [b"ms mtmode 2 T120 MR\r\nxx\r\n", b"ms mtmode 2 T120 MS\r\nyy\r\n",
                             b"ms mtmode 2 T120 MZ\r\ntt\r\n", b"mg mtmode v\r\n"], True),
    ("metaget.t: needwin", [b"ms mtneedwin 2 C5000 T120\r\nnu\r\n", b"mg mtneedwin s c v N30 t\r\n",
                            b"mg mtneedwin s c v N30 t\r\n"], True),
    ("metaget.t: invalidation", [b"set mttoinv 0 0 3\r\nmoo\r\n", b"md mttoinv I T30\r\n", b"mg mttoinv s t v\r\n",
                                 b"mg mttoinv s t v\r\n", b"ms mttoinv 1 T90 C0\r\nf\r\n",
                                 b"ms mttoinv 1 I T90 C1\r\nf\r\n", b"mg mttoinv s t v\r\n"], True),
    ("metaget.t: quiet mode", [b"ms mtquiet 2 q\r\nmo\r\n", b"md mtquiet q\r\n", b"mg mtquiet s v q\r\n",
                               b"ms mtquiet\r\n", b"ms mtquiet 2 q\r\nbo\r\n",
                               b"mg mtquiet v q\r\nmg mtquiet v q\r\nmg mtquietmiss v q\r\nmn\r\n"], True),
    ("metaget.t: quiet autovivify", [b"mg mtquietautov s N30 t q\r\n"], True),
    ("metaget.t: flags that repeat", [b"mg mtfoo m o o o o o o o o o\r\n"], True),
    ("metaget.t: quit between gets", [b"ms mtqf 2 T100\r\nna\r\n", b"mg mtqf s\r\nmg mtqf s\r\nquit\r\nmg mtqf s\r\n"],
     False),
    # -- md
    ("md hit and miss", [b"set md1 0 0 1\r\na\r\nmd md1\r\nmd md1\r\n"], True),
    ("md flags", [b"set md2 0 0 1\r\na\r\nmd md2 k Oq\r\nmd md2 k Oq\r\n"], True),
    ("md quiet", [b"set md3 0 0 1\r\na\r\nmd md3 q\r\nmd md3 q\r\n"], True),
    ("md cas mismatch", [b"set md4 0 0 1\r\na\r\nmd md4 C1\r\n"], True),
    ("md base64", [b"set md5 0 0 1\r\na\r\nmd " + b64(b"md5") + b" b k\r\nget md5\r\n"], True),
    ("md unknown flag", [b"md md6 E5\r\n"], True),
    # -- ma
    ("ma miss", [b"ma ma1\r\n"], True),
    ("ma incr", [b"set ma2 0 0 1\r\n5\r\nma ma2\r\nma ma2 v\r\nma ma2 v D10\r\n"], True),
    ("ma decr", [b"set ma3 0 0 2\r\n10\r\nma ma3 MD v D3\r\nma ma3 M- v D100\r\n"], True),
    ("ma vivify", [b"ma ma4 N0 J13 v\r\nma ma4 v\r\n"], True),
    ("ma flags", [b"set ma5 0 0 1\r\n1\r\nma ma5 k Ot v t\r\n"], True),
    ("ma quiet", [b"set ma6 0 0 1\r\n1\r\nma ma6 q\r\nma ma6x q\r\n"], True),
    ("ma non numeric", [b"set ma7 0 0 1\r\nx\r\nma ma7\r\n"], True),
    ("ma bad delta", [b"ma ma8 Dx\r\n"], True),
    ("ma bad mode", [b"ma ma8 MX\r\n"], True),
    ("ma base64", [b"set ma9 0 0 1\r\n1\r\nma " + b64(b"ma9") + b" b v k\r\n"], True),
    ("ma unknown flag", [b"ma ma10 E1\r\n"], True),
]


# Flags kumofs cannot honour (hit-before and last access would make every read
# a replicated write). The gateway must
# answer them exactly as memcached answers a flag it does not know: each is
# compared with memcached's reply to the same line with the flag replaced by
# an unknown one ("x").
UNHONOURED = [
    ("mg h (hit before)", b"set un3 0 0 1\r\na\r\nmg un3 h v\r\n", b"h"),
    ("mg l (last access)", b"set un4 0 0 1\r\na\r\nmg un4 l v\r\n", b"l"),
]


def compare(mc_port, gw_port):
    """Every CASES exchange on both, then every UNHONOURED line: the gateway
    given the flag, memcached given "x" in its place. Returns how many were
    identical."""
    runs = [("as memcached: " + name, chunks, chunks, sentinel) for name, chunks, sentinel in CASES]
    runs += [("unsupported as memcached answers an unknown flag: " + name, [line],
              [line.replace(b" " + flag, b" x")], True) for name, line, flag in UNHONOURED]
    same = 0
    for name, gw_chunks, mc_chunks, sentinel in runs:
        want, want_closed = exchange(mc_port, mc_chunks, sentinel)
        got, got_closed = exchange(gw_port, gw_chunks, sentinel)
        masker = bin_mask if gw_chunks[0][:1] == b"\x80" else mask
        same += tap.ok(masker(got) == masker(want) and got_closed == want_closed, name,
                       "memcached: %s closed=%s\ngateway:   %s closed=%s" %
                       (kt.short(masker(want), 400), want_closed, kt.short(masker(got), 400), got_closed))
    return same


def half_closed(port, req):
    """Send req, then shutdown(SHUT_WR), as `nc -N` does: (everything read
    until the server closed or 10 s were quiet, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        return kt.recv_until(s, quiet=10)
    finally:
        s.close()


HALF_CLOSED = [
    ("text: set, get and a miss", b"set hc1 0 0 2\r\nhi\r\nget hc1\r\nget hc-none\r\n"),
    ("text: a multi-get", b"set hc2 0 0 1\r\na\r\nset hc3 0 0 1\r\nb\r\nget hc2 hc3 hc-none\r\n"),
    ("binary: set, getk, a getq miss and noop",
     bin_packet(0x01, b"hc4", b"v4", extras=b"\0\0\0\0\0\0\0\0") + bin_packet(0x0c, b"hc4", opaque=7) +
     bin_packet(0x09, b"hc-none", opaque=8) + bin_packet(0x0a, opaque=9)),
]


def half_closed_diff(mc_port, gw_port):
    """Requests, then the client's end of input: the same answers as
    memcached's, then the close."""
    for name, req in HALF_CLOSED:
        want, want_closed = half_closed(mc_port, req)
        got, got_closed = half_closed(gw_port, req)
        masker = bin_mask if req[:1] == b"\x80" else mask
        tap.ok(masker(got) == masker(want) and got_closed and want_closed and want,
               "then shutdown(SHUT_WR), as memcached: " + name,
               "memcached: %s closed=%s\ngateway:   %s closed=%s" %
               (kt.short(masker(want), 400), want_closed, kt.short(masker(got), 400), got_closed))


def accept_pause(c):
    """stats accepting_conns / listen_disabled_num follow the listener's pause
    when accept() fails: a gateway limited to 64 descriptors gets 80
    connections and is asked on the first one."""
    port = kt.free_port()
    argv = ["prlimit", "--nofile=64:64", kt.binary("kumo-gateway"), "-o", "-", "-m", c.mgr_addr,
            "-t", "127.0.0.1:%d" % port]
    d = kt.Daemon("kumo-gateway(64 fds)", argv, c.log("gateway-fdlimit")).start()
    try:
        kt.wait_until(lambda: kt.raw_version(port), 30, "the limited gateway", daemons=[d])
        st0, _ = kt.raw_stats(port)
        with kt.Raw(port) as first:
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
            st = {}

            def paused():
                # stats on the connection opened before the limit was reached
                first.send(b"stats\r\n")
                while True:
                    line = first.readline()
                    if line == b"END\r\n":
                        break
                    parts = line.split()
                    st[parts[1].decode()] = parts[2].decode()
                return int(st.get("listen_disabled_num", "0")) > 0
            try:
                kt.wait_until(paused, 15, "listen_disabled_num > 0 on the gateway limited to 64 descriptors",
                              interval=0.1, daemons=[d])
            except TimeoutError as e:
                tap.note(str(e))
            for s in socks:
                s.close()
        tap.ok(st0.get("accepting_conns") == "1" and st0.get("listen_disabled_num") == "0",
               "stats before the limit: accepting_conns 1, listen_disabled_num 0", repr(st0))
        tap.ok(int(st.get("listen_disabled_num", "0")) > 0,
               "stats at the descriptor limit: listen_disabled_num counts the pauses (%s), accepting_conns %s"
               % (st.get("listen_disabled_num"), st.get("accepting_conns")))
    finally:
        d.stop()


# One command a write, no sentinel: before a client authenticates, memcached's
# replies to the commands of one read share one buffer and only the last is
# sent (the gateway answers each), so every exchange writes one command a time.
AUTH_CASES = [
    ("-Y: a command before authenticating", [b"get a\r\n", b"version\r\n"]),
    ("-Y: a wrong password", [b"set x 0 0 11\r\nalice wrong\r\n", b"get a\r\n"]),
    ("-Y: no password", [b"set x 0 0 5\r\nalice\r\n"]),
    ("-Y: data without CRLF", [b"set x 0 0 3\r\nabcde"]),
    ("-Y: a set too short", [b"set x 0 0\r\n"]),
    ("-Y: another command word", [b"add x 0 0 12\r\n", b"alice wonder\r\n"]),
    ("-Y: authenticate, then served", [b"set x 0 0 12\r\nalice wonder\r\n", b"set k 0 0 1\r\nv\r\nget k\r\n"]),
    ("-Y: the second user, extra tokens", [b"set y 1 2 16\r\nbob builder more\r\n", b"get k\r\n"]),
    ("-Y: retry after a failure", [b"set x 0 0 10\r\nbob wonder\r\n", b"set x 0 0 11\r\nbob builder\r\n",
                                   b"get k\r\n"]),
    ("-Y: the set line and its data apart", [b"set x 0 0 12\r\n", b"alice wonder\r\n", b"get k\r\n"]),
    ("-Y: 2049 bytes without a newline", [b"s" * 2049]),
]


def client_auth(c, mc_port, users):
    """-Y: the text protocol's authentication compared with memcached -Y on the
    same file; binary SASL PLAIN (memcached -Y refuses binary, and Debian's
    memcached -S reads only a sasldb: memcached's answers are written out);
    pymemcache and pylibmc authenticating."""
    port = kt.free_port()
    argv = [kt.binary("kumo-gateway"), "-o", "-", "-m", c.mgr_addr, "-t", "127.0.0.1:%d" % port, "-Y", users]
    d = kt.Daemon("kumo-gateway(-Y)", argv, c.log("gateway-auth")).start()
    try:
        kt.wait_until(lambda: kt.raw_roundtrip(port, b"set x 0 0 12\r\nalice wonder\r\nget k\r\n") ==
                      b"STORED\r\n", 30, "the -Y gateway", daemons=[d])
        same = 0
        for name, chunks in AUTH_CASES:
            want, want_closed = exchange(mc_port, chunks, False, wait=0.5)
            got, got_closed = exchange(port, chunks, False, wait=0.5)
            same += tap.ok(got == want and got_closed == want_closed, "as memcached " + name,
                           "memcached: %r closed=%s\ngateway:   %r closed=%s" % (want, want_closed, got, got_closed))
        tap.note("%d of %d -Y exchanges identical to memcached" % (same, len(AUTH_CASES)))

        # binary SASL on the same port
        with kt.Raw(port) as r:
            r.send(kt.bin_packet(0x0b, opaque=1) + kt.bin_packet(0x20, opaque=2) + kt.bin_packet(0x21, b"PLAIN", b"\0alice\0nope", opaque=3))
            p = [kt.bin_read(r) for _ in range(3)]
            tap.ok(p[0]["status"] == 0 and p[1]["status"] == 0 and p[1]["value"] == b"PLAIN",
                   "SASL: VERSION and LIST_MECHS (PLAIN) before authenticating", repr(p[:2]))
            tap.ok(p[2]["status"] == 0x20 and p[2]["value"] == b"Auth failure.",
                   "SASL PLAIN with a wrong password: 0x20 Auth failure.", repr(p[2]))
            r.send(kt.bin_packet(0x21, b"PLAIN", b"\0alice\0wonder", opaque=4) + kt.bin_packet(0x0a, opaque=5))
            p = [kt.bin_read(r) for _ in range(2)]
            tap.ok(p[0]["status"] == 0 and p[0]["value"] == b"Authenticated" and p[1]["opaque"] == 5,
                   "SASL PLAIN alice: Authenticated, then served", repr(p))
        with kt.Raw(port) as r:
            r.send(kt.bin_packet(0x0c, b"k", opaque=6))
            p = kt.bin_read(r)
            tap.ok(p["status"] == 0x20 and p["opaque"] == 6, "binary GETK before SASL: 0x20", repr(p))
            try:
                closed = r.sock.recv(1) == b""
            except OSError:
                closed = True
            tap.ok(closed, "... and the connection is closed, as memcached -S does")

        # real clients
        from pymemcache.client.base import Client
        from pymemcache.exceptions import MemcacheClientError
        pm = Client(("127.0.0.1", port), connect_timeout=5, timeout=5)
        try:
            pm.get("k")
            refused = False
        except MemcacheClientError as e:
            refused = "unauthenticated" in str(e)
        tap.ok(refused, "pymemcache: a get before authenticating raises CLIENT_ERROR unauthenticated")
        tap.ok(pm.set("auth", b"bob builder", noreply=False) is True and pm.set("pk", b"pv", noreply=False)
               and pm.get("pk") == b"pv", "pymemcache: set <any> 'bob builder' authenticates, then set/get work")
        pm.close()
        import pylibmc
        lm = pylibmc.Client(["127.0.0.1:%d" % port], binary=True, username="alice", password="wonder")
        tap.ok(lm.set("lk", b"lv") and lm.get("lk") == b"lv" and lm.get("pk") == b"pv",
               "pylibmc binary=True with username/password (SASL PLAIN): set/get work")
        bad = pylibmc.Client(["127.0.0.1:%d" % port], binary=True, username="alice", password="no")
        try:
            bad.get("lk")
            refused = False
        except pylibmc.Error as e:
            refused = "AUTH" in str(e).upper()
        tap.ok(refused, "pylibmc with a wrong password is refused")
        st, _ = kt.raw_stats(c.gateway_port, b"stats settings")
        tap.eq((st.get("auth_enabled_sasl"), st.get("auth_enabled_ascii")), ("no", "no"),
               "without -Y: auth_enabled_sasl no, auth_enabled_ascii no")
    finally:
        d.stop()


def body():
    kt.require_binaries()
    with kt.PlainMemcached(extra_args=["-A", "-I", "2m"]) as mc, \
            kt.Cluster(nservers=3, gateway_args=["-A", "-I", "2m"], gateway_binary=True) as c:
        same = compare(mc.gateway_port, c.gateway_port)
        tap.note("%d of %d exchanges identical to memcached" % (same, len(CASES) + len(UNHONOURED)))
        half_closed_diff(mc.gateway_port, c.gateway_port)

        # the -b port negotiates too: text on it works
        buf, closed = exchange(c.gateway_binary_port, [b"set bp 0 0 1\r\nz\r\nget bp\r\n"])
        tap.eq(buf, b"STORED\r\nVALUE bp 0 1\r\nz\r\nEND\r\nMN\r\n", "the -b port serves text too")
        st, _ = kt.raw_stats(c.gateway_port, b"stats settings")
        mst, _ = kt.raw_stats(mc.gateway_port, b"stats settings")
        tap.eq(st.get("binding_protocol"), "auto-negotiate", "stats settings: binding_protocol auto-negotiate")
        tap.eq(st.get("item_size_max"), mst.get("item_size_max"), "-I 2m: item_size_max as memcached's")

        accept_pause(c)

        users = os.path.join(kt.new_tmpdir(), "users")
        with open(users, "w") as f:
            f.write("alice:wonder\nbob:builder\n")
        with kt.PlainMemcached(extra_args=["-Y", users]) as mcy:
            client_auth(c, mcy.gateway_port, users)

        # shutdown with -A: the connection closes without a word, the process exits
        for who, port, daemon in (("memcached", mc.gateway_port, mc.daemon), ("gateway", c.gateway_port, c.gateway)):
            buf, closed = exchange(port, [b"shutdown\r\n"], sentinel=False, wait=5)
            tap.ok(buf == b"" and closed, "%s: shutdown closes the connection silently" % who,
                   "got %r closed=%s" % (buf, closed))
            kt.wait_until(lambda: not daemon.alive(), 15, "%s to exit after shutdown" % who)
            tap.ok(not daemon.alive(), "%s: shutdown stops the process" % who)


if __name__ == "__main__":
    kt.main(body)

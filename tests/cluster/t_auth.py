#!/usr/bin/python3
"""t_auth.py — the optional cluster key (--cluster-key-file).

A manager, three servers and a gateway share one key file: memcached
clients are served, and kumoctl/kumostat with the key work. Without the key,
or with another one, the tools fail with a clear message and exit 1 and the
daemons log the refusal. A server with another key cannot join (it never
shows in `kumoctl status`); started again with the right key it is attached
and gets its data through the replace stream. A raw connection that sends a
hello and a request without a proof gets no answer and is closed. A manager
without a key and a server with one refuse each other. A key file others can
read, or a short one, stops a daemon and a tool with exit 64 naming it.
The manager's -c binds the address it is given.
"""
import hashlib
import hmac
import os
import socket
import struct

import kumotest as kt
from kumotest import tap

CTL_STATUS = 99


def write_key(path, data, mode=0o640):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def mp_decode(buf, i=0):
    """One msgpack object of buf at i (the types the node protocol uses):
    (object, next index); IndexError/struct.error when incomplete."""
    b = buf[i]
    i += 1
    if b <= 0x7f:
        return b, i
    if b >= 0xe0:
        return b - 0x100, i
    if 0x90 <= b <= 0x9f or b in (0xdc, 0xdd):
        n, i = (b & 0x0f, i) if b <= 0x9f else _mp_len(buf, i, 2 if b == 0xdc else 4)
        out = []
        for _ in range(n):
            o, i = mp_decode(buf, i)
            out.append(o)
        return out, i
    if 0x80 <= b <= 0x8f or b in (0xde, 0xdf):
        n, i = (b & 0x0f, i) if b <= 0x8f else _mp_len(buf, i, 2 if b == 0xde else 4)
        out = {}
        for _ in range(n):
            k, i = mp_decode(buf, i)
            out[k if not isinstance(k, list) else tuple(k)], i = mp_decode(buf, i)
        return out, i
    if 0xa0 <= b <= 0xbf or b in (0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb):
        if b <= 0xbf:
            n = b & 0x1f
        else:
            n, i = _mp_len(buf, i, {0xc4: 1, 0xd9: 1, 0xc5: 2, 0xda: 2}.get(b, 4))
        if i + n > len(buf):
            raise IndexError("incomplete")
        return bytes(buf[i:i + n]), i + n
    if b == 0xc0:
        return None, i
    if b in (0xc2, 0xc3):
        return b == 0xc3, i
    fmt = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q"}[b]
    n = struct.calcsize(fmt)
    return struct.unpack(fmt, buf[i:i + n])[0], i + n


def _mp_len(buf, i, n):
    return int.from_bytes(buf[i:i + n], "big") if i + n <= len(buf) else _incomplete(), i + n


def _incomplete():
    raise IndexError("incomplete")


def mp_frames(data):
    """Every complete top-level object of data."""
    out, i = [], 0
    while i < len(data):
        try:
            o, i = mp_decode(data, i)
        except (IndexError, struct.error):
            break
        out.append(o)
    return out


def raw_rpc(port, hello, then):
    """Connect to an RPC port, send hello + then, read until the peer closes
    (or 5 s pass). Returns (frames received, closed by the peer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data, closed = b"", False
    try:
        s.sendall(hello + then)
        while True:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            data += d
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    s.close()
    return mp_frames(data), closed


def hello(nonce=None):
    """[2, tool, bin(0), 1, 0, 0 (, nonce)] packed by hand: clock and
    incarnation 0, then the nonce."""
    h = bytes([0x96 if nonce is None else 0x97, 0x02, 0x03, 0xc4, 0x00, 0x01, 0x00, 0x00])
    return h + (bytes([0xc4, len(nonce)]) + nonce if nonce is not None else b"")


def status_request(msgid=1):
    return bytes([0x94, 0x00, msgid, 0xcc, CTL_STATUS, 0x90])   # [0, msgid, 99, []]


def proof(key_path, connected, role, receiver_nonce, sender_nonce):
    """docs/protocol.md §1.1, computed independently of src/lib/auth.c."""
    k = open(key_path, "rb").read()
    k = k[:-1] if k.endswith(b"\n") else k
    msg = b"kumofs-auth-v1" + (b"C" if connected else b"A") + bytes([role]) + receiver_nonce + sender_nonce
    return hmac.new(k, msg, hashlib.sha256).digest()


def raw_proven(port, key_path):
    """The handshake by hand, then CTL/SRV status: (daemon's proof right, reply frame or None)."""
    nonce = os.urandom(32)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data, frames, sent, good = b"", [], False, False
    try:
        s.sendall(hello(nonce))
        while True:
            frames = mp_frames(data)
            if not sent and frames:
                h = frames[0]
                p = proof(key_path, True, 3, h[6], nonce)
                s.sendall(bytes([0x92, 0x03, 0xc4, 0x20]) + p + status_request(7))
                sent = True
            if len(frames) >= 2:
                good = frames[1][:1] == [3] and frames[1][1] == proof(key_path, False, frames[0][1], nonce,
                                                                      frames[0][6])
            reply = [f for f in frames if isinstance(f, list) and f[:2] == [1, 7]]
            if reply:
                return good, reply[0]
            d = s.recv(65536)
            if not d:
                return good, None
            data += d
    except (OSError, IndexError, TypeError):
        return good, None
    finally:
        s.close()


def log_has(daemon, text, timeout=10):
    try:
        kt.wait_until(lambda: text in daemon.tail(400), timeout, "'%s' in %s's log" % (text, daemon.name))
        return True
    except TimeoutError:
        return False


def tool_refused(r, name, must):
    tap.ok(r.returncode == 1 and must in r.stderr, "%s: exit 1, says '%s'" % (name, must),
           "exit %s\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout[-500:], r.stderr[-1000:]))


def body():
    kt.require_binaries()
    kt.require_module("pymemcache")
    tmp = kt.new_tmpdir()
    key = write_key(os.path.join(tmp, "cluster.key"), os.urandom(32))
    wrong = write_key(os.path.join(tmp, "wrong.key"), os.urandom(32))

    tap.note("bad key files stop daemons and tools with exit 64")
    loose = write_key(os.path.join(tmp, "loose.key"), os.urandom(32), 0o644)
    short = write_key(os.path.join(tmp, "short.key"), b"0123456789\n", 0o600)
    mport, cport = kt.free_port(), kt.free_port()
    for f, why in ((loose, "readable by others"), (short, "too short"), (os.path.join(tmp, "nope"), "missing")):
        st, out = kt.run_expect_exit([kt.binary("kumo-manager"), "-l", "127.0.0.1:%d" % mport, "-c", cport,
                                      "--cluster-key-file", f])
        tap.ok(st == kt.EX_USAGE and f in out, "kumo-manager with a %s key file: exit 64 naming it" % why,
               "exit %s: %s" % (st, out[-800:]))
    r = kt.run_tool([kt.binary("kumoctl"), "127.0.0.1:%d" % cport, "status"], key_file=loose)
    tap.ok(r.returncode == kt.EX_USAGE and loose in r.stderr, "kumoctl with a key file others can read: exit 64",
           "exit %s: %s" % (r.returncode, r.stderr))

    tap.note("-c addr:port binds that address only; a bare port every interface")
    for ctl, where in (("127.0.0.1:%d", "127.0.0.1 only"), ("%d", "every interface")):
        mport, cport = kt.free_port(), kt.free_port()
        m = kt.Daemon("kumo-manager", [kt.binary("kumo-manager"), "-o", "-", "-l", "127.0.0.1:%d" % mport,
                                        "-c", ctl % cport], os.path.join(tmp, "bind-%d.log" % cport)).start()
        kt.wait_until(lambda: kt.port_open(cport), 20, "the control port", daemons=[m])
        tap.ok(kt.port_open(cport, "127.0.0.2") == (where == "every interface"),
               "-c %s: listens on %s (checked through 127.0.0.2)" % (ctl % cport, where))
        m.stop()

    with kt.Cluster(nservers=3, key_file=key) as c:
        tap.note("keyed cluster up: the servers joined, were attached and the gateway holds a hash space")
        mc = kt.mc_client(c.gateway_port)
        want = {("auth-%d" % i).encode(): os.urandom(50) for i in range(60)}
        for k, v in want.items():
            mc.set(k, v)
        mc.close()
        bad = kt.read_mismatches(c.gateway_port, want)
        tap.ok(not bad, "memcached sets and gets through the keyed gateway", "\n".join(bad[:10]))

        r = kt.run_tool([kt.binary("kumoctl"), "--cluster-key-file", key, c.ctl_addr, "status"])
        st = kt.Status(r.stdout) if r.returncode == 0 else None
        tap.ok(st and len([a for a, s in st.attached if s == "active"]) == 3,
               "kumoctl --cluster-key-file FILE status: three active servers", r.stdout + r.stderr)
        r = kt.run_tool([kt.binary("kumostat"), c.servers[0].addr, "items"], key_file=key)
        tap.ok(r.returncode == 0 and r.stdout.split() and r.stdout.split()[-1].isdigit(),
               "kumostat with $KUMO_CLUSTER_KEY_FILE: items", r.stdout + r.stderr)

        tap.note("tools without the key, or with another one")
        tool_refused(kt.run_tool([kt.binary("kumoctl"), c.ctl_addr, "status"]),
                     "kumoctl without a key", "requires the cluster key")
        tap.ok(log_has(c.manager, "has no cluster key"), "the manager logs the keyless peer")
        tool_refused(kt.run_tool([kt.binary("kumoctl"), c.ctl_addr, "attach"], key_file=wrong),
                     "kumoctl with another key", "another cluster key")
        tap.ok(log_has(c.manager, "wrong cluster key proof"), "the manager logs the wrong proof")
        tool_refused(kt.run_tool([kt.binary("kumostat"), c.servers[1].addr, "items"]),
                     "kumostat without a key", "requires the cluster key")
        tap.ok(log_has(c.servers[1].daemon, "has no cluster key"), "the server logs the keyless peer")
        tool_refused(kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "items"], key_file=wrong),
                     "kumostat -m with another key", "another cluster key")

        tap.note("the handshake done by hand (the documented wire format) is answered")
        for port, what in ((c.ctl_port, "manager control port"), (c.servers[0].port, "server port")):
            good, reply = raw_proven(port, key)
            tap.ok(good, "%s: the daemon's proof is HMAC-SHA256 as documented" % what)
            tap.ok(reply is not None, "%s: a request after our proof gets its answer" % what, kt.short(reply))

        tap.note("raw connections that never prove the key")
        for port, what in ((c.mgr_port, "manager cluster port"), (c.ctl_port, "manager control port"),
                           (c.servers[0].port, "server port")):
            frames, closed = raw_rpc(port, hello(os.urandom(32)), status_request())
            kinds = [f[0] for f in frames if isinstance(f, list) and f]
            tap.ok(closed and 1 not in kinds and kinds[:1] == [2],
                   "%s: hello with a nonce, then a request without a proof: no answer, closed" % what,
                   "closed=%s frames=%s" % (closed, kt.short(frames)))
            hs = [f for f in frames if isinstance(f, list) and f[:1] == [2]]
            tap.ok(hs and len(hs[0]) >= 7 and isinstance(hs[0][6], bytes) and len(hs[0][6]) == 32,
                   "%s: its hello carries a 32-byte nonce" % what, kt.short(frames))
            frames, closed = raw_rpc(port, hello(), status_request())
            kinds = [f[0] for f in frames if isinstance(f, list) and f]
            tap.ok(closed and 1 not in kinds, "%s: hello without a nonce, then a request: no answer, closed" % what,
                   "closed=%s frames=%s" % (closed, kt.short(frames)))
        frames, closed = raw_rpc(c.ctl_port, hello(os.urandom(32)),
                                 bytes([0x92, 0x03, 0xc4, 0x20]) + os.urandom(32) + status_request())
        kinds = [f[0] for f in frames if isinstance(f, list) and f]
        tap.ok(closed and 1 not in kinds, "a made-up proof, then a request: no answer, closed", kt.short(frames))

        s = socket.create_connection(("127.0.0.1", c.mgr_port), timeout=30)   # 30 s: a hang guard
        s.sendall(hello(os.urandom(32)))
        try:
            while s.recv(65536):
                pass
            closed = True
        except (socket.timeout, ConnectionResetError) as e:
            closed = isinstance(e, ConnectionResetError)
        s.close()
        tap.ok(closed, "a peer that never sends its proof is disconnected (RPC_HELLO_TIMEOUT)")
        tap.ok(log_has(c.manager, "no cluster key proof within"), "the manager logs the silent peer")

        tap.note("a server with another key cannot join")
        extra = kt.Server(4, kt.free_port(), kt.free_port(), os.path.join(c.dir, "server4.tch"),
                          os.path.join(c.dir, "tmp4"))
        os.makedirs(extra.tmpdir)
        c.servers.append(extra)
        c.server_args = ["--cluster-key-file", wrong]
        c.start_server(extra)
        tap.ok(log_has(extra.daemon, "another cluster key") or log_has(extra.daemon, "wrong cluster key proof"),
               "the server with another key logs the refusal")
        seen = []

        def unlisted():
            seen[:] = [c.status()]
            return extra.addr not in seen[0].not_attached and extra.addr not in seen[0].attached_addrs()
        try:    # over a few ticks: it would show up in one of them
            kt.holds_for(unlisted, 3.0, "%s unlisted" % extra.addr, interval=0.25)
            tap.ok(True, "kumoctl status does not list it", repr(seen))
        except TimeoutError as e:
            tap.ok(False, "kumoctl status does not list it", "%s: %r" % (e, seen))
        r = c.kumoctl("attach")
        st = c.status()
        tap.ok(r.returncode == 0 and extra.addr not in [a for a, _ in st.attached],
               "kumoctl attach does not attach it", repr(st))
        c.check_running("the daemons keep running")
        extra.daemon.stop()

        tap.note("the same server with the right key joins; the replace stream copies its data")
        c.server_args = ["--cluster-key-file", key]
        c.start_server(extra)
        c.wait_not_attached([extra])
        c.attach(c.servers)
        kt.wait_until(lambda: all(c.hsccheck(s) for s in c.servers) and "replace:" not in c.kumoctl("status").stdout,
                      60, "the replace to finish", interval=0.5, daemons=c.daemons())
        ring = c.ring()
        mine = [k for k in want if extra.addr in ring.owners(k)]
        tap.ok(mine and c.items(extra) >= len(mine),
               "the new server holds its %d keys after the replace" % len(mine), "items %s" % c.items(extra))
        bad = kt.read_mismatches(c.gateway_port, want)
        tap.ok(not bad, "every key still reads back", "\n".join(bad[:10]))
        c.check_running()

    tap.note("a manager without a key and a server with one refuse each other")
    with kt.Cluster(nservers=1, gateway=False, start=False) as c:
        c.start_manager()
        c.server_args = ["--cluster-key-file", key]
        srv = c.servers[0]
        c.start_server(srv)
        tap.ok(log_has(srv.daemon, "has no cluster key"), "the keyed server refuses the keyless manager")
        tap.ok(log_has(c.manager, "requires a cluster key and we have none"),
               "the keyless manager refuses the keyed server")
        st = c.status()
        tap.ok(srv.addr not in st.not_attached, "the server is not listed", repr(st))
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

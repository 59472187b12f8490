#!/usr/bin/python3
"""t_tools — the operator tools against a live cluster (kumostat(1), kumotop(1), kumolog(1), kumohash(1)):
kumohash, kumostat, kumotop, kumolog; the binary log (-g) across a SIGHUP
rotation; /metrics (--metrics) read by a Prometheus text-format parser;
tombstone collection (-gX, -gS, -gN).

Five servers, so that each key has three of five owners. Every daemon runs
with -g and --metrics. In order:

  * kumohash: `hash` against the SHA-1 rule, `assign -m` for 150 keys set
    through the gateway, the same answers from the explicit server list,
    `dump` (128 vnodes per server, ascending), bad input;
  * kumostat: every command on one server and with -m (prefixes, numbers,
    hash spaces, hsccheck, set_delay/unset_delay, replace, stats), bad input
    (unknown command, unreachable address, a peer that answers garbage, one
    that never answers: all a message and exit 1, within the timeout);
  * kumotop: piped snapshots (-n), a closed pipe, a pseudo-terminal in a wide
    and a narrow window quitting on 'q';
  * /metrics on the manager, a server and the gateway, in both formats,
    checked by the parser below and against kumostat and what was sent,
    and by `promtool check metrics` (Debian's prometheus package); the
    process_* metrics; /healthz;
    a 100-key get reaches the servers as a few batched requests, not 100;
  * tombstones: deletes leave tombstones that -gX 3 collects;
  * kumolog: each daemon's log, `kumolog -f` following a server's log across
    logrotate (rename + SIGHUP), -t/-h/-n, damaged and foreign files;
  * one server is stopped: `kumohash -m assign` marks it (fault);
  * the cluster is stopped and each server's Tokyo Cabinet file is read:
    every key is stored on exactly the owners kumohash named.
A second, one-server cluster checks -gS/-gN: under memory pressure young
tombstones are forgotten (they stay on disk) and old ones are removed.
"""
import math
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import fcntl
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
NSERVERS = 5
NKEYS = 150
TOOLS = ("kumohash", "kumostat", "kumotop", "kumolog")


def tool(name):
    return kt.binary(name)


class ToolsCluster(kt.Cluster):
    """A Cluster whose daemons all write a binary log and serve /metrics."""

    def __init__(self, **kw):
        super().__init__(**kw)
        for s in self.servers:
            s.binlog = os.path.join(self.dir, "server%d.mpac" % s.index)
            s.metrics_port = kt.free_port()
        self.mgr_binlog = os.path.join(self.dir, "manager.mpac")
        self.mgr_metrics = kt.free_port()
        self.gw_binlog = os.path.join(self.dir, "gateway.mpac")
        self.gw_metrics = kt.free_port()

    def server_argv(self, s):
        return super().server_argv(s) + ["-g", s.binlog, "--metrics", "127.0.0.1:%d" % s.metrics_port]

    def manager_argv(self):
        return super().manager_argv() + ["-g", self.mgr_binlog, "--metrics", "127.0.0.1:%d" % self.mgr_metrics]

    def gateway_argv(self):
        return super().gateway_argv() + ["-g", self.gw_binlog, "--metrics", str(self.gw_metrics)]


# --------------------------------------------------------------------------
# a Prometheus / OpenMetrics text-format parser (strict enough to catch
# anything a real scraper would refuse)
# --------------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"


class ParseError(Exception):
    pass


def parse_labels(text, lineno):
    """'a="x",b="y\\"z"' -> {'a': 'x', 'b': 'y"z'}"""
    labels = {}
    i = 0
    while i < len(text):
        m = re.match(LABEL, text[i:])
        if not m:
            raise ParseError("line %d: bad label name at %r" % (lineno, text[i:]))
        name = m.group(0)
        i += len(name)
        if text[i:i + 2] != '="':
            raise ParseError("line %d: label %s without =\"" % (lineno, name))
        i += 2
        val = []
        while True:
            if i >= len(text):
                raise ParseError("line %d: unterminated label value" % lineno)
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ParseError("line %d: bad escape \\%s" % (lineno, nxt))
                val.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            if c == '"':
                i += 1
                break
            val.append(c)
            i += 1
        if name in labels:
            raise ParseError("line %d: label %s twice" % (lineno, name))
        labels[name] = "".join(val)
        if i < len(text):
            if text[i] != ",":
                raise ParseError("line %d: expected ',' between labels" % lineno)
            i += 1
    return labels


def parse_value(text, lineno):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ParseError("line %d: bad value %r" % (lineno, text))


def parse_metrics(text, openmetrics):
    """Parse the exposition text. Returns {family: {"type", "help", "samples": [(name, labels, value)]}}.
    Raises ParseError for anything a scraper would refuse."""
    families = {}
    current = None
    seen_series = set()
    lines = text.split("\n")
    if not text.endswith("\n"):
        raise ParseError("the text does not end with a newline")
    lines = lines[:-1]
    if openmetrics:
        if not lines or lines[-1] != "# EOF":
            raise ParseError("OpenMetrics text does not end with '# EOF'")
        lines = lines[:-1]
    for n, line in enumerate(lines, 1):
        if line == "":
            if openmetrics:
                raise ParseError("line %d: empty line in OpenMetrics text" % n)
            continue
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE|UNIT) (%s)(?: (.*))?$" % NAME, line)
            if not m:
                if openmetrics:
                    raise ParseError("line %d: bad comment %r" % (n, line))
                continue
            kind, fam, rest = m.group(1), m.group(2), m.group(3) or ""
            f = families.setdefault(fam, {"type": None, "help": None, "samples": []})
            if f["samples"]:
                raise ParseError("line %d: %s for %s after its samples" % (n, kind, fam))
            if kind == "TYPE":
                if f["type"] is not None:
                    raise ParseError("line %d: second TYPE for %s" % (n, fam))
                if rest not in ("counter", "gauge", "histogram", "summary", "untyped", "unknown",
                                "info", "stateset", "gaugehistogram"):
                    raise ParseError("line %d: unknown type %r" % (n, rest))
                if openmetrics and fam.endswith("_total") and rest == "counter":
                    raise ParseError("line %d: OpenMetrics counter family named with _total" % n)
                f["type"] = rest
            elif kind == "HELP":
                if f["help"] is not None:
                    raise ParseError("line %d: second HELP for %s" % (n, fam))
                f["help"] = rest
            current = fam
            continue
        m = re.match(r"^(%s)(?:\{(.*)\})? (\S+)(?: (\S+))?$" % NAME, line)
        if not m:
            raise ParseError("line %d: not a sample: %r" % (n, line))
        name, labels, value = m.group(1), parse_labels(m.group(2) or "", n), parse_value(m.group(3), n)
        fam = current
        f = families.get(fam) if fam else None
        if f is None:
            raise ParseError("line %d: sample %s outside a family" % (n, name))
        allowed = {fam}
        if f["type"] == "counter" and openmetrics:
            allowed = {fam + "_total", fam + "_created"}
        if f["type"] == "histogram":
            allowed = {fam + "_bucket", fam + "_sum", fam + "_count"}
        if name not in allowed:
            raise ParseError("line %d: sample %s does not belong to family %s (%s)" % (n, name, fam, f["type"]))
        if f["type"] == "counter" and (value < 0 or math.isnan(value)):
            raise ParseError("line %d: counter %s is %r" % (n, name, value))
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise ParseError("line %d: series %s%s twice" % (n, name, labels))
        seen_series.add(key)
        f["samples"].append((name, labels, value))
    for fam, f in families.items():
        if f["type"] is None:
            raise ParseError("family %s has no TYPE" % fam)
    return families


def scrape(port, openmetrics=False, path="/metrics"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if openmetrics:
        req.add_header("Accept", "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")


def metric(families, name, **labels):
    """The value of one series: name is the sample name (with _total for counters)."""
    for fam in families.values():
        for n, lab, v in fam["samples"]:
            if n == name and all(lab.get(k) == str(w) for k, w in labels.items()):
                return v
    return None


def parser_selftest():
    good = ('# HELP a_total x\n# TYPE a_total counter\na_total 3\n'
            '# HELP g y \\\\ z\n# TYPE g gauge\ng{l="a\\"b",m="c"} 1.5\ng{l="x"} -2e3\n')
    fam = parse_metrics(good, False)
    tap.ok(metric(fam, "a_total") == 3 and metric(fam, "g", l='a"b') == 1.5 and metric(fam, "g", l="x") == -2000,
           "metrics parser: reads counters, gauges, escaped labels")
    bad = ["a 1\n", "# TYPE a gauge\na{l=x} 1\n", "# TYPE a gauge\na 1\na 1\n", "# TYPE a gauge\nb 1\n",
           "# TYPE a counter\na -1\n", "# TYPE a gauge\n# TYPE a gauge\n", "# TYPE a gauge\na one\n",
           "# TYPE a gauge\na 1"]
    refused = 0
    for b in bad:
        try:
            parse_metrics(b, False)
        except ParseError:
            refused += 1
    tap.eq(refused, len(bad), "metrics parser: refuses %d kinds of broken text" % len(bad))
    try:
        parse_metrics("# TYPE a counter\na_total 1\n", True)
        om_eof = False
    except ParseError:
        om_eof = True
    tap.ok(om_eof, "metrics parser: OpenMetrics text must end with # EOF")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def run(argv, timeout=30):
    line = " ".join(str(a) for a in argv)
    tap.note("$ " + (line if len(line) < 200 else line[:200] + " ..."))
    return kt.run_tool(argv, timeout=timeout)


def expect_fail(argv, name, status, mention=(), within=25):
    t0 = time.time()
    r = run(argv, timeout=within + 5)
    took = time.time() - t0
    out = r.stdout + r.stderr
    missing = [m for m in mention if m.lower() not in out.lower()]
    ok = r.returncode == status and not missing and took <= within
    return tap.ok(ok, "%s: exit %d%s, in %.1f s" % (name, status, ", says %s" % "/".join(mention) if mention else "",
                                                   took),
                  None if ok else "exit %s, missing %s, took %.1f s, output:\n%s" % (r.returncode, missing, took,
                                                                                    out[-1500:]))


def parse_assign(text):
    """kumohash assign output -> {key: [(addr, fault)]}, and {key: hash}"""
    owners, hashes, key = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{16})  (.*)$", line)
        if m:
            key = m.group(2)
            hashes[key] = int(m.group(1), 16)
            owners[key] = []
            continue
        m = re.match(r"^  (\d): (\S+)( \(fault\))?$", line)
        if m and key is not None:
            if int(m.group(1)) != len(owners[key]):
                raise ValueError("owner index out of order in %r" % line)
            owners[key].append((m.group(2), bool(m.group(3))))
            continue
        raise ValueError("unexpected line %r" % line)
    return owners, hashes


class GarbagePeer:
    """A TCP listener that answers every connection with junk, or never answers."""

    def __init__(self, junk):
        self.junk = junk
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            if self.junk:
                try:
                    c.sendall(self.junk)
                except OSError:
                    pass

    def close(self):
        self.stop = True
        self.t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def kumolog_lines(path, *opts):
    r = kt.run_tool([tool("kumolog")] + list(opts) + [path], timeout=20)
    return r.returncode, [l for l in r.stdout.splitlines() if l], r.stderr


LOGLINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d) (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) (\S+)  (\S+)(  (.*))?$")


def logline(line):
    m = LOGLINE.match(line)
    if not m:
        return None
    fields = dict(re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', m.group(6) or ""))
    return {"level": m.group(2).strip(), "node": m.group(3), "event": m.group(4), "fields": fields}


def events(lines):
    out = []
    for l in lines:
        p = logline(l)
        out.append(p["event"] if p else "?" + l)
    return out


# --------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------

def check_help():
    for t in TOOLS:
        r = run([tool(t), "--help"])
        tap.ok(r.returncode == 0 and "Usage" in r.stdout, "%s --help: exit 0 and a usage text" % t,
               r.stdout + r.stderr)
    r = run([tool("kumostat"), "--help"])
    missing = [c for c in ("pid", "uptime", "time", "version", "cmd_get", "cmd_set", "cmd_delete", "items", "rhs",
                           "whs", "hsccheck", "set_delay", "unset_delay") if not re.search(r"^  %s " % c, r.stdout, re.M)]
    tap.ok(not missing, "kumostat --help lists every command of kumofs 0.4", "missing: %s" % missing)
    r = run([tool("kumohash"), "--help"])
    tap.ok(all(re.search(r"^ +%s" % c, r.stdout, re.M) for c in ("hash", "assign", "dump")),
           "kumohash --help lists hash, assign, dump")
    for d in kt.DAEMONS:
        r = run([kt.binary(d), "--help"])
        tap.ok(r.returncode == 0 and "--metrics" in r.stdout and "-g, --binary-log" in r.stdout,
               "%s --help shows -g and --metrics" % d)


def check_kumohash(c, order, keys):
    mgr = c.mgr_addr
    r = run([tool("kumohash"), "-m", mgr, "hash"] + keys[:5])
    want = "".join("%016x  %s\n" % (kt.khash(k), k) for k in keys[:5])
    tap.eq(r.stdout, want, "kumohash hash: %016x of SHA-1's first 8 bytes, little-endian")
    tap.eq(r.returncode, 0, "kumohash hash: exit 0")

    r = run([tool("kumohash"), "-m", mgr, "assign"] + keys)
    tap.eq(r.returncode, 0, "kumohash -m assign: exit 0")
    try:
        owners, hashes = parse_assign(r.stdout)
    except ValueError as e:
        tap.ok(False, "kumohash assign output parses", str(e))
        return {}
    tap.eq(sorted(owners), sorted(keys), "kumohash assign answers every key")
    ring = kt.Ring(order)
    wrong = ["%s: %s vs %s" % (k, owners.get(k), ring.owners(k)) for k in keys
             if [a for a, _ in owners.get(k, [])] != ring.owners(k)]
    tap.ok(not wrong, "kumohash assign = the placement rule (Python ring of the attached list)",
           "\n".join(wrong[:10]))
    tap.ok(all(len(v) == 3 and not any(f for _, f in v) for v in owners.values()),
           "three distinct owners each, none marked fault")

    r2 = run([tool("kumohash")] + order + ["--", "assign"] + keys)
    tap.eq(r2.stdout, r.stdout, "kumohash server... -- assign gives the same answers as -m")
    r3 = run([tool("kumohash"), "-r", "-m", mgr, "assign"] + keys[:3])
    tap.ok(r3.returncode == 0 and r3.stdout == "".join(
        l + "\n" for l in r.stdout.splitlines()[:12]), "kumohash -r (rhs) = whs when no replace runs")

    r = run([tool("kumohash"), "-m", mgr, "dump"])
    lines = r.stdout.splitlines()
    tap.eq(len(lines), 128 * NSERVERS, "kumohash dump: 128 vnodes per server")
    vn = [(int(l.split()[0], 16), l.split()[1]) for l in lines if re.match(r"^[0-9a-f]{16}  \S+$", l)]
    tap.ok(len(vn) == len(lines) and vn == sorted(vn, key=lambda x: x[0]), "dump: '%016x  ip:port', ascending")
    per = {}
    for _, a in vn:
        per[a] = per.get(a, 0) + 1
    tap.eq(per, {a: 128 for a in order}, "dump: each server 128 times")
    want_vn = sorted((h, a) for a in order for h in kt.vnode_hashes(a))
    tap.ok([h for h, _ in vn] == [h for h, _ in want_vn], "dump: the vnode hashes of the placement rule")

    tap.note("kumohash bad input")
    expect_fail([tool("kumohash")], "kumohash without arguments", 64, ["usage"])
    expect_fail([tool("kumohash"), "-m", mgr, "frobnicate", "x"], "kumohash unknown command", 64, ["frobnicate"])
    expect_fail([tool("kumohash"), "-m", mgr, "assign"], "kumohash assign without keys", 64, ["key"])
    expect_fail([tool("kumohash"), "127.0.0.1:1", "assign", "x"], "kumohash servers without --", 64, ["--"])
    dead = kt.free_port()
    expect_fail([tool("kumohash"), "-m", "127.0.0.1:%d" % dead, "assign", "x"], "kumohash -m unreachable manager",
                1, ["127.0.0.1:%d" % dead])
    return owners


def check_kumostat(c, order, expect_items, primaries):
    srv = c.servers[0]
    st = tool("kumostat")
    tap.note("kumostat on one server")
    r = run([st, srv.addr, "pid"])
    tap.eq(r.stdout.strip(), str(srv.daemon.pid), "kumostat pid = the server's pid")
    r = run([st, srv.addr, "uptime"])
    tap.ok(r.returncode == 0 and r.stdout.strip().isdigit() and int(r.stdout) < 600, "kumostat uptime: seconds",
           r.stdout + r.stderr)
    r = run([st, srv.addr, "time"])
    tap.ok(r.returncode == 0 and abs(int(r.stdout.strip() or 0) - time.time()) < 5, "kumostat time: UNIX time",
           r.stdout + r.stderr)
    v = run([kt.binary("kumo-server"), "--version"]).stdout.split()[-1].rstrip(")")
    r = run([st, srv.addr, "version"])
    tap.eq(r.stdout.strip(), v, "kumostat version = kumo-server --version (%s)" % v)
    for s in c.servers:
        r = run([st, s.addr, "items"])
        tap.eq(r.stdout.strip(), str(expect_items[s.addr]), "kumostat %s items" % s.addr)
    for cmd in ("cmd_get", "cmd_set", "cmd_delete"):
        r = run([st, srv.addr, cmd])
        tap.ok(r.returncode == 0 and r.stdout.strip().isdigit(), "kumostat %s: a number" % cmd, r.stdout + r.stderr)
    r = run([st, srv.addr, "cmd_set"])
    tap.eq(r.stdout.strip(), str(primaries.get(srv.addr, 0)), "kumostat cmd_set = the keys it coordinated")
    for hs in ("whs", "rhs"):
        r = run([st, srv.addr, hs])
        s = kt.Status(r.stdout)
        tap.ok(r.returncode == 0 and s.timestamp and re.search(r"clock \d+$", s.timestamp) and
               s.attached == [(a, "active") for a in order],
               "kumostat %s: 'hash space timestamp:', the time, 'node:' and every server (active)" % hs,
               r.stdout + r.stderr)
    r = run([st, srv.addr, "hsccheck"])
    tap.eq(r.stdout, "true\n", "kumostat hsccheck: true (rhs == whs)")
    for cmd in ("set_delay", "unset_delay"):
        r = run([st, srv.addr, cmd])
        tap.ok(r.returncode == 0 and r.stdout.strip().isdigit() and int(r.stdout) >= 1,
               "kumostat %s: the number of connections changed" % cmd, r.stdout + r.stderr)
    r = run([st, srv.addr, "replace"])
    tap.eq(r.stdout, "ready\n", "kumostat replace: ready")
    r = run([st, srv.addr, "stats"])
    lines = r.stdout.splitlines()
    tap.ok(lines[:1] == ["STAT pid %d" % srv.daemon.pid] and lines[-1:] == ["END"] and
           "STAT curr_items %d" % expect_items[srv.addr] in lines, "kumostat stats: STAT lines and END",
           r.stdout + r.stderr)

    tap.note("kumostat -m: every attached, active server, prefixed")
    r = run([st, "-m", c.mgr_addr, "pid"])
    want = "".join("%s:  %d\n" % (a, c.server_by_addr(a).daemon.pid) for a in order)
    tap.eq(r.stdout, want, "kumostat -m pid: 'host:port:  pid' for each server, in whs order")
    r = run([st, "-m", c.mgr_addr, "items"])
    tap.eq(r.stdout, "".join("%s:  %d\n" % (a, expect_items[a]) for a in order), "kumostat -m items")
    r = run([st, "-m", c.mgr_addr, "hsccheck"])
    tap.eq(r.stdout, "".join("%s:  true\n" % a for a in order), "kumostat -m hsccheck")
    r = run([st, "-m", c.mgr_addr, "whs"])
    heads = [l for l in r.stdout.splitlines() if not l.startswith(" ") and l not in ("hash space timestamp:", "node:")]
    tap.eq(heads, ["%s:" % a for a in order], "kumostat -m whs: a 'host:port:' line before each block")
    r = run([st, "-m", c.mgr_addr, "unset_delay"])
    tap.ok(r.returncode == 0 and len(r.stdout.splitlines()) == NSERVERS, "kumostat -m unset_delay")

    tap.note("kumostat bad input")
    expect_fail([st, srv.addr, "frobnicate"], "kumostat unknown command", 64, ["frobnicate", "usage"])
    expect_fail([st], "kumostat without arguments", 64, ["usage"])
    expect_fail([st, srv.addr], "kumostat without a command", 64, ["command"])
    dead = kt.free_port()
    expect_fail([st, "127.0.0.1:%d" % dead, "pid"], "kumostat unreachable server", 1, ["127.0.0.1:%d" % dead])
    expect_fail([st, "-m", "127.0.0.1:%d" % dead, "pid"], "kumostat -m unreachable manager", 1,
                ["127.0.0.1:%d" % dead])
    expect_fail([st, "nosuch.invalid", "pid"], "kumostat unresolvable name", 1, ["nosuch.invalid"], within=40)
    g = GarbagePeer(b"HTTP/1.0 400 Bad Request\r\n\r\n" + bytes(range(256)))
    try:
        expect_fail([st, "127.0.0.1:%d" % g.port, "items"], "kumostat against a peer that answers garbage", 1,
                    ["127.0.0.1:%d" % g.port])
    finally:
        g.close()
    g = GarbagePeer(b"")
    try:
        expect_fail([st, "127.0.0.1:%d" % g.port, "items"], "kumostat against a peer that never answers (timeout)",
                    1, ["timed out"], within=15)
    finally:
        g.close()


def check_kumotop(c, order):
    top = tool("kumotop")
    tap.note("kumotop piped: plain snapshots")
    r = run([top, "-m", c.mgr_addr, "-n", "2", "-i", "0.3"])
    lines = r.stdout.splitlines()
    heads = [l for l in lines if l.startswith("address")]
    rows = [l for l in lines if re.match(r"^127\.0\.0\.1:\d+ ", l)]
    tap.ok(r.returncode == 0 and len(heads) == 2 and len(rows) == 2 * NSERVERS,
           "kumotop -m -n 2 | cat: 2 snapshots of %d servers, exit 0" % NSERVERS, r.stdout + r.stderr)
    ok_rows = all(re.match(r"^(\S+) +\d+ +\d+ +\d+ +[\d.]+ +[\d.]+ +[\d.]+ +\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+ "
                           r"ready$", l) for l in rows)
    tap.ok(ok_rows, "each row: address, totals, rates, items, time, clock, state", "\n".join(rows))
    tap.eq(sorted(set(l.split()[0] for l in rows)), sorted(order), "the rows are the attached servers")
    dead = "127.0.0.1:%d" % kt.free_port()
    r = run([top, "-n", "1", "-i", "0.2", c.servers[0].addr, dead])
    tap.ok(r.returncode == 0 and re.search(r"^%s +down " % re.escape(dead), r.stdout, re.M) and
           re.search(r"^%s .* ready$" % re.escape(c.servers[0].addr), r.stdout, re.M),
           "kumotop server...: an unreachable server shows 'down' and its error", r.stdout + r.stderr)

    tap.note("kumotop into a pipe that closes")
    p = subprocess.Popen([top, "-m", c.mgr_addr, "-i", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    first = p.stdout.readline()
    p.stdout.close()
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "hung"
    err = p.stderr.read().decode()
    p.stderr.close()
    tap.ok(first.startswith(b"address") and rc == 0 and not err, "kumotop ends quietly with 0 when the pipe closes",
           "rc %s, stderr %r" % (rc, err))

    for cols, name in ((140, "wide"), (50, "narrow")):
        tap.note("kumotop on a %d-column terminal, then 'q'" % cols)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, cols, 0, 0))
        p = subprocess.Popen([top, "-m", c.mgr_addr, "-i", "0.3"], stdin=slave, stdout=slave, stderr=slave,
                             start_new_session=True, env=kt.daemon_env())
        os.close(slave)
        out = b""
        t0 = time.time()
        sent = False
        rc = None
        while time.time() - t0 < 15:
            rd, _, _ = select.select([master], [], [], 0.1)
            if rd:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    pass
            if not sent and time.time() - t0 > 1.5:
                os.write(master, b"q")
                sent = True
            rc = p.poll()
            if rc is not None:
                break
        if rc is None:
            p.kill()
            p.wait()
        # what it wrote just before it exited (the terminal's restore) may
        # still wait in the pty: a loaded machine showed the test's read race
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        text = out.decode("utf-8", "replace")
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
        tap.ok(rc == 0, "kumotop (%s) quits on 'q' with 0" % name, "rc %s" % rc)
        tap.ok("\x1b[?1049h" in text and text.rstrip().endswith("\x1b[?1049l"),
               "kumotop (%s) draws on the alternate screen and restores the terminal" % name, repr(text[-200:]))
        tap.ok(all(a in plain for a in order), "kumotop (%s) shows every server" % name)
        wide_rows = [l for l in plain.splitlines() if re.match(r"^127\.0\.0\.1:\d+ +\d+ +\d+ +\d+ ", l)]
        longest = max((len(l) for l in plain.replace("\r", "").split("\n")), default=0)
        if name == "wide":
            tap.ok(wide_rows and "#delete" in plain, "wide terminal: every column", plain[-600:])
        else:
            tap.ok(longest <= cols and re.search(r"^127\.0\.0\.1:\d+ +ready *$", plain, re.M),
                   "narrow terminal: two lines per server, nothing wider than %d columns (%d)" % (cols, longest),
                   plain[-600:])



def check_get_batching(c, client, keys):
    """The gateway sends the gets of one loop turn for one server as one
    request (router.c): a 100-key multi-get costs the servers at most two
    requests each (64 keys per batch), counted by their request histograms."""
    def get_requests():
        return sum(metric(parse_metrics(scrape(s.metrics_port)[2], False),
                       "kumo_server_request_duration_seconds_count", method="get") or 0 for s in c.servers)
    keys = keys[:100]
    before = get_requests()
    got = client.get_many(keys)
    used = get_requests() - before
    tap.ok(got == {k: k.encode() + b"-value" for k in keys} and used <= 2 * len(c.servers),
           "a 100-key get: every value, in %d server requests (at most %d)" % (used, 2 * len(c.servers)),
           "got %d values" % len(got))


def check_metrics(c, sets_done, deletes_done):
    tap.note("/metrics of the manager, a server and the gateway")
    srv = c.servers[0]
    for name, port in (("manager", c.mgr_metrics), ("server", srv.metrics_port), ("gateway", c.gw_metrics)):
        for om in (False, True):
            fmt = "OpenMetrics" if om else "Prometheus text"
            try:
                status, ctype, body = scrape(port, om)
                fams = parse_metrics(body, om)
                ok = status == 200
                why = None
            except (OSError, ParseError) as e:
                ok, why, fams, ctype = False, str(e), {}, ""
            tap.ok(ok, "%s /metrics parses as %s" % (name, fmt), why)
            want_ct = "application/openmetrics-text" if om else "text/plain; version=0.0.4"
            tap.ok(ctype.startswith(want_ct), "%s /metrics Content-Type %s" % (name, want_ct), ctype)
            tap.eq(metric(fams, "kumo_build_info", role=name), 1, "%s: kumo_build_info{role=%s}" % (name, name))
            if not om:
                proc = {k: metric(fams, k) for k in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                                                      "process_virtual_memory_bytes", "process_open_fds",
                                                      "process_max_fds", "process_start_time_seconds")}
                tap.ok(all(v is not None for v in proc.values()) and proc["process_cpu_seconds_total"] >= 0
                       and 1 << 20 < proc["process_resident_memory_bytes"] <= proc["process_virtual_memory_bytes"]
                       and 3 <= proc["process_open_fds"] <= proc["process_max_fds"],
                       "%s: process_* metrics (CPU seconds, memory, open and max descriptors)" % name, repr(proc))
                if shutil.which("promtool"):
                    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                                       text=True, timeout=30)
                    tap.ok(r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(),
                           "%s: promtool check metrics finds nothing to say" % name, r.stdout + r.stderr)
                elif kt.REQUIRE:
                    tap.ok(False, "%s: promtool check metrics" % name, "promtool not installed (apt-get install prometheus)")
                else:
                    tap.skip("%s: promtool check metrics" % name, "promtool not installed (apt-get install prometheus)")
            if name == "manager":
                tap.eq(metric(fams, "kumo_manager_hash_space_servers", space="whs", state="active"), NSERVERS,
                       "manager: %d active servers in whs" % NSERVERS)
                tap.eq(metric(fams, "kumo_manager_server_connections"), NSERVERS, "manager: server connections")
                workers = min(4, len(os.sched_getaffinity(0)))   # the gateway's default -TR here
                tap.eq(metric(fams, "kumo_manager_gateway_connections"), workers,
                       "manager: one gateway's %d connections (one per worker: 4, or the CPUs if fewer)" % workers)
                tap.eq(metric(fams, "kumo_manager_replace_running"), 0, "manager: no replace running")
            elif name == "server":
                counter = "kumo_server_cmd_set_total"
                want = int(c.kumostat(srv, "cmd_set"))
                tap.eq(metric(fams, counter), want, "server: %s = kumostat cmd_set (%d)" % (counter, want))
                tap.eq(metric(fams, "kumo_server_items"), int(c.kumostat(srv, "items")), "server: items = kumostat")
                tap.ok((metric(fams, "kumo_server_db_bytes") or 0) > 0, "server: db bytes")
                tap.ok((metric(fams, "kumo_server_hash_space_timestamp_seconds", space="whs") or 0) > 1e9,
                       "server: hash space timestamp")
                h = fams.get("kumo_server_request_duration_seconds", {"type": None, "samples": []})
                buckets = [(float(l["le"]), v) for n, l, v in h["samples"]
                           if n.endswith("_bucket") and l.get("method") == "set"]
                count = metric(fams, "kumo_server_request_duration_seconds_count", method="set")
                tap.ok(h["type"] == "histogram" and buckets and buckets == sorted(buckets) and
                       [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (math.inf, count)
                       and count == want,
                       "server: request latency histogram (set: cumulative buckets, +Inf = count = cmd_set)",
                       str(buckets))
            else:
                tap.eq(metric(fams, "kumo_gateway_commands_total", command="set", status="hit"), sets_done,
                       "gateway: kumo_gateway_commands_total{command=set,status=hit} = the %d sets sent" % sets_done)
                tap.eq(metric(fams, "kumo_gateway_commands_total", command="delete", status="hit"), deletes_done,
                       "gateway: kumo_gateway_commands_total{command=delete,status=hit} = the %d deletes" % deletes_done)
                tap.ok((metric(fams, "kumo_gateway_current_connections") or 0) >= 0 and
                       (metric(fams, "kumo_gateway_connections_total") or 0) >= 1 and
                       (metric(fams, "kumo_gateway_read_bytes_total") or 0) > 0, "gateway: connections, bytes read")
                # memcached_exporter's names, not memcached's stats names with _total glued on
                tap.ok(not [n for n in fams if re.search(r"_total_|^kumo_gateway_(cmd|bytes|curr|total)_", n)],
                       "gateway: no metric named like a stats field (cmd_*, bytes_*, total_*)", " ".join(fams))
    status, _, body = scrape(srv.metrics_port, path="/")
    tap.eq(status, 200, "GET / answers (a pointer to /metrics)")
    status, _, body = scrape(srv.metrics_port, path="/healthz")
    tap.ok(status == 200 and body == "ok\n", "GET /healthz: 200 ok", repr(body))
    try:
        scrape(srv.metrics_port, path="/nothing")
        code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    tap.eq(code, 404, "GET /nothing: 404")
    r = run([kt.binary("kumo-manager"), "-l", "127.0.0.1:%d" % kt.free_port(), "-c", kt.free_port(), "-o", "-",
             "--metrics", "127.0.0.1:%d" % c.mgr_metrics], timeout=10)
    tap.ok(r.returncode == 1 and "127.0.0.1:%d" % c.mgr_metrics in r.stdout + r.stderr,
           "--metrics on a port in use: exit 1 naming it", r.stdout + r.stderr)


def check_gc(c, client, base_items):
    tap.note("tombstones: -gX 3 collects them")
    keys = ["gc:%d" % i for i in range(30)]
    for k in keys:
        client.set(k, b"doomed")
    for k in keys:
        client.delete(k)
    total = lambda: sum(c.items(s) for s in c.servers)  # noqa: E731
    n = total()
    tap.eq(n, base_items + 3 * len(keys), "after the deletes each replica keeps a tombstone (items +%d)" %
           (3 * len(keys)))
    t0 = time.time()
    try:
        kt.wait_until(lambda: total() == base_items, 15, "the tombstones to be collected", interval=0.3)
        took = time.time() - t0
        tap.ok(took >= 1.5, "collected after about -gX seconds (%.1f s), not at once" % took)
    except TimeoutError as e:
        tap.ok(False, "tombstones collected within 15 s", str(e))
    fams = parse_metrics(scrape(c.servers[0].metrics_port)[2], False)
    tap.ok((metric(fams, "kumo_server_tombstones_collected_total") or 0) > 0, "metrics: tombstones collected")


def check_kumolog(c):
    tap.note("kumolog: each daemon's binary log")
    srv = c.servers[0]
    for name, path, role in (("manager", c.mgr_binlog, "manager"), ("server", srv.binlog, "server"),
                             ("gateway", c.gw_binlog, "gateway")):
        rc, lines, err = kumolog_lines(path)
        first = logline(lines[0]) if lines else None
        tap.ok(rc == 0 and first and first["event"] == "start" and first["fields"].get("role") == role and
               first["node"].startswith(role + "@") and first["fields"].get("pid", "").isdigit(),
               "kumolog %s.mpac: a readable 'start' record (role, node, pid)" % name,
               "rc %s\n%s\n%s" % (rc, "\n".join(lines[:5]), err))
        bad = [l for l in lines if not logline(l)]
        tap.ok(not bad, "kumolog %s.mpac: every line is 'time level node event key=value...'" % name,
               "\n".join(bad[:5]))
        cts = [v for l in lines if logline(l) for k, v in logline(l)["fields"].items() if k.endswith("_ct")]
        tap.ok(cts and all(re.fullmatch(r"none|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d/\d+", v) for v in cts)
               and any(v != "none" for v in cts),
               "kumolog %s.mpac: ClockTimes as ISO 8601 time/counter, a blank one as none" % name, " ".join(cts[:10]))
    return True


def follow_start(path):
    f = open(path + ".follow", "wb")
    p = subprocess.Popen([tool("kumolog"), "-f", path], stdout=f, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    f.close()
    return p


def check_rotation(c, follower):
    srv = c.servers[0]
    tap.note("logrotate: rename %s, SIGHUP the server" % os.path.basename(srv.binlog))
    rotated = srv.binlog + ".1"
    os.rename(srv.binlog, rotated)
    os.kill(srv.daemon.pid, signal.SIGHUP)
    kt.wait_until(lambda: os.path.exists(srv.binlog), 10, "the server to reopen its binary log")
    rc, lines, err = kumolog_lines(srv.binlog)
    tap.ok(rc == 0 and events(lines)[:1] == ["binlog_reopen"], "the new file starts with a binlog_reopen record",
           "\n".join(lines) + err)
    rc, lines, err = kumolog_lines(rotated)
    tap.ok(rc == 0 and events(lines)[:1] == ["start"], "the rotated file keeps the earlier records", "\n".join(lines))
    c.check_running("the server survives SIGHUP")


def check_follow_result(c, follower):
    srv = c.servers[0]
    try:
        kt.wait_until(lambda: "stop" in events(open(srv.binlog + ".follow").read().splitlines()), 10,
                      "kumolog -f to print the server's stop record")
    except TimeoutError as e:
        tap.diag(str(e))
    follower.send_signal(signal.SIGTERM)
    try:
        rc = follower.wait(10)
    except subprocess.TimeoutExpired:
        follower.kill()
        rc = "hung"
    err = follower.stderr.read().decode()
    follower.stderr.close()
    ev = events(open(srv.binlog + ".follow").read().splitlines())
    tap.ok(rc == 0, "kumolog -f ends with 0 on SIGTERM", "rc %s %s" % (rc, err))
    tap.ok(ev[:1] == ["start"] and "binlog_reopen" in ev and ev[-1:] == ["stop"] and
           ev.index("binlog_reopen") > 0, "kumolog -f followed the log across the rotation: start ... "
           "binlog_reopen ... stop", "%s\n%s" % (ev, err))


def check_kumolog_files(c):
    srv = c.servers[0]
    tap.note("kumolog options and damaged files")
    rc, lines, _ = kumolog_lines(srv.binlog)
    n = len(lines)
    tap.ok(n >= 2 and events(lines)[-1] == "stop", "after the stop: the server's log ends with 'stop' (%d records)" % n)
    both = os.path.join(c.dir, "both.mpac")
    with open(both, "wb") as f:
        for p in (srv.binlog + ".1", srv.binlog):
            f.write(open(p, "rb").read())
    rc, all_lines, _ = kumolog_lines(both)
    total = len(all_lines)
    rc, lines, _ = kumolog_lines(both, "-t", "-n", "2")
    tap.eq(lines, all_lines[-2:], "kumolog -t -n 2: the last two records")
    rc, lines, _ = kumolog_lines(both, "-h", "-n", "1")
    tap.eq(lines, all_lines[:1], "kumolog -h -n 1: the first record")
    rc, lines, _ = kumolog_lines(both, "-t")
    tap.eq(lines, all_lines[-10:], "kumolog -t: the last 10")
    rc, lines, _ = kumolog_lines(both, "--lines=3")
    tap.eq(lines, all_lines[-3:], "kumolog --lines=3: the last 3")
    data = open(both, "rb").read()
    r = subprocess.run([tool("kumolog"), "-"], input=data, capture_output=True, timeout=20)
    tap.eq(r.stdout.decode().splitlines(), all_lines, "kumolog - reads standard input")

    first_len = struct.unpack(">I", data[:4])[0] + 4
    garbled = os.path.join(c.dir, "garbled.mpac")
    with open(garbled, "wb") as f:
        f.write(data[:first_len] + b"\x00\x00\x00\x07garbage!" + data[first_len:])
    rc, lines, err = kumolog_lines(garbled)
    tap.ok(rc == 0 and lines == all_lines and "recover at %d" % (first_len + 12) in err,
           "garbage between records: reported ('recover at %d'), every record still printed" % (first_len + 12),
           "rc %s\n%s" % (rc, err))
    cut = os.path.join(c.dir, "cut.mpac")
    with open(cut, "wb") as f:
        f.write(data[:-5])
    rc, lines, err = kumolog_lines(cut)
    tap.ok(rc == 0 and lines == all_lines[:-1] and "truncated record at" in err,
           "a file cut inside its last record: the others printed, 'truncated record at', exit 0",
           "rc %s\n%s" % (rc, err))
    junk = os.path.join(c.dir, "junk.mpac")
    with open(junk, "wb") as f:
        f.write(b"this is a text file, not a binary log\n" * 20)
    rc, lines, err = kumolog_lines(junk)
    tap.ok(rc == 1 and not lines and "junk.mpac" in err, "a file that is not a binary log: a message, exit 1",
           "rc %s\n%s" % (rc, err))
    mp = os.path.join(c.dir, "plain-msgpack.mpac")
    with open(mp, "wb") as f:
        f.write(b"\x93\x01\x02\x03" * 50)   # msgpack, but no length prefixes
    rc, lines, err = kumolog_lines(mp)
    tap.ok(rc == 1 and not lines, "msgpack without the record framing: exit 1", "rc %s\n%s" % (rc, err))
    rc, lines, err = kumolog_lines(os.path.join(c.dir, "no-such.mpac"))
    tap.ok(rc == 1 and "no-such.mpac" in err, "a missing file: a message naming it, exit 1", err)
    empty = os.path.join(c.dir, "empty.mpac")
    open(empty, "wb").close()
    rc, lines, err = kumolog_lines(empty)
    tap.ok(rc == 0 and not lines, "an empty file: nothing, exit 0", err)
    expect_fail([tool("kumolog")], "kumolog without a file", 64, ["usage"])
    expect_fail([tool("kumolog"), "-x", both], "kumolog -x", 64, ["-x"])
    expect_fail([tool("kumolog"), "-h", "-f", both], "kumolog -h -f", 64, ["-h"])


def check_fault(c, keys, order):
    victim = c.servers[-1]
    tap.note("stop %s: the manager marks it fault, kumohash marks it too" % victim.addr)
    victim.daemon.stop()

    def faulted():
        return c.status().state(victim.addr) == "fault"
    kt.wait_until(faulted, 40, "%s marked fault" % victim.addr, interval=0.3)
    r = run([tool("kumohash"), "-m", c.mgr_addr, "assign"] + keys[:40])
    owners, _ = parse_assign(r.stdout)
    marks = [(k, o) for k, v in owners.items() for o in v if o[0] == victim.addr]
    tap.ok(marks and all(f for _, (a, f) in marks) and
           all(not f for v in owners.values() for a, f in v if a != victim.addr),
           "kumohash assign marks the stopped server ' (fault)', and only it", r.stdout[-800:])
    r = run([tool("kumostat"), "-m", c.mgr_addr, "pid"])
    tap.eq(len(r.stdout.splitlines()), NSERVERS - 1, "kumostat -m skips the fault server")
    r = run([tool("kumotop"), "-m", c.mgr_addr, "-n", "1", "-i", "0.2"])
    tap.ok(re.search(r"^%s +fault" % re.escape(victim.addr), r.stdout, re.M), "kumotop shows it as fault",
           r.stdout)


def check_disk(c, keys, owners):
    tap.note("the Tokyo Cabinet files: each key on exactly the owners kumohash named")
    held = {}
    for s in c.servers:
        try:
            recs = kt.tch_records(s.db)
        except OSError as e:
            tap.ok(False, "tchmgr reads %s" % s.db, str(e))
            continue
        for dbkey, value in recs:
            rec = kt.Record(dbkey, value)
            held.setdefault(rec.key.decode("latin-1"), set()).add(s.addr)
    wrong = ["%s: on %s, kumohash said %s" % (k, sorted(held.get(k, ())), [a for a, _ in owners[k]])
             for k in keys if held.get(k, set()) != set(a for a, _ in owners[k])]
    tap.ok(not wrong, "every key is on disk exactly where kumohash assign said (%d keys)" % len(keys),
           "\n".join(wrong[:10]))
    stray = sorted(k for k in held if k not in owners)
    tap.ok(not stray, "no other records (the deleted keys' tombstones were collected)", str(stray[:10]))


def body():
    kt.require_module("pymemcache")
    kt.require_binaries(kt.DAEMONS + kt.TOOLS + TOOLS)
    have_tch = shutil.which("tchmgr") is not None
    rng = kt.make_rng()
    parser_selftest()
    check_help()

    with ToolsCluster(nservers=NSERVERS, server_args=["-gX", "3", "-gN", "1"]) as c:
        order = c.status().attached_addrs()
        tap.note("attached order: %s" % " ".join(order))
        follower = follow_start(c.servers[0].binlog)
        keys = ["tool:%d:%d" % (i, rng.randrange(1 << 30)) for i in range(NKEYS)]
        client = kt.mc_client(c.gateway_port)
        for k in keys:
            client.set(k, k.encode() + b"-value")
        tap.ok(all(client.get(k) == k.encode() + b"-value" for k in keys[:10]), "%d keys set" % NKEYS)
        ring = kt.Ring(order)
        expect_items = {a: sum(1 for k in keys if a in ring.owners(k)) for a in order}
        primaries = {}
        for k in keys:
            p = ring.owners(k)[0]
            primaries[p] = primaries.get(p, 0) + 1

        owners = check_kumohash(c, order, keys)
        check_kumostat(c, order, expect_items, primaries)
        check_kumotop(c, order)
        check_gc(c, client, sum(expect_items.values()))
        check_metrics(c, NKEYS + 30, 30)
        check_get_batching(c, client, keys)
        check_kumolog(c)
        check_rotation(c, follower)
        check_fault(c, keys, order)
        client.close()
        c.check_running()
        tap.note("stopping the cluster")
        for d, status, killed in c.stop(timeout=15):
            if d is c.servers[-1].daemon:
                continue
            tap.ok(status == 0 and not killed, "%s exits 0 on SIGTERM" % d.name)
        check_follow_result(c, follower)
        check_kumolog_files(c)
        if have_tch and owners:
            check_disk(c, keys, owners)
        else:
            tap.skip("keys on disk where kumohash said", "tchmgr not installed (tokyocabinet-bin)")

    tap.note("-gS 1 -gN 2: under memory pressure young tombstones are forgotten, old ones removed")
    with ToolsCluster(nservers=1, server_args=["-gS", "1", "-gN", "2", "-gX", "3600"]) as c:
        s = c.servers[0]
        client = kt.mc_client(c.gateway_port)
        for i in range(60):
            client.delete("pressure-a:%d" % i)   # a delete of a missing key still writes a tombstone
        tap.eq(c.items(s), 60, "60 deletes: 60 tombstones")
        fams = parse_metrics(scrape(s.metrics_port)[2], False)
        forgotten = metric(fams, "kumo_server_tombstones_forgotten_total") or 0
        mem = metric(fams, "kumo_server_tombstones_memory_bytes") or 0
        tap.ok(forgotten > 0 and mem <= 1024, "over 1 KiB the youngest are forgotten (%d), memory %d <= 1024" %
               (forgotten, mem))
        time.sleep(2.5)     # a duration: the first tombstones get older than -gN 2
        for i in range(60):
            client.delete("pressure-b:%d" % i)
        n = c.items(s)
        fams = parse_metrics(scrape(s.metrics_port)[2], False)
        collected = metric(fams, "kumo_server_tombstones_collected_total") or 0
        tap.ok(collected > 0 and n == 120 - collected, "pressure removes the remembered tombstones older than -gN "
               "(%d removed, %d left)" % (collected, n))
        left = []

        def kept():
            left[:] = [c.items(s)]
            return left[0] == n
        try:
            kt.holds_for(kept, 1.5, "%d tombstones left" % n, interval=0.25, daemons=c.daemons())
        except kt.NotHeld as e:
            tap.note(str(e))
        tap.eq(left[0] if left else None, n, "nothing else is removed before -gX")
        client.close()
        c.check_running()


if __name__ == "__main__":
    kt.main(body)

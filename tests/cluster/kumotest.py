#!/usr/bin/python3
"""kumotest — harness of the kumofs cluster tests (tests/cluster/t_*.py).

What it does for a test:
  * TAP output: ok/not ok lines, notes, a trailing plan, exit status 1 on any
    failure (prove reads all of it).
  * Real daemons from the build tree (env KUMO_BUILD_DIR, default: the repo
    root) on free loopback ports (bind port 0, release), logs and databases in
    a temporary directory (kept, and the logs' tails printed, on failure).
  * Readiness by polling: `kumoctl status` for the manager and the servers,
    `version` and a `get` for the gateway.  No fixed sleeps.
  * Every process it starts is stopped by pid at exit (atexit, SIGINT/SIGTERM/
    SIGHUP handlers, and a SIGALRM watchdog): SIGTERM, then SIGKILL.
  * Placement in Python (SHA-1 ring, docs/protocol.md §8) checked against the known
    answers of kumofs 0.4.13 (below), and the Tokyo Cabinet record
    layout (src/lib/record.h), for tests that look at the data on disk.
  * A seed for everything random: printed, and taken back from KUMO_TEST_SEED.

Environment:
  KUMO_BUILD_DIR     where kumo-manager, kumo-server, ... are (default repo root)
  KUMO_TEST_SEED     seed of the random choices (printed by every test)
  KUMO_TEST_TIMEOUT  watchdog per test file in seconds (default 300)
  KUMO_TEST_KEEP=1   keep the temporary directory even when all passed
  KUMO_TEST_REQUIRE=1  missing binaries or client modules fail instead of skip
  KUMO_TEST_VERBOSE=0  start the daemons without -v

Run it alone (`/usr/bin/python3 tests/cluster/kumotest.py`) for a self-test
of the parts that need no daemon (placement, record parsing, status parsing).
Debian's python modules (pymemcache, pylibmc) need /usr/bin/python3.
"""

import atexit
import bisect
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.path.abspath(os.environ.get("KUMO_BUILD_DIR") or REPO)
VERBOSE_DAEMONS = os.environ.get("KUMO_TEST_VERBOSE", "1") != "0"
REQUIRE = os.environ.get("KUMO_TEST_REQUIRE", "") == "1"

DAEMONS = ("kumo-manager", "kumo-server", "kumo-gateway")
TOOLS = ("kumoctl", "kumostat")

EX_USAGE = 64
KEY_ENV = "KUMO_CLUSTER_KEY_FILE"   # the tools' fallback for --cluster-key-file
LINKS_UNREACHABLE_WARN = 5.0         # links.h: seconds without a manager before the WARN


def binary(name):
    return os.path.join(BUILD_DIR, name)


# --------------------------------------------------------------------------
# TAP
# --------------------------------------------------------------------------

class TAP:
    """Numbered ok/not ok lines; the plan is printed at the end."""

    def __init__(self):
        self.n = 0
        self.failed = 0
        self.finished = False
        self.lock = threading.RLock()   # re-entrant: the SIGALRM watchdog may report mid-line

    def _emit(self, line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def ok(self, cond, name, diag=None):
        with self.lock:
            self.n += 1
            name = name.replace("\n", " ").replace("#", "\\#")
            if cond:
                self._emit("ok %d - %s" % (self.n, name))
            else:
                self.failed += 1
                self._emit("not ok %d - %s" % (self.n, name))
                if diag:
                    self.diag(diag)
        return bool(cond)

    def eq(self, got, want, name):
        return self.ok(got == want, name,
                       None if got == want else "got:  %s\nwant: %s" % (short(got), short(want)))

    def skip(self, name, reason):
        with self.lock:
            self.n += 1
            self._emit("ok %d - %s # SKIP %s" % (self.n, name, reason))

    def note(self, msg):
        """What is being checked; on stdout (shown by prove -v)."""
        for line in str(msg).splitlines() or [""]:
            self._emit("# " + line)

    def diag(self, msg):
        """Why something failed; on stderr (always shown by prove)."""
        sys.stdout.flush()
        for line in str(msg).splitlines() or [""]:
            sys.stderr.write("# " + line + "\n")
        sys.stderr.flush()

    def skip_all(self, reason):
        self._emit("1..0 # SKIP " + reason)
        self.finished = True
        sys.exit(0)

    def bail(self, reason):
        self.failed += 1
        self._emit("Bail out! " + reason)
        self.finished = True
        sys.exit(255)

    def done(self):
        """Print the plan; returns the exit status (0 = all passed)."""
        if not self.finished:
            self.finished = True
            self._emit("1..%d" % self.n)
        return 1 if self.failed else 0


tap = TAP()


def short(v, limit=200):
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "... (%d chars)" % len(r)


def make_rng(tag=""):
    """A random.Random seeded from KUMO_TEST_SEED or fresh; the seed is printed."""
    env = os.environ.get("KUMO_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "big")
    tap.note("random seed %d%s (rerun with KUMO_TEST_SEED=%d)" % (seed, " " + tag if tag else "", seed))
    return random.Random(seed)


# --------------------------------------------------------------------------
# ports, processes, cleanup
# --------------------------------------------------------------------------

_given_ports = set()


def free_port():
    """A port free on 127.0.0.1 and on the wildcard address, never given twice."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port in _given_ports:
            continue
        w = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            w.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            w.close()
        _given_ports.add(port)
        return port
    raise RuntimeError("no free port found")


def port_open(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class DaemonDied(Exception):
    pass


_daemons = []          # every Daemon ever started (for cleanup and log dumps)
_tmpdirs = []
_cleanup_lock = threading.RLock()
_cleaned = False


def daemon_env():
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)   # never notify a real service manager
    env.pop("WATCHDOG_USEC", None)
    env.pop("LISTEN_FDS", None)
    env.pop(KEY_ENV, None)           # a test gives a cluster key explicitly or not at all
    return env


class Daemon:
    """One daemon process; stdout+stderr appended to self.log; env: variables
    added to daemon_env() (NOTIFY_SOCKET, JOURNAL_STREAM, ...)."""

    def __init__(self, name, argv, log, cwd=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log
        self.cwd = cwd
        self.extra_env = dict(env or {})
        self.proc = None
        self.expected_exit = False   # set when a test stops/kills it on purpose
        self.starts = 0

    def start(self):
        with open(self.log, "ab") as f:
            f.write(("=== kumotest: %s start #%d at %s: %s\n" % (
                self.name, self.starts + 1, time.strftime("%H:%M:%S"),
                " ".join(["%s=%s" % kv for kv in self.extra_env.items()] + self.argv))).encode())
        env = daemon_env()
        env.update(self.extra_env)
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        finally:
            logf.close()
        self.starts += 1
        self.expected_exit = False
        if self not in _daemons:
            _daemons.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def check_alive(self):
        if self.proc is not None and not self.expected_exit and self.proc.poll() is not None:
            raise DaemonDied("%s (pid %d) exited with status %s; log %s" % (
                self.name, self.proc.pid, self.proc.returncode, self.log))

    def kill9(self):
        """SIGKILL by pid and reap."""
        self.expected_exit = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL. Returns (exit status, True if it needed SIGKILL)."""
        self.expected_exit = True
        if self.proc is None:
            return None, False
        if self.proc.poll() is not None:
            return self.proc.returncode, False
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout), False
        except subprocess.TimeoutExpired:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            return self.proc.returncode, True

    def tail(self, lines=80):
        try:
            with open(self.log, "rb") as f:
                data = f.read()
        except OSError as e:
            return "(no log: %s)" % e
        text = data.decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])


def dump_logs(lines=80):
    seen = set()
    for d in _daemons:
        if d.log in seen:
            continue
        seen.add(d.log)
        tap.diag("---- %s: last %d lines of %s ----" % (d.name, lines, d.log))
        tap.diag(d.tail(lines))


def stop_all():
    """Stop every daemon started here, by pid: SIGTERM to all, then SIGKILL after 10 s."""
    live = [d for d in _daemons if d.alive()]
    for d in live:
        d.expected_exit = True
        try:
            os.kill(d.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for d in live:
        try:
            d.proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            tap.diag("%s (pid %d) ignored SIGTERM for 10 s: SIGKILL" % (d.name, d.pid))
            try:
                os.kill(d.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            d.proc.wait()


_cleanup_hooks = []


def at_cleanup(fn):
    """Run fn() at cleanup, after every daemon has been stopped (hooks run
    last-registered first, also on a signal or the watchdog). For what a test
    sets up beside its daemons: network namespaces, files under /etc."""
    _cleanup_hooks.append(fn)
    return fn


def cleanup():
    global _cleaned
    with _cleanup_lock:
        if _cleaned:
            return
        _cleaned = True
        try:
            stop_all()
        except Exception:
            traceback.print_exc()
        for fn in reversed(_cleanup_hooks):
            try:
                fn()
            except Exception:
                traceback.print_exc()
        failed = tap.failed > 0 or not tap.finished
        if failed and _daemons:
            dump_logs()
        for d in _tmpdirs:
            if failed or os.environ.get("KUMO_TEST_KEEP") == "1":
                tap.diag("kept %s" % d)
            else:
                shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, frame):
    tap.diag("caught signal %d: stopping the daemons" % signum)
    tap.failed += 1
    cleanup()
    os._exit(128 + signum)


def _on_alarm(signum, frame):
    tap.ok(False, "test finished within KUMO_TEST_TIMEOUT (%s s)" % _timeout)
    cleanup()
    sys.stdout.write("1..%d\n" % tap.n)
    sys.stdout.flush()
    os._exit(1)


_timeout = int(os.environ.get("KUMO_TEST_TIMEOUT", "300"))


def install_handlers():
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(_timeout)


def new_tmpdir(prefix="kumotest-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def require_binaries(names=DAEMONS + TOOLS):
    missing = [n for n in names if not os.access(binary(n), os.X_OK)]
    if missing:
        msg = "not built in %s: %s" % (BUILD_DIR, " ".join(missing))
        if REQUIRE:
            tap.bail(msg)
        tap.skip_all(msg + " (set KUMO_BUILD_DIR)")


def require_module(mod):
    try:
        return __import__(mod)
    except ImportError as e:
        msg = "python module %s not available to %s (%s): apt-get install python3-%s and run with /usr/bin/python3" % (
            mod, sys.executable, e, mod)
        if REQUIRE:
            tap.bail(msg)
        tap.skip_all(msg)


def require_program(name, package):
    """Skip the test (bail out under KUMO_TEST_REQUIRE=1) when `name` is not on PATH."""
    if shutil.which(name):
        return
    msg = "%s not installed (apt-get install %s)" % (name, package)
    if REQUIRE:
        tap.bail(msg)
    tap.skip_all(msg)


def run_tool(argv, timeout=20, key_file=None):
    """Run a tool (with $KUMO_CLUSTER_KEY_FILE = key_file, if given); returns
    CompletedProcess (stdout/stderr as text). Never raises on timeout."""
    argv = [str(a) for a in argv]
    env = daemon_env()
    if key_file:
        env[KEY_ENV] = str(key_file)
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=env, text=True, errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(argv, -999, out, err + "\n(timed out after %s s)" % timeout)


def run_expect_exit(argv, timeout=15):
    """Run a command that should exit by itself. Returns (status or None if it hung, output)."""
    argv = [str(a) for a in argv]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=daemon_env())
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return None, out.decode("utf-8", "replace")


def wait_until(cond, timeout, what, interval=0.1, daemons=()):
    """Poll cond() until it returns a true value; raise TimeoutError naming `what`.
    Raises DaemonDied at once if one of `daemons` exits."""
    deadline = time.time() + timeout
    last_exc = None
    while True:
        for d in daemons:
            d.check_alive()
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError) as e:
            last_exc = e
        if time.time() >= deadline:
            raise TimeoutError("timed out after %.0f s waiting for %s%s" % (
                timeout, what, " (last error: %s)" % last_exc if last_exc else ""))
        time.sleep(interval)    # between polls


class NotHeld(TimeoutError):
    """A condition that had to stay true stopped holding (holds_for). A
    TimeoutError, so that a step that waits for a condition and then checks
    that it stays is handled as one wait by its caller."""


def holds_for(cond, seconds, what, interval=0.3, daemons=()):
    """Check that cond() stays true: poll it every `interval` s for `seconds`
    (at least twice, the last poll at the end of the period). Returns the
    last value; raises NotHeld on the first false value or error (a tool
    that does not answer does not show the condition), DaemonDied if one of
    `daemons` exits."""
    deadline = time.time() + seconds
    polls = 0
    while True:
        for d in daemons:
            d.check_alive()
        now = time.time()
        try:
            v = cond()
        except (OSError, ValueError) as e:
            raise NotHeld("%s stopped holding after %.1f s of %.0f (poll %d): %s" % (
                what, seconds - (deadline - now), seconds, polls + 1, e))
        polls += 1
        if not v:
            raise NotHeld("%s stopped holding after %.1f s of %.0f (poll %d)" % (
                what, seconds - (deadline - now), seconds, polls))
        if now >= deadline and polls >= 2:
            return v
        time.sleep(max(0.0, min(interval, deadline - time.time())))     # between polls


# --------------------------------------------------------------------------
# kumoctl status
# --------------------------------------------------------------------------

# `kumoctl status` exits 0 when the cluster is healthy, 2 when the manager
# answered and the cluster is degraded or down (1: no answer, 64: usage).
STATUS_ANSWERED = (0, 2)


class Status:
    """Parsed `kumoctl <mgr> status`: attached [(addr, state)], not_attached [addr]."""

    _node = re.compile(r"^\s+(\S+)(?:\s+\((\w[\w ]*)\))?\s*$")   # (active) (fault) (catching up)

    def __init__(self, text):
        self.text = text
        self.timestamp = None
        self.attached = []
        self.not_attached = []
        section = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if not line[0].isspace():
                head = line.strip().rstrip(":").lower()
                section = head
                continue
            if section == "hash space timestamp":
                self.timestamp = line.strip()
                continue
            m = self._node.match(line)
            if not m:
                continue
            if section in ("attached node", "node"):    # "node:" in kumostat whs/rhs
                self.attached.append((m.group(1), m.group(2) or ""))
            elif section == "not attached node":
                self.not_attached.append(m.group(1))

    def state(self, addr):
        for a, s in self.attached:
            if a == addr:
                return s
        return None

    def attached_addrs(self):
        return [a for a, _ in self.attached]

    def __repr__(self):
        return "Status(attached=%r, not_attached=%r)" % (self.attached, self.not_attached)


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------

class Server:
    def __init__(self, index, port, stream_port, db, tmpdir):
        self.index = index
        self.port = port
        self.stream_port = stream_port
        self.db = db
        self.tmpdir = tmpdir
        self.daemon = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def __repr__(self):
        return "server%d(%s)" % (self.index, self.addr)


class Cluster:
    """A manager, N servers and optionally a gateway on loopback.

    with Cluster(nservers=3) as c:   # started, attached, gateway answering
        c.gateway_port, c.servers[i].addr, c.status(), c.kumostat(srv, "items")

    key_file: every daemon gets --cluster-key-file and the tools the same
    file through $KUMO_CLUSTER_KEY_FILE.
    """

    def __init__(self, nservers=3, gateway=True, manager_args=(), server_args=(),
                 gateway_args=(), start=True, gateway_binary=False, key_file=None):
        self.key_file = key_file
        key_args = ["--cluster-key-file", key_file] if key_file else []
        self.dir = new_tmpdir()
        self.logdir = os.path.join(self.dir, "logs")
        os.makedirs(self.logdir)
        self.mgr_port = free_port()
        self.ctl_port = free_port()
        self.manager_args = key_args + list(manager_args)
        self.server_args = key_args + list(server_args)
        self.gateway_args = key_args + list(gateway_args)
        self.want_gateway = gateway
        self.servers = []
        for i in range(1, nservers + 1):
            tmp = os.path.join(self.dir, "tmp%d" % i)
            os.makedirs(tmp)
            self.servers.append(Server(i, free_port(), free_port(),
                                       os.path.join(self.dir, "server%d.tch" % i), tmp))
        self.gateway_port = free_port() if gateway else None
        # gateway_binary=True: also serve the memcached binary protocol (-b)
        self.gateway_binary_port = free_port() if gateway and gateway_binary else None
        self.manager = None
        self.gateway = None
        self._start = start

    # -- helpers
    def _v(self):
        return ["-v"] if VERBOSE_DAEMONS else []

    @property
    def mgr_addr(self):
        return "127.0.0.1:%d" % self.mgr_port

    @property
    def ctl_addr(self):
        return "127.0.0.1:%d" % self.ctl_port

    def daemons(self):
        ds = [self.manager] + [s.daemon for s in self.servers] + [self.gateway]
        return [d for d in ds if d is not None]

    def log(self, name):
        return os.path.join(self.logdir, name + ".log")

    # -- argv of each daemon (the localhost command lines of README.md)
    def manager_argv(self):
        return [binary("kumo-manager")] + self._v() + [
            "-o", "-", "-l", self.mgr_addr, "-c", self.ctl_port] + self.manager_args

    def server_argv(self, s):
        return [binary("kumo-server")] + self._v() + [
            "-o", "-", "-m", self.mgr_addr, "-l", s.addr, "-L", s.stream_port,
            "-s", s.db, "-f", s.tmpdir] + self.server_args

    def gateway_argv(self):
        bin_args = ["-b", "127.0.0.1:%d" % self.gateway_binary_port] if self.gateway_binary_port else []
        return [binary("kumo-gateway")] + self._v() + [
            "-o", "-", "-m", self.mgr_addr, "-t", "127.0.0.1:%d" % self.gateway_port] + bin_args + \
            self.gateway_args

    # -- tools
    def kumoctl(self, *args, timeout=20):
        return run_tool([binary("kumoctl"), self.ctl_addr] + list(args), timeout=timeout,
                        key_file=self.key_file)

    def status(self):
        r = self.kumoctl("status")
        if r.returncode not in STATUS_ANSWERED:
            raise OSError("kumoctl status: exit %s: %s" % (r.returncode, (r.stderr or r.stdout).strip()))
        return Status(r.stdout)

    def kumostat(self, server, cmd, timeout=20):
        r = run_tool([binary("kumostat"), server.addr, cmd], timeout=timeout, key_file=self.key_file)
        if r.returncode != 0:
            raise OSError("kumostat %s %s: exit %s: %s" % (server.addr, cmd, r.returncode,
                                                          (r.stderr or r.stdout).strip()))
        return r.stdout.strip()

    def items(self, server):
        out = self.kumostat(server, "items")
        return int(out.split()[-1])

    def hash_space(self, server, which="whs"):
        """A server's own view of whs or rhs (`kumostat <srv> whs`), parsed like a Status."""
        return Status(self.kumostat(server, which))

    def hsccheck(self, server):
        """True or False (hsccheck exits 1 when it prints false); OSError if no answer."""
        r = run_tool([binary("kumostat"), server.addr, "hsccheck"], key_file=self.key_file)
        out = r.stdout.strip()
        if (r.returncode, out) not in ((0, "true"), (1, "false")):
            raise OSError("kumostat %s hsccheck: exit %s: %s" % (server.addr, r.returncode, (r.stderr or out).strip()))
        return out == "true"

    # -- start-up
    def start_manager(self):
        self.manager = Daemon("kumo-manager", self.manager_argv(), self.log("manager")).start()
        wait_until(lambda: self.kumoctl("status", timeout=5).returncode in STATUS_ANSWERED, 20,
                   "kumo-manager to answer `kumoctl %s status`" % self.ctl_addr,
                   interval=0.2, daemons=[self.manager])

    def start_server(self, s):
        s.daemon = Daemon("kumo-server[%d]" % s.index, self.server_argv(s),
                          self.log("server%d" % s.index)).start()
        return s.daemon

    def wait_not_attached(self, servers, timeout=30):
        def cond():
            st = self.status()
            return all(s.addr in st.not_attached for s in servers) and st
        return wait_until(cond, timeout, "%s under 'not attached node' in kumoctl status" %
                          " ".join(s.addr for s in servers), interval=0.2,
                          daemons=[self.manager] + [s.daemon for s in servers])

    def attach(self, servers, timeout=30):
        r = self.kumoctl("attach")
        if r.returncode != 0:
            raise OSError("kumoctl attach: exit %s: %s" % (r.returncode, (r.stderr + r.stdout).strip()))

        def cond():
            st = self.status()
            return all(st.state(s.addr) == "active" and s.addr not in st.not_attached
                       for s in servers) and st
        return wait_until(cond, timeout, "%s attached and (active)" %
                          " ".join(s.addr for s in servers), interval=0.2,
                          daemons=self.daemons())

    def start_gateway(self):
        self.gateway = Daemon("kumo-gateway", self.gateway_argv(), self.log("gateway")).start()
        self.wait_gateway()

    def wait_gateway(self, timeout=30):
        wait_until(lambda: raw_version(self.gateway_port), timeout,
                   "kumo-gateway to answer `version` on %d" % self.gateway_port,
                   interval=0.1, daemons=self.daemons())
        # answering `version` does not mean it holds a hash space yet
        wait_until(lambda: raw_roundtrip(self.gateway_port, b"get kumotest-probe\r\n") == b"END\r\n",
                   timeout, "kumo-gateway to answer a get with END", interval=0.2,
                   daemons=self.daemons())

    def start(self):
        tap.note("starting kumo-manager on %s (control %d), %d kumo-server(s)%s; logs in %s" % (
            self.mgr_addr, self.ctl_port, len(self.servers),
            ", kumo-gateway on 127.0.0.1:%d" % self.gateway_port if self.want_gateway else "",
            self.logdir))
        self.start_manager()
        for s in self.servers:
            self.start_server(s)
        if self.servers:
            self.wait_not_attached(self.servers)
            self.attach(self.servers)
        if self.want_gateway:
            self.start_gateway()
        return self

    def check_running(self, name="every daemon is still running"):
        dead = ["%s exited with %s" % (d.name, d.returncode())
                for d in self.daemons() if not d.expected_exit and not d.alive()]
        return tap.ok(not dead, name, "; ".join(dead) if dead else None)

    def stop(self, order=None, timeout=10.0):
        """Stop gateway, servers, manager (SIGTERM, SIGKILL after timeout).
        Returns [(daemon, status, killed)]."""
        out = []
        ds = order if order is not None else (
            ([self.gateway] if self.gateway else []) + [s.daemon for s in self.servers if s.daemon]
            + ([self.manager] if self.manager else []))
        for d in ds:
            st, killed = d.stop(timeout)
            out.append((d, st, killed))
        return out

    def ring(self, status=None):
        st = status or self.status()
        return Ring([a for a, _ in st.attached], [s == "active" for _, s in st.attached])

    def server_by_addr(self, addr):
        for s in self.servers:
            if s.addr == addr:
                return s
        return None

    def __enter__(self):
        if self._start:
            try:
                self.start()
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        return self

    def __exit__(self, et, ev, tb):
        # an exception is reported by main(); here only stop what runs
        for d in self.daemons():
            if d.alive():
                d.stop()
        return False


class MemCgroup:
    """A memory cgroup (v2, else v1's memory controller) holding some daemons,
    so that a daemon that outgrows `limit` bytes is OOM-killed instead of
    taking the machine down. Removed at cleanup. MemCgroup.available() says
    whether this machine lets us make one (root, a writable hierarchy)."""

    V2 = "/sys/fs/cgroup"
    V1 = "/sys/fs/cgroup/memory"

    @classmethod
    def available(cls):
        return cls._root() is not None

    @classmethod
    def _root(cls):
        if os.geteuid() != 0:
            return None
        if os.path.exists(os.path.join(cls.V2, "cgroup.controllers")):
            try:
                with open(os.path.join(cls.V2, "cgroup.subtree_control")) as f:
                    if "memory" in f.read().split():
                        return ("v2", cls.V2)
            except OSError:
                return None
            return None
        if os.access(os.path.join(cls.V1, "cgroup.procs"), os.W_OK):
            return ("v1", cls.V1)
        return None

    def __init__(self, name, limit):
        kind, root = self._root()
        self.kind = kind
        self.path = os.path.join(root, "kumotest-%d-%s" % (os.getpid(), name))
        os.makedirs(self.path, exist_ok=True)
        at_cleanup(self.remove)
        if kind == "v2":
            self._write("memory.max", limit)
            self._write("memory.swap.max", 0, optional=True)
        else:
            self._write("memory.limit_in_bytes", limit)
            self._write("memory.memsw.limit_in_bytes", limit, optional=True)

    def _write(self, name, value, optional=False):
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(str(value))
        except OSError:
            if not optional:
                raise

    def add(self, pid):
        self._write("cgroup.procs", pid)

    def oom_kills(self):
        """OOM kills inside the group so far."""
        name = "memory.events" if self.kind == "v2" else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except OSError:
            pass
        return 0

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)     # the group empties as its killed processes are reaped: retry


def rss_anon(pid):
    """A process's anonymous resident memory in bytes (its heap: what it
    allocated, not the files it maps), or None when it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PlainMemcached:
    """A plain memcached on a free port, to check the tests' own expectations
    against the reference server (KUMO_TEST_AGAINST=memcached)."""

    def __init__(self, extra_args=()):
        """extra_args: more memcached flags; with -Y readiness is the open
        port (every command before authenticating is refused)."""
        exe = shutil.which("memcached") or "/usr/bin/memcached"
        self.probe = port_open if "-Y" in extra_args else raw_version
        if not os.access(exe, os.X_OK):
            tap.skip_all("memcached not installed")
        self.dir = new_tmpdir()
        self.gateway_port = free_port()
        self.gateway_binary_port = self.gateway_port   # memcached auto-negotiates text/binary
        argv = [exe, "-l", "127.0.0.1", "-p", self.gateway_port, "-U", "0", "-m", "64"] + list(extra_args)
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        self.daemon = Daemon("memcached", argv, os.path.join(self.dir, "memcached.log"))

    def __enter__(self):
        tap.note("KUMO_TEST_AGAINST=memcached: plain memcached on 127.0.0.1:%d" % self.gateway_port)
        self.daemon.start()
        wait_until(lambda: self.probe(self.gateway_port), 10, "memcached", daemons=[self.daemon])
        return self

    def __exit__(self, *a):
        self.daemon.stop()
        return False

    def check_running(self, name="every daemon is still running"):
        return tap.ok(self.daemon.alive(), name)


def against_memcached():
    """True when KUMO_TEST_AGAINST=memcached: run a test's checks against a plain memcached."""
    return os.environ.get("KUMO_TEST_AGAINST") == "memcached"


def target(**cluster_kwargs):
    """The server under test: a PlainMemcached with KUMO_TEST_AGAINST=memcached, else a
    Cluster(**cluster_kwargs) (binaries required). Use as a context manager; both have
    gateway_port, gateway_binary_port (None unless asked for) and check_running()."""
    if against_memcached():
        return PlainMemcached()
    require_binaries()
    return Cluster(**cluster_kwargs)


def main(fn):
    """Run a test body under the harness: handlers, exception -> not ok, plan, exit status."""
    install_handlers()
    try:
        fn()
    except SystemExit:
        raise
    except DaemonDied as e:
        tap.ok(False, "daemons stay up", str(e))
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt,)):
            tap.ok(False, "test body raised no exception", traceback.format_exc())
    rc = tap.done()
    cleanup()
    sys.exit(rc)


# --------------------------------------------------------------------------
# the node protocol, spoken directly (docs/protocol.md)
# --------------------------------------------------------------------------

RPC_ROLE_SERVER, RPC_ROLE_TOOL = 1, 3


def rpc_hello(role=RPC_ROLE_TOOL, addr=b""):
    import msgpack
    return msgpack.packb([2, role, addr, 1, 0], use_bin_type=True)


def rpc_request(msgid, method, params):
    import msgpack
    return msgpack.packb([0, msgid, method, params], use_bin_type=True)


def rpc_call(port, method, params, role=RPC_ROLE_TOOL, addr=b"", timeout=10.0):
    """One call on a fresh connection: (error, result); raises on a close or a timeout."""
    import msgpack
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(rpc_hello(role, addr) + rpc_request(1, method, params))
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed before the reply")
            up.feed(d)
            for o in up:
                if isinstance(o, list) and len(o) == 4 and o[0] == 1 and o[1] == 1:
                    return o[2], o[3]
    finally:
        s.close()


# --------------------------------------------------------------------------
# memcached clients
# --------------------------------------------------------------------------

def mc_client(port, timeout=10.0):
    """A pymemcache text client that reports every reply (default_noreply=False)."""
    from pymemcache.client.base import Client
    return Client(("127.0.0.1", port), connect_timeout=timeout, timeout=timeout,
                  default_noreply=False, no_delay=True)


def read_mismatches(port, want, timeout=30.0, tries=1):
    """Single gets of every key through the gateway; want[k] is the value, or
    None for a miss. A get that raises is retried `tries` times on a fresh
    connection. Returns one description per key that read wrong."""
    mc = mc_client(port, timeout=timeout)
    bad = []
    for k, v in want.items():
        got = None
        for i in range(tries):
            try:
                got = mc.get(k)
                break
            except Exception as e:  # timeouts, SERVER_ERROR, a closed connection
                got = "%s: %s" % (type(e).__name__, e)
                mc.close()
                mc = mc_client(port, timeout=timeout)
                if i + 1 < tries:
                    time.sleep(0.5)     # between retries
        if got != v:
            name = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
            bad.append("%s: got %s, want %s" % (name, short(got, 50), short(v, 50)))
    mc.close()
    return bad


class LoadClient(threading.Thread):
    """A client thread that keeps reading and writing through the gateway
    while a test faults the cluster, and remembers what was acknowledged.

    Each round, on one connection: set one of its own keys (prefix:n, or
    prefix:(n % nown) to reuse nown keys) and read it back; if `overwrite`
    (key -> value) is given, overwrite one of those keys and read it back;
    read one of the `known` keys (key -> value, or None for a key that must
    miss); every `multi_every` rounds a get_many of 8 known keys, every
    `reread_every` rounds a get of an own key set earlier; then `pause` s,
    a pace (not a wait) that leaves the daemons some CPU.

    retry_for > 0: a failed op (an exception, or a set not STORED) is retried
    on a fresh connection for up to retry_for s, 0.2 s apart (the gateway
    may take seconds to route around a dead server); only an op that never
    succeeds counts. retry_for = 0: every failure counts at once.

    errors: reads that failed or returned a wrong value; set_errors: sets
    never acknowledged (the key is dropped from acked(): its value is
    uncertain). The thread ends by itself after 50 of them."""

    MAX_FAILURES = 50

    def __init__(self, port, known, rng, prefix="load", nown=None, overwrite=None, retry_for=0.0,
                 timeout=10.0, multi_every=0, reread_every=0, pause=0.005):
        super().__init__(daemon=True)
        self.port = port
        self.known = dict(known)
        self.keys = sorted(self.known)
        self.rng = random.Random(rng.randrange(1 << 32))
        self.prefix = prefix
        self.nown = nown
        self.overwrite = dict(overwrite or {})     # key -> last acknowledged value
        self.over_keys = sorted(self.overwrite)
        self.own = {}                               # key -> last acknowledged value
        self.retry_for = retry_for
        self.timeout = timeout
        self.multi_every = multi_every
        self.reread_every = reread_every
        self.pause = pause
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.set_errors = []
        self.sets = self.gets = self.retries = 0
        self.max_stall = 0.0                        # the longest op, retries included
        self.t0 = time.time()
        self.c = None

    def _drop(self):
        c, self.c = self.c, None
        try:
            c.close()
        except Exception:       # a broken connection may fail to close: it is dropped all the same
            pass

    def _op(self, what, fn):
        """fn() -> (usable, result) until usable or retry_for passes: (done, result or last failure)."""
        t0 = time.time()
        while True:
            try:
                if self.c is None:
                    self.c = mc_client(self.port, timeout=self.timeout)
                ok, res = fn(self.c)
                if ok:
                    self.max_stall = max(self.max_stall, time.time() - t0)
                    return True, res
                last = "answer %r" % (res,)
            except Exception as e:      # timeouts, SERVER_ERROR, a closed connection
                last = "%s: %s" % (type(e).__name__, e)
                self._drop()
            self.max_stall = max(self.max_stall, time.time() - t0)
            if time.time() - t0 >= self.retry_for:
                return False, "t+%.1fs %s: %s%s" % (
                    t0 - self.t0, what, last, " (no success within %.0f s)" % self.retry_for if self.retry_for else "")
            self.retries += 1
            time.sleep(0.2)             # between retries of one op

    def _get(self, k, want, what):
        done, got = self._op("get %s (%s)" % (short(k, 40), what), lambda c: (True, c.get(k)))
        if not done:
            self.errors.append(got)
            return
        self.gets += 1
        if got != want:
            self.errors.append("t+%.1fs get %s (%s) returned %s, want %s" % (
                time.time() - self.t0, short(k, 40), what, short(got, 50), short(want, 50)))

    def _set(self, k, v, into):
        done, r = self._op("set %s" % short(k, 40), lambda c: (c.set(k, v, noreply=False) is True, None))
        with self.lock:
            if done:
                self.sets += 1
                into[k] = v
            else:
                self.set_errors.append(r)
                into.pop(k, None)
        return done

    def _multi(self):
        ks = self.rng.sample(self.keys, min(8, len(self.keys)))
        done, got = self._op("multi-get of %d keys" % len(ks), lambda c: (True, c.get_many(ks)))
        if not done:
            self.errors.append(got)
            return
        self.gets += 1
        want = {x: self.known[x] for x in ks if self.known[x] is not None}
        if got != want:
            self.errors.append("t+%.1fs multi-get of %d keys: %d differ" % (
                time.time() - self.t0, len(ks), sum(1 for x in ks if got.get(x) != self.known[x])))

    def run(self):
        n = 0
        while not self.stopping.is_set() and len(self.errors) + len(self.set_errors) < self.MAX_FAILURES:
            k = ("%s:%d" % (self.prefix, n % self.nown if self.nown else n)).encode()
            v = ("%s value %d " % (self.prefix, n)).encode() + self.rng.randbytes(self.rng.randrange(0, 100))
            if self._set(k, v, self.own):
                self._get(k, v, "own, just set")
            if self.over_keys:
                ok = self.rng.choice(self.over_keys)
                ov = ("%s v%d" % (ok, n)).encode()
                if self._set(ok, ov, self.overwrite):
                    self._get(ok, ov, "overwritten")
            if self.keys:
                kk = self.rng.choice(self.keys)
                self._get(kk, self.known[kk], "known")
            if self.keys and self.multi_every and n % self.multi_every == 0:
                self._multi()
            if self.own and self.reread_every and n % self.reread_every == 0:
                with self.lock:
                    k2 = self.rng.choice(sorted(self.own))
                    v2 = self.own[k2]
                self._get(k2, v2, "own, set earlier")
            n += 1
            time.sleep(self.pause)      # the pace between rounds
        if self.c is not None:
            self._drop()

    def failures(self):
        """Every failure so far: errors, then set_errors."""
        with self.lock:
            return self.errors + self.set_errors

    def snapshot(self):
        """(sets, gets, failures) so far."""
        with self.lock:
            return self.sets, self.gets, len(self.errors) + len(self.set_errors)

    def wait_progress(self, n=20, timeout=60.0):
        """Wait until the client has done n more acknowledged sets and n more
        gets than now: it runs through whatever the cluster is going through.
        False if it did not within timeout (or the thread has ended)."""
        s0, g0 = self.sets, self.gets
        try:
            wait_until(lambda: not self.is_alive() or (self.sets >= s0 + n and self.gets >= g0 + n),
                       timeout, "the load client's next %d sets and gets" % n, interval=0.05)
        except TimeoutError:
            return False
        return self.is_alive()

    def acked(self):
        """key -> value of every write it got acknowledged (own and overwritten keys)."""
        with self.lock:
            out = dict(self.overwrite)
            out.update(self.own)
            return out

    def verify(self, also=None, timeout=30.0, tries=1):
        """Read back `also` (key -> value or None) and every acknowledged write
        through the gateway. Returns (what was read, read_mismatches())."""
        want = dict(also or {})
        want.update(self.acked())
        return want, read_mismatches(self.port, want, timeout=timeout, tries=tries)

    def stop(self):
        """Stop after the current round; True if the thread ended."""
        self.stopping.set()
        self.join(self.retry_for * 5 + self.timeout * 3 + 10)
        return not self.is_alive()

    def summary(self):
        return "%d sets, %d gets, %d retries, longest op %.2f s" % (
            self.sets, self.gets, self.retries, self.max_stall)


class Raw:
    """A raw memcached text-protocol connection."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(1 << 20)
        if not d:
            raise ConnectionError("connection closed by peer (buffered %r)" % self.buf[:200])
        self.buf += d

    def readline(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_until_version(self, max_lines=3):
        """Lines up to and including the VERSION line (for `version` after an error)."""
        lines = []
        for _ in range(max_lines):
            line = self.readline()
            lines.append(line)
            if line.startswith(b"VERSION "):
                return lines
        return lines

    def read_get_reply(self):
        """One get/gets reply: ({key: (flags, data, cas or None)}, raw bytes)."""
        got = {}
        raw = b""
        while True:
            line = self.readline()
            raw += line
            if line == b"END\r\n":
                return got, raw
            parts = line.split()
            if not parts or parts[0] != b"VALUE":
                raise ValueError("unexpected reply line %r" % line)
            n = int(parts[3])
            data = self.read_exact(n + 2)
            raw += data
            if data[-2:] != b"\r\n":
                raise ValueError("value of %r not followed by CRLF" % parts[1])
            got[parts[1]] = (int(parts[2]), data[:-2], int(parts[4]) if len(parts) > 4 else None)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def raw_roundtrip(port, data, timeout=2.0):
    """Send data, read one line."""
    try:
        with Raw(port, timeout) as r:
            r.send(data)
            return r.readline()
    except (OSError, ConnectionError):
        return None


def recv_until(sock, done=None, quiet=5.0):
    """Receive from sock until done(the bytes so far) is true, the peer closes
    the connection, or `quiet` s pass without a byte. Returns (the bytes,
    closed): closed when it ended on EOF or a reset."""
    buf = b""
    sock.settimeout(quiet)
    try:
        while not (done and done(buf)):
            d = sock.recv(65536)
            if not d:
                return buf, True
            buf += d
    except socket.timeout:
        pass
    except OSError:             # reset, or a broken pipe seen on the read side
        return buf, True
    return buf, False


def raw_stats(port, cmd=b"stats", timeout=5.0):
    """A text `stats` command (or `stats settings`, `stats reset`):
    ({name: value}, the line that ended it: END, RESET or b"" at EOF)."""
    with Raw(port, timeout) as r:
        r.send(cmd + b"\r\n")
        out = {}
        while True:
            line = r.readline()
            if line in (b"END\r\n", b"RESET\r\n", b""):
                return out, line
            parts = line.split()
            if len(parts) >= 3 and parts[0] == b"STAT":
                out[parts[1].decode()] = parts[2].decode()


def raw_version(port):
    line = raw_roundtrip(port, b"version\r\n")
    return line is not None and line.startswith(b"VERSION ")


# The debug clock (docs/hacking.md, "Time"; docs/architecture.md §5.1): a test that waits for a TTL moves
# the clock exptimes are judged by instead of sleeping. It needs --debug-time
# on the gateway and on every server (DEBUG_TIME_ARGS for both).
DEBUG_TIME_ARGS = ["--debug-time"]


def debugtime(port, seconds, timeout=15.0):
    """`debugtime <seconds>` at the gateway (or memcached) on port: its answer line
    (b"OK\r\n" once every server moved its debug clock), or None if the
    connection failed."""
    return raw_roundtrip(port, b"debugtime %d\r\n" % seconds, timeout=timeout)


def advance(port, seconds):
    """Let `seconds` pass as far as exptimes are concerned: the debug clock when
    the target serves debugtime (True), else a real wait (False; a memcached
    built without debugging, KUMO_TEST_AGAINST=memcached)."""
    if debugtime(port, seconds) == b"OK\r\n":
        return True
    time.sleep(seconds)     # no debug clock: the TTL's own duration, for real
    return False


def bin_packet(opcode, key=b"", value=b"", extras=b"", opaque=0, cas=0, magic=0x80, vbucket=0):
    """One memcached binary-protocol packet (request by default)."""
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", magic, opcode, len(key), len(extras), 0, vbucket,
                       len(body), opaque, cas) + body


def bin_read(sock_or_raw):
    """Read one binary-protocol packet from a Raw; returns a dict (magic, opcode, status,
    opaque, cas, extras, key, value)."""
    hdr = sock_or_raw.read_exact(24)
    magic, opcode, klen, elen, _dtype, status, blen, opaque, cas = struct.unpack(">BBHBBHIIQ", hdr)
    body = sock_or_raw.read_exact(blen)
    return {"magic": magic, "opcode": opcode, "status": status, "opaque": opaque, "cas": cas,
            "extras": body[:elen], "key": body[elen:elen + klen], "value": body[elen + klen:]}


def bin_version(port, timeout=2.0):
    """True if a binary-protocol VERSION request on port gets a binary response."""
    try:
        with Raw(port, timeout) as r:
            r.send(bin_packet(0x0b))
            p = bin_read(r)
            return p["magic"] == 0x81 and p["opcode"] == 0x0b and p["status"] == 0
    except (OSError, ConnectionError, struct.error):
        return False


# --------------------------------------------------------------------------
# placement (docs/protocol.md §8) and the record layout (src/lib/record.h)
# --------------------------------------------------------------------------

VNODES = 128
REPLICAS = 3


def khash(data):
    """First 8 bytes of SHA-1 as a little-endian u64."""
    if isinstance(data, str):
        data = data.encode()
    return struct.unpack("<Q", hashlib.sha1(data).digest()[:8])[0]


def node_identity(addr):
    """6 bytes: port big-endian, then the IPv4 address."""
    host, port = addr.rsplit(":", 1)
    return struct.pack(">H", int(port)) + socket.inet_aton(host)


def ring_key_of(db):
    """The ring key the database at db is placed by, from "<db>.node"
    (src/server/identity.h): bytes, or None when placed by its address."""
    with open(db + ".node") as f:
        kind, value = f.read().split()[2:4]
    return {"id": bytes.fromhex, "name": str.encode}.get(kind, lambda v: None)(value)


def vnode_hashes(addr):
    h = khash(node_identity(addr))
    out = []
    for _ in range(VNODES):
        out.append(h)
        h = khash(struct.pack("<Q", h))
    return out


class Ring:
    """Consistent-hash ring of nodes ("a.b.c.d:port") in the given order."""

    def __init__(self, nodes, active=None):
        self.nodes = list(nodes)
        self.active = list(active) if active is not None else [True] * len(self.nodes)
        vn = []
        for idx, addr in enumerate(self.nodes):
            for h in vnode_hashes(addr):
                vn.append((h, idx))
        vn.sort(key=lambda x: x[0])          # stable: ties keep node order
        self.hashes = [h for h, _ in vn]
        self.owner_of = [i for _, i in vn]

    def owners(self, key):
        """The up-to-3 distinct owners of key, clockwise, fault ones included."""
        if not self.hashes:
            return []
        want = min(REPLICAS, len(self.nodes))
        i = bisect.bisect_left(self.hashes, khash(key))
        out = []
        n = len(self.hashes)
        for j in range(n):
            node = self.owner_of[(i + j) % n]
            if node not in out:
                out.append(node)
                if len(out) == want:
                    break
        return [self.nodes[k] for k in out]

    def primary(self, key):
        """The first live owner."""
        for a in self.owners(key):
            if self.active[self.nodes.index(a)]:
                return a
        return None


def record_key(key):
    if isinstance(key, str):
        key = key.encode()
    return struct.pack(">Q", khash(key)) + key


class Record:
    """A stored value: be64(clocktime) | be16(meta) | data; 8 bytes = tombstone."""

    def __init__(self, dbkey, value):
        if len(dbkey) < 8:
            raise ValueError("stored key shorter than 8 bytes: %r" % dbkey)
        self.hash = struct.unpack(">Q", dbkey[:8])[0]
        self.key = dbkey[8:]
        self.value = value
        if len(value) < 8 or len(value) == 9:
            raise ValueError("stored value of %d bytes" % len(value))
        self.clocktime = struct.unpack(">Q", value[:8])[0]
        self.tombstone = len(value) == 8
        self.meta = 0
        self.flags = 0
        self.exptime = 0
        self.payload = b""
        if not self.tombstone:
            self.meta = struct.unpack(">H", value[8:10])[0]
            data = value[10:]
            if self.meta & 1:
                if len(data) < 8:
                    raise ValueError("meta=1 value too short for flags|exptime")
                self.flags, self.exptime = struct.unpack(">II", data[:8])
                self.payload = data[8:]
            else:
                self.payload = data

    def __repr__(self):
        return "Record(key=%r hash=%016x ct=%x meta=%d flags=%d exp=%d payload=%s)" % (
            self.key, self.hash, self.clocktime, self.meta, self.flags, self.exptime,
            short(self.payload, 60))


def tch_records(path):
    """All (key, value) byte pairs of a Tokyo Cabinet hash file, via `tchmgr list -pv -px`."""
    r = subprocess.run(["tchmgr", "list", "-pv", "-px", path], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise OSError("tchmgr list %s: exit %d: %s" % (path, r.returncode,
                                                       r.stderr.decode("utf-8", "replace").strip()))
    out = []
    for line in r.stdout.split(b"\n"):
        if not line:
            continue
        k, _, v = line.partition(b"\t")
        out.append((bytes.fromhex(k.decode()), bytes.fromhex(v.decode())))
    return out


# --------------------------------------------------------------------------
# self-test (no daemons needed)
# --------------------------------------------------------------------------

# known answers computed by kumofs 0.4.13 (also in tests/unit/test_ring.c)
VECTOR_HASH = [
    ("", 0x0d4b6b5eeea339da), ("61", 0xfca7a5fa37e4f786), ("68656c6c6f", 0xa2e8c5dc1dc6f4aa),
    ("757365723a3432", 0x29a1cad3234df1ad), ("e381826b6579", 0x3b48ff3bae83bfd5),
]
VECTOR_VNODES = [
    ("192.168.0.101:19800", [0x2bdac55e8582516d, 0x521cb9dee1732014, 0xcf50cc8b3a8798a2]),
    ("192.168.0.102:19800", [0xadf29c0fe70f3294, 0x6e7f5bdc30da2740, 0x80c8cf6371dd9f16]),
    ("192.168.0.103:19800", [0x08c10f344c6e3d30, 0x100a1c86608acd43, 0x052cbdf8791bad0a]),
    ("192.168.0.104:19800", [0x1862c1b1931ee8d9, 0x4096efe84547ed95, 0xb05097799f0b8078]),
]
VECTOR_ASSIGN4 = """
6b65792d30 102 103 101
6b65792d31 103 102 101
6b65792d32 104 101 102
6b65792d33 103 104 102
6b65792d34 103 102 104
6b65792d35 102 103 104
6b65792d36 104 103 102
6b65792d37 102 103 101
6b65792d38 101 102 104
6b65792d39 103 102 104
6b65792d3130 104 101 102
6b65792d3131 101 102 103
"""
VECTOR_ASSIGN3 = """
6b65792d30 102 103 101
6b65792d31 103 102 101
6b65792d32 101 102 103
6b65792d33 103 102 101
6b65792d34 103 102 101
6b65792d35 102 103 101
6b65792d36 103 102 101
6b65792d37 102 103 101
6b65792d38 101 102 103
6b65792d39 103 102 101
6b65792d3130 101 102 103
6b65792d3131 101 102 103
"""


def _check_assign(nnodes, table):
    nodes = ["192.168.0.%d:19800" % (101 + i) for i in range(nnodes)]
    ring = Ring(nodes)
    bad = []
    for line in table.strip().splitlines():
        f = line.split()
        want = ["192.168.0.%s:19800" % x for x in f[1:]]
        got = ring.owners(bytes.fromhex(f[0]))
        if got != want:
            bad.append("%s: got %s want %s" % (f[0], got, want))
    return bad


def ring_selftest():
    """List of mismatches against the known answers (empty = all good)."""
    bad = []
    for hexkey, want in VECTOR_HASH:
        got = khash(bytes.fromhex(hexkey))
        if got != want:
            bad.append("hash(%s) = %016x, want %016x" % (hexkey, got, want))
    for addr, want in VECTOR_VNODES:
        got = vnode_hashes(addr)[:3]
        if got != want:
            bad.append("vnodes(%s) = %s" % (addr, ["%016x" % x for x in got]))
    bad += _check_assign(4, VECTOR_ASSIGN4)
    bad += _check_assign(3, VECTOR_ASSIGN3)
    return bad


GUIDE_STATUS = """hash space timestamp:
  Wed Dec 03 22:15:45 +0900 2008 clock 58
attached node:
  192.168.0.101:19800 (active)
  192.168.0.102:19800  (active)
  192.168.0.104:19800 (fault)
not attached node:
  192.168.0.104:19800
"""


def _selftest():
    install_handlers()
    tap.note("kumotest self-test (no daemons): placement, record layout, status parsing")
    bad = ring_selftest()
    tap.ok(not bad, "python placement matches the known answers of kumofs 0.4.13", "\n".join(bad))

    st = Status(GUIDE_STATUS)
    tap.eq(st.attached, [("192.168.0.101:19800", "active"), ("192.168.0.102:19800", "active"),
                         ("192.168.0.104:19800", "fault")], "status parser: attached list")
    tap.eq(st.not_attached, ["192.168.0.104:19800"], "status parser: not attached list")
    tap.ok(st.timestamp and st.timestamp.endswith("clock 58"), "status parser: timestamp")
    st = Status("hash space timestamp:\n  x\nattached node:\nnot attached node:\n")
    tap.ok(st.attached == [] and st.not_attached == [], "status parser: empty lists")

    key = b"user:42"
    dbkey = record_key(key)
    val = struct.pack(">QH", (1 << 32) | 7, 1) + struct.pack(">II", 0xdeadbeef, 0) + b"\x00\r\npayload"
    rec = Record(dbkey, val)
    tap.ok(rec.key == key and rec.hash == 0x29a1cad3234df1ad, "record: be64(hash)|key")
    tap.ok(rec.meta == 1 and rec.flags == 0xdeadbeef and rec.payload == b"\x00\r\npayload"
           and rec.clocktime == (1 << 32) | 7, "record: meta=1 value parsed")
    rec = Record(dbkey, struct.pack(">Q", 5))
    tap.ok(rec.tombstone and rec.clocktime == 5, "record: 8-byte tombstone")

    ports = [free_port() for _ in range(20)]
    tap.ok(len(set(ports)) == 20 and all(1024 < p < 65536 for p in ports), "free_port gives distinct ports")

    if shutil.which("tchmgr"):
        d = new_tmpdir()
        path = os.path.join(d, "t.tch")
        subprocess.run(["tchmgr", "create", path], check=True)
        k, v = b"\x00\x01\t\n\xffA", b"\x00\x00\x00\r\n\t\x00"
        subprocess.run(["tchmgr", "put", "-sx", path, k.hex(" "), v.hex(" ")], check=True)
        tap.eq(tch_records(path), [(k, v)], "tch_records reads binary keys and values")
    else:
        tap.skip("tch_records reads binary keys and values", "tchmgr not installed (tokyocabinet-bin)")
    rc = tap.done()
    cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    _selftest()

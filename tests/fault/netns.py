"""netns — network namespaces as test hosts, with their own DNS (tests/fault).

    net = Net(["h1", "h2", ...])     # names get a random tag: kd1a2b-h1 ...
    net.up()                         # a bridge namespace + one namespace per host
    net.addr("h1")  -> "10.A.B.1"    net.addr6("h1") -> "fd00:A:B::1"
    net.argv("h1", [prog, ...])      # ["ip", "netns", "exec", ns, prog, ...]
    net.run("h1", [...])             # subprocess.run in the namespace
    net.dns(host, records, srv)      # a dnsmasq in `host` serving *.kumo.test;
                                     # every host's /etc/netns/NS/resolv.conf names it
    net.set_records(records); net.reload_dns()     # rewrite the hosts file, SIGHUP
    net.down()                       # stop dnsmasq, delete namespaces and /etc/netns dirs
    net.call("h1", fn, *args)        # fn(*args) in a thread inside h1's namespace (sockets
                                     # it opens are h1's: 127.0.0.1 is h1's loopback)
    enter(ns)                        # the calling thread into namespace ns (setns)

Layout: the bridge lives in its own
namespace (nothing is added to the root namespace: the veth pairs are created
directly inside the bridge and host namespaces); each host has eth0 with
10.A.B.i/24 and fd00:A:B::i/64 (nodad), and lo up.

down() is registered with kumotest.at_cleanup, so it runs after the daemons
are stopped, also on a signal or the harness's watchdog, and again from
atexit; it is idempotent. Every process is stopped by pid (kumotest.Daemon).
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster"))
import kumotest as kt  # noqa: E402

DOMAIN = "kumo.test"


def available():
    """None if namespaces can be used here, else the reason."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "ip (iproute2) not installed"
    tag = "kdprobe%04x" % random.getrandbits(16)
    r = subprocess.run(["ip", "netns", "add", tag], capture_output=True, text=True)
    if r.returncode != 0:
        return "ip netns unavailable: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", tag], capture_output=True)
    return None


CLONE_NEWNET = 0x40000000


def enter(ns):
    """Move the calling thread, only it, into the network namespace ns (setns(2): a
    network namespace is a per-thread attribute; sockets opened afterwards are ns's)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join("/run/netns", ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns into %s: %s" % (ns, os.strerror(e)))
    finally:
        os.close(fd)


def sh(argv, check=True, timeout=20):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise OSError("%s: exit %d: %s" % (" ".join(map(str, argv)), r.returncode, r.stderr.strip()))
    return r


class Net:
    def __init__(self, hosts, rng=None):
        rng = rng or random.Random()
        # The tag is from os.urandom, not the test's seed: two runs with one
        # seed on one machine must not collide.
        self.tag = "kd%s" % os.urandom(3).hex()
        self.a, self.b = rng.randrange(64, 250), rng.randrange(1, 250)
        self.bridge = self.tag + "-br"
        self.hosts = list(hosts)
        self.index = {h: i + 1 for i, h in enumerate(self.hosts)}
        self.ns = {h: "%s-%s" % (self.tag, h) for h in self.hosts}
        self.created = []
        self.etc_dirs = []
        self.dnsmasq = None
        self.dns_host = None
        self.records_path = None
        self.down_done = False
        kt.at_cleanup(self.down)

    # -- addresses
    def addr(self, h):
        return "10.%d.%d.%d" % (self.a, self.b, self.index[h])

    def addr6(self, h):
        return "fd00:%x:%x::%x" % (self.a, self.b, self.index[h])

    def argv(self, h, argv):
        return ["ip", "netns", "exec", self.ns[h]] + [str(a) for a in argv]

    def run(self, h, argv, timeout=30, env=None, input=None):
        try:
            return subprocess.run(self.argv(h, argv), input=input if input is not None else "",
                                  capture_output=True, text=True, errors="replace", timeout=timeout,
                                  env=env if env is not None else kt.daemon_env())
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return subprocess.CompletedProcess(self.argv(h, argv), -999, out, "(timed out after %s s)" % timeout)

    def call(self, h, fn, *args, timeout=None):
        """fn(*args) in a new thread moved into h's namespace; its value, or its exception
        raised here (TimeoutError if it runs longer than timeout s)."""
        out = {}

        def body():
            try:
                enter(self.ns[h])
                out["value"] = fn(*args)
            except BaseException as e:  # handed to the caller
                out["error"] = e
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError("%s in %s still running after %s s" % (getattr(fn, "__name__", fn), h, timeout))
        if "error" in out:
            raise out["error"]
        return out.get("value")

    # -- set-up
    def up(self):
        sh(["ip", "netns", "add", self.bridge])
        self.created.append(self.bridge)
        sh(["ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.bridge, "link", "set", "br0", "up"])
        sh(["ip", "-n", self.bridge, "link", "set", "lo", "up"])
        for h in self.hosts:
            self.add_host(h)
        return self

    def add_host(self, h):
        ns, i = self.ns[h], self.index[h]
        # /etc/netns first: no lookup in the namespace may reach the host's resolver
        d = os.path.join("/etc/netns", ns)
        os.makedirs(d, exist_ok=True)
        self.etc_dirs.append(d)
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n::1 localhost\n")
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")   # until dns() names the real one
        sh(["ip", "netns", "add", ns])
        self.created.append(ns)
        veth = "v%d" % i
        sh(["ip", "link", "add", veth, "netns", self.bridge, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", self.bridge, "link", "set", veth, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", "%s/24" % self.addr(h), "dev", "eth0"])
        sh(["ip", "-n", ns, "addr", "add", "%s/64" % self.addr6(h), "dev", "eth0", "nodad"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def link(self, h, up):
        """Cut a host off the bridge (or plug it back)."""
        sh(["ip", "-n", self.bridge, "link", "set", "v%d" % self.index[h], "up" if up else "down"])

    # -- DNS
    def set_records(self, records):
        """records: [(name, address)] written as the addn-hosts file (names relative to kumo.test
        unless they end with a dot)."""
        lines = []
        for name, address in records:
            fq = name[:-1] if name.endswith(".") else "%s.%s" % (name, DOMAIN)
            lines.append("%s %s\n" % (address, fq))
        tmp = self.records_path + ".new"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.records_path)

    def reload_dns(self):
        if self.dnsmasq and self.dnsmasq.alive():
            os.kill(self.dnsmasq.pid, signal.SIGHUP)

    def dns(self, host, records, srv=(), workdir=None):
        """Start dnsmasq in `host` for kumo.test: A/AAAA records from an addn-hosts file,
        srv = [(service_name, target, port, priority, weight)] (relative to kumo.test).
        Every host's resolv.conf then names it. Returns the kumotest.Daemon."""
        workdir = workdir or kt.new_tmpdir("kumo-dns-")
        self.records_path = os.path.join(workdir, "hosts.kumo")
        self.set_records(records)
        self.dns_host = host
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--addn-hosts=%s" % self.records_path, "--listen-address=%s" % self.addr(host),
                "--bind-interfaces", "--local=/%s/" % DOMAIN, "--no-negcache", "--local-ttl=0",
                "--log-queries", "--log-facility=-", "--user=root"]
        for name, target, port, prio, weight in srv:
            argv.append("--srv-host=%s.%s,%s.%s,%d,%d,%d" % (name, DOMAIN, target, DOMAIN, port, prio, weight))
        exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        argv[0] = exe
        self.dnsmasq = kt.Daemon("dnsmasq", self.argv(host, argv), os.path.join(workdir, "dnsmasq.log")).start()
        for h in self.hosts:
            with open(os.path.join("/etc/netns", self.ns[h], "resolv.conf"), "w") as f:
                f.write("nameserver %s\noptions timeout:1 attempts:2\n" % self.addr(host))
        return self.dnsmasq

    # -- teardown
    def down(self):
        if self.down_done:
            return
        self.down_done = True
        if self.dnsmasq:
            self.dnsmasq.stop(timeout=5)
        # every process still inside one of our namespaces was started by this test
        for ns in self.created:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.etc_dirs = []


def _selftest():
    """Run alone (prove runs every .py here): two hosts, a dnsmasq, a lookup, teardown."""
    kt.install_handlers()
    why = available()
    if why:
        kt.tap.skip_all(why)
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(exe, os.X_OK):
        kt.tap.bail("dnsmasq is not installed (apt-get install dnsmasq)")
    net = Net(["a", "b"])
    try:
        net.up()
        kt.tap.ok(True, "bridge namespace and two hosts up (%s-*)" % net.tag)
        net.dns("b", [("x", net.addr("a")), ("x", net.addr("b")), ("y6", net.addr6("a"))],
                [("_kumo-manager._tcp", "x", 19700, 0, 10)])
        deadline = kt.time.time() + 10
        while True:
            r = net.run("a", ["getent", "ahosts", "x." + DOMAIN], timeout=5)
            if net.addr("b") in r.stdout or kt.time.time() > deadline:
                break
            kt.time.sleep(0.2)     # between polls
        got = {l.split()[0] for l in r.stdout.splitlines() if l.strip()}
        kt.tap.ok({net.addr("a"), net.addr("b")} <= got, "host a resolves x.%s to both A records through "
                  "dnsmasq in host b" % DOMAIN, r.stdout + r.stderr)
        r = net.run("a", ["getent", "ahosts", "y6." + DOMAIN], timeout=5)
        kt.tap.ok(net.addr6("a") in r.stdout, "AAAA record", r.stdout + r.stderr)
        net.set_records([("z", net.addr("b"))])
        net.reload_dns()
        deadline = kt.time.time() + 10
        while net.addr("b") not in net.run("a", ["getent", "hosts", "z." + DOMAIN], timeout=5).stdout:
            if kt.time.time() > deadline:
                break
            kt.time.sleep(0.2)     # between polls
        kt.tap.ok(net.addr("b") in net.run("a", ["getent", "hosts", "z." + DOMAIN], timeout=5).stdout,
                  "records changed live (SIGHUP)")
    finally:
        kt.stop_all()
        net.down()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    kt.tap.ok(net.tag not in left and not any(os.path.exists(d) for d in
                                              ("/etc/netns/%s-a" % net.tag, "/etc/netns/%s-b" % net.tag)),
              "teardown removed the namespaces and /etc/netns dirs", left)
    rc = kt.tap.done()
    kt.cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    _selftest()

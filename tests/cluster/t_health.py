#!/usr/bin/python3
"""t_health — what an operator reads from the tools and their exit codes
(docs/operations.md, "Health and exit codes"), with the mistakes made on
purpose.

Three servers, one manager, no gateway. In order:

  * --version on every binary: "PROG (kumofs X.Y.Z)", exit 0;
  * times: a blank hash space's timestamp is "none", `kumostat clocktime`
    and the manager's "replace finished" log line give ISO 8601 with the
    zone and the logical counter;
  * a manager without servers: `kumoctl health` says down (no server is
    attached) and exits 2, `status` exits 2 and still prints kumofs 0.4's
    block;
  * `kumoctl attach` prints each server it attached; a second attach and a
    detach say there was nothing to do; `replace` says how many servers
    copy; all exit 0;
  * the cluster in sync: status exits 0 and shows "settings:" with the
    auto-replace switch (enabled and disabled as switched; never
    "replace:", which scripts look for to see a replace running) and
    "health: ok"; `health` prints ok, exit 0; `kumostat -m hsccheck` true
    for all, exit 0;
  * one server SIGKILLed: once it is (fault), status exits 2 naming it
    under "health:", `health` exits 1 (degraded), `kumostat -m hsccheck`
    lists it as fault and exits 1; `detach` prints it;
  * the two others SIGKILLed: `health` exits 2 (down: keys without an
    owner); a health check of a port where nothing listens exits 2;
  * every tool that asks a manager takes several (`m1,m2`, `-p m2`) and
    uses the first that answers; none answering names each failure;
  * a tool pointed at the wrong kind of port says which kind it reached
    (kumoctl at a server, kumostat at a manager), or that no kumofs hello
    came (a server's stream port), exit 1;
  * a server and a gateway given a -m where nothing listens, without -v:
    each logs a WARN naming it within seconds; the gateway answers a set
    and a get with SERVER_ERROR at once, not after its retries;
    the server's stdout is named by JOURNAL_STREAM: its WARN line starts
    with "<4>"; the gateway runs with --log-json: its WARN is a JSON object;
  * a manager whose -p partner is not up: health names it (not linked);
    once linked and agreeing, nothing about it; SIGSTOPped: "does not
    answer", and health still ends within 4.5 s.
"""
import os
import json
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
ISO_US = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"
BINARIES = ("kumo-manager", "kumo-server", "kumo-gateway", "kumoctl", "kumostat",
            "kumohash", "kumotop", "kumolog", "kumomergedb")


def out_of(r):
    return "exit %s\nstdout:\n%s\nstderr:\n%s" % (r.returncode, r.stdout, r.stderr)


def section(text, name):
    """The indented lines under `name:` in kumoctl status."""
    m = re.search(r"^%s:\n((?:  .*\n)*)" % re.escape(name), text, re.M)
    return [l.strip() for l in m.group(1).splitlines()] if m else None


def log_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def body():
    kt.require_binaries(BINARIES)

    for b in BINARIES:
        r = kt.run_tool([kt.binary(b), "--version"])
        tap.ok(r.returncode == 0 and re.fullmatch(r"%s \(kumofs \d+\.\d+\.\d+\S*\)\n" % re.escape(b), r.stdout),
               "%s --version: one line, exit 0" % b, out_of(r))

    c = kt.Cluster(nservers=3, gateway=False, start=False)
    with c:
        c.start_manager()
        r = c.kumoctl("health")
        tap.ok(r.returncode == 2 and r.stdout.startswith("down\n") and "no server is attached" in r.stdout,
               "health of a manager without servers: down, exit 2", out_of(r))
        r = c.kumoctl("status")
        tap.ok(r.returncode == 2 and r.stdout.startswith("hash space timestamp:\n  none\nattached node:\n")
               and section(r.stdout, "health")[:1] == ["down"],
               "status of a manager without servers: kumofs 0.4's block (no time: none), health down, exit 2",
               out_of(r))

        for s in c.servers:
            c.start_server(s)
        c.wait_not_attached(c.servers)
        r = c.kumoctl("attach")
        tap.ok(r.returncode == 0 and sorted(r.stdout.splitlines()) == sorted("attached " + s.addr for s in c.servers),
               "attach prints each server it attached", out_of(r))
        kt.wait_until(lambda: c.kumoctl("status").returncode == 0, 30,
                      "status exit 0 (all attached servers in sync)", interval=0.3, daemons=c.daemons())
        r = c.kumoctl("attach")
        tap.ok(r.returncode == 0 and r.stdout.startswith("nothing to attach"), "a second attach: nothing to attach",
               out_of(r))
        r = c.kumoctl("detach-noreplace")
        tap.ok(r.returncode == 0 and r.stdout.startswith("nothing to detach"), "detach without a fault server: "
               "nothing to detach", out_of(r))
        r = c.kumoctl("replace")
        tap.ok(r.returncode == 0 and r.stdout == "replace started: 3 servers copying\n",
               "replace says how many servers copy", out_of(r))
        kt.wait_until(lambda: c.kumoctl("status").returncode == 0, 30, "the replace to end", interval=0.3)

        r = c.kumoctl("status")
        tap.ok(r.returncode == 0 and section(r.stdout, "settings") == ["auto replace disabled"]
               and section(r.stdout, "health") == ["ok"],
               "status of a healthy cluster: auto replace disabled, health ok, exit 0", out_of(r))
        c.kumoctl("enable-auto-replace")
        r = c.kumoctl("status")
        tap.ok("replace:" not in r.stdout, "no replace running: no \"replace:\" in status", out_of(r))
        tap.ok(section(r.stdout, "settings") == ["auto replace enabled"], "status after enable-auto-replace: enabled",
               out_of(r))
        c.kumoctl("disable-auto-replace")
        r = c.kumoctl("health")
        tap.ok(r.returncode == 0 and r.stdout == "ok\n", "health of a healthy cluster: ok, exit 0", out_of(r))
        r = kt.run_tool([kt.binary("kumostat"), c.servers[0].addr, "clocktime"])
        m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d) clock (\d+) \((\d+)\)\n", r.stdout)
        tap.ok(m and int(m.group(3)) & 0xffffffff == int(m.group(2))
               and abs(time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - (int(m.group(3)) >> 32)) < 1,
               "kumostat clocktime: ISO 8601 time with zone, the counter, the raw ClockTime", out_of(r))
        with open(c.log("manager"), errors="replace") as f:
            log = f.read()
        if not kt.VERBOSE_DAEMONS:
            tap.skip("the manager logs the replace's time", "KUMO_TEST_VERBOSE=0: no INFO lines")
        else:
            logged = [l for l in log.splitlines() if not l.startswith("=== kumotest")]
            tap.ok(logged and all(re.match(ISO_US + r" (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) ", l) for l in logged),
                   "every line of the manager's log starts with an ISO 8601 time with zone", log[-1500:])
            tap.ok(re.search(r"replace finished: hash space of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d clock \d+",
                             log), "the manager logs the replace's hash space as a time and counter", log[-1500:])
        hsc = kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "hsccheck"])
        tap.ok(hsc.returncode == 0 and hsc.stdout.count("true") == 3, "kumostat -m hsccheck: true x3, exit 0",
               out_of(hsc))

        dead, dead2 = ("127.0.0.1:%d" % kt.free_port() for _ in range(2))
        for argv in (["kumoctl", "%s,%s" % (dead, c.ctl_addr), "health"],
                     ["kumoctl", dead, "-p", c.ctl_addr, "health"],
                     ["kumostat", "-m", dead, "-p", c.mgr_addr, "items"],
                     ["kumohash", "-m", dead, "-p", c.mgr_addr, "assign", "k"],
                     ["kumotop", "-n", "1", "-m", dead, "-p", c.mgr_addr]):
            r = kt.run_tool([kt.binary(argv[0])] + argv[1:])
            tap.ok(r.returncode == 0 and r.stdout, "%s: the first manager is down, the next one answers" %
                   " ".join(argv), out_of(r))
        r = kt.run_tool([kt.binary("kumoctl"), dead, "-p", dead2, "status"])
        tap.ok(r.returncode == 1 and dead in r.stderr and dead2 in r.stderr,
               "kumoctl with no manager answering names why for each", out_of(r))
        r = kt.run_tool([kt.binary("kumostat"), c.servers[0].addr, "-p", c.mgr_addr, "items"])
        tap.ok(r.returncode == kt.EX_USAGE and "needs -m" in r.stderr, "kumostat -p without -m: usage, exit 64",
               out_of(r))

        victim = c.servers[2]
        victim.daemon.kill9()
        kt.wait_until(lambda: c.status().state(victim.addr) == "fault", 30, "%s (fault)" % victim.addr,
                      interval=0.3)
        r = c.kumoctl("status")
        tap.ok(r.returncode == 2 and section(r.stdout, "health")[0] == "degraded"
               and "server %s is down (fault)" % victim.addr in section(r.stdout, "health"),
               "status with a fault server: exit 2, the server named under health", out_of(r))
        r = c.kumoctl("health")
        tap.ok(r.returncode == 1 and r.stdout.startswith("degraded\n") and victim.addr in r.stdout,
               "health with a fault server: degraded, exit 1", out_of(r))
        hsc = kt.run_tool([kt.binary("kumostat"), "-m", c.mgr_addr, "hsccheck"])
        tap.ok(hsc.returncode == 1 and "%s:  fault\n" % victim.addr in hsc.stdout and hsc.stdout.count("true") == 2,
               "kumostat -m hsccheck lists the fault server and exits 1", out_of(hsc))
        r = c.kumoctl("detach-noreplace")
        tap.ok(r.returncode == 0 and r.stdout == "detached %s\n" % victim.addr, "detach prints the server it "
               "detached", out_of(r))

        for s in c.servers[:2]:
            s.daemon.kill9()
        kt.wait_until(lambda: all(c.status().state(s.addr) == "fault" for s in c.servers[:2]), 30,
                      "the other two (fault)", interval=0.3)
        r = c.kumoctl("health")
        tap.ok(r.returncode == 2 and r.stdout.startswith("down\n") and "no live in-sync owner" in r.stdout,
               "health with every server fault: down, exit 2", out_of(r))
        r = kt.run_tool([kt.binary("kumoctl"), "127.0.0.1:%d" % kt.free_port(), "health"])
        tap.ok(r.returncode == 2 and r.stdout.startswith("down\n  no manager answers"),
               "health of a port where nothing listens: down, exit 2", out_of(r))

        s = c.servers[0]
        c.start_server(s)
        kt.wait_until(lambda: kt.port_open(s.port), 20, "server restarted", daemons=[s.daemon])
        r = kt.run_tool([kt.binary("kumoctl"), s.addr, "status"])
        tap.ok(r.returncode == 1 and "%s is a kumo-server, not a kumo-manager" % s.addr in r.stderr,
               "kumoctl at a server's port says it reached a kumo-server", out_of(r))
        r = kt.run_tool([kt.binary("kumostat"), c.mgr_addr, "pid"])
        tap.ok(r.returncode == 1 and "%s is a kumo-manager, not a kumo-server" % c.mgr_addr in r.stderr,
               "kumostat at a manager's port says it reached a kumo-manager", out_of(r))
        r = kt.run_tool([kt.binary("kumoctl"), "127.0.0.1:%d" % s.stream_port, "status"])
        tap.ok(r.returncode == 1 and "before any kumofs hello" in r.stderr,
               "kumoctl at a server's stream port: no kumofs hello came", out_of(r))

    # A wrong -m, as an operator types it: no -v.
    tmp = kt.new_tmpdir()
    nowhere = "127.0.0.1:%d" % kt.free_port()
    sport, gport = kt.free_port(), kt.free_port()
    # The server's stdout is "the journal": JOURNAL_STREAM names its device:inode.
    slog = os.path.join(tmp, "server.log")
    open(slog, "ab").close()
    st = os.stat(slog)
    srv = kt.Daemon("kumo-server", [kt.binary("kumo-server"), "-o", "-", "-m", nowhere, "-l", "127.0.0.1:%d" % sport,
                                    "-L", kt.free_port(), "-s", os.path.join(tmp, "s.tch"), "-f", tmp],
                    slog, env={"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}).start()
    gw = kt.Daemon("kumo-gateway", [kt.binary("kumo-gateway"), "-o", "-", "--log-json", "-m", nowhere,
                                    "-t", "127.0.0.1:%d" % gport], os.path.join(tmp, "gateway.log")).start()
    kt.wait_until(lambda: kt.port_open(gport), 10, "the gateway's port", daemons=[gw])
    t0 = time.time()
    line = kt.raw_roundtrip(gport, b"set k 0 0 1\r\nx\r\n", timeout=5)
    took = time.time() - t0
    tap.ok(line and line.startswith(b"SERVER_ERROR") and took < 1.0,
           "a gateway whose manager is unreachable answers a set with SERVER_ERROR at once (%.2f s)" % took,
           repr(line))
    line = kt.raw_roundtrip(gport, b"get k\r\n", timeout=5)
    tap.ok(line and line.startswith(b"SERVER_ERROR"), "... and a get", repr(line))
    for d in (srv, gw):
        kt.wait_until(lambda: "no manager reachable for" in d.tail(20), 10, "%s: the WARN" % d.name, daemons=[d])
        text = d.tail(20)
        tap.ok(re.search(r"no manager reachable for \d+ s \(%s\)" % re.escape(nowhere), text),
               "%s without -v logs a WARN naming the unreachable manager" % d.name, text)
        d.stop()
    lines = [l for l in srv.tail(20).splitlines() if "no manager reachable for" in l]
    tap.ok(lines and re.match(r"<4>%s WARN links\.c:\d+: no manager" % ISO_US, lines[0]),
           "with JOURNAL_STREAM naming its stdout, a WARN line starts with <4> and an ISO 8601 time", lines)
    objs = []
    for l in gw.tail(20).splitlines():
        try:
            objs.append(json.loads(l))
        except ValueError:
            pass
    warn = [o for o in objs if "no manager reachable for" in o.get("msg", "")]
    tap.eq(len(warn), 1, "the gateway's workers each keep manager links, but one WARN is written")
    tap.ok(warn and warn[0]["level"] == "WARN" and re.fullmatch(ISO_US, warn[0]["time"])
           and warn[0]["file"] == "links.c" and isinstance(warn[0]["line"], int),
           "--log-json: the WARN is a JSON object with time, level, file, line and msg", gw.tail(20))

    # A manager whose partner is not there yet, then there, then hung.
    bport, bctl = kt.free_port(), kt.free_port()
    lone = kt.Cluster(nservers=0, gateway=False, start=False, manager_args=["-p", "127.0.0.1:%d" % bport])
    with lone:
        lone.start_manager()
        r = lone.kumoctl("health")
        tap.ok(r.returncode == 2 and re.search(r"the partner manager 127\.0\.0\.1:\d+ is not linked", r.stdout),
               "health names the partner manager that is not linked", out_of(r))
        b = kt.Daemon("kumo-manager-B", [kt.binary("kumo-manager"), "-o", "-", "-l", "127.0.0.1:%d" % bport,
                                         "-c", bctl, "-p", lone.mgr_addr], lone.log("managerB")).start()
        kt.wait_until(lambda: "partner" not in lone.kumoctl("health").stdout, 20, "the partner linked and agreeing",
                      interval=0.3, daemons=[b])
        tap.ok(True, "with the partner linked (both blank, so agreeing), health names no partner problem")
        os.kill(b.pid, signal.SIGSTOP)
        t0 = time.time()
        r = lone.kumoctl("health")
        took = time.time() - t0
        os.kill(b.pid, signal.SIGCONT)
        tap.ok(r.returncode == 2 and "the partner manager does not answer" in r.stdout and took < 4.5,
               "a hung partner: health says it does not answer, within a container probe's 5 s (%.1f s)" % took,
               out_of(r))
        # The manager itself notices a partner that keeps its connection
        # open but answers nothing (hung, or cut off by a partition that
        # closes nothing): it logs it and shows it unlinked, then links
        # again once the partner answers.
        kt.wait_until(lambda: "partner" not in lone.kumoctl("health").stdout, 20, "the partner linked again",
                      interval=0.3, daemons=[b])
        os.kill(b.pid, signal.SIGSTOP)
        try:
            kt.wait_until(lambda: "does not answer for" in log_text(lone.log("manager")), 15,
                          "the manager to notice its silent partner", interval=0.3, daemons=[lone.manager])
            r = lone.kumoctl("health")
            tap.ok("lost partner" in log_text(lone.log("manager")) and
                   re.search(r"the partner manager 127\.0\.0\.1:\d+ is not linked", r.stdout),
                   "a partner silent for 4 s is logged as lost and health shows it unlinked", out_of(r))
        finally:
            os.kill(b.pid, signal.SIGCONT)
        kt.wait_until(lambda: "partner" not in lone.kumoctl("health").stdout, 30, "the partner linked once it answers",
                      interval=0.3, daemons=[b, lone.manager])
        tap.ok(True, "... and linked again once it answers")
        b.stop()


if __name__ == "__main__":
    kt.main(body)

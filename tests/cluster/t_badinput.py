#!/usr/bin/python3
"""t_badinput — the daemons refuse bad start-up input clearly and promptly.

  * a bad flag (unknown, non-numeric value, missing value) on each daemon:
    exit 64 (EX_USAGE) with a usage message;
  * kumo-server -s in a missing directory, or on a corrupt .tch file: exit
    non-zero, naming the file, and the corrupt file left as it was;
  * an address that cannot parse (-m 127.0.0.1:99999): exit 64 with a
    message naming it; a manager name that does not resolve (-m
    nosuch.invalid) on a server or gateway: a log line naming it, retries
    (names are re-resolved, since container addresses come and go), and a
    clean exit on SIGTERM; a manager that cannot resolve its own -l: exit
    non-zero naming it.
Every command runs under a timeout; a hang is a failure. Bad input on the
daemons' ports once they run is t_hostile.py's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
HANG = 10     # seconds a daemon may take to give up on bad input
DNS_HANG = 40  # resolving nosuch.invalid may wait for the resolver's timeouts


def expect_retry(argv, name, mention, keep=2):
    """Run argv; check it retries the lookup, keeps running (`keep` s more after
    the second failed lookup), logs `mention`, and exits 0 on SIGTERM."""
    import signal
    import subprocess
    tap.note("$ " + " ".join(str(a) for a in argv))
    log = os.path.join(kt.new_tmpdir(), "out.log")
    with open(log, "wb") as f:
        p = subprocess.Popen([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT)

    def output():
        with open(log, "rb") as f:
            return f.read().decode("utf-8", "replace")
    try:
        kt.wait_until(lambda: output().count("cannot resolve") >= 2 or p.poll() is not None, DNS_HANG * 2,
                      "%s to fail a lookup twice" % name, interval=0.2)
        kt.holds_for(lambda: p.poll() is None, keep, "%s running" % name, interval=0.2)
        alive = True
    except TimeoutError:
        alive = False
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=HANG)
        status = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        status = None
    text = output()
    tap.ok(alive, "%s: keeps running while the name does not resolve" % name, text[-1500:])
    tap.ok(mention in text and "cannot resolve" in text, "%s: logs why, naming %s" % (name, mention), text[-1500:])
    tap.ok(text.count("cannot resolve") >= 2, "%s: retries the lookup" % name, text[-1500:])
    tap.ok(status == 0, "%s: exits 0 on SIGTERM" % name, "status %r" % status)


def expect_exit(argv, name, want_status=None, must_mention=(), timeout=HANG):
    """Run argv; check it exits (non-zero, or want_status) and its output mentions each string."""
    tap.note("$ " + " ".join(str(a) for a in argv))
    status, out = kt.run_expect_exit(argv, timeout)
    if status is None:
        return tap.ok(False, "%s: exits by itself" % name,
                      "still running after %d s; output:\n%s" % (timeout, out[-2000:]))
    missing = [m for m in must_mention if m.lower() not in out.lower()]
    if want_status is not None:
        ok = status == want_status and not missing
        what = "exit %d" % want_status
    else:
        ok = status > 0 and not missing
        what = "exit non-zero"
    return tap.ok(ok, "%s: %s%s" % (name, what, ", mentions %s" % "/".join(must_mention) if must_mention else ""),
                  None if ok else "exit status %s (negative = killed by a signal); missing %s; output:\n%s"
                  % (status, missing, out[-2000:]))


def body():
    kt.require_binaries()
    tmp = kt.new_tmpdir()

    mgr, ctl, srv, stream, gw = (kt.free_port() for _ in range(5))
    db = os.path.join(tmp, "ok.tch")
    valid = {
        "kumo-manager": ["-l", "127.0.0.1:%d" % mgr, "-c", ctl],
        "kumo-server": ["-m", "127.0.0.1:%d" % mgr, "-l", "127.0.0.1:%d" % srv, "-L", stream,
                        "-s", db, "-f", tmp],
        "kumo-gateway": ["-m", "127.0.0.1:%d" % mgr, "-t", "127.0.0.1:%d" % gw],
    }

    tap.note("bad flags -> exit 64 and a usage message")
    for d in kt.DAEMONS:
        exe = kt.binary(d)
        expect_exit([exe] + valid[d] + ["--no-such-flag"], "%s --no-such-flag" % d, 64, ["usage"])
        expect_exit([exe] + valid[d] + ["-Zq"], "%s -Zq (unknown short flag)" % d, 64, ["usage"])
        expect_exit([exe] + valid[d] + ["-TR", "many"], "%s -TR many (not a number)" % d, 64, ["usage"])
        expect_exit([exe] + valid[d] + ["-Ci", "-1"], "%s -Ci -1 (out of range)" % d, 64, ["usage"])
        expect_exit([exe] + valid[d] + ["-TR"], "%s -TR without its value" % d, 64, ["usage"])
    for t in kt.TOOLS:
        expect_exit([kt.binary(t), "--no-such-flag"], "%s --no-such-flag" % t, 64, ["usage"])
        expect_exit([kt.binary(t)], "%s without arguments" % t, None, ["usage"])

    tap.note("bad databases (a manager runs, so the database is the only problem)")
    with kt.Cluster(nservers=0, gateway=False) as c:
        missing = os.path.join(tmp, "no-such-dir", "db.tch")
        base = [kt.binary("kumo-server"), "-o", "-", "-m", c.mgr_addr,
                "-l", "127.0.0.1:%d" % srv, "-L", stream, "-f", tmp]
        expect_exit(base + ["-s", missing], "kumo-server -s in a missing directory",
                    None, [missing])

        corrupt = os.path.join(tmp, "corrupt.tch")
        garbage = b"this is not a Tokyo Cabinet file\n" + bytes(range(256)) * 16
        with open(corrupt, "wb") as f:
            f.write(garbage)
        expect_exit(base + ["-s", corrupt], "kumo-server -s on a corrupt .tch file",
                    None, [corrupt])
        with open(corrupt, "rb") as f:
            tap.ok(f.read() == garbage, "the corrupt file is left untouched")

        notdb = os.path.join(tmp, "a-directory.tch")
        os.mkdir(notdb)
        expect_exit(base + ["-s", notdb], "kumo-server -s on a directory", None, [notdb])
        c.check_running("kumo-manager unaffected by the failed servers")

    tap.note("addresses that cannot resolve or parse")
    sport, gport, mport = kt.free_port(), kt.free_port(), kt.free_port()
    expect_retry([kt.binary("kumo-server"), "-o", "-", "-m", "nosuch.invalid", "-l", "127.0.0.1:%d" % sport,
                 "-L", kt.free_port(), "-s", os.path.join(tmp, "dns.tch"), "-f", tmp],
                 "kumo-server -m nosuch.invalid", "nosuch.invalid")
    expect_retry([kt.binary("kumo-gateway"), "-o", "-", "-m", "nosuch.invalid", "-t", "127.0.0.1:%d" % gport],
                 "kumo-gateway -m nosuch.invalid", "nosuch.invalid")
    expect_exit([kt.binary("kumo-manager"), "-o", "-", "-l", "nosuch.invalid:%d" % mport, "-c", kt.free_port()],
                "kumo-manager -l nosuch.invalid", None, ["nosuch.invalid"], DNS_HANG)
    expect_exit([kt.binary("kumo-gateway"), "-o", "-", "-m", "127.0.0.1:99999", "-t", "127.0.0.1:%d" % gport],
                "kumo-gateway -m 127.0.0.1:99999 (port out of range)", 64, ["99999"])
    expect_exit([kt.binary("kumo-server"), "-o", "-", "-m", "127.0.0.1:%d" % mport, "-l", "127.0.0.1:notaport",
                 "-L", kt.free_port(), "-s", os.path.join(tmp, "p.tch"), "-f", tmp],
                "kumo-server -l 127.0.0.1:notaport", None, ["notaport"])
    expect_exit([kt.binary("kumoctl"), "nosuch.invalid", "status"],
                "kumoctl nosuch.invalid status", None, ["nosuch.invalid"], DNS_HANG)


if __name__ == "__main__":
    kt.main(body)

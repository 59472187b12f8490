#!/usr/bin/python3
"""t_prometheus — the shipped monitoring in a real Prometheus (deploy/prometheus,
deploy/grafana).

  * promtool: deploy/prometheus/prometheus.yml and kumofs-alerts.yml check
    clean, and `promtool test rules kumofs-alerts.test.yml` passes;
  * a cluster (a manager, three servers, a gateway, each with --metrics)
    is scraped every second by a real Prometheus (Debian's prometheus)
    loading the shipped alert rules; every target is up;
  * every expression of the Grafana dashboard runs in that Prometheus
    without error, and every metric it or an alert rule names is one the
    daemons serve;
  * while the cluster is healthy every server's view is leased
    (kumo_server_view_leased 1, kumo_server_stale_view 0: architecture.md
    section 7, step 4), polled for 3 s; one of the servers is given
    `-m localhost:PORT` in a mount namespace of its own whose /etc/hosts
    names ::1 first and then 127.0.0.1, so one address of the name has no
    manager (a lease that waited for it never held); without root or
    unshare it is given 127.0.0.1 like the others;
  * no alert fires while the cluster is healthy; a server is SIGKILLed and
    KumofsServerFault fires (seen through /api/v1/alerts), naming the
    manager. For the test the rule's `for` is cut to 1 s; its expression is
    the shipped one.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
DEPLOY = os.path.join(kt.REPO, "deploy")
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "max", "and", "on", "clamp_min", "clamp_max",
                "timestamp", "abs", "increase", "or", "le", "without", "ignoring", "group_left", "offset"}


def api(port, path, **params):
    url = "http://127.0.0.1:%d/api/v1/%s" % (port, path)
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def scrape(port):
    """A daemon's /metrics as {name: value} (samples without labels)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    return {f[0]: float(f[1]) for f in (line.split() for line in text.splitlines())
            if len(f) == 2 and not f[0].startswith("#") and "{" not in f[0]}


def localhost_argv(argv, hosts, mgr_port):
    """argv with `-m localhost:mgr_port`, run in a mount namespace whose
    /etc/hosts is `hosts` (::1 and 127.0.0.1); argv unchanged without root
    or unshare."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return argv
    argv = list(argv)
    argv[argv.index("-m") + 1] = "localhost:%d" % mgr_port
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts] + argv


def metric_names(expr):
    """The metric names a PromQL expression uses: identifiers outside braces,
    strings and ranges that are not PromQL's own words or label names."""
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", expr)
    bare = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", " ", bare)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS}


def body():
    kt.require_binaries()
    kt.require_program("prometheus", "prometheus")
    kt.require_program("promtool", "prometheus")
    prom_dir = os.path.join(DEPLOY, "prometheus")
    for argv, what in ((["promtool", "check", "config", "prometheus.yml"], "promtool check config prometheus.yml"),
                       (["promtool", "test", "rules", "kumofs-alerts.test.yml"],
                        "promtool test rules kumofs-alerts.test.yml")):
        r = subprocess.run(argv, cwd=prom_dir, capture_output=True, text=True, timeout=60)
        tap.ok(r.returncode == 0, what, r.stdout + r.stderr)

    with open(os.path.join(DEPLOY, "grafana", "kumofs-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    tap.ok(len(exprs) >= 10, "the dashboard has its panels (%d expressions)" % len(exprs))

    c = kt.Cluster(nservers=3, start=False)
    ports = {"manager": kt.free_port(), "gateway": kt.free_port()}
    for s in c.servers:
        ports["server%d" % s.index] = kt.free_port()
    c.manager_args += ["--metrics", "127.0.0.1:%d" % ports["manager"]]
    c.gateway_args += ["--metrics", "127.0.0.1:%d" % ports["gateway"]]
    hosts = os.path.join(c.dir, "hosts")
    with open(hosts, "w") as f:
        f.write("::1 localhost\n127.0.0.1 localhost\n")
    by_name = c.servers[0]
    base_server_argv = c.server_argv

    def server_argv(s):
        argv = base_server_argv(s) + ["--metrics", "127.0.0.1:%d" % ports["server%d" % s.index]]
        return localhost_argv(argv, hosts, c.mgr_port) if s is by_name else argv
    c.server_argv = server_argv
    with c:
        c.start()
        # The shipped rules, with KumofsServerFault's `for` cut to 1 s.
        with open(os.path.join(prom_dir, "kumofs-alerts.yml")) as f:
            rules = f.read()
        fast, n = re.subn(r"(alert: KumofsServerFault\n(?:.*\n)*?\s+for: )1m", r"\g<1>1s", rules)
        tap.ok(n == 1, "the shipped KumofsServerFault rule has the `for: 1m` the test shortens")
        with open(os.path.join(c.dir, "kumofs-alerts.yml"), "w") as f:
            f.write(fast)
        targets = ['"127.0.0.1:%d"' % p for p in ports.values()]
        with open(os.path.join(c.dir, "prometheus.yml"), "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "rule_files: [kumofs-alerts.yml]\n"
                    "scrape_configs:\n  - job_name: kumofs\n    static_configs:\n      - targets: [%s]\n"
                    % ", ".join(targets))
        pport = kt.free_port()
        prom = kt.Daemon("prometheus", ["prometheus", "--config.file", os.path.join(c.dir, "prometheus.yml"),
                                        "--storage.tsdb.path", os.path.join(c.dir, "tsdb"),
                                        "--web.listen-address", "127.0.0.1:%d" % pport, "--log.level", "warn"],
                         os.path.join(c.logdir, "prometheus.log")).start()

        def all_up():
            t = api(pport, "targets")["data"]["activeTargets"]
            return len(t) == len(ports) and all(x["health"] == "up" for x in t) and t
        try:
            kt.wait_until(all_up, 30, "every target up in Prometheus", interval=0.5, daemons=[prom])
            tap.ok(True, "Prometheus scrapes all %d daemons (every target up)" % len(ports))
        except TimeoutError as e:
            tap.ok(False, "Prometheus scrapes all %d daemons" % len(ports), str(e))
            return
        kt.wait_until(lambda: api(pport, "query", query="kumo_gateway_commands_total")["data"]["result"], 10,
                      "a second scrape", interval=0.5)

        names = set(api(pport, "label/__name__/values")["data"])
        bad, unknown = [], []
        for title, expr in exprs:
            try:
                r = api(pport, "query", query=expr)
                if r.get("status") != "success":
                    bad.append("%s: %s" % (title, r))
            except OSError as e:
                bad.append("%s: %s: %s" % (title, expr, e))
            for m in metric_names(expr):
                base = re.sub(r"_(bucket|count|sum)$", "", m)
                if m not in names and base not in names and m + "_bucket" not in names:
                    unknown.append("%s: %s" % (title, m))
        tap.ok(not bad, "every dashboard expression runs in Prometheus", "\n".join(bad))
        tap.ok(not unknown, "every metric the dashboard names is served by the daemons", "\n".join(unknown))
        in_rules = {m for e in re.findall(r"^\s+expr: (.*)$", rules, re.M) for m in metric_names(e)}
        missing = sorted(m for m in in_rules if m not in names)
        tap.ok(in_rules and not missing, "every metric the alert rules name (%d) is served by the daemons" % len(in_rules),
               " ".join(missing))

        named = "localhost:%d" % c.mgr_port in c.server_argv(by_name)
        tap.note("%s is given -m %s" % (by_name.addr, "localhost:%d" % c.mgr_port if named else c.mgr_addr))
        sports = [ports["server%d" % s.index] for s in c.servers]

        def leased():
            got = {p: scrape(p) for p in sports}
            return all(m.get("kumo_server_view_leased") == 1 and m.get("kumo_server_stale_view") == 0
                       for m in got.values()) and got
        try:
            kt.wait_until(leased, 10, "every server's view leased", interval=0.2, daemons=c.daemons())
            kt.holds_for(leased, 3, "every server's view leased", interval=0.1, daemons=c.daemons())
            tap.ok(True, "a healthy cluster: every server's view leased (kumo_server_view_leased 1, "
                   "kumo_server_stale_view 0)%s" % (", -m localhost included" if named else ""))
        except TimeoutError as e:
            tap.ok(False, "a healthy cluster: every server's view leased", "%s\n%s" % (e, {
                p: {k: v for k, v in scrape(p).items() if k in ("kumo_server_view_leased", "kumo_server_stale_view")}
                for p in sports}))

        firing = [a for a in api(pport, "alerts")["data"]["alerts"] if a["state"] == "firing"]
        tap.ok(not firing, "no alert fires on a healthy cluster", json.dumps(firing, indent=1))

        victim = c.servers[2]
        victim.daemon.kill9()

        def fault_alert():
            alerts = api(pport, "alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "KumofsServerFault" and a["state"] == "firing"]
        try:
            got = kt.wait_until(fault_alert, 40, "KumofsServerFault firing", interval=0.5, daemons=[prom])
            tap.ok(got[0]["labels"].get("instance") == "127.0.0.1:%d" % ports["manager"]
                   and got[0]["labels"].get("severity") == "critical",
                   "a server SIGKILLed: KumofsServerFault fires in Prometheus, naming the manager", json.dumps(got))
        except TimeoutError as e:
            tap.ok(False, "a server SIGKILLed: KumofsServerFault fires in Prometheus", str(e))
        prom.stop()


if __name__ == "__main__":
    kt.main(body)

#!/usr/bin/python3
"""t_workers — the gateway's -TR event loops, seen from real clients.

A cluster whose gateway runs -TR 3 (text and binary ports, --metrics):

  1. The process has (at least) 3 threads, and the manager holds 3 gateway connections
     (each worker keeps its own links).
  2. 12 pymemcache connections, handed to the workers in turn, each write
     their own keys; every connection then reads every other connection's
     keys with one multi-get (a set acknowledged on one worker is seen by
     all: the copies are synchronous). 4 pylibmc binary-protocol
     connections do the same.
  3. `stats` on a new connection sums the workers: threads 3, kumofs_errors
     0 and a kumofs_retries count, cmd_set and
     get_hits exactly what the clients did, curr_connections at least the
     open connections. `stats settings`: num_threads 3.
  4. `stats reset` on one connection: `stats` on the others shows 0 sets and
     0 gets, the open connections still counted; one more set shows 1.
  5. /metrics is summed and never reset: cmd_set and the write latency
     histogram's count cover every set, before and after the reset.
  6. 6 client threads keep writing and 3 keep asking `stats`, each on its
     own connection: every worker thread uses the CPU (the connections were
     handed out in turn). SIGTERM meanwhile:
     exit status 0 within the drain bound; a gateway started again with
     -TR 1 reads back every acknowledged key.
  7. A gateway of -TR 12 serves 24 connections and exits 0 on SIGTERM. It
     closes its workers' sockets on the main thread after their threads
     ended (more dead thread stacks than glibc keeps): a socket that kept
     state in its creating thread's storage crashed here (SIGSEGV).
"""
import os
import re
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kumotest as kt  # noqa: E402

tap = kt.tap
WORKERS = 3
MANY = 12
NCONN = 12
NBIN = 4
PER_CONN = 20


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def sample(text, name, **labels):
    lab = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    pat = "^" + re.escape(name) + (r"\{" + re.escape(lab) + r"\}" if lab else "") + r" (\S+)$"
    m = re.search(pat, text, re.M)
    return float(m.group(1)) if m else None


class WorkerCluster(kt.Cluster):
    def __init__(self):
        self.gw_metrics = kt.free_port()
        self.mgr_metrics = kt.free_port()
        super().__init__(nservers=3, gateway_binary=True,
                         gateway_args=["-TR", str(WORKERS), "--metrics", "127.0.0.1:%d" % self.gw_metrics])

    def manager_argv(self):
        return super().manager_argv() + ["--metrics", "127.0.0.1:%d" % self.mgr_metrics]


def get_all(get_multi, keys):
    """Read keys in multi-gets of 100 (the gateway takes at most 256 per get)."""
    got = {}
    for i in range(0, len(keys), 100):
        got.update(get_multi(keys[i:i + 100]))
    return got


def threads_of(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def thread_ticks(pid):
    """{tid: utime + stime clock ticks} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return out


def main():
    kt.install_handlers()
    kt.require_binaries()
    kt.require_module("pymemcache")
    pylibmc = kt.require_module("pylibmc")
    from pymemcache.client.base import Client
    with WorkerCluster() as c:
        port = c.gateway_port
        gw_pid = c.gateway.pid
        # 1. threads and manager links
        # at least: a sanitizer may add a thread of its own
        n = threads_of(gw_pid)
        tap.ok(n >= WORKERS, "gateway -TR %d runs %d threads" % (WORKERS, WORKERS), "%d threads" % n)
        kt.wait_until(lambda: sample(scrape(c.mgr_metrics), "kumo_manager_gateway_connections") == WORKERS, 10,
                      "the manager to count %d gateway connections" % WORKERS, daemons=c.daemons())
        tap.ok(True, "manager holds %d gateway connections (one per worker)" % WORKERS)

        # 2. connections on every worker; each reads the others' keys
        clients = [Client(("127.0.0.1", port), connect_timeout=5, timeout=5) for _ in range(NCONN)]
        bins = [pylibmc.Client(["127.0.0.1:%d" % c.gateway_binary_port], binary=True) for _ in range(NBIN)]
        keys = {}
        for i, cl in enumerate(clients):
            for j in range(PER_CONN):
                k, v = "w%d-%d" % (i, j), b"text %d %d" % (i, j)
                cl.set(k, v, noreply=False)
                keys[k] = v
        for i, b in enumerate(bins):
            for j in range(PER_CONN):
                k, v = "b%d-%d" % (i, j), b"bin %d %d" % (i, j)
                b.set(k, v)
                keys[k] = v
        nsets = len(keys)
        bad = []
        for i, cl in enumerate(clients):
            got = get_all(cl.get_many, list(keys))
            if got != {k: v for k, v in keys.items()}:
                bad.append("text conn %d: %d of %d keys right" % (
                    i, sum(got.get(k) == v for k, v in keys.items()), len(keys)))
        for i, b in enumerate(bins):
            got = get_all(b.get_multi, list(keys))
            if got != keys:
                bad.append("binary conn %d: %d of %d keys right" % (
                    i, sum(got.get(k) == v for k, v in keys.items()), len(keys)))
        tap.ok(not bad, "%d text and %d binary connections each read all %d keys, whichever worker wrote them" %
               (NCONN, NBIN, nsets), "; ".join(bad[:4]))
        ngets = (NCONN + NBIN) * nsets

        # 3. stats sums the workers
        st, _ = kt.raw_stats(port)
        tap.eq(st.get("threads"), str(WORKERS), "stats: threads %d" % WORKERS)
        tap.ok(st.get("kumofs_errors") == "0" and st.get("kumofs_retries", "").isdigit(),
               "stats: kumofs_errors 0 and a kumofs_retries count",
               "kumofs_errors %s kumofs_retries %s" % (st.get("kumofs_errors"), st.get("kumofs_retries")))
        tap.eq(int(st.get("cmd_set", -1)), nsets, "stats: cmd_set = the sets of every connection (%d)" % nsets)
        tap.ok(int(st.get("get_hits", -1)) == ngets, "stats: get_hits = every key read (%d)" % ngets,
               "get_hits %s" % st.get("get_hits"))
        tap.ok(int(st.get("curr_connections", -1)) >= NCONN + NBIN + 1,
               "stats: curr_connections counts the connections of every worker",
               "curr_connections %s" % st.get("curr_connections"))
        ss, _ = kt.raw_stats(port, b"stats settings")
        tap.eq(ss.get("num_threads"), str(WORKERS), "stats settings: num_threads %d" % WORKERS)

        # 4. stats reset, then stats from other connections
        _, last = kt.raw_stats(port, b"stats reset")
        tap.eq(last, b"RESET\r\n", "stats reset answers RESET")
        after = [kt.raw_stats(port)[0] for _ in range(WORKERS)]
        tap.ok(all(a.get("cmd_set") == "0" and a.get("cmd_get") == "0" for a in after),
               "after stats reset, stats on %d more connections shows cmd_set 0, cmd_get 0" % WORKERS,
               str([(a.get("cmd_set"), a.get("cmd_get")) for a in after]))
        tap.ok(all(int(a.get("curr_connections", 0)) >= NCONN + NBIN for a in after),
               "stats reset keeps curr_connections")
        clients[5].set("after-reset", b"x", noreply=False)
        tap.eq(kt.raw_stats(port)[0].get("cmd_set"), "1", "one set after the reset: cmd_set 1")

        # 5. metrics: summed, never reset
        m = scrape(c.gw_metrics)
        tap.eq(sample(m, "kumo_gateway_commands_total", command="set", status="hit"), float(nsets + 1),
               "/metrics kumo_gateway_commands_total{command=set} = every set, the reset not applied (%d)" % (nsets + 1))
        cnt = sample(m, "kumo_gateway_request_duration_seconds_count", kind="write")
        tap.ok(cnt is not None and cnt >= nsets + 1, "/metrics write latency count sums the workers",
               "count %s" % cnt)
        for cl in clients:
            cl.close()
        for b in bins:
            b.disconnect_all()

        # 6. SIGTERM under load
        acked = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(t):
            cl = Client(("127.0.0.1", port), connect_timeout=2, timeout=3)
            n = 0
            while not stop.is_set():
                k, v = "load%d-%d" % (t, n), b"v%d" % n
                try:
                    if cl.set(k, v, noreply=False):
                        with lock:
                            acked[k] = v
                except Exception:
                    return
                n += 1
        def stats_reader():
            # a `stats` in flight at the SIGTERM: its answer sums every
            # worker while they are being torn down (ASan run: no report)
            while not stop.is_set():
                try:
                    kt.raw_stats(port)
                except Exception:
                    return
        ts = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(6)]
        ts += [threading.Thread(target=stats_reader, daemon=True) for _ in range(3)]
        for t in ts:
            t.start()
        try:
            kt.wait_until(lambda: len(acked) >= 60, 20, "the writers' first acknowledged sets", interval=0.05,
                          daemons=c.daemons())
        except TimeoutError as e:
            tap.note(str(e))
        # the hand-off: 9 connections in turn over 3 workers, so every
        # worker's thread works (all on worker 0 would leave two idle)
        before = thread_ticks(gw_pid)
        time.sleep(2.0)     # a measured period (each thread's CPU in it), not a wait
        after = thread_ticks(gw_pid)
        used = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
        busy = [u for u in used if u >= max(2, used[0] // 10)]
        tap.ok(len(busy) >= WORKERS, "under load from 9 connections, all %d worker threads use the CPU" % WORKERS,
               "CPU ticks per thread in 2 s: %s" % used)
        t0 = time.time()
        c.gateway.proc.send_signal(15)
        try:
            rc = c.gateway.proc.wait(timeout=10)
        except Exception:
            rc = None
        took = time.time() - t0
        stop.set()
        for t in ts:
            t.join(5)
        c.gateway.expected_exit = True
        tap.ok(rc == 0 and took < 7, "SIGTERM under load: gateway -TR %d exits 0 within the 5 s drain" % WORKERS,
               "rc %s after %.1f s" % (rc, took))
        tap.ok(len(acked) > 50, "the writers had sets acknowledged before the SIGTERM (%d)" % len(acked))

        c.gateway_args = ["-TR", "1"]
        c.gateway_binary_port = None
        c.start_gateway()
        cl = Client(("127.0.0.1", port), connect_timeout=5, timeout=10)
        items = list(acked.items())
        got = get_all(cl.get_many, [k for k, _ in items])
        lost = [k for k, v in items if got.get(k) != v]
        tap.ok(not lost, "a gateway -TR 1 started again reads every acknowledged key (%d)" % len(items),
               "lost %d, e.g. %s" % (len(lost), lost[:3]))
        tap.eq(kt.raw_stats(port)[0].get("threads"), "1", "the -TR 1 gateway: stats threads 1")

        # Many loops: a gateway closes each worker's connections on its main
        # thread after the worker threads are gone, and dials their first
        # links from it; twelve dead threads are more stacks than glibc keeps
        # (its cache is 40 MiB), so anything a socket left in its creating
        # thread's storage would be touched after it was unmapped.
        c.gateway.stop()
        c.gateway_args = ["-TR", str(MANY)]
        c.start_gateway()
        clients = [Client(("127.0.0.1", port), connect_timeout=5, timeout=10) for _ in range(2 * MANY)]

        def serves(cl):
            try:
                return cl.get("many-probe") is None
            except Exception:
                return False    # that worker's links are still coming up
        kt.wait_until(lambda: all(serves(cl) for cl in clients), 30, "every -TR %d worker to serve" % MANY,
                      interval=0.2, daemons=c.daemons())
        wrong = 0
        for i, cl in enumerate(clients):
            cl.set("many-%d" % i, b"v%d" % i)
        for i, cl in enumerate(clients):
            wrong += clients[-1 - i].get("many-%d" % i) != b"v%d" % i
        tap.ok(wrong == 0, "a gateway -TR %d answers %d connections, each reading another's key" % (MANY, len(clients)),
               "%d wrong" % wrong)
        c.gateway.proc.send_signal(15)
        try:
            rc = c.gateway.proc.wait(timeout=10)
        except Exception:
            rc = None
        c.gateway.expected_exit = True
        tap.ok(rc == 0, "SIGTERM: the -TR %d gateway closes every worker's connections and exits 0" % MANY,
               "rc %s" % rc)
        c.check_running()
    tap.done()


if __name__ == "__main__":
    main()

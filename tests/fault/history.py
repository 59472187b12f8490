#!/usr/bin/python3
"""history — the checker of the fault-injection suite (tests/fault/t_nemesis.py).

A pure module: it reads a history of client operations and reports the
anomalies the consistency contract forbids (docs/architecture.md §12,
DESIGN.md §3, user guide 6.1). Run alone it checks itself on hand-made
histories (TAP), proving that every anomaly class is detected and that
allowed behaviour is not reported.

An event is a dict:
  p   client (thread) id        f  "set" | "cas" | "delete" | "get"
  k   key                       v  value written (set, cas) or read (get; None = miss)
  t0  invoke time               t1 completion time (one monotonic clock for all clients)
  r   outcome: "ok"   set/cas STORED, delete DELETED, get answered (hit or miss)
               "fail" cas EXISTS/NOT_FOUND: an answer, surely no effect
               "nf"   delete NOT_FOUND: an answer; a retried delete answers
                      NOT_FOUND for a delete that took effect, so it may have deleted
               "info" error or timeout: indeterminate, may take effect at any
                      time after t0 (Jepsen's :info; its end is taken as +inf)
  b   (cas only) the value of the `gets` the cas unique came from
  final (get only) True for the reads made after the cluster was healed

Values are unique per write: make_value() = key|writer|counter|pad|crc32.
Histories carry value_id() of each value, "writer:counter", or "!" and the
start of the bytes for a value that does not check (torn).

The rules, per key (keys start absent):
  torn        a value whose checksum is wrong, or that no write of this key
              ever carried (a mix of two values, a value of another key)
  phantom     a value whose write surely had no effect (cas EXISTS/NOT_FOUND),
              or that was invoked after the read completed
  stale       a read returning write w1 (or a miss) although some write w2
              was acknowledged before the read began and w1 surely precedes
              w2 (w1 acknowledged before w2 was invoked). Reads concurrent
              with a write may return either value; an indeterminate write may
              be seen at any later time. A miss is stale when the last
              acknowledged set before the read has no delete that may come
              after it (a delete invoked before the read completed, whose end
              — +inf for an indeterminate one — is after that set's invoke).
              Also a cas that succeeded on a `gets` value that an
              acknowledged write had already superseded before the cas began.
  resurrected a stale read of a value every superseding write of which is a
              delete: the key came back after an acknowledged delete
  lost        a stale read among the final reads (after heal): an
              acknowledged write is gone for good
"""
import bisect
import os
import sys
import zlib

INF = float("inf")
SEP = "|"


def make_value(key, writer, counter, pad=48):
    """A unique value for key: key|writer|counter|pad|crc32 of what precedes."""
    body = SEP.join((key, str(writer), str(counter)))
    body += SEP + "x" * max(0, pad - len(body))
    return "%s%s%08x" % (body, SEP, zlib.crc32(body.encode()))


def value_ok(key, value):
    """True if value is a well-formed value of key (checksum and key match)."""
    body, sep, crc = value.rpartition(SEP)
    if not sep or len(crc) != 8:
        return False
    try:
        if int(crc, 16) != zlib.crc32(body.encode()):
            return False
    except ValueError:
        return False
    return body.split(SEP, 1)[0] == key


def value_id(key, value):
    """What a history records of a value: "writer:counter", or "!..." if it does not check."""
    if not value_ok(key, value):
        return "!" + value[:40]
    return ":".join(value.split(SEP, 3)[1:3])


CLASSES = ("torn", "phantom", "stale", "resurrected", "lost")


class Report:
    def __init__(self):
        self.count = {c: 0 for c in CLASSES}
        self.examples = {c: [] for c in CLASSES}
        self.ops = 0
        self.acked_writes = 0
        self.reads = 0
        self.read_errors = 0
        self.indeterminate = 0

    def add(self, cls, msg):
        self.count[cls] += 1
        if len(self.examples[cls]) < 5:
            self.examples[cls].append(msg)

    def clean(self):
        return not any(self.count.values())

    def summary(self):
        return ", ".join("%s %d" % (c, self.count[c]) for c in CLASSES)

    def details(self):
        out = []
        for c in CLASSES:
            for e in self.examples[c]:
                out.append("%s: %s" % (c, e))
        return "\n".join(out)


def _desc(e):
    return "%s %s %s%s [%.3f, %.3f] %s" % (e.get("p"), e["f"], e["k"],
                                         "" if e.get("v") is None else " " + e["v"][:40],
                                         e["t0"], e["t1"], e["r"])


def _end(w):
    """When a write's effect is surely done: its completion, or never."""
    return w["t1"] if w["r"] in ("ok", "nf") else INF


def _by_completion(writes):
    """(writes sorted by completion, their completion times, the running
    latest-invoked write of each prefix)."""
    writes = sorted(writes, key=lambda w: w["t1"])
    latest, best = [], None
    for w in writes:
        if best is None or w["t0"] > best["t0"]:
            best = w
        latest.append(best)
    return writes, [w["t1"] for w in writes], latest


class _Key:
    """The writes of one key, indexed for the read checks."""

    def __init__(self, events):
        self.by_value = {}
        acked = []
        self.deletes = []
        self.acked_sets = []
        for e in events:
            if e["f"] in ("set", "cas"):
                self.by_value[e["v"]] = e
                if e["r"] == "ok":
                    acked.append(e)
                    self.acked_sets.append(e)
            elif e["f"] == "delete":
                if e["r"] != "fail":
                    self.deletes.append(e)
                if e["r"] == "ok":
                    acked.append(e)
        # acked writes by completion; barrier[i] = the write with the latest
        # invoke among the first i+1 (what a read starting after them must see)
        self.acked, self.acked_t1, self.barrier = _by_completion(acked)
        self.acked_sets, self.sets_t1, self.last_set = _by_completion(self.acked_sets)
        # deletes by invoke; del_end[i] = latest possible end among the first i+1
        self.deletes.sort(key=lambda d: d["t0"])
        self.del_t0 = [d["t0"] for d in self.deletes]
        self.del_end = []
        m = -INF
        for d in self.deletes:
            m = max(m, _end(d))
            self.del_end.append(m)

    def superseders(self, before, after):
        """Acked writes completed before `before` and invoked after `after`."""
        i = bisect.bisect_left(self.acked_t1, before)
        return [w for w in self.acked[:i] if w["t0"] > after]

    def newest_before(self, t):
        i = bisect.bisect_left(self.acked_t1, t)
        return self.barrier[i - 1] if i else None

    def last_set_before(self, t):
        i = bisect.bisect_left(self.sets_t1, t)
        return self.last_set[i - 1] if i else None

    def latest_delete_end(self, invoked_before):
        i = bisect.bisect_left(self.del_t0, invoked_before)
        return self.del_end[i - 1] if i else -INF


def check(events):
    """Check a history (a list of event dicts); returns a Report."""
    rep = Report()
    by_key = {}
    for e in events:
        by_key.setdefault(e["k"], []).append(e)
        rep.ops += 1
        if e["f"] != "get" and e["r"] == "ok":
            rep.acked_writes += 1
        if e["r"] == "info":
            rep.indeterminate += 1
        if e["f"] == "get":
            if e["r"] == "ok":
                rep.reads += 1
            else:
                rep.read_errors += 1
    for key, evs in by_key.items():
        ix = _Key(evs)
        for r in evs:
            if r["f"] == "cas" and r["r"] == "ok" and r.get("b") is not None:
                _check_cas(ix, r, rep)
            if r["f"] != "get" or r["r"] != "ok":
                continue
            _check_read(ix, key, r, rep)
    return rep


def _check_read(ix, key, r, rep):
    final = r.get("final")
    v = r["v"]
    if v is None:
        w2 = ix.last_set_before(r["t0"])
        if w2 is not None and ix.latest_delete_end(r["t1"]) <= w2["t0"]:
            rep.add("lost" if final else "stale", "%s: miss, but %s was acknowledged before and no delete may follow it"
                    % (_desc(r), _desc(w2)))
        return
    if v.startswith("!") or v not in ix.by_value:
        rep.add("torn", "%s: %s" % (_desc(r), "bad checksum or key" if v.startswith("!") else "never written"))
        return
    w1 = ix.by_value[v]
    if w1["r"] == "fail" or w1["t0"] > r["t1"]:
        rep.add("phantom", "%s: returned %s" % (_desc(r), _desc(w1)))
        return
    if w1["r"] != "ok":
        return          # indeterminate: may take effect at any time after its invoke
    newer = ix.newest_before(r["t0"])
    if newer is None or newer["t0"] <= w1["t1"]:
        return
    sup = ix.superseders(r["t0"], w1["t1"])
    if all(w["f"] == "delete" for w in sup):
        cls = "resurrected"
    else:
        cls = "lost" if final else "stale"
    rep.add(cls, "%s: returned %s, superseded by %s" % (_desc(r), _desc(w1), _desc(newer)))


def _check_cas(ix, c, rep):
    """A cas that succeeded must have been based on the current value."""
    w1 = ix.by_value.get(c["b"])
    if w1 is None or w1["r"] != "ok":
        return
    newer = ix.newest_before(c["t0"])
    if newer is not None and newer is not w1 and newer["t0"] > w1["t1"]:
        rep.add("stale", "%s: cas succeeded on %s, superseded by %s" % (_desc(c), _desc(w1), _desc(newer)))


# --------------------------------------------------------------------------
# self-test: each anomaly class on a hand-made history, and allowed histories
# --------------------------------------------------------------------------

def _ev(f, k, v, t0, t1, r="ok", p=0, **kw):
    e = {"p": p, "f": f, "k": k, "v": v, "t0": float(t0), "t1": float(t1), "r": r}
    e.update(kw)
    return e


def _selftest():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster"))
    import kumotest as kt
    tap = kt.tap
    kt.install_handlers()
    k = "key1"
    va, vb = make_value(k, 1, 1), make_value(k, 1, 2, pad=3000)
    tap.ok(value_ok(k, va) and value_ok(k, vb) and va != vb and len(vb) > 3000, "make_value: unique values that check")
    tap.ok(not value_ok(k, va[:-9] + "b" + va[-8:]) and not value_ok("key2", va) and not value_ok(k, va[:20]),
           "value_ok rejects a changed byte, another key's value, a truncated value")
    a, b, c = value_id(k, va), value_id(k, vb), value_id(k, make_value(k, 2, 3))
    tap.ok((a, b, c) == ("1:1", "1:2", "2:3"), "value_id names a value by writer and counter")

    def expect(name, events, **want):
        rep = check(events)
        got = {cls: rep.count[cls] for cls in CLASSES if rep.count[cls]}
        tap.ok(got == want, name, "got %s, want %s\n%s" % (got, want, rep.details()))

    base = [_ev("set", k, a, 0, 1), _ev("set", k, b, 2, 3)]
    # detected
    expect("stale read: an older acknowledged value after a newer ack", base + [_ev("get", k, a, 4, 5)], stale=1)
    expect("lost write: the final read returns an older value", base + [_ev("get", k, a, 9, 9.5, final=True)], lost=1)
    expect("lost write: the final read misses an acknowledged set", base + [_ev("get", k, None, 9, 9.5, final=True)],
           lost=1)
    expect("stale miss: a miss after an acknowledged set, no delete", base + [_ev("get", k, None, 4, 5)], stale=1)
    expect("torn value: bad checksum", base + [_ev("get", k, value_id(k, vb[:30] + "Z" + vb[31:]), 4, 5)], torn=1)
    expect("torn value: the start of one value, the end of another",
           base + [_ev("get", k, value_id(k, va[:20] + vb[20:]), 4, 5)], torn=1)
    expect("torn value: well formed but never written", base + [_ev("get", k, c, 4, 5)], torn=1)
    expect("torn value: another key's value", base + [_ev("get", k, value_id(k, make_value("key2", 1, 1)), 4, 5)],
           torn=1)
    expect("resurrected: a value read after an acknowledged delete",
           base + [_ev("delete", k, None, 4, 5), _ev("get", k, b, 6, 7)], resurrected=1)
    expect("resurrected in the final reads too",
           base + [_ev("delete", k, None, 4, 5), _ev("get", k, b, 9, 9.5, final=True)], resurrected=1)
    expect("phantom: the value of a cas that answered EXISTS",
           base + [_ev("cas", k, c, 4, 5, "fail", b=a), _ev("get", k, c, 6, 7)], phantom=1)
    expect("phantom: a value read before its write was invoked", base + [_ev("get", k, c, 4, 5),
                                                                       _ev("set", k, c, 6, 7, "info")], phantom=1)
    expect("stale cas: a cas that succeeded on a superseded value",
           base + [_ev("cas", k, c, 4, 5, b=a)], stale=1)
    # allowed
    expect("allowed: a read concurrent with a set returns the old value",
           [_ev("set", k, a, 0, 1), _ev("set", k, b, 2, 6), _ev("get", k, a, 3, 4)])
    expect("allowed: a read concurrent with a set returns the new value",
           [_ev("set", k, a, 0, 1), _ev("set", k, b, 2, 6), _ev("get", k, b, 3, 4)])
    expect("allowed: a failed (indeterminate) set seen later, or not",
           base + [_ev("set", k, c, 4, 5, "info"), _ev("get", k, c, 6, 7), _ev("get", k, b, 8, 9)])
    expect("allowed: an indeterminate set seen after a later acked set (it may apply late)",
           [_ev("set", k, c, 0, 1, "info"), _ev("set", k, a, 2, 3), _ev("get", k, c, 4, 5)])
    expect("allowed: a miss after an indeterminate delete",
           base + [_ev("delete", k, None, 4, 5, "info"), _ev("get", k, None, 6, 7)])
    expect("allowed: a miss after a delete that answered NOT_FOUND (a retried delete that took effect)",
           base + [_ev("delete", k, None, 4, 5, "nf"), _ev("get", k, None, 6, 7)])
    expect("allowed: a miss before any acknowledged set, a miss concurrent with the first set",
           [_ev("get", k, None, 0, 1), _ev("set", k, a, 2, 5), _ev("get", k, None, 3, 4)])
    expect("allowed: a successful cas on the current value",
           base + [_ev("cas", k, c, 4, 5, b=b), _ev("get", k, c, 6, 7, final=True)])
    expect("allowed: a failed get is not an anomaly", base + [_ev("get", k, None, 4, 5, "info")])
    rep = check(base + [_ev("get", k, a, 4, 5), _ev("get", k, None, 6, 7, "info")])
    tap.ok(rep.ops == 4 and rep.acked_writes == 2 and rep.reads == 1 and rep.read_errors == 1,
           "report counts ops, acknowledged writes, reads, read errors")
    rc = tap.done()
    kt.cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    _selftest()

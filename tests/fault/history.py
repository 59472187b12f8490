#!/usr/bin/python3
"""history — the checker of the fault-injection suite (tests/fault/t_nemesis.py).

A pure module: it reads a history of client operations and reports the
anomalies the consistency contract forbids (docs/architecture.md §12,
docs/protocol.md §9). Run alone it checks itself on hand-made
histories (TAP), proving that every anomaly class is detected and that
allowed behaviour is not reported.

An event is a dict:
  p   client (thread) id
  f   "set" | "cas" | "delete" | "get" | "incr" | "append" | "add"
  k   key
  v   value written (set, cas, append, add), read (get; None = miss) or
      answered (incr: the new number as text, None for NOT_FOUND)
  t0  invoke time               t1 completion time (one monotonic clock for all clients)
  r   outcome: "ok"   set/cas/append/add STORED, delete DELETED, incr a number,
                      get answered (hit or miss)
               "fail" cas EXISTS/NOT_FOUND, append/add NOT_STORED, incr
                      NOT_FOUND: an answer, surely no effect
               "nf"   delete NOT_FOUND: an answer; a retried delete answers
                      NOT_FOUND for a delete that took effect, so it may have deleted
               "info" error or timeout: indeterminate, may take effect at any
                      time after t0 (Jepsen's :info; its end is taken as +inf)
  b   (cas only) the value of the `gets` the cas unique came from
  final (get only) True for the reads made after the cluster was healed

Three kinds of key, told apart by the name (model_of):

  register  (any other name) set, cas, delete, get. Values are unique per
            write: make_value() = key|writer|counter|pad|crc32. Histories
            carry value_id() of each value, "writer:counter", or "!" and the
            start of the bytes for a value that does not check (torn).
  counter   ("ck..."): set to "0" before any client runs, then only incr by 1
            and get; never deleted. Histories carry the number as text.
  list      ("lk..."): absent at the start; add "<id>" creates it, append
            "|<id>" adds an element, delete removes it. Every id
            ("writer:counter") is unique, so a read "<id>|<id>|..." names the
            add that created what it read (its generation) and every append
            in it. Histories carry the text as read.

The rules, per key (keys start absent, counters at 0):
  torn        a value whose checksum is wrong, or that no write of this key
              ever carried (a mix of two values, a value of another key);
              a counter that is not a number; a list whose first element
              is not an add of the key or whose other elements are not its
              appends, hold one twice, or hold one acknowledged before the
              add that created the list was invoked
  phantom     a value whose write surely had no effect (cas EXISTS/NOT_FOUND,
              append/add NOT_STORED), or that was invoked after the read
              completed; a counter above the number of increments invoked
              by then
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
              Counters: a read below the answer of an incr acknowledged
              before it began, or a miss. Lists: a read of a list that an
              acknowledged delete or add surely replaced before the read
              began, a read of a list without an element whose append was
              acknowledged before the read began (and invoked after the
              list's add was acknowledged), or a miss although an add or
              append was acknowledged before and no delete may follow it
  resurrected a stale read of a value every superseding write of which is a
              delete: the key came back after an acknowledged delete
  lost        a stale read among the final reads (after heal): an
              acknowledged write is gone for good
  wrong       a read-modify-write answered from a state the key surely was
              not in (an old or missing copy):
              - a cas that answered EXISTS/NOT_FOUND although its `gets`
                value was acknowledged and no other write that may have taken
                effect was invoked from that write's invoke to the cas's end;
              - an incr whose number is not above that of an incr
                acknowledged before it was invoked, or an incr that answered
                NOT_FOUND (counters always exist);
              - an append NOT_STORED or an add STORED while the list surely
                existed (an add or append acknowledged before, no delete that
                may fall after it), an append STORED or an add NOT_STORED
                while it surely did not (a delete acknowledged before, or the
                start, and no add that may fall after it).
              A delete's NOT_FOUND is not judged (see "nf").
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


COUNTER_PREFIX = "ck"
LIST_PREFIX = "lk"


def model_of(key):
    """"counter", "list" or "register": the kind of key, by its name."""
    if key.startswith(COUNTER_PREFIX):
        return "counter"
    if key.startswith(LIST_PREFIX):
        return "list"
    return "register"


def decode(key, text):
    """What a history records of a value read from key: value_id() for a
    register, the text itself for a counter or a list."""
    return value_id(key, text) if model_of(key) == "register" else text


CLASSES = ("torn", "phantom", "stale", "resurrected", "lost", "wrong")


class Report:
    def __init__(self):
        self.count = {c: 0 for c in CLASSES}
        self.examples = {c: [] for c in CLASSES}
        self.times = {c: [] for c in CLASSES}     # completion time of each offending operation
        self.by_model = {c: {} for c in CLASSES}  # class -> {"register"/"counter"/"list": count}
        self.model = None                         # the kind of key being checked
        self.ops = 0
        self.acked_writes = 0
        self.reads = 0
        self.read_errors = 0
        self.indeterminate = 0

    def add(self, cls, msg, t=None):
        self.count[cls] += 1
        if self.model:
            self.by_model[cls][self.model] = self.by_model[cls].get(self.model, 0) + 1
        if t is not None:
            self.times[cls].append(t)
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


def _stale(rep, r, msg):
    """A stale read, lost among the final reads."""
    rep.add("lost" if r.get("final") else "stale", msg, r["t1"])


def _end(w):
    """When a write's effect is surely done: its completion, or never."""
    return w["t1"] if w["r"] in ("ok", "nf") else INF


def _by_invoke(writes):
    """(writes sorted by invoke, their invoke times, the latest possible end
    of each prefix)."""
    writes = sorted(writes, key=lambda w: w["t0"])
    ends, m = [], -INF
    for w in writes:
        m = max(m, _end(w))
        ends.append(m)
    return writes, [w["t0"] for w in writes], ends


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
        self.deletes, self.del_t0, self.del_end = _by_invoke(self.deletes)
        # every write that may have had an effect, by invoke (for the cas failures)
        self.effective, self.eff_t0, self.end_max = _by_invoke(
            e for e in events if e["f"] in ("set", "cas", "delete") and e["r"] != "fail")

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
        kind = rep.model = model_of(key)
        if kind == "counter":
            _check_counter(evs, rep)
            continue
        if kind == "list":
            _check_list(evs, rep)
            continue
        ix = _Key(evs)
        for r in evs:
            if r["f"] == "cas" and r.get("b") is not None:
                if r["r"] == "ok":
                    _check_cas(ix, r, rep)
                elif r["r"] == "fail":
                    _check_cas_fail(ix, r, rep)
            if r["f"] != "get" or r["r"] != "ok":
                continue
            _check_read(ix, key, r, rep)
    rep.model = None
    return rep


def _check_read(ix, key, r, rep):
    final = r.get("final")
    v = r["v"]
    if v is None:
        w2 = ix.last_set_before(r["t0"])
        if w2 is not None and ix.latest_delete_end(r["t1"]) <= w2["t0"]:
            rep.add("lost" if final else "stale", "%s: miss, but %s was acknowledged before and no delete may follow it"
                    % (_desc(r), _desc(w2)), r["t1"])
        return
    if v.startswith("!") or v not in ix.by_value:
        rep.add("torn", "%s: %s" % (_desc(r), "bad checksum or key" if v.startswith("!") else "never written"), r["t1"])
        return
    w1 = ix.by_value[v]
    if w1["r"] == "fail" or w1["t0"] > r["t1"]:
        rep.add("phantom", "%s: returned %s" % (_desc(r), _desc(w1)), r["t1"])
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
    rep.add(cls, "%s: returned %s, superseded by %s" % (_desc(r), _desc(w1), _desc(newer)), r["t1"])


def _check_cas(ix, c, rep):
    """A cas that succeeded must have been based on the current value."""
    w1 = ix.by_value.get(c["b"])
    if w1 is None or w1["r"] != "ok":
        return
    newer = ix.newest_before(c["t0"])
    if newer is not None and newer is not w1 and newer["t0"] > w1["t1"]:
        rep.add("stale", "%s: cas succeeded on %s, superseded by %s" % (_desc(c), _desc(w1), _desc(newer)),
                c["t1"])


def _check_cas_fail(ix, c, rep):
    """A cas that failed although its `gets` value w1 was acknowledged and
    surely the key's last write until the cas ended: every other write that
    may have had an effect ended before w1 was invoked, and none was invoked
    between w1's invoke and the cas's end. The coordinator held an older copy."""
    w1 = ix.by_value.get(c["b"])
    if w1 is None or w1["r"] != "ok":
        return
    i = bisect.bisect_left(ix.eff_t0, w1["t0"])
    if i and ix.end_max[i - 1] >= w1["t0"]:
        return          # an earlier write may have taken effect after w1
    j = bisect.bisect_right(ix.eff_t0, c["t1"])
    if any(w is not w1 for w in ix.effective[i:j]):
        return          # a write invoked meanwhile may have intervened
    rep.add("wrong", "%s: cas failed on %s, the last write" % (_desc(c), _desc(w1)), c["t1"])


def _check_counter(evs, rep):
    """A counter: "0" before any client runs, then incr by 1; never deleted."""
    incrs = [e for e in evs if e["f"] == "incr"]
    acked, acked_t1, _ = _by_completion([e for e in incrs if e["r"] == "ok" and _int(e["v"]) is not None])
    best = []           # best[i]: the acked incr with the largest answer among the first i+1 completed
    for e in acked:
        best.append(e if not best or _int(e["v"]) > _int(best[-1]["v"]) else best[-1])
    may = sorted(e["t0"] for e in incrs if e["r"] != "fail")    # each may have added 1

    def before(t):
        i = bisect.bisect_left(acked_t1, t)
        return best[i - 1] if i else None

    def ceiling(t):     # the largest value increments invoked before t can make
        return bisect.bisect_left(may, t)

    for e in evs:
        if e["f"] == "incr" and e["r"] == "fail":
            rep.add("wrong", "%s: NOT_FOUND for a counter that always exists" % _desc(e), e["t1"])
        elif e["f"] == "incr" and e["r"] == "ok":
            n = _int(e["v"])
            if n is None:
                rep.add("torn", "%s: not a number" % _desc(e), e["t1"])
                continue
            prev = before(e["t0"])
            if prev is not None and n <= _int(prev["v"]):
                rep.add("wrong", "%s: not above %s, acknowledged before it" % (_desc(e), _desc(prev)), e["t1"])
            elif n > ceiling(e["t1"]):
                rep.add("phantom", "%s: above the %d increments invoked by then" % (_desc(e), ceiling(e["t1"])),
                        e["t1"])
        elif e["f"] == "get" and e["r"] == "ok":
            prev = before(e["t0"])
            if e["v"] is None:
                _stale(rep, e, "%s: miss of a counter%s" % (_desc(e), "" if prev is None else ", after " + _desc(prev)))
                continue
            n = _int(e["v"])
            if n is None:
                rep.add("torn", "%s: not a number" % _desc(e), e["t1"])
            elif prev is not None and n < _int(prev["v"]):
                _stale(rep, e, "%s: below %s, acknowledged before the read" % (_desc(e), _desc(prev)))
            elif n > ceiling(e["t1"]):
                rep.add("phantom", "%s: above the %d increments invoked by then" % (_desc(e), ceiling(e["t1"])),
                        e["t1"])


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class _Existence:
    """When a list key surely exists or surely does not: from acknowledged
    adds/appends (it existed then) and deletes (it did not), and from the
    writes that may undo either."""

    def __init__(self, evs):
        self.makers = _by_completion([e for e in evs if e["f"] in ("add", "append") and e["r"] == "ok"])
        self.gone = _by_completion([e for e in evs if e["f"] == "delete" and e["r"] == "ok"])
        self.undo_exist = _by_invoke(e for e in evs if e["f"] == "delete" and e["r"] != "fail")
        self.undo_gone = _by_invoke(e for e in evs if e["f"] == "add" and e["r"] != "fail")

    @staticmethod
    def _latest(index, t):
        """The acked write with the latest invoke among those completed before t."""
        _, t1s, latest = index
        i = bisect.bisect_left(t1s, t)
        return latest[i - 1] if i else None

    @staticmethod
    def _undone_after(undo, invoked_before, t):
        """Whether a write invoked before `invoked_before` may end after t."""
        _, t0s, ends = undo
        i = bisect.bisect_left(t0s, invoked_before)
        return i > 0 and ends[i - 1] > t

    def exists(self, t0, t1):
        """An acked add/append before t0 that no delete invoked before t1 may follow, or None."""
        w = self._latest(self.makers, t0)
        if w is not None and not self._undone_after(self.undo_exist, t1, w["t0"]):
            return w
        return None

    def absent(self, t0, t1):
        """An acked delete before t0 (or "start": the key is absent at the
        start) that no add invoked before t1 may follow, or None. An add that
        answered NOT_STORED is none of those adds."""
        d = self._latest(self.gone, t0)
        if self._undone_after(self.undo_gone, t1, d["t0"] if d is not None else -INF):
            return None
        return d if d is not None else "start"


def _check_list(evs, rep):
    """A list: add "<id>" creates it, append "|<id>" extends it, delete removes it."""
    adds = {e["v"]: e for e in evs if e["f"] == "add"}
    apps = {e["v"]: e for e in evs if e["f"] == "append"}
    ex = _Existence(evs)
    replacers = sorted((e for e in evs if e["f"] in ("add", "delete") and e["r"] == "ok"), key=lambda w: w["t0"])
    rep_t0 = [w["t0"] for w in replacers]
    acked_apps = sorted((e for e in apps.values() if e["r"] == "ok"), key=lambda w: w["t0"])
    app_t0 = [w["t0"] for w in acked_apps]
    for e in evs:
        f, r = e["f"], e["r"]
        if f in ("append", "add") and r in ("ok", "fail"):
            there = ex.exists(e["t0"], e["t1"])
            gone = ex.absent(e["t0"], e["t1"])
            if there is not None and ((f == "append" and r == "fail") or (f == "add" and r == "ok")):
                rep.add("wrong", "%s: the list surely existed (%s)" % (_desc(e), _desc(there)), e["t1"])
            elif gone is not None and ((f == "append" and r == "ok") or (f == "add" and r == "fail")):
                rep.add("wrong", "%s: the list surely did not exist (%s)" % (
                    _desc(e), "absent from the start" if gone == "start" else "after " + _desc(gone)), e["t1"])
        if f != "get" or r != "ok":
            continue
        if e["v"] is None:
            there = ex.exists(e["t0"], e["t1"])
            if there is not None:
                _stale(rep, e, "%s: miss, but %s was acknowledged before and no delete may follow it"
                       % (_desc(e), _desc(there)))
            continue
        head, *elems = e["v"].split(SEP)
        a = adds.get(head)
        if a is None:
            rep.add("torn", "%s: %r is no add of this key" % (_desc(e), head[:40]), e["t1"])
            continue
        if a["r"] == "fail" or a["t0"] > e["t1"]:
            rep.add("phantom", "%s: created by %s" % (_desc(e), _desc(a)), e["t1"])
            continue
        bad = None
        for x in elems:
            p = apps.get(x)
            if p is None:
                bad = ("torn", "%r is no append of this key" % x[:40])
            elif p["r"] == "fail" or p["t0"] > e["t1"]:
                bad = ("phantom", "holds %s" % _desc(p))
            elif a["r"] == "ok" and p["r"] == "ok" and p["t1"] < a["t0"]:
                bad = ("torn", "holds %s, acknowledged before the list's %s" % (_desc(p), _desc(a)))
            if bad:
                break
        if bad is None and len(set(elems)) != len(elems):
            bad = ("torn", "an element twice")
        if bad:
            rep.add(bad[0], "%s: %s" % (_desc(e), bad[1]), e["t1"])
            continue
        if a["r"] != "ok":
            continue    # created by an indeterminate add: when is unknown
        # an acked delete or add invoked after the list's add was acked and acked before the read began
        i, j = bisect.bisect_right(rep_t0, a["t1"]), bisect.bisect_left(rep_t0, e["t0"])
        sup = [w for w in replacers[i:j] if w["t1"] < e["t0"] and w is not a]
        if sup:
            cls = "resurrected" if all(w["f"] == "delete" for w in sup) else ("lost" if e.get("final") else "stale")
            rep.add(cls, "%s: the list of %s, replaced by %s" % (_desc(e), _desc(a), _desc(sup[-1])), e["t1"])
            continue
        i, j = bisect.bisect_right(app_t0, a["t1"]), bisect.bisect_left(app_t0, e["t0"])
        held = set(elems)
        miss = [p for p in acked_apps[i:j] if p["t1"] < e["t0"] and p["v"] not in held]
        if miss:
            _stale(rep, e, "%s: lacks %s (and %d more), acknowledged before the read" % (
                _desc(e), _desc(miss[0]), len(miss) - 1))


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
    # a cas that failed on the last write
    expect("wrong: a cas failed although its gets value was the last write",
           base + [_ev("cas", k, c, 6, 7, "fail", b=b)], wrong=1)
    expect("allowed: a cas failed after another set was invoked meanwhile",
           base + [_ev("set", k, make_value(k, 3, 1), 5, 5.5), _ev("cas", k, c, 6, 7, "fail", b=b)])
    expect("allowed: a cas failed after an indeterminate set (it may apply late)",
           [_ev("set", k, make_value(k, 3, 1), -2, -1, "info")] + base + [_ev("cas", k, c, 6, 7, "fail", b=b)])
    expect("allowed: a cas failed on the value of an indeterminate set",
           [_ev("set", k, a, 0, 1), _ev("set", k, b, 2, 3, "info"), _ev("cas", k, c, 6, 7, "fail", b=b)])
    expect("allowed: a cas failed after a delete that answered NOT_FOUND concurrently",
           base + [_ev("delete", k, None, 2.5, 4, "nf"), _ev("cas", k, c, 6, 7, "fail", b=b)])

    # counters: "0" at the start, incr by 1
    ck = COUNTER_PREFIX + "1"

    def inc(t0, t1, v, r="ok", p=0):
        return _ev("incr", ck, None if v is None else str(v), t0, t1, r, p)
    two = [inc(0, 1, 1), inc(2, 3, 2)]
    expect("wrong: an incr not above one acknowledged before it", two + [inc(4, 5, 2)], wrong=1)
    expect("wrong: an incr answered NOT_FOUND", two + [inc(4, 5, None, "fail")], wrong=1)
    expect("stale: a counter read below an acknowledged incr", two + [_ev("get", ck, "1", 4, 5)], stale=1)
    expect("lost: the final read of a counter below an acknowledged incr",
           two + [_ev("get", ck, "1", 9, 9.5, final=True)], lost=1)
    expect("stale: a miss of a counter", two + [_ev("get", ck, None, 4, 5)], stale=1)
    expect("torn: a counter that is not a number", two + [_ev("get", ck, "1x", 4, 5)], torn=1)
    expect("phantom: a counter above the increments invoked", two + [_ev("get", ck, "3", 4, 5)], phantom=1)
    expect("allowed: concurrent increments answer in either order, reads concurrent with one see either",
           [inc(0, 3, 2), inc(1, 2, 1, p=1), _ev("get", ck, "0", 0.5, 1.5), _ev("get", ck, "2", 2.5, 2.7),
            _ev("get", ck, "1", 2.5, 4)])
    expect("allowed: an indeterminate incr seen, then not (a failed write left copies differing)",
           [inc(0, 1, None, "info"), _ev("get", ck, "1", 2, 3), inc(4, 5, 1), _ev("get", ck, "2", 6, 7)])

    # lists: add "<id>", append "|<id>", delete
    lk = LIST_PREFIX + "1"

    def L(f, v, t0, t1, r="ok", **kw):
        return _ev(f, lk, v, t0, t1, r, **kw)
    made = [L("add", "1:1", 0, 1), L("append", "1:2", 2, 3)]
    expect("allowed: a list read after its add and append", made + [L("get", "1:1|1:2", 4, 5)])
    expect("stale: a list read without an acknowledged append", made + [L("get", "1:1", 4, 5)], stale=1)
    expect("lost: the final read of a list without an acknowledged append",
           made + [L("get", "1:1", 9, 9.5, final=True)], lost=1)
    expect("resurrected: a list read after an acknowledged delete",
           made + [L("delete", None, 4, 5), L("get", "1:1|1:2", 6, 7)], resurrected=1)
    expect("stale: a list read after it was deleted and added anew",
           made + [L("delete", None, 4, 5, "nf"), L("add", "2:1", 6, 7), L("get", "1:1|1:2", 8, 9)], stale=1)
    expect("stale: a miss of a list after an acknowledged append", made + [L("get", None, 4, 5)], stale=1)
    expect("torn: a list whose head is no add", made + [L("get", "1:2", 4, 5)], torn=1)
    expect("torn: a list element no append wrote", made + [L("get", "1:1|1:2|7:7", 4, 5)], torn=1)
    expect("torn: a list element twice", made + [L("get", "1:1|1:2|1:2", 4, 5)], torn=1)
    expect("torn: a list holding an append acknowledged before the list's add",
           made + [L("delete", None, 4, 5), L("add", "2:1", 6, 7), L("get", "2:1|1:2", 8, 9)], torn=1)
    expect("phantom: a list element appended after the read",
           made + [L("get", "1:1|1:2|1:3", 4, 5), L("append", "1:3", 6, 7)], phantom=1)
    expect("phantom: a list element whose append answered NOT_STORED",
           made + [L("delete", None, 4, 5, "info"), L("append", "1:3", 6, 7, "fail"),
                   L("get", "1:1|1:2|1:3", 8, 9)], phantom=1)
    expect("wrong: append NOT_STORED while the list surely existed", made + [L("append", "1:3", 4, 5, "fail")],
           wrong=1)
    expect("wrong: add STORED while the list surely existed", made + [L("add", "2:1", 4, 5)], wrong=1)
    expect("wrong: append STORED after an acknowledged delete",
           made + [L("delete", None, 4, 5), L("append", "1:3", 6, 7)], wrong=1)
    expect("wrong: add NOT_STORED after an acknowledged delete",
           made + [L("delete", None, 4, 5), L("add", "2:1", 6, 7, "fail")], wrong=1)
    expect("wrong: append STORED and add NOT_STORED before any add",
           [L("append", "1:1", 0, 1), L("add", "1:2", 2, 3, "fail")], wrong=2)
    expect("allowed: a list read concurrent with an append or a delete sees it or not",
           made + [L("append", "1:3", 4, 7), L("get", "1:1|1:2", 5, 6), L("get", "1:1|1:2|1:3", 5, 6),
                   L("delete", None, 8, 11), L("get", "1:1|1:2|1:3", 9, 10), L("get", None, 9, 10)])
    expect("allowed: after an indeterminate delete, append and add may answer either way",
           made + [L("delete", None, 4, 5, "info"), L("append", "1:3", 6, 7, "fail"), L("add", "2:1", 8, 9),
                   L("append", "2:2", 10, 11), L("get", "2:1|2:2", 12, 13)])
    expect("allowed: an add and an append concurrent with a delete",
           made + [L("delete", None, 4, 8), L("add", "2:1", 5, 6, "fail"), L("append", "1:3", 5, 7),
                   L("add", "3:1", 9, 10), L("get", "3:1", 11, 12)])
    expect("allowed: a list created by an indeterminate add",
           [L("add", "1:1", 0, 1, "info"), L("append", "1:2", 2, 3), L("get", "1:1|1:2", 4, 5)])

    rep = check(base + [_ev("get", k, a, 4, 5), _ev("get", k, None, 6, 7, "info")])
    tap.ok(rep.ops == 4 and rep.acked_writes == 2 and rep.reads == 1 and rep.read_errors == 1,
           "report counts ops, acknowledged writes, reads, read errors")
    rc = tap.done()
    kt.cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    _selftest()

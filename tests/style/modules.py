#!/usr/bin/python3
"""modules — the source files of each daemon form a tree, not circles.

For every daemon directory (src/server, src/manager, src/gateway), the functions each
object file calls that another file of the same daemon defines (nm: U
against T/D/B/R) make an edge from caller to callee. main.c wires the rest
together and may call anything; every other file must not be reachable
from a file it calls. Upward calls go through function pointers that
main.c sets (server.dispatch, manager.hooks), which nm does not see, and
that is the point: each module names only those below it (server.dispatch,
manager.hooks, gateway_group's ready_one/totals/reset_totals).

Run from the top of a built tree; exits 1 and prints the circles if any.
"""
import glob
import os
import subprocess
import sys

ENFORCED = ["server", "manager", "gateway"]
REPORTED = []


def graph(daemon):
    objs = [o for o in glob.glob("src/%s/*.o" % daemon)
            if "-" not in os.path.basename(o)]          # not the unit tests' copies
    defs, uses = {}, {}
    for o in objs:
        name = os.path.basename(o)[:-2]
        if not os.path.exists(o[:-2] + ".c"):
            continue                                    # a stale object of a removed file
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) == 3 and f[1] in "TDBR":
                defs[f[2]] = name
            elif len(f) == 2 and f[0] == "U":
                uses.setdefault(name, set()).add(f[1])
    return {m: sorted({defs[u] for u in us if u in defs and defs[u] != m})
            for m, us in uses.items() if m != "main"}


def circles(g):
    def reach(a):
        seen, todo = set(), [a]
        while todo:
            for b in g.get(todo.pop(), []):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen
    return [(a, b) for a in sorted(g) for b in g[a] if a in reach(b)]


def main():
    bad = False
    for d in ENFORCED + REPORTED:
        if not glob.glob("src/%s/*.o" % d):
            print("modules: src/%s is not built" % d)
            return 2
        c = circles(graph(d))
        if c:
            print("modules: src/%s: calls that close a circle: %s" % (
                d, ", ".join("%s.c -> %s.c" % e for e in c)))
            bad = bad or d in ENFORCED
        else:
            print("modules: src/%s: a tree" % d)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

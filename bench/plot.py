#!/usr/bin/python3
"""bench/plot.py — draw a bench/compare results directory as PNG files.

Reads what bench/compare wrote into its --out directory and writes, beside it:
  ops.png    ops/s per workload, one bar per configuration: the median over
             rounds, the error bar from the slowest to the fastest round
             (runs.tsv)
  p99.png    p99 latency in µs, the same way (runs.tsv)
  cost.png   instructions per get, set, 10-key get and binary get,
             one panel each, stacked by process
             (cost.md, from bench/compare --cost)

bench/compare --plot calls it after a run; bench/compare --plot-only DIR (or
this file with DIR) redraws from a directory without running anything.
matplotlib is Debian's python3-matplotlib, drawn with the Agg backend (no
display). Without it: a message and exit status 69 (EX_UNAVAILABLE).
"""

import csv
import os
import re
import statistics
import sys
import textwrap

EX_UNAVAILABLE = 69
# bench/compare's configurations in the order of its tables, then any other
CONFIG_ORDER = ("mc", "tp3", "kumo", "kumo_bin", "kumo_alt")
# the storage at the bottom of a stacked bar (cool colours), the hop in
# front of it on top (warm ones)
PROCESS_COLORS = {"memcached": "#1f77b4", "memcached x3": "#6baed6", "kumo-server x3": "#2ca02c",
                  "nutcracker": "#ff7f0e", "kumo-gateway": "#d62728"}
DPI = 100


class Unavailable(Exception):
    """matplotlib cannot be imported: exit EX_UNAVAILABLE, no traceback."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, or Unavailable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise Unavailable("drawing plots needs matplotlib, Debian's python3-matplotlib for %s (%s): "
                          "apt-get install python3-matplotlib" % (sys.executable or "/usr/bin/python3", e)) from None
    return plt


def available():
    try:
        pyplot()
    except Unavailable:
        return False
    return True


def read_runs(path):
    """runs.tsv -> {(workload, config): [row]}, workloads and configs in order."""
    by, workloads, configs = {}, [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                w, c = row["workload"], row["config"]
                v = {k: float(row[k]) for k in ("ops", "p99")}
            except (KeyError, TypeError, ValueError):
                raise ValueError("%s: not a runs.tsv of bench/compare (row %s)" % (path, row)) from None
            by.setdefault((w, c), []).append(v)
            workloads += [w] if w not in workloads else []
            configs += [c] if c not in configs else []
    known = [c for c in CONFIG_ORDER if c in configs]
    return by, workloads, known + [c for c in configs if c not in known]


# bench/compare --cost's operations and their names in the op column of
# cost.md, in drawing order. bench/compare takes its names from here.
COST_OP_NAMES = {"get": "get", "set": "set", "mget": "get of 10 keys", "bget": "binary get"}
COST_OPS = tuple(COST_OP_NAMES.values())


def read_cost(path):
    """cost.md (the table bench/compare --cost writes) -> [(system, op, [(process, instructions)])]."""
    rows = []
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 4 or cells[1] not in COST_OPS:
                continue
            parts = []
            for part in cells[2].split(" + "):
                m = re.match(r"^(.*\S)\s+([\d.]+)$", part)
                if not m:
                    raise ValueError("%s: cannot read %r" % (path, part))
                parts.append((m.group(1), float(m.group(2))))
            rows.append((cells[0], cells[1], parts))
    return rows


def colors(plt, names, fixed=None):
    cmap = plt.get_cmap("tab10")
    return {n: (fixed or {}).get(n, cmap(i % 10)) for i, n in enumerate(names)}


def legend(ax, order, axes=None, **kw):
    """One legend on ax of the labelled bars of axes (default ax), in `order`."""
    got = {}
    for a in axes if axes is not None else [ax]:
        for h, label in zip(*a.get_legend_handles_labels()):
            got.setdefault(label, h)
    names = [n for n in order if n in got]
    ax.legend([got[n] for n in names], names, fontsize=8, **kw)


def bars_per_workload(plt, by, workloads, configs, key, ylabel, title, path):
    """Grouped bars: per workload, one bar per configuration that ran it."""
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=DPI)
    color = colors(plt, configs)
    width = 0.8 / max(len([c for c in configs if (w, c) in by]) for w in workloads)
    drawn = set()
    for x, w in enumerate(workloads):
        here = [c for c in configs if (w, c) in by]
        for i, c in enumerate(here):
            v = [r[key] for r in by[(w, c)]]
            med = statistics.median(v)
            ax.bar(x + (i - (len(here) - 1) / 2) * width, med, width, color=color[c],
                   yerr=[[med - min(v)], [max(v) - med]], capsize=2, ecolor="0.25",
                   label=None if c in drawn else c)
            drawn.add(c)
    rounds = sorted({len(v) for v in by.values()})
    ax.set_title("%s (1 round)" % title if rounds == [1] else "%s (median of %s rounds, bars min–max)" % (
        title, "/".join(map(str, rounds))), fontsize=10)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.yaxis.grid(True, color="0.9")
    ax.set_axisbelow(True)
    if key == "ops":
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: "%gk" % (v / 1000) if v >= 1000 else "%g" % v))
    legend(ax, configs, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cost_bars(plt, rows, path):
    """Per op, one bar per system, stacked by process, the total on top."""
    ops = [op for op in COST_OPS if any(r[1] == op for r in rows)]
    procs = [p for p in PROCESS_COLORS if any(p == n for r in rows for n, _ in r[2])]
    procs += list(dict.fromkeys(n for r in rows for n, _ in r[2] if n not in procs))
    color = colors(plt, procs, PROCESS_COLORS)
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 4.2), dpi=DPI, squeeze=False)
    drawn = set()
    for ax, op in zip(axes[0], ops):
        systems = [r for r in rows if r[1] == op]
        for x, (system, _, parts) in enumerate(systems):
            bottom = 0
            for name, v in sorted(parts, key=lambda p: procs.index(p[0])):
                ax.bar(x, v, 0.6, bottom=bottom, color=color[name],
                       label=None if name in drawn else name)
                if v > 0 and len(parts) > 1:
                    ax.text(x, bottom + v / 2, "%.0f" % v, ha="center", va="center", fontsize=7)
                drawn.add(name)
                bottom += v
            ax.text(x, bottom, "%.0f" % bottom, ha="center", va="bottom", fontsize=8, weight="bold")
        ax.set_title("per %s" % op, fontsize=10)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels([textwrap.fill(s[0], 16) for s in systems], fontsize=8)
        ax.yaxis.grid(True, color="0.9")
        ax.set_axisbelow(True)
        ax.margins(y=0.08)
    axes[0][0].set_ylabel("instructions per operation")
    legend(axes[0][0], procs, axes[0], loc="upper left")
    fig.suptitle("instructions per operation by process (callgrind, sequential client)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw(out):
    """Draw what DIR holds (runs.tsv, cost.md); -> the PNG paths written.
    Raises Unavailable without matplotlib, ValueError when there is nothing to draw."""
    plt = pyplot()
    written = []
    runs = os.path.join(out, "runs.tsv")
    if os.path.exists(runs):
        by, workloads, configs = read_runs(runs)
        if by:
            for key, name, ylabel, title in (("ops", "ops.png", "ops/s", "ops/s per workload"),
                                             ("p99", "p99.png", "p99 latency, µs", "p99 latency per workload")):
                path = os.path.join(out, name)
                bars_per_workload(plt, by, workloads, configs, key, ylabel, title, path)
                written.append(path)
    cost = os.path.join(out, "cost.md")
    if os.path.exists(cost):
        rows = read_cost(cost)
        if rows:
            path = os.path.join(out, "cost.png")
            cost_bars(plt, rows, path)
            written.append(path)
    if not written:
        raise ValueError("nothing to draw in %s: no runs in runs.tsv, no rows in cost.md" % out)
    return written


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: bench/plot.py DIR   (a bench/compare results directory)\n")
        return 64
    try:
        for path in draw(argv[0]):
            print(path)
    except Unavailable as e:
        sys.stderr.write("bench/plot.py: %s\n" % e)
        return EX_UNAVAILABLE
    except (OSError, ValueError) as e:
        sys.stderr.write("bench/plot.py: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

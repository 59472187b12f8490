#!/usr/bin/python3
"""t_man.py — the man pages agree with the binaries, and lint clean.

For every program in Makefile.am's bin_PROGRAMS there must be a page
man/PROG.SECTION.scd (section 8 for the daemons, 1 for the tools). Each
page is turned into roff the way the build does it (scdoc, then
man/scdoc-fixup.awk) and checked:

  - `mandoc -Tlint` reports nothing but the STYLE note "input text line
    longer than 80 bytes". That one is allowed: scdoc writes one roff line
    per source line, and the roff escapes (\\fB, \\&) push some lines past
    80 bytes; it says nothing about the rendered page. `groff -t -ww` (when
    installed) prints no warning.
  - Every flag the binary's --help prints is an entry of the page's
    OPTIONS section, and every flag entry of OPTIONS is in --help, except
    --help, -h and --version, which must then really exit 0.
  - The numbers and paths --help gives as defaults ("default: 19799",
    "port 19700 if omitted") appear in the flag's entry.
  - Every command --help lists (kumoctl, kumostat, kumohash) is an entry of
    the page's COMMANDS section, and the other way round.
  - An unknown flag makes the binary exit 64, and EXIT STATUS lists 64.
  - The page has NAME, SYNOPSIS, DESCRIPTION, EXIT STATUS, EXAMPLES and
    SEE ALSO sections, and the daemons' pages a SIGNALS section that names
    SIGTERM and SIGHUP.
  - When the build has written the page (man/PAGE next to its source), it
    is the same as the fresh one, apart from the date: a stale page means
    the Makefile rule did not run.

The other pages (kumofs.7) get the lint and section checks.

Output is TAP. Environment: KUMO_BUILD_DIR (where the binaries are; default
the top of the source tree). Needs scdoc and mandoc (apt-get install scdoc
mandoc).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.environ.get("KUMO_BUILD_DIR") or SRC)
DAEMONS = {"kumo-manager", "kumo-server", "kumo-gateway"}
ALLOWED_LINT = re.compile(r"STYLE: input text line longer than 80 bytes")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)")
# kumolog prints its exit codes in the help text; nothing else is a flag
# that starts a help line.
HELP_ONLY_OK = {"--help", "-h", "--version"}

results = []


def ok(cond, name, diag=""):
    results.append(bool(cond))
    print("%s %d - %s" % ("ok" if cond else "not ok", len(results), name))
    if not cond and diag:
        for line in str(diag).rstrip().splitlines():
            print("#   " + line)
    return cond


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30, **kw)


def bin_programs():
    text = open(os.path.join(SRC, "Makefile.am")).read().replace("\\\n", " ")
    m = re.search(r"^bin_PROGRAMS\s*=\s*(.*)$", text, re.M)
    return m.group(1).split() if m else []


def to_roff(scd, out):
    with open(scd, "rb") as f:
        sc = subprocess.run(["scdoc"], stdin=f, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, SOURCE_DATE_EPOCH="0"))
    if sc.returncode != 0:
        return sc.stderr.decode(errors="replace")
    fx = subprocess.run(["awk", "-f", os.path.join(SRC, "man", "scdoc-fixup.awk")],
                        input=sc.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if fx.returncode != 0:
        return fx.stderr.decode(errors="replace")
    with open(out, "wb") as f:
        f.write(fx.stdout)
    return None


def render(page):
    """The page as plain text, split into {SECTION: [lines]}."""
    r = run(["mandoc", "-Tascii", "-Owidth=200", page])
    text = re.sub(r".\x08", "", r.stdout)
    sections, cur = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace():
            cur = line.strip()
            sections.setdefault(cur, [])
        elif cur is not None:
            sections[cur].append(line)
    return sections


def entries(lines):
    """Tag/body pairs of an indented list: [(tag, body text)]."""
    out = []
    indents = [len(l) - len(l.lstrip()) for l in lines if l.strip()]
    if not indents:
        return out
    base = min(indents)
    for line in lines:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if ind == base:
            out.append([line.strip(), ""])
        elif out:
            out[-1][1] += " " + line.strip()
    return [(t, b) for t, b in out]


def help_facts(prog):
    """(flags {flag: help text}, commands [name]) from `prog --help`."""
    r = run([os.path.join(BUILD, prog), "--help"], stdin=subprocess.DEVNULL)
    flags, commands, cur, in_cmds = {}, [], None, False
    for line in r.stdout.splitlines():
        ind = len(line) - len(line.lstrip())
        s = line.strip()
        if not s:
            continue
        if ind == 0:
            in_cmds = s == "command:"
            cur = None
            continue
        if s.startswith("-") and ind <= 8:
            names = []
            for tok in re.split(r",\s*", s.split("  ")[0]):
                m = re.match(r"(--?[A-Za-z][A-Za-z0-9-]*)", tok.strip())
                if m:
                    names.append(m.group(1))
            cur = s
            for n in names:
                flags[n] = s
            cur = names
            continue
        if in_cmds and ind <= 4:
            commands.append(s.split()[0])
            cur = None
            continue
        if cur:  # continuation line of a flag's help
            for n in cur:
                flags[n] += " " + s
    return r, flags, commands


def default_tokens(text):
    """Numbers and absolute paths the help text gives as defaults."""
    toks = []
    for m in re.finditer(r"default:?\s*([^;)]*)", text):
        toks += re.findall(r"(?<![\w.])(/[\w./-]+|\d+(?:\.\d+)?)", m.group(1))
    toks += re.findall(r"port (\d+) if omitted", text)
    return toks


def check_program(prog, page, sections):
    h, hflags, hcmds = help_facts(prog)
    ok(h.returncode == 0 and h.stdout.strip(), "%s --help exits 0 and prints the usage" % prog,
       "rc %d\n%s" % (h.returncode, h.stderr))

    opt_entries = entries(sections.get("OPTIONS", []))
    page_flags = {}
    for tag, body in opt_entries:
        for f in FLAG.findall(tag):
            page_flags[f] = body
    missing = sorted(set(hflags) - set(page_flags))
    ok(not missing, "%s: every --help flag has an OPTIONS entry" % page,
       "missing: " + " ".join(missing))
    extra = sorted(set(page_flags) - set(hflags))
    bad = [f for f in extra if f not in HELP_ONLY_OK]
    for f in extra:
        if f in HELP_ONLY_OK:
            r = run([os.path.join(BUILD, prog), f], stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                bad.append("%s (exits %d)" % (f, r.returncode))
    ok(not bad, "%s: every OPTIONS entry is a flag of %s" % (page, prog),
       "not in --help: " + " ".join(bad))

    wrong = []
    for f, text in sorted(hflags.items()):
        body = page_flags.get(f)
        if body is None:
            continue
        for tok in default_tokens(text):
            if not re.search(r"(?<![\w.])%s(?![\w])" % re.escape(tok), body):
                wrong.append("%s: default %s not in the entry" % (f, tok))
    ok(not wrong, "%s: the defaults --help prints are in the entries" % page, "\n".join(wrong))

    if hcmds or "COMMANDS" in sections:
        page_cmds = set()
        for tag, _ in entries(sections.get("COMMANDS", [])):
            for part in tag.split(","):
                if part.strip():
                    page_cmds.add(part.split()[0])
        ok(set(hcmds) == page_cmds, "%s: COMMANDS are the commands of --help" % page,
           "only in --help: %s\nonly in the page: %s" % (
               " ".join(sorted(set(hcmds) - page_cmds)), " ".join(sorted(page_cmds - set(hcmds)))))

    r = run([os.path.join(BUILD, prog), "--no-such-option"], stdin=subprocess.DEVNULL)
    exit_tags = [t for t, _ in entries(sections.get("EXIT STATUS", []))]
    ok(r.returncode == 64 and "64" in exit_tags,
       "%s: an unknown flag exits 64, as EXIT STATUS says" % prog,
       "rc %d; EXIT STATUS entries: %s" % (r.returncode, exit_tags))


def main():
    for tool in ("scdoc", "mandoc"):
        if not shutil.which(tool):
            print("1..0 # SKIP %s not installed (apt-get install scdoc mandoc)" % tool)
            return 0 if os.environ.get("KUMO_TEST_REQUIRE") != "1" else 1
    tmp = tempfile.mkdtemp(prefix="kumo-man.")
    try:
        progs = bin_programs()
        ok(progs, "bin_PROGRAMS found in Makefile.am")
        sources = sorted(glob.glob(os.path.join(SRC, "man", "*.scd")))
        by_name = {}
        for scd in sources:
            base = os.path.basename(scd)[:-4]  # kumoctl.1
            by_name[base.rsplit(".", 1)[0]] = base
        for prog in progs:
            want = "%s.%s" % (prog, "8" if prog in DAEMONS else "1")
            ok(by_name.get(prog) == want, "%s has a page man/%s.scd" % (prog, want),
               "found: %s" % by_name.get(prog))
            ok(os.access(os.path.join(BUILD, prog), os.X_OK), "%s is built in %s" % (prog, BUILD))

        groff = shutil.which("groff")
        for scd in sources:
            base = os.path.basename(scd)[:-4]
            prog = base.rsplit(".", 1)[0]
            page = os.path.join(tmp, base)
            err = to_roff(scd, page)
            if not ok(err is None, "%s: scdoc and scdoc-fixup.awk" % base, err):
                continue
            lint = run(["mandoc", "-Tlint", "-Wall", page])
            msgs = [l for l in lint.stderr.splitlines() + lint.stdout.splitlines()
                    if l.strip() and not ALLOWED_LINT.search(l)]
            ok(not msgs, "%s: mandoc -Tlint clean" % base, "\n".join(msgs))
            if groff:
                # -t: tbl first, as man(1) does for a page that starts with
                # '\" t (kumofs.7's table); groff 1.23 warns otherwise.
                g = run(["groff", "-t", "-man", "-ww", "-z", page])
                ok(not g.stderr.strip(), "%s: groff -ww clean" % base, g.stderr)

            sections = render(page)
            need = ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]
            if prog not in progs:
                need = ["NAME", "DESCRIPTION", "SEE ALSO"]
            if prog in DAEMONS:
                need.append("SIGNALS")
            absent = [s for s in need if s not in sections]
            ok(not absent, "%s: has the sections %s" % (base, ", ".join(need)),
               "missing: " + ", ".join(absent))
            if prog in DAEMONS:
                sig = " ".join(sections.get("SIGNALS", []))
                ok("SIGTERM" in sig and "SIGHUP" in sig, "%s: SIGNALS names SIGTERM and SIGHUP" % base)
            if prog in progs:
                check_program(prog, base, sections)

            built = os.path.join(SRC, "man", base)
            if os.path.exists(built):
                def body(p):
                    return [l for l in open(p, encoding="utf-8", errors="replace")
                            if not l.startswith(".TH ")]
                ok(body(built) == body(page), "%s: the built page is up to date (run make)" % base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("1..%d" % len(results))
    failed = results.count(False)
    print("# %d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

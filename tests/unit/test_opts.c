/*
 * test_opts — opts.c with a table shaped like the daemons': multi-letter
 * single-dash flags, long names, defaults, bounds, required flags and
 * positional arguments. Paths that exit (errors: 64, --help/--version: 0)
 * run in a fork()ed child whose stdout and stderr are captured.
 */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "opts.h"
#include "tap.h"

typedef struct cfg {
    const char *listen;
    bool verbose;
    int read_threads;
    double clock_interval;
    int gc_mem;
    const char *log;
    int port;
    int any;
} cfg;

static const opt_def defs[] = {
    {"-l", "--listen", OPT_STRING, offsetof(cfg, listen), "<addr[:port]>", NULL, 0, 0, true,
     "address other nodes connect to"},
    {"-v", "--verbose", OPT_FLAG, offsetof(cfg, verbose), NULL, NULL, 0, 0, false, "log TRACE and up"},
    {"-TR", "--read-threads", OPT_INT, offsetof(cfg, read_threads), "<num>", "8", 1, 256, false,
     "worker threads"},
    {"-Ci", "--clock-interval", OPT_DOUBLE, offsetof(cfg, clock_interval), "<sec>", "2.0", 0.01, 3600, false,
     "timer clock interval"},
    {"-gS", "--garbage-mem", OPT_INT, offsetof(cfg, gc_mem), "<KiB>", "1024", 0, 1048576, false,
     "tombstone memory limit"},
    {"-o", "--log", OPT_STRING, offsetof(cfg, log), "<path>", NULL, 0, 0, false, "log file"},
    {"-L", NULL, OPT_INT, offsetof(cfg, port), "<port>", "19900", 1, 65535, false, "stream port"},
    {"-Zz", NULL, OPT_INT, offsetof(cfg, any), "<n>", "-5", 0, 0, false, "unbounded integer"},
};

static const opts_spec spec = {"testprog", "-l <addr> [options] [files...]", defs, sizeof(defs) / sizeof(defs[0])};

#define ARGV(...) ((char *[]){"testprog", __VA_ARGS__, NULL})

static int argc_of(char **av)
{
    int n = 0;
    while (av[n]) n++;
    return n;
}

/* ---- running opts_parse in a child ---- */

typedef struct result {
    int status; /* exit status, or -1 if it did not exit normally */
    char out[8192];
    char err[8192];
} result;

static void slurp(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0) n += (size_t)r;
    buf[n] = 0;
}

static result *run(char **argv)
{
    int argc = argc_of(argv);
    static result res;
    int po[2], pe[2];
    if (pipe(po) < 0 || pipe(pe) < 0) abort();
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], STDOUT_FILENO);
        dup2(pe[1], STDERR_FILENO);
        close(po[0]), close(pe[0]), close(po[1]), close(pe[1]);
        cfg c;
        const char *rest[4];
        size_t nrest;
        opts_parse(&spec, &c, argc, argv, rest, 4, &nrest);
        exit(42); /* returned: parsed fine */
    }
    close(po[1]), close(pe[1]);
    slurp(po[0], res.out, sizeof(res.out));
    slurp(pe[0], res.err, sizeof(res.err));
    close(po[0]), close(pe[0]);
    int st;
    waitpid(pid, &st, 0);
    res.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return &res;
}

static void usage_error(char **argv, const char *want, const char *what)
{
    result *r = run(argv);
    is_int(r->status, OPTS_EX_USAGE, "%s: exits 64", what);
    ok(strstr(r->err, want) != NULL, "%s: stderr says \"%s\"", what, want);
    if (!strstr(r->err, want)) diag("stderr: %s", r->err);
    ok(strstr(r->err, "Usage: testprog") != NULL && r->out[0] == 0, "%s: usage on stderr only", what);
}

/* ---- tests ---- */

static void test_defaults(void)
{
    cfg c;
    memset(&c, 0xab, sizeof(c));
    const char *rest[4];
    size_t nrest = 99;
    char **av = ARGV("-l", "127.0.0.1:19800");
    opts_parse(&spec, &c, argc_of(av), av, rest, 4, &nrest);
    is_str(c.listen, "127.0.0.1:19800", "string value points at argv");
    ok(!c.verbose, "flag defaults to false");
    is_int(c.read_threads, 8, "int default");
    ok(c.clock_interval == 2.0, "double default");
    is_int(c.gc_mem, 1024, "int default (-gS)");
    ok(c.log == NULL, "string without a default is NULL");
    is_int(c.port, 19900, "-L default");
    is_int(c.any, -5, "negative default");
    is_int(nrest, 0, "no positional arguments");
}

static void test_values(void)
{
    cfg c;
    const char *rest[4];
    size_t nrest;
    char **av = ARGV("-TR", "4", "-Ci", "0.5", "-gS", "2048", "-v", "-l", "h", "-o", "-", "-L", "1",
                     "-Zz", "-2000000000");
    opts_parse(&spec, &c, argc_of(av), av, rest, 4, &nrest);
    is_int(c.read_threads, 4, "-TR 4");
    ok(c.clock_interval == 0.5, "-Ci 0.5");
    is_int(c.gc_mem, 2048, "-gS 2048");
    ok(c.verbose, "-v sets the flag");
    is_str(c.log, "-", "'-' is a value, not a flag");
    is_int(c.port, 1, "lower bound is inclusive");
    is_int(c.any, -2000000000, "unbounded int takes a negative value");

    char **lv = ARGV("--read-threads", "256", "--clock-interval=1.5", "--garbage-mem", "0", "--verbose",
                     "--listen=host:1");
    opts_parse(&spec, &c, argc_of(lv), lv, rest, 4, &nrest);
    is_int(c.read_threads, 256, "--read-threads 256 (upper bound inclusive)");
    ok(c.clock_interval == 1.5, "--clock-interval=1.5");
    is_int(c.gc_mem, 0, "--garbage-mem 0");
    ok(c.verbose, "--verbose");
    is_str(c.listen, "host:1", "--listen=host:1");

    char **rv = ARGV("-TR", "2", "-TR", "3", "-l", "x");
    opts_parse(&spec, &c, argc_of(rv), rv, rest, 4, &nrest);
    is_int(c.read_threads, 3, "a repeated flag: the last one wins");
}

static void test_positional(void)
{
    cfg c;
    const char *rest[8];
    size_t nrest;
    char **av = ARGV("first", "-l", "x", "second", "-", "--", "-TR", "--weird");
    opts_parse(&spec, &c, argc_of(av), av, rest, 8, &nrest);
    is_int(nrest, 5, "five positional arguments");
    if (nrest == 5) {
        is_str(rest[0], "first", "in argv order (1)");
        is_str(rest[1], "second", "in argv order (2)");
        is_str(rest[2], "-", "a lone '-' is positional");
        is_str(rest[3], "-TR", "after '--' everything is positional (1)");
        is_str(rest[4], "--weird", "after '--' everything is positional (2)");
    }
    is_int(c.read_threads, 8, "'-TR' after '--' was not taken as a flag");
}

static void test_errors(void)
{
    usage_error(ARGV("-l", "x", "-x"), "testprog: unknown option '-x'",
                "unknown flag");
    usage_error(ARGV("-l", "x", "-T", "4"), "unknown option '-T'",
                "prefix of a flag");
    usage_error(ARGV("-l", "x", "-TR4"), "unknown option '-TR4'",
                "value glued to the flag");
    usage_error(ARGV("-l", "x", "-TR"), "testprog: option '-TR' needs a value",
                "missing value");
    usage_error(ARGV("-l", "x", "-TR", "abc"),
                "testprog: invalid value 'abc' for -TR (an integer from 1 to 256)", "not a number");
    usage_error(ARGV("-l", "x", "-TR", "4x"), "invalid value '4x' for -TR",
                "trailing garbage");
    usage_error(ARGV("-l", "x", "-TR", ""), "invalid value '' for -TR",
                "empty value");
    usage_error(ARGV("-l", "x", "-TR", " 4"), "invalid value ' 4' for -TR", "leading space");
    usage_error(ARGV("-l", "x", "-TR", "0"), "invalid value '0' for -TR",
                "below the minimum");
    usage_error(ARGV("-l", "x", "-TR", "257"),
                "invalid value '257' for -TR", "above the maximum");
    usage_error(ARGV("-l", "x", "-TR", "99999999999999999999"), "invalid value '99999999999999999999' for -TR",
                "overflow");
    usage_error(ARGV("-l", "x", "-Zz", "3000000000"),
                "invalid value '3000000000' for -Zz (an integer)", "unbounded int still fits an int");
    usage_error(ARGV("-l", "x", "-Ci", "fast"),
                "invalid value 'fast' for -Ci (a number from 0.01 to 3600)", "double: not a number");
    usage_error(ARGV("-l", "x", "-Ci", "0.5s"),
                "invalid value '0.5s' for -Ci", "double: trailing garbage");
    usage_error(ARGV("-l", "x", "-Ci", "nan"), "invalid value 'nan' for -Ci",
                "double: nan");
    usage_error(ARGV("-l", "x", "-Ci", "4000"),
                "invalid value '4000' for -Ci", "double: above the maximum");
    usage_error(ARGV("-l", "x", "--clock-interval="),
                "invalid value '' for --clock-interval", "long name with an empty value");
    usage_error(ARGV("-TR", "4"), "testprog: -l is required", "missing required flag");
    usage_error(ARGV("-l", "x", "--verbose=yes"),
                "option '--verbose' takes no value", "flag with a value");
    usage_error(ARGV("-l", "x", "a", "b", "c", "d", "e"),
                "unexpected argument 'e'", "too many positional arguments");

    result *r = run(ARGV("-l", "x", "a"));
    is_int(r->status, 42, "a valid command line returns to the caller");
}

static void test_help(void)
{
    result *r = run(ARGV("--help"));
    is_int(r->status, 0, "--help exits 0");
    ok(r->err[0] == 0, "--help writes nothing to stderr");
    ok(strncmp(r->out, "Usage: testprog -l <addr> [options] [files...]\n", 47) == 0, "first line is the synopsis");
    for (size_t i = 0; i < spec.ndefs; i++) {
        const opt_def *d = &defs[i];
        char want[256];
        snprintf(want, sizeof(want), "\n  %s%s%s", d->name, d->longname ? ", " : "", d->longname ? d->longname : "");
        ok(strstr(r->out, want) != NULL, "usage lists %s", d->name);
        if (d->def) {
            snprintf(want, sizeof(want), "%s (default: %s)\n", d->help, d->def);
            ok(strstr(r->out, want) != NULL, "usage shows the default of %s", d->name);
        }
    }
    ok(strstr(r->out, "  -TR, --read-threads <num>   ") != NULL, "-TR line has its metavar");
    ok(strstr(r->out, "address other nodes connect to (required)") != NULL, "required flags say so");

    /* Every help text starts in the same column. */
    int col = -1, aligned = 1;
    for (size_t i = 0; i < spec.ndefs; i++) {
        const char *p = strstr(r->out, defs[i].help);
        if (!p) {
            aligned = 0;
            break;
        }
        const char *bol = p;
        while (bol > r->out && bol[-1] != '\n') bol--;
        int c = (int)(p - bol);
        if (col < 0) col = c;
        if (c != col) aligned = 0;
    }
    ok(aligned, "help texts are aligned (column %d)", col);

    char stdout_usage[8192];
    memcpy(stdout_usage, r->out, sizeof(stdout_usage));
    r = run(ARGV("-h"));
    is_int(r->status, 0, "-h exits 0 when the table has no -h");
    is_str(r->out, stdout_usage, "-h prints the same usage");

    r = run(ARGV("-l", "x", "--version"));
    is_int(r->status, 0, "--version exits 0");
    ok(strncmp(r->out, "testprog (kumofs ", 17) == 0 && strchr(r->out, ')'), "version line: %.*s",
       (int)strcspn(r->out, "\n"), r->out);

    FILE *f = tmpfile();
    opts_usage(&spec, f);
    long len = ftell(f);
    is_int(len, (long)strlen(stdout_usage), "opts_usage writes the same text to any FILE");
    fclose(f);
}

static void test_die(void)
{
    fflush(stdout);
    int pe[2];
    if (pipe(pe) < 0) abort();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pe[1], STDERR_FILENO);
        close(pe[0]), close(pe[1]);
        opts_die(&spec, "-t, -b or -c is required (%d)", 3);
    }
    close(pe[1]);
    char buf[8192];
    slurp(pe[0], buf, sizeof(buf));
    close(pe[0]);
    int st;
    waitpid(pid, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == OPTS_EX_USAGE, "opts_die exits 64");
    ok(strncmp(buf, "testprog: -t, -b or -c is required (3)\nUsage: testprog", 54) == 0,
       "opts_die prints prog: message, then usage");
}

/* A table that uses -h itself keeps --help but not -h. */
static void test_own_h(void)
{
    typedef struct hcfg {
        const char *host;
    } hcfg;
    static const opt_def hdefs[] = {
        {"-h", "--host", OPT_STRING, offsetof(hcfg, host), "<host>", "localhost", 0, 0, false, "host"},
    };
    static const opts_spec hspec = {"hprog", NULL, hdefs, 1};
    hcfg c;
    char **av = ARGV("-h", "example.org");
    opts_parse(&hspec, &c, argc_of(av), av, NULL, 0, NULL);
    is_str(c.host, "example.org", "-h is the table's own flag when it defines one");
    char **dv = (char *[]){"hprog", NULL};
    opts_parse(&hspec, &c, 1, dv, NULL, 0, NULL);
    is_str(c.host, "localhost", "string default");
}

int main(void)
{
    test_defaults();
    test_values();
    test_positional();
    test_errors();
    test_help();
    test_die();
    test_own_h();
    return done_testing();
}

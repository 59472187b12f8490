/*
 * kumotop — a live view of every server (kumotop(1)).
 *
 *   kumotop [-i sec] [-n count] server-address[:port=19800] ...
 *   kumotop [-i sec] [-n count] -m manager-address[:port=19700]
 *
 * Every interval it asks each server for its counters (SRV_STATUS: cmd_get,
 * cmd_set, cmd_delete, items, ClockTime, replace flags) over a connection
 * it keeps open, and shows gets/sets/deletes per second (the difference of
 * two samples over the time between them), items, the server's clock and
 * its replace state. With -m the server list is the manager's whs, fetched
 * again every interval, so attached and lost servers come and go; a server
 * that is fault in whs shows "fault".
 *
 * On a terminal: a full-screen view in plain ANSI (no curses), redrawn in
 * place; 'q' (or Ctrl-C) quits and restores the terminal. The layout
 * follows the width: all columns from WIDE_COLS on, a compact one-line
 * layout from NARROW_COLS, two lines per server below that. When stdout is
 * not a terminal it prints one snapshot per interval as plain lines (a
 * header, then one line per server, then a blank line), the first one after
 * one interval so that it has rates; -n stops after that many snapshots,
 * and a closed pipe ends it quietly with status 0.
 *
 * Every connect and call has a timeout (TOP_TIMEOUT); an unreachable server
 * shows its error in place of its numbers and is retried after RETRY_AFTER.
 *
 * Exit status: 0; 1 when -m's manager cannot be reached at start; 64 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "proto.h"
#include "tool.h"

#define TOP_TIMEOUT 1.0 /* seconds per connect and per call */
#define RETRY_AFTER 3.0 /* seconds before a failed server is tried again */
#define WIDE_COLS 118
#define NARROW_COLS 72

typedef struct sample {
    bool ok;
    double at; /* monotonic seconds */
    uint64_t get, set, del, items, ct, repl;
    char progress[48]; /* while Copying: "walk 12% ETA 22 s" (kumostat progress in short) */
} sample;

typedef struct node {
    net_addr addr;
    char name[NET_ADDRSTRLEN];
    bool fault; /* fault in the manager's whs */
    bool seen;  /* still listed (manager refresh) */
    tool_conn t;
    bool connected;
    double retry_at;
    sample cur, prev;
    char err[KUMO_ERRLEN];
} node;

typedef struct top {
    node *nodes;
    size_t nnodes, cap;
    const char *manager; /* NULL: fixed server list */
    tool_conn mt;
    bool mconnected;
    double mretry_at;
    char merr[KUMO_ERRLEN];
    double interval;
    long iterations; /* 0 = forever */
    bool tty;
} top;

static volatile sig_atomic_t stop_flag, winch_flag;

static void on_stop(int sig) { stop_flag = 1; }
static void on_winch(int sig) { winch_flag = 1; }

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumotop [options] server-address[:port=%d] ...\n"
            "       kumotop [options] -m manager-address[:port=%d][,address...] [-p address]\n"
            "options:\n"
            "  -m <addr[:port]>  show every server attached to this manager\n"
            "  -p <addr[:port]>  with -m: another manager, asked when the first does not answer\n"
            "  -i <sec>          refresh interval (default 1; 0.1 to 3600)\n"
            "  -n <count>        stop after this many refreshes (default: until 'q')\n"
            "  --cluster-key-file <file>\n"
            "                    the cluster key, the daemons' file (default: $KUMO_CLUSTER_KEY_FILE)\n"
            "  --help            show this help\n"
            "  --version         print the version and exit\n"
            "Columns: address, gets/sets/deletes per second (and totals on a wide terminal),\n"
            "items (records, tombstones included), the server's clock (time and counter),\n"
            "replace state (ready, WAIT, Copying, Deleting, inactive, fault; down: no answer),\n"
            "and while Copying how far: \"walk 12%% ETA 22 s\" or \"send 58%% ETA 3 s\" (kumostat progress).\n"
            "On a terminal: 'q' or Ctrl-C quits. Piped: one snapshot per interval, plain lines.\n"
            "Exit status: 0; 1 when the manager cannot be reached at start; 64 usage.\n",
            KUMO_SERVER_PORT, KUMO_MANAGER_PORT);
}

static node *add_node(top *tp, const net_addr *a)
{
    if (tp->nnodes == tp->cap) {
        size_t ncap = tp->cap ? tp->cap * 2 : 8;
        node *nn = realloc(tp->nodes, ncap * sizeof(*nn));
        if (!nn) return NULL;
        tp->nodes = nn;
        tp->cap = ncap;
    }
    node *n = &tp->nodes[tp->nnodes++];
    memset(n, 0, sizeof(*n));
    n->addr = *a;
    n->t.fd = -1;
    net_format(a, n->name, sizeof(n->name));
    return n;
}

static void node_drop_conn(node *n)
{
    if (n->connected) tool_close(&n->t);
    n->connected = false;
}

/* ---- sampling ---- */

static void sample_node(node *n)
{
    double now = clock_mono();
    sample s = {.ok = false};
    if (!n->connected && now < n->retry_at) {
        n->cur.ok = false;
        return;
    }
    if (!n->connected) {
        if (tool_connect_addr(&n->t, &n->addr, RPC_ROLE_SERVER, TOP_TIMEOUT, n->err) < 0) {
            tool_close(&n->t);
            n->retry_at = now + RETRY_AFTER;
            n->cur.ok = false;
            return;
        }
        n->connected = true;
    }
    if (tool_status_uint(&n->t, ST_CMD_GET, &s.get, n->err) < 0 || tool_status_uint(&n->t, ST_CMD_SET, &s.set, n->err) < 0 ||
        tool_status_uint(&n->t, ST_CMD_DELETE, &s.del, n->err) < 0 || tool_status_uint(&n->t, ST_ITEMS, &s.items, n->err) < 0 ||
        tool_status_uint(&n->t, ST_CLOCKTIME, &s.ct, n->err) < 0 || tool_status_uint(&n->t, ST_REPLACE, &s.repl, n->err) < 0) {
        node_drop_conn(n);
        n->retry_at = now + RETRY_AFTER;
        n->cur.ok = false;
        return;
    }
    tool_progress p;
    if ((s.repl & 0x04) && tool_replace_progress(&n->t, &p, n->err) == 0) {
        bool walk = strcmp(p.phase, "walk") == 0;
        double e = tool_progress_eta(&p);
        uint64_t done = walk ? p.walked : p.sent, of = walk ? p.total : p.queued;
        int pct = of ? (int)(100 * (done < of ? done : of) / of) : 100;
        if (e >= 0) snprintf(s.progress, sizeof(s.progress), "%s %d%% ETA %.0f s", p.phase, pct, e);
        else snprintf(s.progress, sizeof(s.progress), "%s %d%%", p.phase, pct);
    }
    s.ok = true;
    s.at = clock_mono();
    if (n->cur.ok) n->prev = n->cur;
    n->cur = s;
    n->err[0] = '\0';
}

/* -m: the manager's whs decides the list. */
static void refresh_manager(top *tp)
{
    char err[KUMO_ERRLEN];
    double now = clock_mono();
    if (!tp->mconnected && now < tp->mretry_at) return;
    if (!tp->mconnected) {
        if (tool_connect(&tp->mt, tp->manager, KUMO_MANAGER_PORT, TOP_TIMEOUT, err) < 0) {
            tool_close(&tp->mt);
            snprintf(tp->merr, sizeof(tp->merr), "%s", err);
            tp->mretry_at = now + RETRY_AFTER;
            return;
        }
        tp->mconnected = true;
    }
    hashspace *whs = tool_manager_hs(&tp->mt, false, err);
    if (!whs) snprintf(tp->merr, sizeof(tp->merr), "%s", err);
    if (!whs) {
        tool_close(&tp->mt);
        tp->mconnected = false;
        tp->mretry_at = now + RETRY_AFTER;
        return;
    }
    tp->merr[0] = '\0';
    for (size_t i = 0; i < tp->nnodes; i++) tp->nodes[i].seen = false;
    /* Keep the whs order: move or add each listed node to position i. */
    for (size_t i = 0; i < whs->ring.nnodes; i++) {
        const ring_node *rn = &whs->ring.nodes[i];
        size_t at = tp->nnodes;
        for (size_t j = i; j < tp->nnodes; j++)
            if (net_equal(&tp->nodes[j].addr, &rn->addr)) at = j;
        if (at == tp->nnodes && !add_node(tp, &rn->addr)) break;
        if (at != i) {
            node tmp = tp->nodes[i];
            tp->nodes[i] = tp->nodes[at];
            tp->nodes[at] = tmp;
        }
        tp->nodes[i].seen = true;
        tp->nodes[i].fault = !rn->active;
    }
    /* Servers no longer attached: gone from the view. */
    size_t keep = 0;
    for (size_t i = 0; i < tp->nnodes; i++) {
        if (tp->nodes[i].seen) tp->nodes[keep++] = tp->nodes[i];
        else node_drop_conn(&tp->nodes[i]);
    }
    tp->nnodes = keep;
    hashspace_unref(whs);
}

static void sample_all(top *tp)
{
    if (tp->manager) refresh_manager(tp);
    for (size_t i = 0; i < tp->nnodes; i++) sample_node(&tp->nodes[i]);
}

/* ---- formatting ---- */

static const char *state_word(const node *n)
{
    if (n->fault) return "fault";
    if (!n->cur.ok) return "down";
    return tool_replace_word(n->cur.repl);
}

static const char *state_colour(const char *w)
{
    if (strcmp(w, "ready") == 0) return "\033[32m";
    if (strcmp(w, "fault") == 0 || strcmp(w, "down") == 0) return "\033[31m";
    return "\033[33m";
}

static void fmt_rate(char *buf, size_t len, const node *n, uint64_t cur, uint64_t prev)
{
    double dt = n->cur.at - n->prev.at;
    if (!n->cur.ok || !n->prev.ok || dt <= 0 || cur < prev) {
        snprintf(buf, len, "-");
        return;
    }
    double r = (double)(cur - prev) / dt;
    if (r >= 100) snprintf(buf, len, "%.0f", r);
    else snprintf(buf, len, "%.1f", r);
}

static void fmt_clock(char *date, size_t dlen, char *hms, size_t hlen, uint64_t ct)
{
    time_t sec = (time_t)clock_seconds(ct);
    struct tm tm;
    localtime_r(&sec, &tm);
    strftime(date, dlen, "%Y-%m-%d %H:%M:%S", &tm);
    strftime(hms, hlen, "%H:%M:%S", &tm);
}

typedef enum layout { LAYOUT_WIDE,
                      LAYOUT_COMPACT,
                      LAYOUT_NARROW } layout;

/* The lines of one frame go to an in-memory stream first, so a frame is
 * written with one fwrite and never half-drawn. */
static void put_header(FILE *f, layout l)
{
    if (l == LAYOUT_WIDE)
        fprintf(f, "%-21s %10s %10s %10s %8s %8s %8s %10s %-19s %7s %s\n", "address", "#get", "#set", "#delete",
                "get/s", "set/s", "delete/s", "items", "time", "clock", "state");
    else if (l == LAYOUT_COMPACT)
        fprintf(f, "%-21s %8s %8s %8s %10s %8s %s\n", "address", "get/s", "set/s", "delete/s", "items", "time",
                "state");
    else
        fprintf(f, "%-21s %s\n%8s %8s %8s %10s\n", "address", "state", "get/s", "set/s", "del/s", "items");
}

static void put_node(FILE *f, const node *n, layout l, bool colour)
{
    char g[24], s[24], d[24], date[32], hms[16];
    const char *w = state_word(n);
    const char *on = colour ? state_colour(w) : "", *off = colour ? "\033[0m" : "";
    if (!n->cur.ok) {
        const char *why = n->err[0] ? n->err : "waiting";
        /* the error text carries the address already */
        const char *p = strncmp(why, n->name, strlen(n->name)) == 0 ? why + strlen(n->name) : why;
        while (*p == ':' || *p == ' ') p++;
        if (l == LAYOUT_NARROW)
            fprintf(f, "%-21s %s%s%s\n  %s\n", n->name, on, w, off, p);
        else
            fprintf(f, "%-21s %s%s%s  %s\n", n->name, on, w, off, p);
        return;
    }
    fmt_rate(g, sizeof(g), n, n->cur.get, n->prev.get);
    fmt_rate(s, sizeof(s), n, n->cur.set, n->prev.set);
    fmt_rate(d, sizeof(d), n, n->cur.del, n->prev.del);
    fmt_clock(date, sizeof(date), hms, sizeof(hms), n->cur.ct);
    const char *sp = n->cur.progress[0] ? " " : "";
    if (l == LAYOUT_WIDE)
        fprintf(f, "%-21s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %8s %8s %8s %10" PRIu64 " %-19s %7u %s%s%s%s%s\n",
                n->name, n->cur.get, n->cur.set, n->cur.del, g, s, d, n->cur.items, date,
                clock_counter(n->cur.ct), on, w, off, sp, n->cur.progress);
    else if (l == LAYOUT_COMPACT)
        fprintf(f, "%-21s %8s %8s %8s %10" PRIu64 " %8s %s%s%s%s%s\n", n->name, g, s, d, n->cur.items, hms, on, w, off, sp,
                n->cur.progress);
    else
        fprintf(f, "%-21s %s%s%s%s%s\n%8s %8s %8s %10" PRIu64 "\n", n->name, on, w, off, sp, n->cur.progress, g, s, d,
                n->cur.items);
}

static int term_cols(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    const char *c = getenv("COLUMNS");
    return c && atoi(c) > 0 ? atoi(c) : 80;
}

static int term_rows(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) return ws.ws_row;
    return 24;
}

/* Write all of buf to stdout; false when stdout is gone (a closed pipe). */
static bool put_out(const char *buf, size_t len)
{
    if (len && fwrite(buf, 1, len, stdout) != len) return false;
    return fflush(stdout) == 0;
}

static bool render_plain(top *tp)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return false;
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    if (tp->manager && tp->merr[0]) fprintf(f, "# %s manager %s\n", date, tp->merr);
    put_header(f, LAYOUT_WIDE);
    for (size_t i = 0; i < tp->nnodes; i++) put_node(f, &tp->nodes[i], LAYOUT_WIDE, false);
    fputc('\n', f);
    fclose(f);
    bool ok = put_out(buf, len);
    free(buf);
    return ok;
}

/* One full-screen frame: home, each line cleared to its end, clipped to
 * the terminal's width and height. */
static bool render_tty(top *tp)
{
    int cols = term_cols(), rows = term_rows();
    layout l = cols >= WIDE_COLS ? LAYOUT_WIDE : cols >= NARROW_COLS ? LAYOUT_COMPACT
                                                                     : LAYOUT_NARROW;
    char *body = NULL, *buf = NULL;
    size_t blen = 0, len = 0;
    FILE *f = open_memstream(&body, &blen);
    if (!f) return false;
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%H:%M:%S", &tm);
    size_t active = 0;
    for (size_t i = 0; i < tp->nnodes; i++) active += tp->nodes[i].cur.ok;
    if (tp->manager)
        fprintf(f, "kumotop  %s  manager %s  %zu servers (%zu answering)  every %gs  q: quit\n", date, tp->manager,
                tp->nnodes, active, tp->interval);
    else
        fprintf(f, "kumotop  %s  %zu servers (%zu answering)  every %gs  q: quit\n", date, tp->nnodes, active,
                tp->interval);
    if (tp->manager && tp->merr[0]) fprintf(f, "manager: %s\n", tp->merr);
    fputc('\n', f);
    put_header(f, l);
    for (size_t i = 0; i < tp->nnodes; i++) put_node(f, &tp->nodes[i], l, true);
    fclose(f);

    FILE *o = open_memstream(&buf, &len);
    if (!o) {
        free(body);
        return false;
    }
    fputs("\033[H", o);
    int row = 0;
    for (char *line = body; line && *line && row < rows; row++) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        /* Clip to the width, counting only printable bytes. */
        int shown = 0;
        for (size_t k = 0; k < n; k++) {
            if (line[k] == '\033') { /* a colour: costs no column */
                size_t e = k;
                while (e < n && line[e] != 'm') e++;
                size_t m = e < n ? e - k + 1 : n - k;
                fwrite(line + k, 1, m, o);
                k += m - 1;
                continue;
            }
            if (shown < cols - 1) fputc(line[k], o);
            shown++;
        }
        fputs("\033[0m\033[K", o);
        if (row + 1 < rows) fputc('\n', o);
        line = nl ? nl + 1 : NULL;
    }
    fputs("\033[J", o);
    fclose(o);
    free(body);
    bool ok = put_out(buf, len);
    free(buf);
    return ok;
}

/* ---- the terminal ---- */

static struct termios saved_tio;
static bool tio_saved, screen_on;

static void term_restore(void)
{
    if (screen_on) {
        fputs("\033[0m\033[?25h\033[?1049l", stdout);
        fflush(stdout);
        screen_on = false;
    }
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
        tio_saved = false;
    }
}

static void term_setup(void)
{
    if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_tio) == 0) {
        struct termios t = saved_tio;
        t.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
        t.c_cc[VMIN] = 0;
        t.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) tio_saved = true;
    }
    fputs("\033[?1049h\033[?25l\033[H\033[2J", stdout);
    fflush(stdout);
    screen_on = true;
    atexit(term_restore);
}

/* Wait until `deadline` (monotonic), reading keys. Returns false to quit. */
static bool wait_keys(double deadline, bool keys)
{
    while (!stop_flag) {
        double left = deadline - clock_mono();
        if (left <= 0 || winch_flag) return true;
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int rc = poll(&p, keys ? 1 : 0, (int)(left * 1000) + 1);
        if (rc < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (rc > 0 && (p.revents & POLLIN)) {
            char c[64];
            ssize_t n = read(STDIN_FILENO, c, sizeof(c));
            if (n <= 0) {
                keys = false; /* stdin closed: only the clock and signals now */
                continue;
            }
            for (ssize_t i = 0; i < n; i++)
                if (c[i] == 'q' || c[i] == 'Q' || c[i] == 3) return false;
        } else if (rc > 0) {
            keys = false;
        }
    }
    return false;
}

static bool parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    if (kumo_version_asked("kumotop", argc, argv)) return 0;
    top tp;
    char err[KUMO_ERRLEN];
    memset(&tp, 0, sizeof(tp));
    tp.interval = 1.0;
    const char **servers = calloc((size_t)argc + 1, sizeof(*servers));
    size_t nservers = 0;
    if (!servers) return 1;
    size_t more = 0;
    if (tool_cluster_key("kumotop", usage, &argc, argv) || tool_more_managers("kumotop", usage, &argc, argv, &more)) {
        free(servers);
        return TOOL_EX_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            free(servers);
            return 0;
        }
        if (strcmp(a, "-m") == 0 || strcmp(a, "-i") == 0 || strcmp(a, "-n") == 0) {
            if (i + 1 >= argc) {
                free(servers);
                return tool_usage_error("kumotop", usage, "option '%s' needs a value", a);
            }
            const char *v = argv[++i];
            if (a[1] == 'm') {
                tp.manager = v;
            } else if (a[1] == 'i') {
                if (!parse_double(v, &tp.interval) || tp.interval < 0.1 || tp.interval > 3600) {
                    free(servers);
                    return tool_usage_error("kumotop", usage, "invalid interval '%s' (0.1 to 3600 seconds)", v);
                }
            } else {
                char *end;
                errno = 0;
                long n = strtol(v, &end, 10);
                if (errno || *end || end == v || n < 1) {
                    free(servers);
                    return tool_usage_error("kumotop", usage, "invalid count '%s' (a positive integer)", v);
                }
                tp.iterations = n;
            }
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            free(servers);
            return tool_usage_error("kumotop", usage, "unknown option '%s'", a);
        }
        servers[nservers++] = a;
    }
    if (tp.manager && nservers > 0) {
        free(servers);
        return tool_usage_error("kumotop", usage, "%s", "give either -m manager or server addresses, not both");
    }
    if (more && !tp.manager) {
        free(servers);
        return tool_usage_error("kumotop", usage, "%s", "-p names another manager: it needs -m");
    }
    if (!tp.manager && nservers == 0) {
        free(servers);
        return tool_usage_error("kumotop", usage, "%s", "missing server addresses (or -m manager)");
    }
    for (size_t i = 0; i < nservers; i++) {
        net_addr a;
        if (net_parse(servers[i], KUMO_SERVER_PORT, &a, err) < 0) {
            fprintf(stderr, "kumotop: %s\n", err);
            free(servers);
            return 1;
        }
        if (!add_node(&tp, &a)) {
            free(servers);
            return 1;
        }
    }
    free(servers);
    if (tp.manager) {
        refresh_manager(&tp);
        if (!tp.mconnected && tp.nnodes == 0) {
            fprintf(stderr, "kumotop: %s\n", tp.merr);
            return 1;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop; /* no SA_RESTART: poll and reads return EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);

    tp.tty = isatty(STDOUT_FILENO) == 1;
    bool keys = tp.tty && isatty(STDIN_FILENO) == 1;
    if (tp.tty) term_setup();
    long done = 0;
    double next = clock_mono();
    if (!tp.tty) {
        /* The first plain snapshot waits one interval so that it has rates. */
        sample_all(&tp);
        next += tp.interval;
        if (!wait_keys(next, false)) goto out;
    }
    while (!stop_flag) {
        sample_all(&tp);
        if (stop_flag) break;
        if (!(tp.tty ? render_tty(&tp) : render_plain(&tp))) break; /* stdout closed */
        if (tp.iterations && ++done >= tp.iterations) break;
        next += tp.interval;
        if (next < clock_mono()) next = clock_mono(); /* slow servers: do not try to catch up */
        for (;;) {
            if (!wait_keys(next, keys)) goto out;
            if (!winch_flag) break;
            winch_flag = 0;
            if (tp.tty && !render_tty(&tp)) goto out;
        }
    }
out:
    term_restore();
    for (size_t i = 0; i < tp.nnodes; i++) node_drop_conn(&tp.nodes[i]);
    if (tp.mconnected) tool_close(&tp.mt);
    free(tp.nodes);
    return 0;
}

/*
 * kumolog — print a binary log (-g path.mpac) readably (kumolog(1)).
 *
 *   kumolog [-f] [-t] [-h] [-n N] <file.mpac | ->
 *
 * One line per record:
 *   2024-05-01 12:00:00.123456 WARN  server@10.0.0.1:19800  server_lost  addr=10.0.0.2:19800 clocktime=1714564800:3
 * time (local), level, node, event, then the fields as key=value in the
 * order they were written. A value is printed bare when it is plain text
 * (no spaces, quotes, '=' or control bytes), otherwise in double quotes
 * with C escapes (\n, \", \\, \xNN); ClockTimes (fields named "clocktime"
 * or ending in "_ct") as seconds:counter.
 *
 * Damage: a record that does not decode is reported on stderr as
 * "kumolog: FILE: bad record at OFFSET (why), recover at OFFSET2", and
 * reading goes on from the next offset where a whole record decodes (the
 * search moves one byte at a time); damage that runs to the end of the
 * file, or a file that ends inside a record, is reported as "bad record
 * at" / "truncated record at OFFSET". The exit status is 1 only when nothing
 * could be read: the file cannot be opened, or it has bytes but not one
 * record decodes.
 *
 * -f follows the file like tail -F: after the existing records it waits
 * for more, and when the path is renamed away and re-created (logrotate;
 * the daemon reopens on SIGHUP) it finishes the old file and continues
 * with the new one from its start. SIGINT/SIGTERM end it with status 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "binlog.h"

#define READ_CHUNK (64 * 1024)
#define FOLLOW_POLL_MS 200

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) { stop_flag = 1; }

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumolog [options] <logfile.mpac>\n"
            "Print the binary log of a kumofs daemon (-g) as text, one line per record:\n"
            "time, level, node, event, key=value...\n"
            "options:\n"
            "  -f, --follow       keep reading as the file grows, across log rotation\n"
            "                     (like tail -F; starts with the last N records)\n"
            "  -t, --tail         show only the last N records (default N=10)\n"
            "  -h, --head         show only the first N records (default N=10)\n"
            "  -n, --lines=[-]N   set N (without -h it implies -t)\n"
            "      --help         show this help\n"
            "      --version      print the version and exit\n"
            "'-' reads standard input. Damaged records are reported on stderr\n"
            "(\"recover at OFFSET\") and skipped. Exit status: 0, 1 when nothing could be\n"
            "read (no such file, or not one valid record in it), 64 usage.\n");
}

/* ---- formatting ---- */

static bool is_plain(const unsigned char *p, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] <= ' ' || p[i] >= 0x7f || p[i] == '"' || p[i] == '=' || p[i] == '\\') return false;
    return true;
}

static void put_text(FILE *o, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    if (is_plain(p, n)) {
        fwrite(p, 1, n, o);
        return;
    }
    fputc('"', o);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') fprintf(o, "\\%c", c);
        else if (c == '\n') fputs("\\n", o);
        else if (c == '\r') fputs("\\r", o);
        else if (c == '\t') fputs("\\t", o);
        else if (c < ' ' || c >= 0x7f) fprintf(o, "\\x%02x", c);
        else fputc(c, o);
    }
    fputc('"', o);
}

static bool is_clocktime_key(const char *k, size_t n)
{
    return (n == 9 && memcmp(k, "clocktime", 9) == 0) || (n >= 3 && memcmp(k + n - 3, "_ct", 3) == 0);
}

static void put_value(FILE *o, const msgpack_object *v, bool clocktime)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL: fputs("nil", o); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(v->via.boolean ? "true" : "false", o); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (clocktime && v->via.u64 == 0) { /* a blank hash space's */
            fputs("none", o);
        } else if (clocktime) { /* one token: the time, "/", the logical counter */
            char when[KUMO_TIMELEN];
            fprintf(o, "%s/%" PRIu32, kumo_format_time((time_t)(v->via.u64 >> 32), -1, when), (uint32_t)v->via.u64);
        } else
            fprintf(o, "%" PRIu64, v->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(o, "%" PRId64, v->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: fprintf(o, "%g", v->via.f64); break;
    case MSGPACK_OBJECT_STR: put_text(o, v->via.str.ptr, v->via.str.size); break;
    case MSGPACK_OBJECT_BIN: put_text(o, v->via.bin.ptr, v->via.bin.size); break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', o);
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            if (i) fputc(',', o);
            put_value(o, &v->via.array.ptr[i], false);
        }
        fputc(']', o);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', o);
        for (uint32_t i = 0; i < v->via.map.size; i++) {
            if (i) fputc(',', o);
            put_value(o, &v->via.map.ptr[i].key, false);
            fputc(':', o);
            put_value(o, &v->via.map.ptr[i].val, false);
        }
        fputc('}', o);
        break;
    default: fputs("?", o); break;
    }
}

/* The record as one line (malloc'd, NUL-terminated, ends in '\n'). */
static char *format_record(const binlog_record *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&buf, &len);
    if (!o) return NULL;
    char date[KUMO_TIMELEN];
    const char *lvl = binlog_level_name(r->level);
    fprintf(o, "%s ", kumo_format_time((time_t)(r->time_us / 1000000u), (long)(r->time_us % 1000000u), date));
    if (lvl) fprintf(o, "%-5s ", lvl);
    else fprintf(o, "L%-4u ", r->level);
    put_text(o, r->node_len ? r->node : "-", r->node_len ? r->node_len : 1);
    fputs("  ", o);
    put_text(o, r->event_len ? r->event : "-", r->event_len ? r->event_len : 1);
    for (uint32_t i = 0; i < r->fields->size; i++) {
        const msgpack_object_kv *kv = &r->fields->ptr[i];
        fputs(i == 0 ? "  " : " ", o);
        put_text(o, kv->key.via.str.ptr, kv->key.via.str.size);
        fputc('=', o);
        put_value(o, &kv->val, is_clocktime_key(kv->key.via.str.ptr, kv->key.via.str.size));
    }
    fputc('\n', o);
    if (fclose(o) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- output: all, the first N, or the last N ---- */

typedef enum mode { MODE_ALL,
                    MODE_HEAD,
                    MODE_TAIL } mode;

typedef struct out {
    mode mode;
    long n;
    long printed;
    char **ring; /* MODE_TAIL: the last n lines */
    long ring_len, ring_at;
    bool broken; /* stdout is gone */
} out;

static void emit(out *o, char *line)
{
    if (!line) return;
    if (o->mode == MODE_TAIL) {
        if (o->n == 0) {
            free(line);
            return;
        }
        if (o->ring_len == o->n) free(o->ring[o->ring_at]);
        else o->ring_len++;
        o->ring[o->ring_at] = line;
        o->ring_at = (o->ring_at + 1) % o->n;
        return;
    }
    if (o->mode == MODE_HEAD && o->printed >= o->n) {
        free(line);
        return;
    }
    if (!o->broken && fputs(line, stdout) == EOF) o->broken = true;
    o->printed++;
    free(line);
}

/* Print what MODE_TAIL kept and switch to printing everything (follow). */
static void flush_tail(out *o)
{
    if (o->mode != MODE_TAIL) return;
    long start = o->ring_len == o->n ? o->ring_at : 0;
    for (long i = 0; i < o->ring_len; i++) {
        char *l = o->ring[(start + i) % (o->n ? o->n : 1)];
        if (!o->broken && fputs(l, stdout) == EOF) o->broken = true;
        free(l);
    }
    o->ring_len = o->ring_at = 0;
    o->mode = MODE_ALL;
}

/* ---- reading ---- */

typedef struct reader {
    const char *name;
    int fd;
    char *buf;
    size_t len, cap;
    uint64_t base; /* file offset of buf[0] */
    uint64_t records, bad;
    bool any_bytes;
    bool in_bad; /* inside a run of damage that started at bad_at */
    bool bad_truncated;
    uint64_t bad_at;
    char bad_why[KUMO_ERRLEN];
    binlog_record rec;
} reader;

/* Decode every whole record in the buffer; keep the incomplete tail.
 * at_eof: no more bytes will come, so a tail that is not a whole record is
 * searched for later records and then reported.
 *
 * A run of damage is reported once, when the next good record is found
 * ("bad record at A (why), recover at B") or at the end of the input. */
static void drain(reader *r, out *o, bool at_eof)
{
    char err[KUMO_ERRLEN];
    size_t pos = 0;
    while (pos < r->len) {
        size_t used = 0;
        binlog_status st = binlog_decode(r->buf + pos, r->len - pos, &r->rec, &used, err);
        if (st == BINLOG_OK) {
            if (r->in_bad) {
                fflush(stdout);
                fprintf(stderr, "kumolog: %s: bad record at %" PRIu64 " (%s), recover at %" PRIu64 "\n", r->name,
                        r->bad_at, r->bad_why, r->base + pos);
                r->in_bad = false;
            }
            emit(o, format_record(&r->rec));
            r->records++;
            pos += used;
            continue;
        }
        if (st == BINLOG_MORE && !at_eof) break;
        /* Damage, or a record cut short by the end of the input: look for
         * the next offset where a whole record decodes. */
        if (!r->in_bad) {
            r->in_bad = true;
            r->bad++;
            r->bad_at = r->base + pos;
            r->bad_truncated = st == BINLOG_MORE;
            snprintf(r->bad_why, sizeof(r->bad_why), "%s", st == BINLOG_MORE ? "incomplete record" : err);
        }
        pos++;
    }
    if (at_eof && r->in_bad && pos >= r->len) {
        fflush(stdout);
        fprintf(stderr, "kumolog: %s: %s record at %" PRIu64 " (%s); nothing valid after it (%" PRIu64 " bytes)\n",
                r->name, r->bad_truncated ? "truncated" : "bad", r->bad_at, r->bad_why,
                r->base + pos - r->bad_at);
        r->in_bad = false;
    }
    memmove(r->buf, r->buf + pos, r->len - pos);
    r->len -= pos;
    r->base += pos;
}

/* Read what the descriptor has now. Returns bytes read, 0 at EOF, -1 on error. */
static ssize_t fill(reader *r)
{
    if (r->cap - r->len < READ_CHUNK) {
        size_t ncap = r->cap ? r->cap * 2 : 4 * READ_CHUNK;
        while (ncap - r->len < READ_CHUNK) ncap *= 2;
        char *nb = realloc(r->buf, ncap);
        if (!nb) return -1;
        r->buf = nb;
        r->cap = ncap;
    }
    for (;;) {
        ssize_t n = read(r->fd, r->buf + r->len, READ_CHUNK);
        if (n < 0 && errno == EINTR) {
            if (stop_flag) return 0;
            continue;
        }
        if (n > 0) {
            r->len += (size_t)n;
            r->any_bytes = true;
        }
        return n;
    }
}

static void read_to_eof(reader *r, out *o)
{
    ssize_t n;
    while (!stop_flag && (n = fill(r)) > 0) drain(r, o, false);
}

/* The path now names a different file than the one open (rotated), or the
 * open file shrank (truncated): then the follower must switch. */
static bool rotated(const reader *r, const char *path)
{
    struct stat a, b;
    if (stat(path, &a) < 0 || fstat(r->fd, &b) < 0) return false;
    return a.st_ino != b.st_ino || a.st_dev != b.st_dev || (uint64_t)a.st_size < r->base + r->len;
}

static void follow(reader *r, out *o, const char *path)
{
    fflush(stdout);
    while (!stop_flag && !o->broken) {
        ssize_t n = fill(r);
        if (n > 0) {
            drain(r, o, false);
            if (fflush(stdout) != 0) o->broken = true;
            continue;
        }
        if (n < 0) break;
        if (rotated(r, path)) {
            read_to_eof(r, o); /* whatever the writer added before it let go */
            drain(r, o, true);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                usleep(FOLLOW_POLL_MS * 1000);
                continue;
            }
            close(r->fd);
            r->fd = fd;
            r->len = 0;
            r->base = 0;
            fflush(stdout);
            fprintf(stderr, "kumolog: %s: file replaced (rotated), reading the new one\n", r->name);
            continue;
        }
        usleep(FOLLOW_POLL_MS * 1000);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (kumo_version_asked("kumolog", argc, argv)) return 0;
    static const struct option longopts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"tail", no_argument, NULL, 't'},
        {"head", no_argument, NULL, 'h'},
        {"lines", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    bool do_follow = false, do_tail = false, do_head = false, have_n = false;
    long n = 10;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "fthn:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': do_follow = true; break;
        case 't': do_tail = true; break;
        case 'h': do_head = true; break;
        case 'n': {
            char *end;
            errno = 0;
            n = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg) {
                fprintf(stderr, "kumolog: invalid number of lines '%s'\n", optarg);
                usage(stderr);
                return 64;
            }
            if (n < 0) n = -n;
            have_n = true;
            break;
        }
        case 'H': usage(stdout); return 0;
        default:
            if (optopt == 'n') fprintf(stderr, "kumolog: option -n needs a number\n");
            else if (optopt) fprintf(stderr, "kumolog: unknown option '-%c'\n", optopt);
            else fprintf(stderr, "kumolog: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 64;
        }
    }
    if (do_head && (do_tail || do_follow)) {
        fprintf(stderr, "kumolog: -h cannot be combined with -t or -f\n");
        usage(stderr);
        return 64;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "kumolog: %s\n", optind >= argc ? "missing log file" : "give one log file");
        usage(stderr);
        return 64;
    }
    const char *path = argv[optind];
    out o = {.mode = MODE_ALL, .n = n};
    if (do_head) o.mode = MODE_HEAD;
    else if (do_tail || do_follow || have_n) o.mode = MODE_TAIL;
    if (o.mode == MODE_TAIL && !(o.ring = calloc((size_t)(n ? n : 1), sizeof(char *)))) {
        fprintf(stderr, "kumolog: out of memory\n");
        return 1;
    }

    reader r = {.name = path, .fd = -1};
    bool is_stdin = strcmp(path, "-") == 0;
    r.fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (r.fd < 0) {
        fprintf(stderr, "kumolog: %s: %s\n", path, strerror(errno));
        free(o.ring);
        return 1;
    }
    if (is_stdin) r.name = "(stdin)";
    binlog_record_init(&r.rec);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    read_to_eof(&r, &o);
    if (do_follow && !is_stdin) {
        drain(&r, &o, false);
        flush_tail(&o);
        follow(&r, &o, path);
        drain(&r, &o, true);
    } else {
        drain(&r, &o, true);
        flush_tail(&o);
    }
    int rc = 0;
    if (r.records == 0 && r.any_bytes) {
        fprintf(stderr, "kumolog: %s: no valid record: not a kumofs binary log?\n", r.name);
        rc = 1;
    }
    if (!is_stdin) close(r.fd);
    binlog_record_free(&r.rec);
    free(r.buf);
    flush_tail(&o); /* frees the ring's lines when stopped early */
    free(o.ring);
    fflush(stdout);
    return rc;
}

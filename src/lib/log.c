/*
 * log — the text log of every daemon (see log.h).
 *
 * Owns: the process-wide logger below (the one global allowed outside a
 * daemon's state struct, docs/hacking.md "State"): level floor, colour flag, path
 * and FILE*. log_init sets all of it once in main() before threads start;
 * afterwards only `fp` changes, in log_reopen, under `mu`.
 * Calls: nothing.
 * Thread rule: log_write/log_enabled from any thread; log_init and
 * log_close at start-up/exit only; log_reopen from the thread that handles
 * SIGHUP.
 *
 * Each line is formatted completely into one buffer first, then written with
 * one fwrite + fflush under `mu`, so lines from different threads never
 * interleave and a crash loses at most the line being written.
 * Colours (kumofs 0.4, mlogger_tty): the whole line is wrapped in the level's
 * colour and reset with "\033[0;39m".
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static struct {
    pthread_mutex_t mu;
    FILE *fp;   /* NULL = stdout (stdout is not a constant initializer) */
    char *path; /* NULL when logging to stdout */
    bool colour;
    bool journal; /* stdout is journald's stream: "<N>" priority prefixes */
    bool json;
    log_level min;
} logger = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, false, false, false, LOG_LVL_WARN};

static const char *const level_name[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"};
static const char *const level_colour[] = {
    "\033[0;39m",
    "\033[1;37m",
    "\033[1;32m",
    "\033[1;33m",
    "\033[1;35m",
    "\033[1;31m",
};
/* syslog priorities (sd-daemon.h's SD_DEBUG .. SD_CRIT) */
static const int level_priority[] = {7, 7, 6, 4, 3, 2};
#define LOG_RESET "\033[0;39m"

/* Whether stdout is the stream systemd named in JOURNAL_STREAM ("dev:ino"). */
static bool stdout_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDOUT_FILENO, &st) < 0) return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

int log_init(const char *path, bool verbose, char *err)
{
    log_close();
    logger.min = verbose ? LOG_LVL_TRACE : LOG_LVL_WARN;
    logger.journal = false;
    if (!path || strcmp(path, "-") == 0) logger.journal = stdout_is_journal();
    if (!path) {
        logger.colour = isatty(STDOUT_FILENO) == 1 && !logger.journal;
        return 0;
    }
    logger.colour = false;
    if (strcmp(path, "-") == 0) return 0;
    FILE *fp = fopen(path, "ae");
    if (!fp) return kumo_err(err, "%s: %s", path, strerror(errno));
    char *copy = strdup(path);
    if (!copy) {
        fclose(fp);
        return kumo_err(err, "%s: out of memory", path);
    }
    logger.fp = fp;
    logger.path = copy;
    return 0;
}

void log_set_json(bool json)
{
    logger.json = json;
    if (json) logger.colour = false;
}

int log_reopen(void)
{
    if (!logger.path) return 0;
    FILE *fp = fopen(logger.path, "ae");
    if (!fp) return -1;
    pthread_mutex_lock(&logger.mu);
    FILE *old = logger.fp;
    logger.fp = fp;
    pthread_mutex_unlock(&logger.mu);
    if (old) fclose(old);
    return 0;
}

void log_close(void)
{
    pthread_mutex_lock(&logger.mu);
    FILE *old = logger.fp;
    logger.fp = NULL;
    pthread_mutex_unlock(&logger.mu);
    if (old) fclose(old);
    free(logger.path);
    logger.path = NULL;
}

bool log_enabled(log_level lvl)
{
    return lvl >= logger.min;
}

/* Append msg to out as the inside of a JSON string; returns the new length
 * (out has room for 6 bytes per input byte). */
static size_t json_escape(char *out, size_t len, const char *msg, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)msg[i];
        if (ch == '"' || ch == '\\') {
            out[len++] = '\\';
            out[len++] = (char)ch;
        } else if (ch < 0x20) {
            len += (size_t)sprintf(out + len, "\\u00%c%c", hex[ch >> 4], hex[ch & 15]);
        } else {
            out[len++] = (char)ch; /* UTF-8 passes through; other bytes too, as the text log has them */
        }
    }
    return len;
}

void log_write(log_level lvl, const char *file, int line, const char *fmt, ...)
{
    if (lvl < LOG_LVL_TRACE || lvl > LOG_LVL_FATAL) lvl = LOG_LVL_FATAL;
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;

    struct timespec now;
    char when[KUMO_TIMELEN];
    clock_gettime(CLOCK_REALTIME, &now);
    kumo_format_time(now.tv_sec, now.tv_nsec / 1000, when);

    /* The message first, then the line around it. */
    char msgbuf[LOG_LINE_MAX];
    char *msg = msgbuf;
    va_list ap;
    va_start(ap, fmt);
    int mn = vsnprintf(msgbuf, sizeof(msgbuf), fmt, ap);
    va_end(ap);
    if (mn < 0) mn = 0;
    if ((size_t)mn >= sizeof(msgbuf)) {
        char *big = malloc((size_t)mn + 1);
        if (big) {
            va_start(ap, fmt);
            vsnprintf(big, (size_t)mn + 1, fmt, ap);
            va_end(ap);
            msg = big;
        } else {
            mn = (int)sizeof(msgbuf) - 1; /* truncate */
        }
    }
    size_t mlen = (size_t)mn;
    while (mlen > 0 && msg[mlen - 1] == '\n') mlen--; /* callers may end with \n */

    /* head (prefix, time, level, place: < 512 bytes) + the message, escaped
     * at most 6 bytes a byte in JSON, + the colour reset and the end. */
    char linebuf[LOG_LINE_MAX + 1024];
    size_t cap = 512 + (logger.json ? 6 : 1) * mlen + sizeof(LOG_RESET) + 8;
    char *buf = cap <= sizeof(linebuf) ? linebuf : malloc(cap);
    if (!buf) {
        buf = linebuf;
        cap = sizeof(linebuf);
        size_t room = (sizeof(linebuf) - 512 - sizeof(LOG_RESET) - 8) / (logger.json ? 6 : 1);
        if (mlen > room) mlen = room; /* truncate */
    }
    size_t len = 0;
    if (logger.journal) len += (size_t)snprintf(buf, cap, "<%d>", level_priority[lvl]);
    if (logger.json) {
        len += (size_t)snprintf(buf + len, cap - len, "{\"time\":\"%s\",\"level\":\"%s\",\"file\":\"%.200s\",\"line\":%d,\"msg\":\"",
                                when, level_name[lvl], base, line);
        len = json_escape(buf, len, msg, mlen);
        buf[len++] = '"';
        buf[len++] = '}';
    } else {
        len += (size_t)snprintf(buf + len, cap - len, "%s%s %s %.200s:%d: ", logger.colour ? level_colour[lvl] : "",
                                when, level_name[lvl], base, line);
        memcpy(buf + len, msg, mlen);
        len += mlen;
        if (logger.colour) {
            memcpy(buf + len, LOG_RESET, sizeof(LOG_RESET) - 1);
            len += sizeof(LOG_RESET) - 1;
        }
    }
    buf[len++] = '\n';

    pthread_mutex_lock(&logger.mu);
    FILE *fp = logger.fp ? logger.fp : stdout;
    fwrite(buf, 1, len, fp);
    fflush(fp);
    pthread_mutex_unlock(&logger.mu);

    if (buf != linebuf) free(buf);
    if (msg != msgbuf) free(msg);
}

/*
 * log — the text log of every daemon (see log.h).
 *
 * Owns: the process-wide logger below (the one global allowed outside a
 * daemon's state struct, STYLE.md habit 2): level floor, colour flag, path
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
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static struct {
    pthread_mutex_t mu;
    FILE *fp;      /* NULL = stdout (stdout is not a constant initializer) */
    char *path;    /* NULL when logging to stdout */
    bool colour;
    log_level min;
} logger = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, false, LOG_LVL_WARN};

static const char *const level_name[] = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"};
static const char *const level_colour[] = {
    "\033[0;39m", "\033[1;37m", "\033[1;32m", "\033[1;33m", "\033[1;35m", "\033[1;31m",
};
#define LOG_RESET "\033[0;39m"

int log_init(const char *path, bool verbose, char *err)
{
    log_close();
    logger.min = verbose ? LOG_LVL_TRACE : LOG_LVL_WARN;
    if (!path) {
        logger.colour = isatty(STDOUT_FILENO) == 1;
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

void log_write(log_level lvl, const char *file, int line, const char *fmt, ...)
{
    if (lvl < LOG_LVL_TRACE || lvl > LOG_LVL_FATAL) lvl = LOG_LVL_FATAL;
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;

    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);

    char stackbuf[LOG_LINE_MAX];
    char *buf = stackbuf;
    size_t cap = sizeof(stackbuf);
    int head = snprintf(buf, cap, "%s%04d-%02d-%02d %02d:%02d:%02d %s %s:%d: ",
                        logger.colour ? level_colour[lvl] : "", tm.tm_year + 1900, tm.tm_mon + 1,
                        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, level_name[lvl], base, line);
    if (head < 0) return;
    if ((size_t)head >= cap) head = (int)cap - 1; /* absurd file name: truncate */

    va_list ap;
    va_start(ap, fmt);
    int msg = vsnprintf(buf + head, cap - (size_t)head, fmt, ap);
    va_end(ap);
    if (msg < 0) msg = 0;
    /* Room for the reset code and the newline. */
    size_t need = (size_t)head + (size_t)msg + sizeof(LOG_RESET) + 1;
    if (need > cap) {
        char *big = malloc(need);
        if (big) {
            memcpy(big, buf, (size_t)head);
            va_start(ap, fmt);
            vsnprintf(big + head, need - (size_t)head, fmt, ap);
            va_end(ap);
            buf = big;
            cap = need;
        } else {
            msg = (int)(cap - (size_t)head - sizeof(LOG_RESET) - 1); /* truncate */
        }
    }
    size_t len = (size_t)head + (size_t)msg;
    while (len > (size_t)head && buf[len - 1] == '\n') len--; /* callers may end with \n */
    if (logger.colour) {
        memcpy(buf + len, LOG_RESET, sizeof(LOG_RESET) - 1);
        len += sizeof(LOG_RESET) - 1;
    }
    buf[len++] = '\n';

    pthread_mutex_lock(&logger.mu);
    FILE *fp = logger.fp ? logger.fp : stdout;
    fwrite(buf, 1, len, fp);
    fflush(fp);
    pthread_mutex_unlock(&logger.mu);

    if (buf != stackbuf) free(buf);
}

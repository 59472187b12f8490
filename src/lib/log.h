/*
 * log — the text log of every daemon (kumofs(7), "Logs"):
 *   "2026-12-06T14:38:35.123456+09:00 LEVEL file.c:LINE: message"
 * (local time, ISO 8601 with the zone's offset) to stdout with ANSI colours
 * per level when stdout is a tty, plain otherwise; "-o path" appends to a
 * file (reopened by log_reopen(), called on SIGHUP); "-o -" is plain stdout.
 * Without -v only WARN and above are shown.
 *
 * When stdout is the journal (systemd sets JOURNAL_STREAM to its
 * device:inode) and the log goes there, each line starts with its syslog
 * priority, "<3>" error, "<4>" warning, "<6>" info, "<7>" debug ("<2>"
 * fatal), so journald files it at that level. With log_set_json (the
 * daemons' --log-json) each line is one JSON object instead:
 *   {"time":"...","level":"WARN","file":"links.c","line":212,"msg":"..."}
 *
 * The logger is the one piece of process-wide state outside a daemon's state
 * struct: it is set once in main() before threads start and then only read,
 * except for the file handle, which log_reopen() swaps under a lock.
 * The macros test the level before evaluating their arguments.
 *
 * Thread rule: log_write and the macros are safe from any thread.
 * Calls: nothing.
 */
#ifndef KUMO_LOG_H
#define KUMO_LOG_H

#include <stdbool.h>

#include "kumo.h"

typedef enum log_level {
    LOG_LVL_TRACE = 0,
    LOG_LVL_DEBUG,
    LOG_LVL_INFO,
    LOG_LVL_WARN,
    LOG_LVL_ERROR,
    LOG_LVL_FATAL,
} log_level;

/* path: NULL = stdout (colour if a tty), "-" = stdout without colour,
 * else a file opened for append. verbose: show TRACE and up, else WARN and up.
 * 0 / -1 + err naming the file. */
int log_init(const char *path, bool verbose, char *err);
/* JSON lines instead of text (no colour). Call after log_init. */
void log_set_json(bool json);
/* Reopen the file (no-op for stdout). 0 / -1 (the old handle stays). */
int log_reopen(void);
void log_close(void);
bool log_enabled(log_level lvl);
void log_write(log_level lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_at(lvl, ...)                                                       \
    do {                                                                       \
        if (log_enabled(lvl)) log_write(lvl, __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define log_trace(...) log_at(LOG_LVL_TRACE, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_at(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_at(LOG_LVL_ERROR, __VA_ARGS__)
#define log_fatal(...) log_at(LOG_LVL_FATAL, __VA_ARGS__)

#endif

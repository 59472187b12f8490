/*
 * kumo.h — the few facts every module shares: the error convention and
 * protocol constants. Nothing here allocates or has state.
 *
 * Error convention (used by every fallible call in src/lib):
 *   return 0 on success, -1 on failure, and write a one-line human
 *   message into a caller-owned `char err[KUMO_ERRLEN]` when one is given.
 *   Functions that can also answer "need more input" say so in their header.
 */
#ifndef KUMO_H
#define KUMO_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define KUMO_ERRLEN 256

#define KUMO_MANAGER_PORT 19700
#define KUMO_CONTROL_PORT 19799
#define KUMO_SERVER_PORT 19800
#define KUMO_STREAM_PORT 19900

/* Three copies of every key: the primary and two replicas. */
#define KUMO_REPLICAS 3

/* memcached's limits, named once. */
#define KUMO_MAX_KEY 250

/* Local time as ISO 8601 with the zone's offset, the one human form of a
 * time in logs and tool output: "2026-12-06T14:31:52+09:00", with
 * ".123456" after the seconds when usec >= 0. Returns buf. */
#define KUMO_TIMELEN 40
char *kumo_format_time(time_t sec, long usec, char buf[KUMO_TIMELEN]);

/* `--version` among argv[1..] (before a "--"): print "prog (kumofs X.Y.Z)"
 * on stdout and return 1, else 0. Every binary answers it the same way. */
int kumo_version_asked(const char *prog, int argc, char **argv);
/* The line itself. */
void kumo_print_version(const char *prog);

/* Write `len` bytes as the whole of `path`, durably: into path.tmp,
 * fsync'd, renamed over path. A crash leaves the old file or the new one,
 * never a part. 0, or -1 + err naming the file. */
int kumo_save_file(const char *path, const void *data, size_t len, char *err);
/* fsync the directory holding `path`, so a rename into it is durable
 * (best effort: what was renamed is already on disk). */
void kumo_sync_dir(const char *path);

/* printf into err (NULL-safe); always returns -1 so callers can `return kumo_err(...)`. */
int kumo_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

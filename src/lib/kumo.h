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

#define KUMO_ERRLEN 256

#define KUMO_MANAGER_PORT 19700
#define KUMO_CONTROL_PORT 19799
#define KUMO_SERVER_PORT 19800
#define KUMO_STREAM_PORT 19900

/* Three copies of every key: the primary and two replicas. */
#define KUMO_REPLICAS 3

/* memcached's limits, named once. */
#define KUMO_MAX_KEY 250

/* printf into err (NULL-safe); always returns -1 so callers can `return kumo_err(...)`. */
int kumo_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

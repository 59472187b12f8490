/*
 * admit — how many connections a daemon holds for peers that have not yet
 * shown who they are: an RPC peer before its hello is done (with a cluster
 * key, before its proof checked out; rpc.h), a stream-port peer before its
 * token (server/stream.c).
 *
 * Such a peer has proved nothing and costs a descriptor and a few KiB, so a
 * daemon holds at most `per_addr` of them from one address (an IPv4
 * address, or an IPv6 /64: one host is given a whole /64) and at most `max`
 * in all. Each group of listeners has its own admit: a server's RPC port,
 * its stream port, a manager's two ports together.
 *
 * A newcomer over either bound takes the place of the oldest connection it
 * competes with (the oldest from its address, or the oldest of all) if that
 * one has waited ADMIT_GRACE seconds already; otherwise the newcomer is
 * refused, closed at once. So a flood from one address never holds more
 * than `per_addr` descriptors and never locks out other addresses; a peer
 * that shares the flood's address gets in as soon as the flood's oldest
 * connection is ADMIT_GRACE old; and a real peer, whose hello arrives about
 * one round trip after the accept and its proof one more, is never evicted
 * before it could send them. Connections that prove themselves leave the
 * count at once: the bound is on strangers, not on peers, and the tests'
 * many tools against one daemon never meet it.
 *
 * Refusals and evictions are counted (admit_get_stats, for status and
 * metrics) and logged at most once every ADMIT_LOG_INTERVAL seconds, with
 * the counts since the last line: a flood does not flood the log.
 *
 * Thread rule: one admit per event loop; every call from its thread.
 * Calls: net (addresses), clock, log.
 */
#ifndef KUMO_ADMIT_H
#define KUMO_ADMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADMIT_PER_ADDR 64 /* unauthenticated connections from one address, at most max/4 */
#define ADMIT_MAX 1024    /* in all, and at most a quarter of RLIMIT_NOFILE */
#define ADMIT_GRACE 1.0   /* s an unauthenticated connection is safe from eviction */
#define ADMIT_LOG_INTERVAL 10.0

typedef struct admit admit;
typedef struct admit_entry admit_entry;

/* Close the connection behind an evicted entry now. admit has forgotten the
 * entry already: do not admit_leave it. */
typedef void (*admit_evict_fn)(void *arg);

typedef struct admit_stats {
    uint64_t held;    /* unauthenticated connections now */
    uint64_t refused; /* closed at accept: over a bound, and none old enough to evict */
    uint64_t evicted; /* closed to make room for a newer one */
    uint64_t failed;  /* closed before authenticating otherwise: timeout, a bad hello or token, the peer left */
} admit_stats;

/* `name` (a string that outlives the admit) names the group in the log.
 * per_addr 0: ADMIT_PER_ADDR. max 0: ADMIT_MAX, or a quarter of the soft
 * RLIMIT_NOFILE if that is less (read now: call after daemon_start raised
 * it), so strangers can never take a daemon's last descriptors. per_addr is
 * cut to a quarter of max, so one address never fills the total (with the
 * defaults: 64 of 1,024). NULL: out of memory. */
admit *admit_new(const char *name, size_t per_addr, size_t max);
/* Forget every entry without closing anything: close the connections first
 * (their owners admit_leave), or admit_evict_all. NULL is fine. */
void admit_free(admit *a);

/* A connection from `peer` was accepted. NULL: refused (counted and logged
 * here; the caller closes it). Otherwise it is held until admit_leave, or
 * until fn(arg) evicts it. Admitting it may evict an older connection: that
 * one's fn runs before this returns, after the new entry is in. */
admit_entry *admit_enter(admit *a, const struct sockaddr *peer, admit_evict_fn fn, void *arg);
/* The connection proved itself (authenticated), or closed before it did;
 * either way e is freed. */
void admit_leave(admit *a, admit_entry *e, bool authenticated);
/* Close every connection still held (each fn runs), at shutdown. */
void admit_evict_all(admit *a);

void admit_get_stats(const admit *a, admit_stats *out);
size_t admit_limit_per_addr(const admit *a);
size_t admit_limit(const admit *a);

#endif

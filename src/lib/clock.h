/*
 * clock — ClockTime, a hybrid logical clock.
 *
 * A ClockTime is `unix_seconds << 32 | counter`, compared as a plain uint64.
 * clock_next() returns max(wall << 32, last + 1): strictly increasing on a
 * node, close to wall time, and — because every inter-node message carries
 * the sender's clock and the receiver calls clock_update() — ordered after
 * anything the node has heard of, so ordering does not need the servers'
 * wall clocks to agree (kumofs 0.4 needed < 5 s skew).
 *
 * Thread rule: all functions are lock-free and safe from any thread.
 * Calls: kumo (the time format).
 */
#ifndef KUMO_CLOCK_H
#define KUMO_CLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

typedef struct clock_hlc {
    _Atomic uint64_t last;
} clock_hlc;

void clock_init(clock_hlc *c);
/* A new ClockTime, greater than every value returned or seen before. */
uint64_t clock_next(clock_hlc *c);
/* Remember a ClockTime seen on the wire (last = max(last, remote)). */
void clock_update(clock_hlc *c, uint64_t remote);
/* The greatest ClockTime returned or seen so far (no increment). */
uint64_t clock_peek(const clock_hlc *c);
/* The cluster's time, in unix seconds: this node's wall clock, or the
 * latest ClockTime heard from another node when that is ahead. Expiry and
 * delayed flushes are judged by it, on the same timeline as the ClockTimes
 * (docs/protocol.md, "Expiry and clocks"). */
uint32_t clock_now_seconds(const clock_hlc *c);
/* The same as a ClockTime (max(wall << 32, last), no increment): what a
 * node tells the others in keepalives, so that the cluster's time moves on
 * with its fastest clock even when nothing is written. */
uint64_t clock_now(const clock_hlc *c);

/* The debug clock (kumo-server and kumo-gateway --debug-time, the text
 * command debugtime; docs/architecture.md §5.1): an offset in seconds that
 * moves the time memcached's exptimes are judged by, and nothing else. A
 * ClockTime is never shifted, so ordering, keepalives and the skew check
 * see the real clocks. CLOCK_DEBUG_MAX bounds the offset (ten years). */
#define CLOCK_DEBUG_MAX ((int64_t)10 * 365 * 86400)
/* `now` (unix seconds) moved by `offset` seconds, kept within
 * 1..UINT32_MAX: 0 would read as "never" where an exptime is compared. */
uint32_t clock_shift(uint32_t now, int64_t offset);
/* offset + delta into *out if it stays within ±CLOCK_DEBUG_MAX (|delta|
 * may be anything): true, else false and *out untouched. */
bool clock_debug_add(int64_t offset, int64_t delta, int64_t *out);

/* Seconds on the monotonic clock, for timeouts and rates (never compared
 * across hosts, never a ClockTime). */
double clock_mono(void);
/* `sec` seconds as a timeval, for libevent timers. */
struct timeval clock_timeval(double sec);

static inline uint32_t clock_seconds(uint64_t ct) { return (uint32_t)(ct >> 32); }
static inline uint32_t clock_counter(uint64_t ct) { return (uint32_t)ct; }

/* A ClockTime for people: "2026-12-06T14:31:52+09:00 clock 2" (local time,
 * ISO 8601, then the logical counter); "none" for 0, the ClockTime of a
 * blank hash space. Returns buf. */
#define CLOCK_FORMAT_LEN 64
char *clock_format(uint64_t ct, char buf[CLOCK_FORMAT_LEN]);

#endif

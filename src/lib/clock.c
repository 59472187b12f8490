/*
 * clock — the hybrid logical clock behind every ClockTime (see clock.h).
 *
 * Owns: nothing but the caller's clock_hlc (no globals; each daemon keeps
 * one in its state struct).
 * Calls: libc clock_gettime only.
 * Thread rule: lock-free; every function may be called from any thread.
 *
 * Why a CAS loop rather than fetch_add: the next value is
 * max(wall << 32, last + 1), which depends on the value it replaces. The
 * loop retries only when another thread moved `last` in between, so every
 * successful exchange hands out a value no other thread can get, and values
 * are strictly increasing in the order the exchanges succeed.
 *
 * If 2^32 values are drawn within one wall second the counter carries into
 * the seconds field: the clock runs a little ahead of wall time but stays
 * strictly increasing, which is the property that matters.
 */
#include "clock.h"

#include <stdio.h>

#include "kumo.h"

#include <time.h>

static uint64_t wall_ct(void)
{
    struct timespec ts;
#ifdef CLOCK_REALTIME_COARSE
    /* Only the seconds are used; the coarse clock is a plain memory read. */
    if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) != 0)
#endif
        clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec < 0)
        return 0;
    return (uint64_t)(uint32_t)ts.tv_sec << 32;
}

void clock_init(clock_hlc *c)
{
    atomic_init(&c->last, 0);
}

uint64_t clock_next(clock_hlc *c)
{
    uint64_t wall = wall_ct();
    uint64_t old = atomic_load_explicit(&c->last, memory_order_relaxed);
    for (;;) {
        uint64_t next = old + 1 > wall ? old + 1 : wall;
        if (atomic_compare_exchange_weak_explicit(&c->last, &old, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return next;
    }
}

void clock_update(clock_hlc *c, uint64_t remote)
{
    uint64_t old = atomic_load_explicit(&c->last, memory_order_relaxed);
    while (old < remote) {
        if (atomic_compare_exchange_weak_explicit(&c->last, &old, remote, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return;
    }
}

uint64_t clock_peek(const clock_hlc *c)
{
    return atomic_load_explicit(&c->last, memory_order_acquire);
}

uint64_t clock_now(const clock_hlc *c)
{
    uint64_t wall = wall_ct(), heard = clock_peek(c);
    return wall > heard ? wall : heard;
}

uint32_t clock_now_seconds(const clock_hlc *c) { return clock_seconds(clock_now(c)); }

uint32_t clock_shift(uint32_t now, int64_t offset)
{
    /* |offset| is bounded by the callers, but a bad one must not wrap. */
    if (offset > CLOCK_DEBUG_MAX) offset = CLOCK_DEBUG_MAX;
    if (offset < -CLOCK_DEBUG_MAX) offset = -CLOCK_DEBUG_MAX;
    int64_t t = (int64_t)now + offset;
    if (t < 1) return 1;
    return t > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

bool clock_debug_add(int64_t offset, int64_t delta, int64_t *out)
{
    if (offset < -CLOCK_DEBUG_MAX || offset > CLOCK_DEBUG_MAX) return false;
    if (delta < -2 * CLOCK_DEBUG_MAX || delta > 2 * CLOCK_DEBUG_MAX) return false; /* also no overflow below */
    int64_t sum = offset + delta;
    if (sum < -CLOCK_DEBUG_MAX || sum > CLOCK_DEBUG_MAX) return false;
    *out = sum;
    return true;
}

char *clock_format(uint64_t ct, char buf[CLOCK_FORMAT_LEN])
{
    char when[KUMO_TIMELEN];
    if (ct == 0) snprintf(buf, CLOCK_FORMAT_LEN, "none");
    else snprintf(buf, CLOCK_FORMAT_LEN, "%s clock %u", kumo_format_time((time_t)clock_seconds(ct), -1, when), clock_counter(ct));
    return buf;
}

double clock_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timeval clock_timeval(double sec)
{
    if (sec < 0) sec = 0;
    struct timeval tv = {(time_t)sec, (suseconds_t)((sec - (double)(time_t)sec) * 1e6)};
    return tv;
}

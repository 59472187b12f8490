/*
 * test_clock — the hybrid logical clock: close to wall time, strictly
 * increasing, moved forward by update, no duplicate across threads; the
 * debug clock's arithmetic (clock_shift, clock_debug_add).
 */
#include "clock.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tap.h"

#define PER_THREAD 500000

struct run {
    clock_hlc *c;
    uint64_t *out;
    int increasing;
};

static void *draw(void *arg)
{
    struct run *r = arg;
    r->increasing = 1;
    for (int i = 0; i < PER_THREAD; i++) {
        r->out[i] = clock_next(r->c);
        if (i > 0 && r->out[i] <= r->out[i - 1])
            r->increasing = 0;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(void)
{
    clock_hlc c;
    clock_init(&c);
    is_int(clock_peek(&c), 0, "a new clock peeks 0");

    time_t before = time(NULL);
    uint64_t a = clock_next(&c);
    time_t after = time(NULL);
    ok(clock_seconds(a) + 1 >= (uint32_t)before && clock_seconds(a) <= (uint32_t)after,
       "seconds part is wall time (%u in [%ld, %ld])", clock_seconds(a), (long)before,
       (long)after);
    is_int(clock_peek(&c) == a, 1, "peek returns the last value");
    is_int(clock_peek(&c) == a, 1, "peek does not increment");
    uint64_t b = clock_next(&c);
    ok(b > a, "next is greater than the previous");
    is_int(clock_seconds(0x0000000500000007ull), 5, "clock_seconds");
    is_int(clock_counter(0x0000000500000007ull), 7, "clock_counter");

    /* update from a node ahead of us moves the clock forward */
    uint64_t ahead = b + (1000ull << 32) + 17;
    clock_update(&c, ahead);
    is_int(clock_peek(&c) == ahead, 1, "update to a later value: peek = remote");
    uint64_t n = clock_next(&c);
    ok(n == ahead + 1, "next after update = remote + 1 (remote ahead of wall time)");
    clock_update(&c, a);
    is_int(clock_peek(&c) == n, 1, "update to an older value does not move back");
    clock_update(&c, n);
    is_int(clock_next(&c) == n + 1, 1, "update to the current value is harmless");

    /* a clock far behind wall time jumps to wall << 32 */
    clock_hlc old;
    clock_init(&old);
    clock_update(&old, 5ull << 32);
    uint64_t w = clock_next(&old);
    ok(clock_seconds(w) >= (uint32_t)before && clock_counter(w) == 0,
       "a clock behind wall time jumps to wall << 32");

    /* counter carry keeps it increasing */
    clock_hlc carry;
    clock_init(&carry);
    uint64_t top = ((uint64_t)(clock_seconds(w) + 100) << 32) | 0xffffffffu;
    clock_update(&carry, top);
    ok(clock_next(&carry) == top + 1, "counter overflow carries into seconds");

    /* one million draws on one thread, strictly increasing */
    clock_hlc one;
    clock_init(&one);
    uint64_t prev = clock_next(&one);
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint64_t x = clock_next(&one);
        bad += x <= prev;
        prev = x;
    }
    is_int(bad, 0, "1e6 calls strictly increasing");

    /* two threads on one clock never get the same value */
    clock_hlc shared;
    clock_init(&shared);
    uint64_t *vals = malloc(2 * PER_THREAD * sizeof(*vals));
    struct run r[2] = {{&shared, vals, 0}, {&shared, vals + PER_THREAD, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, draw, &r[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    ok(r[0].increasing && r[1].increasing, "each thread sees strictly increasing values");
    qsort(vals, 2 * PER_THREAD, sizeof(*vals), cmp_u64);
    int dup = 0;
    for (size_t i = 1; i < 2 * PER_THREAD; i++)
        dup += vals[i] == vals[i - 1];
    is_int(dup, 0, "two threads, %d values each: no duplicate", PER_THREAD);
    ok(clock_peek(&shared) == vals[2 * PER_THREAD - 1], "peek = greatest value handed out");
    free(vals);

    /* the debug clock: an offset on the seconds exptimes are judged by */
    is_int(clock_shift(1000, 0), 1000, "shift by 0 is the time itself");
    is_int(clock_shift(1000, 25), 1025, "shift forward");
    is_int(clock_shift(1000, -25), 975, "shift back");
    is_int(clock_shift(1000, -1000), 1, "shift to 0 stays 1 (0 reads as never)");
    is_int(clock_shift(5, -CLOCK_DEBUG_MAX), 1, "shift far back stays 1");
    is_int(clock_shift(UINT32_MAX - 10, 100), UINT32_MAX, "shift past 2106 stays UINT32_MAX");
    is_int(clock_shift(1000, INT64_MAX), (uint32_t)(1000 + CLOCK_DEBUG_MAX), "an offset beyond the bound is cut to it");
    is_int(clock_shift(UINT32_MAX, INT64_MIN), (uint32_t)(UINT32_MAX - CLOCK_DEBUG_MAX), "so is a negative one");
    int64_t off = 7;
    ok(clock_debug_add(0, 5, &off) && off == 5, "add 5 to 0");
    ok(clock_debug_add(5, -12, &off) && off == -7, "add -12 to 5");
    ok(clock_debug_add(CLOCK_DEBUG_MAX - 1, 1, &off) && off == CLOCK_DEBUG_MAX, "up to the bound");
    off = 7;
    ok(!clock_debug_add(CLOCK_DEBUG_MAX, 1, &off) && off == 7, "past the bound: refused, untouched");
    ok(!clock_debug_add(-CLOCK_DEBUG_MAX, -1, &off) && off == 7, "below the bound: refused");
    ok(!clock_debug_add(0, INT64_MAX, &off) && !clock_debug_add(0, INT64_MIN, &off) && off == 7,
       "INT64_MAX and INT64_MIN deltas: refused, no overflow");
    ok(!clock_debug_add(INT64_MAX, -1, &off) && off == 7, "a bad offset: refused");
    ok(clock_debug_add(CLOCK_DEBUG_MAX, -2 * CLOCK_DEBUG_MAX, &off) && off == -CLOCK_DEBUG_MAX, "the whole range in one step");
    return done_testing();
}

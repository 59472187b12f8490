/*
 * test_turn — end-of-iteration jobs of src/lib/turn.c, on a real
 * event_base:
 *  - under turn_loop, jobs run after every callback of the iteration that
 *    queued them, once each, in queue order, before the loop waits again;
 *  - a job queued while jobs run runs in the same pass; a cancelled job,
 *    and one cancelled by an earlier job, does not run;
 *  - the same holds on a base run by plain event_base_loop (the fallback
 *    event), so tests and tools that never call turn_loop stay correct;
 *  - turn_loop returns after event_base_loopexit and event_base_loopbreak
 *    called from a callback, and with no events left; jobs queued in the
 *    last iteration still run.
 */
#include <event2/event.h>
#include <string.h>

#include "tap.h"
#include "turn.h"

static char trace[64];
static size_t ntrace;
static turn *T;

static void mark(char ch)
{
    if (ntrace + 1 < sizeof(trace)) trace[ntrace++] = ch;
    trace[ntrace] = '\0';
}

static turn_job ja, jb, jc, jd;

static void job_a(void *arg)
{
    (void)arg;
    mark('a');
    turn_queue(T, &jc);  /* queued while running: same pass */
    turn_cancel(T, &jd); /* cancelled by an earlier job */
}
static void job_b(void *arg)
{
    (void)arg;
    mark('b');
}
static void job_c(void *arg)
{
    (void)arg;
    mark('c');
}
static void job_d(void *arg)
{
    (void)arg;
    mark('d');
}

/* Two callbacks in one iteration; each queues jobs. */
static void cb1(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    mark('1');
    turn_queue(T, &ja);
    turn_queue(T, &jb);
    turn_queue(T, &ja); /* twice: once */
}
static void cb2(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    mark('2');
    turn_queue(T, &jd);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct event_base *base = arg;
    mark('x');
    turn_queue(T, &jb);
    event_base_loopexit(base, NULL);
}

static void break_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct event_base *base = arg;
    mark('y');
    turn_queue(T, &jb);
    event_base_loopbreak(base);
}

static void reset(void)
{
    ntrace = 0;
    trace[0] = '\0';
}

/* One iteration with cb1 and cb2 active, then a stop; by turn_loop or by
 * event_base_loop. */
static void round_trip(struct event_base *base, bool looped)
{
    struct event *e1 = event_new(base, -1, 0, cb1, NULL), *e2 = event_new(base, -1, 0, cb2, NULL);
    struct timeval later = {0, 20000};
    struct event *stop = event_new(base, -1, 0, stop_cb, base);
    event_add(stop, &later);
    event_active(e1, EV_READ, 1);
    event_active(e2, EV_READ, 1);
    reset();
    int rc = looped ? turn_loop(base) : event_base_loop(base, 0);
    ok(rc == 0, "%s returns 0 after loopexit", looped ? "turn_loop" : "event_base_loop");
    ok(strcmp(trace, "12abcxb") == 0,
       "%s: jobs after both callbacks, once, in order, the one queued meanwhile too, the cancelled one not; "
       "the last iteration's job runs (%s)",
       looped ? "turn_loop" : "fallback event", trace);
    event_free(e1);
    event_free(e2);
    event_free(stop);
}

int main(void)
{
    struct event_base *base = event_base_new();
    ja = (turn_job){.fn = job_a};
    jb = (turn_job){.fn = job_b};
    jc = (turn_job){.fn = job_c};
    jd = (turn_job){.fn = job_d};
    T = turn_join(base);
    ok(T != NULL, "turn_join");
    ok(turn_join(base) == T, "one turn per base");
    turn_leave(T);

    round_trip(base, true);
    round_trip(base, false);

    /* loopbreak from a callback ends turn_loop too. */
    struct timeval soon = {0, 1000};
    struct event *brk = event_new(base, -1, 0, break_cb, base);
    event_add(brk, &soon);
    reset();
    int rc = turn_loop(base);
    ok(rc == 0 && strcmp(trace, "yb") == 0, "turn_loop returns after loopbreak, its job run (%s)", trace);
    event_free(brk);

    /* No events at all: turn_loop returns 1 at once, as dispatch does. */
    ok(turn_loop(base) == 1, "turn_loop with nothing to wait for returns 1");

    /* A cancelled job stays off the queue. */
    turn_queue(T, &jb);
    turn_cancel(T, &jb);
    reset();
    event_base_loop(base, EVLOOP_NONBLOCK);
    ok(ntrace == 0 && !jb.queued, "a cancelled job does not run (%s)", trace);

    turn_leave(T);
    event_base_free(base);
    return done_testing();
}

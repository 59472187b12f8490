/*
 * turn — work run at the end of an event-loop iteration: after every
 * callback the iteration ran, before the loop waits again (what Redis's
 * ae.c calls beforeSleep).
 *
 * Why it exists: a socket writes once per iteration, however many
 * requests produced its output, and the gateway sends one batch of gets
 * per server per iteration. Both are a job queued on the base's turn the
 * first time something is produced, and run once.
 *
 * How a base runs its jobs:
 *  - turn_loop(base) replaces event_base_dispatch. It runs libevent one
 *    iteration at a time (EVLOOP_ONCE) and the queued jobs between
 *    iterations: no event, activation or dispatch per job or per turn.
 *  - A base run by anything else (event_base_dispatch in a test or a tool)
 *    still gets its jobs run: while nobody runs turn_loop on it, the first
 *    job queued in an iteration activates one event with no fd, which
 *    libevent runs after the callbacks already active.
 * Jobs queued while jobs run are run in the same pass, in queue order.
 *
 * Ownership: a turn belongs to its event_base and lives while anybody has
 * joined it (each socket, each gateway server, turn_loop itself). A table
 * under a mutex finds a base's turn in turn_join and turn_leave, which may
 * be called from any thread (a gateway dials its workers' first links from
 * the main thread before they run, and frees them there after they
 * stopped). Everything else — turn_queue, turn_cancel, running — happens
 * on the thread that runs the base.
 * Calls: libevent, pthread.
 */
#ifndef KUMO_TURN_H
#define KUMO_TURN_H

#include <event2/event.h>
#include <stdbool.h>

typedef struct turn turn;

/* A job: embedded in its owner, queued at most once at a time. */
typedef struct turn_job {
    void (*fn)(void *arg); /* runs once per turn_queue; may free anything, its own job too */
    void *arg;
    struct turn_job *next, *prev;
    bool queued;
} turn_job;

/* base's turn, made on first use. NULL only without memory. */
turn *turn_join(struct event_base *base);
/* Done with t (turn_cancel your jobs first). The last leave frees it. */
void turn_leave(turn *t);
/* Run j's fn at the end of this iteration; nothing if already queued. */
void turn_queue(turn *t, turn_job *j);
/* Take j off the queue, if it is there. */
void turn_cancel(turn *t, turn_job *j);
/* event_base_dispatch, running the jobs queued by each iteration before
 * the next. Returns as event_base_dispatch does: 0 after
 * event_base_loopexit/loopbreak, 1 with no events left, -1 on error. */
int turn_loop(struct event_base *base);

#endif

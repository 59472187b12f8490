/*
 * turn — end-of-iteration jobs of an event_base (see turn.h).
 *
 * Before turn_loop, each sio flush and each gateway batch was an event
 * activated for the turn: a gateway get paid three activations, dispatches
 * and event_del calls (about a tenth of its instructions). One list per
 * base, run between EVLOOP_ONCE iterations, pays none of that; the
 * fallback event keeps bases that are not run by turn_loop correct.
 *
 * libevent's EVLOOP_ONCE returns once it has run at least one callback
 * and none is left active, so the jobs run exactly where the fallback
 * event would have: after everything the iteration woke up for. It also
 * clears a pending loopbreak on entry, which is why turn_loop checks
 * event_base_got_exit/got_break after every iteration instead of leaving
 * that to the next call.
 */
#include "turn.h"

#include <pthread.h>
#include <stdlib.h>

struct turn {
    struct event_base *base;
    struct event *ev; /* the fallback: runs the jobs when nobody loops */
    turn_job *head, *tail;
    size_t refs;       /* joins (under turns_lock) */
    int looping;       /* turn_loop is running the base */
    bool running;      /* run() is on the stack */
    struct turn *next; /* in turns */
};

static pthread_mutex_t turns_lock = PTHREAD_MUTEX_INITIALIZER;
static turn *turns;

/* Under turns_lock: nobody holds t and it is not running. */
static void drop(turn *t)
{
    turn **p = &turns;
    while (*p != t) p = &(*p)->next;
    *p = t->next;
    event_free(t->ev);
    free(t);
}

static void run(turn *t)
{
    if (!t->head) return;
    t->running = true;
    while (t->head) {
        turn_job *j = t->head;
        turn_cancel(t, j);
        j->fn(j->arg); /* may free other jobs' owners, and leave t */
    }
    t->running = false;
    if (t->looping) return; /* turn_loop holds t: no lock per pass */
    pthread_mutex_lock(&turns_lock);
    if (t->refs == 0) drop(t);
    pthread_mutex_unlock(&turns_lock);
}

static void run_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run(arg);
}

turn *turn_join(struct event_base *base)
{
    pthread_mutex_lock(&turns_lock);
    turn *t = turns;
    while (t && t->base != base) t = t->next;
    if (!t && (t = calloc(1, sizeof(*t)))) {
        t->base = base;
        if ((t->ev = event_new(base, -1, 0, run_cb, t))) {
            t->next = turns;
            turns = t;
        } else {
            free(t);
            t = NULL;
        }
    }
    if (t) t->refs++;
    pthread_mutex_unlock(&turns_lock);
    return t;
}

void turn_leave(turn *t)
{
    if (!t) return;
    pthread_mutex_lock(&turns_lock);
    if (--t->refs == 0 && !t->running) drop(t);
    pthread_mutex_unlock(&turns_lock);
}

void turn_queue(turn *t, turn_job *j)
{
    if (j->queued) return;
    j->queued = true;
    j->next = NULL;
    j->prev = t->tail;
    if (t->tail) t->tail->next = j;
    else t->head = j;
    t->tail = j;
    if (t->head == j && !t->running && !t->looping) event_active(t->ev, EV_WRITE, 1);
}

void turn_cancel(turn *t, turn_job *j)
{
    if (!j->queued) return;
    j->queued = false;
    if (j->prev) j->prev->next = j->next;
    else t->head = j->next;
    if (j->next) j->next->prev = j->prev;
    else t->tail = j->prev;
    j->next = j->prev = NULL;
}

int turn_loop(struct event_base *base)
{
    turn *t = turn_join(base);
    if (!t) return event_base_dispatch(base);
    t->looping++;
    int rc;
    do {
        rc = event_base_loop(base, EVLOOP_ONCE);
        run(t);
    } while (rc == 0 && !event_base_got_exit(base) && !event_base_got_break(base));
    t->looping--;
    turn_leave(t);
    return rc;
}

/*
 * workers — the gateway's -TR event loops.
 *
 * Each worker is a whole gateway struct: its own event base, manager links,
 * hash spaces, connections to the servers and client connections. Nothing
 * on the request path is shared, so a request takes no lock and touches no
 * other worker's memory. The main thread is worker 0: it also runs the
 * listeners, the signals and the metrics endpoint. It accepts every
 * connection and hands it to the next worker in turn through that worker's
 * inbox, a non-blocking pipe of fixed-size messages (a write of one is
 * atomic). The same pipe carries the request to stop.
 *
 * What crosses threads: the counters (atomics, one writer each), the
 * latency histograms (a mutex per worker, taken per operation and by a
 * scrape), the readiness count and the `stats reset` baseline.
 *
 * Calls: router (start, stop), client (close_all), text/binary (accept),
 * daemon (drain), log, libevent, pthreads. Thread rule: as each function says.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "gateway.h"
#include "kumo.h"
#include "log.h"

#define DRAIN_SECONDS 5.0

enum { MSG_TEXT,
       MSG_BINARY,
       MSG_STOP };
typedef struct inbox_msg {
    int32_t kind;
    int32_t fd;
} inbox_msg;

/* What a drain waits for: the worker's own operations; worker 0 also waits
 * for the other loops to end, so that its loop (the signals: a second one
 * exits at once) runs until then. */
static int pending(void *arg)
{
    gateway *g = arg;
    int n = g->ops_inflight;
    if (g->index == 0)
        for (size_t i = 1; i < g->group->n; i++)
            n += g->group->w[i]->thread_started && !atomic_load(&g->group->w[i]->loop_done);
    return n;
}

/* In the worker's thread: what the main thread sent. */
static void handle(gateway *g, const inbox_msg *m)
{
    switch (m->kind) {
    case MSG_TEXT:
    case MSG_BINARY: gateway_accept(g, m->fd); break; /* the first byte decides */
    case MSG_STOP:
        if (g->draining) break;
        g->draining = true;
        /* Let what is in flight finish (bounded), then leave the loop. */
        daemon_drain(g->base, pending, g, DRAIN_SECONDS);
        break;
    default: break;
    }
}

static void inbox_cb(evutil_socket_t fd, short what, void *arg)
{
    gateway *g = arg;
    (void)what;
    inbox_msg msgs[64];
    for (;;) {
        ssize_t n = read(fd, msgs, sizeof(msgs));
        if (n <= 0) break; /* EAGAIN: read it all */
        for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) handle(g, &msgs[i]);
        if ((size_t)n < sizeof(msgs)) break;
    }
}

/* Main thread. false: the worker's pipe is full or gone. */
static bool send_msg(gateway *g, int kind, int fd)
{
    inbox_msg m = {.kind = kind, .fd = fd};
    ssize_t n;
    do n = write(g->inbox[1], &m, sizeof(m));
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(m);
}

/* A worker takes the first stop only. A full pipe holds connections for it
 * to accept first, and a running worker reads on: wait for room, bounded,
 * since a worker that already left its loop reads nothing. */
static void send_stop(gateway *g)
{
    for (int tries = 0; tries < 5000 && !send_msg(g, MSG_STOP, -1) && errno == EAGAIN; tries++) usleep(1000);
}

/* After its loop: fail what is left, close its connections. */
static void worker_stop(gateway *g)
{
    if (!g || !g->base) return;
    router_stop(g);
    client_close_all(g);
}

static void worker_free(gateway *g)
{
    if (!g) return;
    if (g->inbox_ev) event_free(g->inbox_ev);
    if (g->inbox[0] >= 0) close(g->inbox[0]);
    if (g->inbox[1] >= 0) close(g->inbox[1]);
    if (g->base) event_base_free(g->base);
    pthread_mutex_destroy(&g->latency_lock);
    free(g);
}

gateway_group *workers_new(const gateway_config *cfg, const rpc_self *self, size_t n, char *err)
{
    gateway_group *grp = calloc(1, sizeof(*grp));
    if (!grp || !(grp->w = calloc(n, sizeof(grp->w[0])))) {
        free(grp);
        kumo_err(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&grp->reset_lock, NULL);
    atomic_init(&grp->ready, 0);
    atomic_init(&grp->debug_offset, 0);
    /* called from router.c and stats.c, which workers.c calls */
    grp->ready_one = workers_ready;
    grp->totals = workers_totals;
    grp->reset_totals = workers_reset_base;
    grp->n = n;
    time_t started = time(NULL);
    for (size_t i = 0; i < n; i++) {
        gateway *g = calloc(1, sizeof(*g));
        if (!g) {
            kumo_err(err, "out of memory");
            goto fail;
        }
        grp->w[i] = g;
        atomic_init(&g->loop_done, false);
        g->inbox[0] = g->inbox[1] = -1;
        pthread_mutex_init(&g->latency_lock, NULL);
        g->group = grp;
        g->index = i;
        g->cfg = cfg;
        g->rpc_self = *self;
        g->started = started;
        client_flow_init(g);
        if (!(g->base = event_base_new())) {
            kumo_err(err, "event_base_new failed");
            goto fail;
        }
        if (pipe2(g->inbox, O_NONBLOCK | O_CLOEXEC) < 0) {
            kumo_err(err, "pipe: %s", strerror(errno));
            goto fail;
        }
        if (!(g->inbox_ev = event_new(g->base, g->inbox[0], EV_READ | EV_PERSIST, inbox_cb, g)) ||
            event_add(g->inbox_ev, NULL) < 0) {
            kumo_err(err, "out of memory");
            goto fail;
        }
        if (router_start(g, err) < 0) goto fail;
    }
    return grp;
fail:
    workers_free(grp);
    return NULL;
}

static void *worker_main(void *arg)
{
    gateway *g = arg;
    turn_loop(g->base); /* event_base_dispatch, with end-of-iteration jobs (turn.h) */
    atomic_store(&g->loop_done, true);
    client_pool_drain();
    router_pool_drain();
    return NULL;
}

int workers_run(gateway_group *grp, char *err)
{
    for (size_t i = 1; i < grp->n; i++) {
        int rc = pthread_create(&grp->w[i]->thread, NULL, worker_main, grp->w[i]);
        /* the threads already started stop with the rest (workers_stop) */
        if (rc != 0) return kumo_err(err, "cannot start worker thread %zu: %s", i, strerror(rc));
        grp->w[i]->thread_started = true;
    }
    return 0;
}

void workers_accept(gateway_group *grp, int fd, bool binary)
{
    gateway *g = grp->w[grp->next++ % grp->n];
    inbox_msg m = {.kind = binary ? MSG_BINARY : MSG_TEXT, .fd = fd};
    if (g->index == 0) {
        handle(g, &m); /* our own loop: no pipe */
        return;
    }
    if (!send_msg(g, m.kind, fd)) {
        log_warn("worker %zu is not taking connections (%s): closing a new one", g->index, strerror(errno));
        close(fd);
    }
}

void workers_stop(gateway_group *grp)
{
    for (size_t i = 1; i < grp->n; i++) {
        if (grp->w[i]->thread_started) send_stop(grp->w[i]);
    }
    gateway *g0 = grp->w[0];
    inbox_msg stop = {.kind = MSG_STOP, .fd = -1};
    handle(g0, &stop);
}

void workers_join(gateway_group *grp)
{
    for (size_t i = 1; i < grp->n; i++) {
        gateway *g = grp->w[i];
        if (!g || !g->thread_started) continue;
        send_stop(g); /* again, for a loop 0 that ended without workers_stop */
        pthread_join(g->thread, NULL);
        g->thread_started = false;
    }
}

void workers_free(gateway_group *grp)
{
    if (!grp) return;
    workers_join(grp);
    /* Two passes: failing a worker's last operations runs callbacks (a
     * `stats` answer sums every worker), so no worker is freed before all
     * are stopped. */
    for (size_t i = 0; i < grp->n; i++) worker_stop(grp->w[i]);
    for (size_t i = 0; i < grp->n; i++) worker_free(grp->w[i]);
    pthread_mutex_destroy(&grp->reset_lock);
    free(grp->w);
    free(grp);
}

bool workers_ready(gateway *g)
{
    return atomic_fetch_add(&g->group->ready, 1) + 1 == g->group->n;
}

static void sum(const gateway_group *grp, gateway_totals *t)
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < grp->n; i++) {
        const gateway_stats *s = &grp->w[i]->stats;
#define ADD(f) t->f += atomic_load_explicit(&s->f, memory_order_relaxed);
        GATEWAY_COUNTERS(ADD)
#undef ADD
    }
}

void workers_totals(gateway_group *grp, bool since_reset, gateway_totals *t)
{
    sum(grp, t);
    if (!since_reset) return;
    pthread_mutex_lock(&grp->reset_lock);
    uint64_t curr = t->curr_connections;
#define SUB(f) t->f = t->f >= grp->reset_base.f ? t->f - grp->reset_base.f : 0;
    GATEWAY_COUNTERS(SUB)
#undef SUB
    t->curr_connections = curr;
    pthread_mutex_unlock(&grp->reset_lock);
}

void workers_reset_base(gateway_group *grp)
{
    gateway_totals t;
    sum(grp, &t);
    pthread_mutex_lock(&grp->reset_lock);
    grp->reset_base = t;
    pthread_mutex_unlock(&grp->reset_lock);
}

void workers_flow(gateway_group *grp, uint64_t *parts, uint64_t *bytes, uint64_t *paused, uint64_t *pauses)
{
    *parts = *bytes = *paused = *pauses = 0;
    for (size_t i = 0; i < grp->n; i++) {
        gw_flow *f = &grp->w[i]->flow;
        uint64_t n = atomic_load_explicit(&f->parts, memory_order_relaxed);
        *parts += n;
        *bytes += n * atomic_load_explicit(&f->estimate, memory_order_relaxed);
        *paused += atomic_load_explicit(&f->paused, memory_order_relaxed);
        *pauses += atomic_load_explicit(&f->pauses, memory_order_relaxed);
    }
}

void workers_latency(gateway_group *grp, metrics_hist out[GW_LAT_KINDS])
{
    memset(out, 0, sizeof(out[0]) * GW_LAT_KINDS);
    for (size_t i = 0; i < grp->n; i++) {
        gateway *g = grp->w[i];
        pthread_mutex_lock(&g->latency_lock);
        for (int k = 0; k < GW_LAT_KINDS; k++) {
            out[k].count += g->latency[k].count;
            out[k].sum += g->latency[k].sum;
            for (int b = 0; b < METRICS_HIST_BUCKETS; b++) out[k].bucket[b] += g->latency[k].bucket[b];
        }
        pthread_mutex_unlock(&g->latency_lock);
    }
}

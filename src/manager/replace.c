/*
 * replace — moving data after the membership changed (user guide ch. 9).
 *
 * whs already names the new owners and rhs the old ones, so writes reach
 * both and reads stay where the data is. The manager asks every connected
 * server to copy: each key's first surviving old owner sends it (tombstones
 * included, so deletes are not undone) to the new owners that lacked it;
 * receivers keep the newer ClockTime. When every server has reported the
 * end of its copy, rhs := whs everywhere, and each server deletes what it no
 * longer owns. A replace is named by the whs ClockTime it moves towards; a
 * newer one supersedes it, and reports for an old one are ignored. A server
 * lost during a phase no longer holds the phase up.
 *
 * Calls: membership.c, rpc, hashspace, log. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>

#include "binlog.h"
#include "log.h"
#include "manager.h"
#include "proto.h"

#define PHASE_CALL_TIMEOUT 10.0

static void ignore_reply(void *arg, rpc_status st, const msgpack_object *r) {}

static void send_phase(manager *m, mserver *ms, uint32_t method, bool full)
{
    msgpack_packer *pk = rpc_call_begin(ms->conn, method, PHASE_CALL_TIMEOUT, ignore_reply, NULL);
    msgpack_pack_array(pk, 3);
    hashspace_pack(m->whs, pk);
    msgpack_pack_uint64(pk, m->replace_ct);
    if (full) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    rpc_call_end(ms->conn);
}

static void finish(manager *m)
{
    char buf[64];
    m->replacing = false;
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)m->replace_ct);
    log_info("replace finished time(%s)", buf);
    binlog_event(LOG_LVL_INFO, "replace_finished", BL_UINT("clocktime", m->replace_ct));
}

#define REPLACE_RETRY_DELAY 3

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    manager *m = arg;
    log_info("replace: retrying the copy");
    replace_start(m, false);
}

static void copy_done(manager *m);

/* ---- catch-up: which catching-up servers the finished round cleared ----
 *
 * The key space is cut at every vnode of the round's whs and rhs; within
 * one piece the owners never change. hashspace_copy_plan says who copied a
 * piece (the servers computed the same plan from the same snapshots): a
 * catching-up owner of the piece is complete for it when
 *   - one in-sync old owner was the sender and copied everything in this
 *     round: it holds every acknowledged write, sent the catching-up owner
 *     every record of the piece, and the catching-up owner has received
 *     every replicated write since it was attached; or
 *   - every owner was away at some point (a whole cluster restarted) and
 *     all of them copied: together they hold every acknowledged write, and
 *     each sent its records to the others.
 * Otherwise (an in-sync copy is down, or a holder did not copy) it waits. */

static bool round_copied(manager *m, const net_addr *a)
{
    mserver *ms = membership_find_server(m, a);
    return ms && ms->copied;
}

static bool piece_complete(manager *m, const hashspace_plan *p)
{
    if (p->blocked) return false;
    if (p->sender >= 0) return round_copied(m, &p->holder[p->sender]);
    for (size_t i = 0; i < p->n; i++)
        if (!p->state[i].active || !round_copied(m, &p->holder[i])) return false;
    return true;
}

/* Mark in blocked[] (indexed like round_whs nodes) each catching-up owner
 * of the piece ending at `cut` that the round did not complete. */
static void judge_piece(manager *m, uint64_t cut, bool *blocked)
{
    hashspace_plan p;
    hashspace_copy_plan(m->round_whs, m->round_rhs, cut, &p);
    if (piece_complete(m, &p)) return;
    uint32_t w[KUMO_REPLICAS];
    size_t nw = ring_owners(&m->round_whs->ring, cut, w);
    for (size_t i = 0; i < nw; i++) {
        const ring_node *n = &m->round_whs->ring.nodes[w[i]];
        if (n->active && n->catchup) blocked[w[i]] = true;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* After a round in which every asked server copied: the whs to install,
 * with the flag cleared on every catching-up server that is now complete
 * (NULL if none was catching up). *left counts those still catching up. */
static hashspace *cleared_whs(manager *m, size_t *left)
{
    const ring *rw = &m->round_whs->ring, *rr = &m->round_rhs->ring;
    size_t nodes = rw->nnodes, waiting = 0;
    *left = 0;
    for (size_t i = 0; i < nodes; i++) waiting += rw->nodes[i].active && rw->nodes[i].catchup;
    if (waiting == 0) return NULL;
    bool *blocked = calloc(nodes + 1, sizeof(*blocked));
    uint64_t *cuts = malloc((rw->nvnodes + rr->nvnodes + 1) * sizeof(*cuts));
    if (!blocked || !cuts) {
        free(blocked);
        free(cuts);
        *left = waiting;
        return NULL;
    }
    size_t nc = 0;
    for (size_t i = 0; i < rw->nvnodes; i++) cuts[nc++] = rw->vnodes[i].hash;
    for (size_t i = 0; i < rr->nvnodes; i++) cuts[nc++] = rr->vnodes[i].hash;
    qsort(cuts, nc, sizeof(*cuts), cmp_u64);
    /* Each cut is the last hash of a piece; its owners own the whole piece. */
    for (size_t i = 0; i < nc; i++) {
        if (i > 0 && cuts[i] == cuts[i - 1]) continue;
        judge_piece(m, cuts[i], blocked);
    }
    ring_node *list = malloc((m->whs->ring.nnodes + 1) * sizeof(*list));
    hashspace *out = NULL;
    if (list) {
        char buf[NET_ADDRSTRLEN];
        memcpy(list, m->whs->ring.nodes, m->whs->ring.nnodes * sizeof(*list));
        for (size_t i = 0; i < nodes; i++) {
            const ring_node *n = &rw->nodes[i];
            if (!n->active || !n->catchup) continue;
            int at = hashspace_find(m->whs, &n->addr);
            if (blocked[i]) {
                (*left)++;
                log_warn("catch-up: %s stays catching up: some of its ranges have no reachable in-sync copy",
                         net_format(&n->addr, buf, sizeof(buf)));
                continue;
            }
            /* Cleared only if it is still live and catching up now. */
            if (at >= 0 && list[at].active && list[at].catchup) {
                list[at].catchup = false;
                log_info("catch-up: %s is in sync", net_format(&n->addr, buf, sizeof(buf)));
                binlog_event(LOG_LVL_INFO, "server_in_sync", BL_ADDR("addr", &n->addr));
            }
        }
        out = hashspace_new(list, m->whs->ring.nnodes, clock_next(&m->clock));
    }
    free(list);
    free(blocked);
    free(cuts);
    return out;
}

static void start_delete(manager *m)
{
    /* Every copy is done and every server caught up: reads may now go to
     * the new owners. */
    membership_set_hashspaces(m, hashspace_ref(m->whs), hashspace_ref(m->whs));
    m->delete_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = ms->conn != NULL;
        if (!ms->deleting) continue;
        m->delete_pending++;
        send_phase(m, ms, SRV_REPLACE_DELETE, false);
    }
    log_info("replace copy finished, deleting");
    if (m->delete_pending == 0) finish(m);
}

/* Every copy has ended: switch reads over, or, if a copy fell short, keep
 * rhs where the data surely is and try again shortly. */
static void copy_done(manager *m)
{
    if (!m->copy_failed) {
        size_t left = 0;
        hashspace *w = cleared_whs(m, &left);
        m->catchup_blocked = left;
        if (left > 0) {
            /* Reads stay where they were, and nothing is deleted: the
             * missing copies may hold the newest writes. The next
             * membership change (the server back and attached, or
             * detached for good) starts a new round. */
            if (w) membership_set_hashspaces(m, w, hashspace_ref(m->rhs));
            m->replacing = false;
            log_warn("replace: %zu servers still catching up; reads stay on the old owners until the missing "
                     "copies are back", left);
            binlog_event(LOG_LVL_WARN, "catch_up_blocked", BL_UINT("servers", left));
            return;
        }
        if (w) {
            hashspace_unref(m->whs);
            m->whs = w; /* start_delete installs and pushes it as both spaces */
        }
        start_delete(m);
        return;
    }
    log_warn("replace: some copies failed; reads stay on the old owners, retrying in %d s", REPLACE_RETRY_DELAY);
    if (!m->retry_timer) m->retry_timer = evtimer_new(m->base, retry_cb, m);
    struct timeval tv = {REPLACE_RETRY_DELAY, 0};
    evtimer_add(m->retry_timer, &tv);
}

void replace_stop(manager *m)
{
    if (m->retry_timer) event_free(m->retry_timer);
    m->retry_timer = NULL;
    hashspace_unref(m->round_whs);
    hashspace_unref(m->round_rhs);
    m->round_whs = m->round_rhs = NULL;
}

/* ---- the barrier before a copy ----
 * Every server first confirms the round's [whs, rhs] (SRV_HS_SYNC, whose
 * answer a server sends once its writes routed by an older whs have
 * finished): only then does any server start walking, so no write that
 * missed a catching-up owner by replication can be missed by the walk. */

typedef struct barrier_ctx {
    manager *m;
    uint64_t gen;
    bool full;
} barrier_ctx;

static void send_copies(manager *m, bool full)
{
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (ms->copying && ms->conn) send_phase(m, ms, SRV_REPLACE_COPY, full);
    }
}

static void barrier_reply(void *arg, rpc_status st, const msgpack_object *r)
{
    barrier_ctx *x = arg;
    manager *m = x->m;
    bool current = x->gen == m->round_gen && m->replacing;
    bool full = x->full;
    free(x);
    /* A server that did not answer is lost or about to be: the copy fails
     * without it (replace_server_lost) and is redone. */
    if (current && m->barrier_pending > 0 && --m->barrier_pending == 0) send_copies(m, full);
}

void replace_start(manager *m, bool full)
{
    if (m->retry_timer) evtimer_del(m->retry_timer);
    m->copy_failed = false;
    m->replacing = true;
    m->replace_ct = m->whs->clocktime;
    m->copy_pending = 0;
    m->delete_pending = 0;
    m->catchup_blocked = 0;
    hashspace_unref(m->round_whs);
    hashspace_unref(m->round_rhs);
    m->round_whs = hashspace_ref(m->whs);
    m->round_rhs = hashspace_ref(m->rhs);
    m->round_gen++;
    m->barrier_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = false;
        ms->copied = false;
        ms->copying = ms->conn != NULL;
        if (!ms->copying) continue;
        m->copy_pending++;
        barrier_ctx *x = malloc(sizeof(*x));
        if (!x) continue; /* its copy is sent without waiting for it */
        *x = (barrier_ctx){.m = m, .gen = m->round_gen, .full = full};
        m->barrier_pending++;
        msgpack_packer *pk = rpc_call_begin(ms->conn, SRV_HS_SYNC, PHASE_CALL_TIMEOUT, barrier_reply, x);
        msgpack_pack_array(pk, 2);
        hashspace_pack(m->whs, pk);
        hashspace_pack(m->rhs, pk);
        rpc_call_end(ms->conn);
    }
    if (m->barrier_pending == 0) send_copies(m, full);
    log_info("start replace%s: %zu servers copying", full ? " (full)" : "", m->copy_pending);
    if (m->copy_pending == 0) copy_done(m);
}

void replace_phase_end(manager *m, rpc_conn *c, uint32_t method, uint64_t replace_ct, bool ok)
{
    mserver *ms = rpc_get_data(c);
    if (!m->replacing || replace_ct != m->replace_ct || !ms) return;
    if (method == MGR_REPLACE_COPY_END && ms->copying) {
        ms->copying = false;
        ms->copied = ok;
        if (!ok) m->copy_failed = true;
        if (--m->copy_pending == 0) copy_done(m);
    } else if (method == MGR_REPLACE_DELETE_END && ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

void replace_resend(manager *m, mserver *ms)
{
    if (!m->replacing || !ms->conn) return;
    if (ms->copying && m->barrier_pending == 0) send_phase(m, ms, SRV_REPLACE_COPY, false);
    else if (ms->deleting) send_phase(m, ms, SRV_REPLACE_DELETE, false);
}

void replace_server_lost(manager *m, mserver *ms)
{
    if (!m->replacing) return;
    if (ms->copying) {
        /* What it was to send never arrived: the copy must be redone
         * without it once the others are done. */
        ms->copying = false;
        m->copy_failed = true;
        if (--m->copy_pending == 0) copy_done(m);
    } else if (ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

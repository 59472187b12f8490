/*
 * replace — moving data after the membership changed (docs/architecture.md §11).
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binlog.h"
#include "log.h"
#include "manager.h"
#include "proto.h"
#include "xalloc.h"

#define PHASE_CALL_TIMEOUT 10.0

static void ignore_reply(void *arg, rpc_status st, const msgpack_object *r) {}

/* A copy carries the round's own snapshots, so every server plans from
 * the layout the manager judges the round by (hashspace_copy_plan), even
 * if whs changed meanwhile (attach-noreplace, the partner). */
/* The name of the phase being run, which its end report echoes: a report
 * of an earlier phase with the same replace_ct (a replace started again,
 * or the other manager's, which a server may send to any manager) is not
 * counted. */
static uint64_t phase_id(const manager *m) { return m->round_base + m->round_gen; }

static void send_phase(manager *m, mserver *ms, uint32_t method, bool full)
{
    bool copy = method == SRV_REPLACE_COPY && m->round_whs && m->round_rhs;
    msgpack_packer *pk = rpc_call_begin(ms->conn, method, PHASE_CALL_TIMEOUT, ignore_reply, NULL);
    msgpack_pack_array(pk, 5);
    hashspace_pack(copy ? m->round_whs : m->whs, pk);
    msgpack_pack_uint64(pk, m->replace_ct);
    if (full) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    if (copy) hashspace_pack(m->round_rhs, pk);
    else msgpack_pack_nil(pk);
    msgpack_pack_uint64(pk, phase_id(m));
    rpc_call_end(ms->conn);
}

static void finish(manager *m)
{
    char buf[CLOCK_FORMAT_LEN];
    m->replacing = false;
    log_info("replace finished: hash space of %s", clock_format(m->replace_ct, buf));
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
 * Otherwise it is not complete: the piece is *blocked* when a copy it
 * needs is down (it waits for that server), and *missed* when the copy is
 * live but was not asked (its manager link was down when the round
 * started): the round is then redone like a failed copy. */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef void (*piece_fn)(void *arg, uint64_t cut);

/* fn(arg, cut) for each piece of the key space, cut being its last hash:
 * the owners in w and in r are those of the cut for the whole piece.
 * Returns -1 when out of memory. */
static int for_each_piece(const hashspace *w, const hashspace *r, piece_fn fn, void *arg)
{
    const ring *rw = &w->ring, *rr = &r->ring;
    uint64_t *cuts = malloc((rw->nvnodes + rr->nvnodes + 1) * sizeof(*cuts));
    if (!cuts) return -1;
    size_t nc = 0;
    for (size_t i = 0; i < rw->nvnodes; i++) cuts[nc++] = rw->vnodes[i].hash;
    for (size_t i = 0; i < rr->nvnodes; i++) cuts[nc++] = rr->vnodes[i].hash;
    if (nc > 0) qsort(cuts, nc, sizeof(*cuts), cmp_u64);
    for (size_t i = 0; i < nc; i++)
        if (i == 0 || cuts[i] != cuts[i - 1]) fn(arg, cuts[i]);
    free(cuts);
    return 0;
}

static bool round_copied(manager *m, const net_addr *a)
{
    mserver *ms = membership_find_server(m, a);
    return ms && ms->copied;
}

enum verdict { PIECE_DONE,
               PIECE_BLOCKED,
               PIECE_MISSED };

static enum verdict piece_verdict(manager *m, const hashspace_plan *p)
{
    if (p->blocked) return PIECE_BLOCKED;
    if (p->sender >= 0) return round_copied(m, &p->holder[p->sender]) ? PIECE_DONE : PIECE_MISSED;
    enum verdict v = PIECE_DONE;
    for (size_t i = 0; i < p->n; i++) {
        if (!p->state[i].active) return PIECE_BLOCKED;
        if (!round_copied(m, &p->holder[i])) v = PIECE_MISSED;
    }
    return v;
}

typedef struct judge {
    manager *m;
    bool *blocked; /* indexed like round_whs nodes: not cleared */
    bool missed;   /* some piece missed a live copy: redo the round */
} judge;

static void judge_piece(void *arg, uint64_t cut)
{
    judge *j = arg;
    manager *m = j->m;
    hashspace_plan p;
    hashspace_copy_plan(m->round_whs, m->round_rhs, cut, &p);
    uint32_t w[KUMO_REPLICAS];
    size_t nw = ring_owners(&m->round_whs->ring, cut, w);
    bool waits = false;
    for (size_t i = 0; i < nw; i++) waits = waits || (m->round_whs->ring.nodes[w[i]].active && m->round_whs->ring.nodes[w[i]].catchup);
    if (!waits) return;
    enum verdict v = piece_verdict(m, &p);
    if (v == PIECE_DONE) return;
    if (v == PIECE_MISSED) j->missed = true;
    for (size_t i = 0; i < nw; i++) {
        const ring_node *n = &m->round_whs->ring.nodes[w[i]];
        if (n->active && n->catchup) j->blocked[w[i]] = true;
    }
}

/* After a round in which every asked server copied: the whs to install,
 * with the flag cleared on every catching-up server that is now complete
 * (NULL if none was cleared). *left counts those still catching up, and
 * *missed says whether a live copy was left out. */
static hashspace *cleared_whs(manager *m, size_t *left, bool *missed)
{
    const ring *rw = &m->round_whs->ring;
    size_t nodes = rw->nnodes, waiting = 0, cleared = 0;
    *left = 0;
    *missed = false;
    for (size_t i = 0; i < nodes; i++) waiting += rw->nodes[i].active && rw->nodes[i].catchup;
    if (waiting == 0) return NULL;
    judge j = {.m = m, .blocked = calloc(nodes + 1, sizeof(bool))};
    ring_node *list = malloc((m->whs->ring.nnodes + 1) * sizeof(*list));
    if (!j.blocked || !list || for_each_piece(m->round_whs, m->round_rhs, judge_piece, &j) != 0) {
        free(j.blocked);
        free(list);
        *left = waiting;
        return NULL;
    }
    *missed = j.missed;
    char buf[NET_ADDRSTRLEN];
    memcpy(list, m->whs->ring.nodes, m->whs->ring.nnodes * sizeof(*list));
    for (size_t i = 0; i < nodes; i++) {
        const ring_node *n = &rw->nodes[i];
        if (!n->active || !n->catchup) continue;
        int at = hashspace_find(m->whs, &n->addr);
        if (j.blocked[i]) {
            (*left)++;
            log_warn("catch-up: %s stays catching up: %s", net_format(&n->addr, buf, sizeof(buf)),
                     j.missed ? "a live copy was not part of the round" : "some of its ranges' in-sync copy is down");
            continue;
        }
        /* Cleared only if it is still live and catching up now. */
        if (at >= 0 && list[at].active && list[at].catchup) {
            list[at].catchup = false;
            cleared++;
            log_info("catch-up: %s is in sync", net_format(&n->addr, buf, sizeof(buf)));
            binlog_event(LOG_LVL_INFO, "server_in_sync", BL_ADDR("addr", &n->addr));
        }
    }
    hashspace *out = cleared ? hashspace_new(list, m->whs->ring.nnodes, clock_next(&m->clock)) : NULL;
    free(list);
    free(j.blocked);
    return out;
}

typedef struct last_copy {
    manager *m;
    const net_addr *a;
    bool found;
} last_copy;

static void last_copy_piece(void *arg, uint64_t cut)
{
    last_copy *x = arg;
    hashspace_plan p;
    if (x->found) return;
    hashspace_copy_plan(x->m->whs, x->m->rhs, cut, &p);
    if (p.sender >= 0) return;
    for (size_t i = 0; i < p.n; i++)
        if (net_equal(&p.holder[i], x->a) && !p.state[i].active && !p.state[i].catchup) x->found = true;
}

bool replace_holds_last_copy(manager *m, const net_addr *a)
{
    last_copy x = {.m = m, .a = a};
    if (for_each_piece(m->whs, m->rhs, last_copy_piece, &x) != 0) return true;
    return x.found;
}

/* Same servers in the same order (states aside). */
static bool same_members(const hashspace *a, const hashspace *b)
{
    if (a->ring.nnodes != b->ring.nnodes) return false;
    for (size_t i = 0; i < a->ring.nnodes; i++)
        if (!net_equal(&a->ring.nodes[i].addr, &b->ring.nodes[i].addr)) return false;
    return true;
}

static void barrier_start(manager *m, uint32_t phase, bool full);

static void retry_soon(manager *m, const char *why);

/* rhs := whs is agreed (or not): delete what moved, or try again. */
static void delete_agreed(manager *m, void *arg, int result, const char *why)
{
    if ((uint64_t)(uintptr_t)arg != m->round_gen || !m->replacing) return; /* a newer round runs */
    if (result == HISTORY_FAILED) {
        char text[300];
        snprintf(text, sizeof(text), "switching reads to the new owners was not agreed (%s)", why);
        retry_soon(m, text);
        return;
    }
    if (result == HISTORY_SUPERSEDED && !(hashspace_same_nodes(m->whs, m->rhs) && same_members(m->whs, m->round_whs))) {
        log_info("replace: the membership changed meanwhile; copying again");
        replace_start(m, false);
        return;
    }
    /* Switched, by us or by the other manager for the same round: delete
     * (a delete twice is harmless; none would leave stale copies). */
    m->delete_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = ms->conn != NULL;
        if (ms->deleting) m->delete_pending++;
    }
    log_info("replace copy finished, deleting");
    if (m->delete_pending == 0) finish(m);
    else barrier_start(m, SRV_REPLACE_DELETE, false);
}

/* Every copy is done and every server caught up: reads may now go to the
 * new owners, w (taken), once that is the next version of the membership. */
static void start_delete(manager *m, hashspace *w)
{
    void *gen = (void *)(uintptr_t)m->round_gen;
    if (!history_change(m, hashspace_ref(w), w, delete_agreed, gen))
        retry_soon(m, "another membership change of this manager is being agreed");
}

static void retry_soon(manager *m, const char *why)
{
    if (!m->replacing) return;
    log_warn("replace: %s; reads stay on the old owners, retrying in %d s", why, REPLACE_RETRY_DELAY);
    if (!m->retry_timer) m->retry_timer = evtimer_new(m->base, retry_cb, m);
    struct timeval tv = {REPLACE_RETRY_DELAY, 0};
    evtimer_add(m->retry_timer, &tv);
}

/* Every copy has ended: clear the servers that caught up and switch reads
 * over; or, if a copy fell short, keep rhs where the data surely is and try
 * again shortly; or, if a copy that only a down server holds is needed,
 * wait for it. */
static void copy_done(manager *m)
{
    if (m->copy_failed) {
        retry_soon(m, "some copies failed");
        return;
    }
    if (!same_members(m->whs, m->round_whs)) {
        /* Servers joined or left whs during the round (attach-noreplace, the
         * partner): the new owners were not part of it. */
        log_info("replace: the hash space changed during the copy; copying again");
        replace_start(m, false);
        return;
    }
    size_t left = 0;
    bool missed = false;
    hashspace *w = cleared_whs(m, &left, &missed);
    m->catchup_blocked = missed ? 0 : left;
    if (left > 0) {
        /* Reads stay where they were, and nothing is deleted: the missing
         * copies may hold the newest writes. */
        if (w && !history_change(m, w, hashspace_ref(m->rhs), NULL, NULL))
            log_info("catch-up: clearing the caught-up servers waits for the change being agreed");
        if (missed) {
            retry_soon(m, "a live copy was not part of the round");
            return;
        }
        m->replacing = false;
        log_warn("replace: %zu servers still catching up; reads stay on the old owners until the missing "
                 "copies are back",
                 left);
        binlog_event(LOG_LVL_WARN, "catch_up_blocked", BL_UINT("servers", left));
        return;
    }
    if (hashspace_empty(w ? w : m->whs)) {
        /* Nobody is live: switching reads to this layout would serve nothing. */
        hashspace_unref(w);
        m->replacing = false;
        log_warn("replace: no server is live; reads stay where they were");
        return;
    }
    start_delete(m, w ? w : hashspace_ref(m->whs));
}

void replace_stop(manager *m)
{
    /* Closing the links answers every barrier call at once: they must find
     * no round to continue (the servers are being freed). */
    m->replacing = false;
    m->barrier_pending = 0;
    m->round_gen++;
    if (m->retry_timer) event_free(m->retry_timer);
    m->retry_timer = NULL;
    hashspace_unref(m->round_whs);
    hashspace_unref(m->round_rhs);
    m->round_whs = m->round_rhs = NULL;
}

/* ---- the barrier before each phase ----
 * Every server taking part first confirms the layout (SRV_HS_SYNC, whose
 * answer a server sends once its writes routed by an older whs or rhs have
 * finished), and only then is the phase sent:
 *   - before the copy, so no write that missed a catching-up owner by
 *     replication can be missed by the walk;
 *   - before the delete, so no write routed by the old rhs (which mirrors
 *     to the old owners) reaches an old owner after its walk has passed
 *     the key: that copy would stay there, stale, for good. */

typedef struct barrier_ctx {
    manager *m;
    mserver *ms; /* lives as long as the manager */
    uint64_t gen;
    uint32_t then; /* SRV_REPLACE_COPY or SRV_REPLACE_DELETE */
    bool full;
    bool one; /* a single server's barrier (its link came back): its phase follows */
} barrier_ctx;

static bool takes_part(const mserver *ms, uint32_t phase)
{
    return ms->conn && (phase == SRV_REPLACE_COPY ? ms->copying : ms->deleting);
}

static void barrier_one(manager *m, mserver *ms, uint32_t phase, bool full);

/* Each server that answered the barrier gets the phase; one that did not
 * (a timeout, a link that dropped and came back) gets a barrier of its own
 * first, so none copies or deletes before its old writes are done. */
static void send_phases(manager *m, uint32_t phase, bool full)
{
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (!takes_part(ms, phase)) continue;
        if (ms->barred) send_phase(m, ms, phase, full);
        else barrier_one(m, ms, phase, full);
    }
}

static void barrier_reply(void *arg, rpc_status st, const msgpack_object *r)
{
    barrier_ctx *x = arg;
    manager *m = x->m;
    bool current = x->gen == m->round_gen && m->replacing;
    barrier_ctx done = *x;
    free(x);
    if (!current) return;
    if (st == RPC_OK) done.ms->barred = true;
    if (done.one) {
        if (!takes_part(done.ms, done.then)) return;
        if (st == RPC_OK) {
            send_phase(m, done.ms, done.then, done.full);
            return;
        }
        /* No answer to its own barrier: its phase is not sent, so it is
         * counted as ended now, like a lost server (the copy fails and is
         * redone; a delete goes on without it). */
        replace_server_lost(m, done.ms);
        return;
    }
    if (m->barrier_pending > 0 && --m->barrier_pending == 0) send_phases(m, done.then, done.full);
}

static void barrier_send(manager *m, mserver *ms, uint32_t phase, bool full, bool one)
{
    barrier_ctx *x = xmalloc(sizeof(*x));
    *x = (barrier_ctx){.m = m, .ms = ms, .gen = m->round_gen, .then = phase, .full = full, .one = one};
    msgpack_packer *pk = rpc_call_begin(ms->conn, SRV_HS_SYNC, PHASE_CALL_TIMEOUT, barrier_reply, x);
    msgpack_pack_array(pk, 2);
    hashspace_pack(m->whs, pk);
    hashspace_pack(m->rhs, pk);
    rpc_call_end(ms->conn);
}

static void barrier_one(manager *m, mserver *ms, uint32_t phase, bool full)
{
    if (ms->conn) barrier_send(m, ms, phase, full, true);
}

/* Starts the barrier before `phase`, among the servers that take part in
 * it; the phase is sent when the last has answered. */
static void barrier_start(manager *m, uint32_t phase, bool full)
{
    m->round_gen++; /* answers to an earlier barrier no longer count */
    m->barrier_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->barred = false;
        if (!takes_part(ms, phase)) continue;
        m->barrier_pending++;
        barrier_send(m, ms, phase, full, false);
    }
    if (m->barrier_pending == 0) send_phases(m, phase, full);
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
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = false;
        ms->copied = false;
        ms->copying = ms->conn != NULL;
        if (ms->copying) m->copy_pending++;
    }
    barrier_start(m, SRV_REPLACE_COPY, full);
    log_info("start replace%s: %zu servers copying", full ? " (full)" : "", m->copy_pending);
    if (m->copy_pending == 0) copy_done(m);
}

void replace_phase_end(manager *m, rpc_conn *c, uint32_t method, uint64_t replace_ct, uint64_t phase, bool ok)
{
    mserver *ms = rpc_get_data(c);
    if (!m->replacing || replace_ct != m->replace_ct || !ms || (phase != 0 && phase != phase_id(m))) return;
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
    if (!ms->conn) return;
    if (!m->replacing && m->catchup_blocked) {
        /* A catch-up waits for a copy: this server may hold it (it was
         * not reachable when the last round started). */
        int at = hashspace_find(m->whs, &ms->addr);
        if (at >= 0 && m->whs->ring.nodes[at].active) replace_start(m, false);
        return;
    }
    if (!m->replacing) return;
    if (m->barrier_pending > 0) return; /* the barrier's end sends the phase */
    /* Its link is new: writes it coordinated before may still be under
     * way, so it passes a barrier of its own before its phase. */
    if (ms->copying) barrier_one(m, ms, SRV_REPLACE_COPY, false);
    else if (ms->deleting) barrier_one(m, ms, SRV_REPLACE_DELETE, false);
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

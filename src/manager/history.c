/*
 * history — every change of the membership (attach, detach, the end of a
 * catch-up, the switch of reads at the end of a replace, a database that
 * moved) as the next version of one history (docs/architecture.md §11.1).
 *
 * With a partner (-p), two managers could each build a change on the same
 * version and push both: servers would keep whichever had the newer
 * ClockTime, and the other operator's command would be undone without a
 * word. So a change is version v + 1 only once a majority of the servers
 * listed in version v have accepted it, in one round of single-decree
 * Paxos with those servers as acceptors (src/server/witness.c):
 *
 *   1. prepare: every listed server that is linked gets [v + 1, ballot];
 *      with a majority of promises, the pair to propose is the one with
 *      the highest ballot among those some server already accepted (a
 *      majority may have taken it), else our own;
 *   2. accept: the pair goes to the same servers; a majority of acceptances
 *      makes it chosen, and it is installed and pushed to everyone.
 *
 * A server that already holds v + 1 answers with its pair: this manager
 * missed a change, takes it (membership_take) and tells the caller, which
 * builds its change again on top (an operator's attach after the other
 * manager's detach does both). Without a majority the change is refused,
 * and the caller says why. Any two majorities of one list share a server,
 * so two different pairs can never both become v + 1.
 *
 * Without a partner there is no one to disagree with: the change is
 * installed at once. So is the first change, made on a blank layout that
 * lists nobody to ask.
 *
 * Calls: membership.c, rpc, hashspace, log. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "xalloc.h"
#include "manager.h"
#include "proto.h"

#define ROUND_TIMEOUT 3.0 /* s for each server's answer */

typedef struct proposal {
    manager *m;
    uint64_t version; /* the one proposed: base + 1 */
    hashspace_ballot ballot;
    hashspace *own_w, *own_r;     /* ours */
    hashspace *found_w, *found_r; /* the highest-ballot pair accepted by a promiser */
    hashspace_ballot found;       /* its ballot */
    hashspace *value_w, *value_r; /* sent in phase 2 */
    int phase;                    /* 1 prepare, 2 accept */
    size_t listed, need, asked, yes, answered, refused;
    bool stale, finished;
    int outstanding; /* calls not yet answered (the proposal lives until 0) */
    history_done done;
    void *arg;
} proposal;

typedef struct call_ctx {
    proposal *p;
    int phase;
    net_addr addr;
} call_ctx;

static void release(proposal *p)
{
    if (!p->finished || p->outstanding > 0) return;
    hashspace_unref(p->own_w);
    hashspace_unref(p->own_r);
    hashspace_unref(p->found_w);
    hashspace_unref(p->found_r);
    hashspace_unref(p->value_w);
    hashspace_unref(p->value_r);
    free(p);
}

/* (w, r) is the pair we proposed, the other manager may have completed it
 * for us: our version with our members, fault marks aside. (Not by its
 * ClockTime: the two managers' clocks follow each other and may make the
 * same one; a pair with our members is our change, whoever proposed it.) */
static bool ours(const proposal *p, const hashspace *w, const hashspace *r)
{
    return w->version == p->version && hashspace_same_members(w, p->own_w) && hashspace_same_members(r, p->own_r);
}

static void finish(proposal *p, int result, const char *why)
{
    manager *m = p->m;
    if (p->finished) return;
    p->finished = true;
    if (m->proposal == p) m->proposal = NULL;
    if (result == HISTORY_OK && p->value_w && !ours(p, p->value_w, p->value_r)) result = HISTORY_SUPERSEDED;
    if (p->done) p->done(m, p->arg, result, why);
}

static void send_round(proposal *p);

/* The pair a server holds (an HS_STALE answer's 4th and 5th items). */
static void take_answered(proposal *p, const msgpack_object *r)
{
    char err[KUMO_ERRLEN];
    const msgpack_object *ow = rpc_arg(r, 3), *orh = rpc_arg(r, 4);
    hashspace *w = ow && ow->type == MSGPACK_OBJECT_ARRAY ? hashspace_unpack(ow, err) : NULL;
    hashspace *rr = orh && orh->type == MSGPACK_OBJECT_ARRAY ? hashspace_unpack(orh, err) : NULL;
    if (w && rr) membership_take(p->m, w, rr);
    hashspace_unref(w);
    hashspace_unref(rr);
}

/* A promise that carries a pair the server accepted for this version. */
static void note_accepted(proposal *p, const msgpack_object *r)
{
    char err[KUMO_ERRLEN];
    hashspace_ballot b;
    const msgpack_object *ob = rpc_arg(r, 2), *ow = rpc_arg(r, 3), *orh = rpc_arg(r, 4);
    if (!ob || !hashspace_ballot_unpack(ob, &b) || (p->found_w && hashspace_ballot_cmp(&b, &p->found) <= 0)) return;
    hashspace *w = ow ? hashspace_unpack(ow, err) : NULL, *rr = orh ? hashspace_unpack(orh, err) : NULL;
    if (!w || !rr || w->version != p->version || rr->version != p->version) {
        hashspace_unref(w);
        hashspace_unref(rr);
        return;
    }
    hashspace_unref(p->found_w);
    hashspace_unref(p->found_r);
    p->found_w = w;
    p->found_r = rr;
    p->found = b;
}

static void chosen(proposal *p)
{
    manager *m = p->m;
    char buf[CLOCK_FORMAT_LEN];
    if (m->whs->version >= p->version) { /* taken meanwhile from a server or the partner */
        finish(p, ours(p, m->whs, m->rhs) ? HISTORY_OK : HISTORY_SUPERSEDED, "the other manager changed the membership first");
        return;
    }
    log_info("membership version %llu agreed by %zu of %zu servers (%s)", (unsigned long long)p->version, p->yes,
             p->listed, clock_format(p->value_w->clocktime, buf));
    membership_set_hashspaces(m, hashspace_ref(p->value_w), hashspace_ref(p->value_r));
    finish(p, HISTORY_OK, NULL);
}

static void round_reply(void *arg, rpc_status st, const msgpack_object *r)
{
    call_ctx *x = arg;
    proposal *p = x->p;
    int phase = x->phase;
    net_addr addr = x->addr;
    free(x);
    p->outstanding--;
    if (!p->finished && p->m->stopping) finish(p, HISTORY_FAILED, "the manager is stopping");
    if (p->finished || phase != p->phase) {
        release(p);
        return;
    }
    p->answered++;
    uint64_t code = HS_REFUSED;
    if (st != RPC_OK || !rpc_arg_uint(r, 0, &code)) code = HS_REFUSED;
    if (code == HS_STALE) {
        p->stale = true;
        take_answered(p, r); /* our own pair, if the other manager completed it for us */
        finish(p, ours(p, p->m->whs, p->m->rhs) ? HISTORY_OK : HISTORY_SUPERSEDED,
               "the other manager changed the membership first");
    } else if (code == HS_BEHIND) {
        mserver *ms = membership_find_server(p->m, &addr);
        if (ms) membership_push(p->m, ms); /* it missed version v: next time it can vote */
    } else if (code == HS_OK) {
        if (phase == 1) note_accepted(p, r);
        p->yes++;
    } else {
        hashspace_ballot b;
        const msgpack_object *ob = st == RPC_OK ? rpc_arg(r, 2) : NULL;
        if (ob && hashspace_ballot_unpack(ob, &b)) clock_update(&p->m->clock, b.ct); /* outbid next time */
        p->refused++;
    }
    if (!p->finished && p->yes >= p->need) {
        if (phase == 1) {
            p->phase = 2;
            p->value_w = hashspace_ref(p->found_w ? p->found_w : p->own_w);
            p->value_r = hashspace_ref(p->found_r ? p->found_r : p->own_r);
            p->outstanding++; /* send_round may finish p: it is released below, once */
            send_round(p);
            p->outstanding--;
        } else {
            chosen(p);
        }
    } else if (!p->finished && p->answered == p->asked) {
        char why[200];
        snprintf(why, sizeof(why),
                 "%zu of the %zu attached servers %s the change, %zu needed%s", p->yes, p->listed,
                 phase == 1 ? "promised" : "accepted", p->need,
                 p->refused ? ": the other manager is changing the membership too; try again" : "");
        finish(p, HISTORY_FAILED, why);
    }
    release(p);
}

/* Sends the current phase to every listed server that is linked. */
static void send_round(proposal *p)
{
    manager *m = p->m;
    const hashspace *base = m->whs;
    if (base->version + 1 != p->version) { /* a newer version was taken between the phases */
        finish(p, HISTORY_SUPERSEDED, "the other manager changed the membership first");
        return;
    }
    p->yes = p->answered = p->asked = p->refused = 0;
    for (size_t i = 0; i < p->listed && i < base->ring.nnodes; i++) {
        mserver *ms = membership_linked_node(m, &base->ring.nodes[i]); /* by address, or by its ring key */
        if (!ms) continue;
        call_ctx *x = xmalloc(sizeof(*x));
        *x = (call_ctx){.p = p, .phase = p->phase, .addr = ms->addr};
        p->asked++;
        p->outstanding++;
        msgpack_packer *pk = rpc_call_begin(ms->conn, p->phase == 1 ? SRV_HS_PREPARE : SRV_HS_ACCEPT,
                                            ROUND_TIMEOUT, round_reply, x);
        msgpack_pack_array(pk, p->phase == 1 ? 2 : 4);
        msgpack_pack_uint64(pk, p->version);
        hashspace_ballot_pack(&p->ballot, pk);
        if (p->phase == 2) {
            hashspace_pack(p->value_w, pk);
            hashspace_pack(p->value_r, pk);
        }
        rpc_call_end(ms->conn);
    }
    if (p->asked < p->need) {
        char why[160];
        snprintf(why, sizeof(why), "only %zu of the %zu attached servers are reachable, %zu needed to agree on a change",
                 p->asked, p->listed, p->need);
        finish(p, HISTORY_FAILED, why);
    }
}

bool history_change(manager *m, hashspace *whs, hashspace *rhs, history_done done, void *arg)
{
    if (m->proposal) {
        hashspace_unref(whs);
        hashspace_unref(rhs);
        return false;
    }
    if (m->stopping) { /* its links are closing: nothing can be agreed */
        hashspace_unref(whs);
        hashspace_unref(rhs);
        if (done) done(m, arg, HISTORY_FAILED, "the manager is stopping");
        return true;
    }
    /* rhs keeps its ClockTime unless it becomes whs: whs and rhs of
     * different ClockTimes is what says a replace is due. */
    /* Later than every ClockTime of the base, whichever manager's clock
     * made it: servers take a replace named by an older ClockTime as
     * superseded (src/server/replace.c), so one of a newer version must
     * never be older. */
    clock_update(&m->clock, m->whs->clocktime > m->rhs->clocktime ? m->whs->clocktime : m->rhs->clocktime);
    uint64_t version = m->whs->version + 1, ct = clock_next(&m->clock);
    uint64_t rct = whs == rhs || hashspace_same_nodes(whs, rhs) ? ct : rhs->clocktime;
    hashspace *w = xcheck(hashspace_derive(whs, version, ct)), *r = xcheck(hashspace_derive(rhs, version, rct));
    hashspace_unref(whs);
    hashspace_unref(rhs);
    size_t listed = m->whs->ring.nnodes;
    if (!m->has_partner || listed == 0) {
        membership_set_hashspaces(m, w, r);
        if (done) done(m, arg, HISTORY_OK, NULL);
        return true;
    }
    proposal *p = xcalloc(1, sizeof(*p));
    *p = (proposal){.m = m, .version = version, .ballot = {.ct = ct, .by = m->self}, .own_w = w, .own_r = r, .phase = 1, .listed = listed, .need = listed / 2 + 1, .done = done, .arg = arg};
    m->proposal = p;
    p->outstanding++; /* send_round may finish p */
    send_round(p);
    p->outstanding--;
    release(p);
    return true;
}

bool history_busy(const manager *m) { return m->proposal != NULL; }

/*
 * replace — kumo-server's part of a replace (see src/manager/replace.c).
 *
 * Copy phase: adopt the new whs, walk the database, and for every record
 * (tombstones included) of which this server is a sender by
 * hashspace_copy_plan (the piece's in-sync old owner; or, when every owner
 * was away, each holder), queue it for each live new owner that is
 * catching up or was not an old one; full-replace sends every record to
 * every other new owner. Each destination's records
 * go through a compressed stream file (stream.c) and are applied there with
 * the newer-ClockTime-wins rule. When every transfer is acknowledged the
 * manager hears MGR_REPLACE_COPY_END (with ok = false if any failed, and the
 * manager then keeps reads where they were and retries).
 *
 * Delete phase: rhs := whs, then remove every record this server no longer
 * owns, and report MGR_REPLACE_DELETE_END.
 *
 * The walk runs on the main loop in one go (it only reads and compresses);
 * the transfers that follow are event-driven and rate-limited.
 *
 * Calls: store, record, hashspace, rpc, cluster.c. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "links.h"
#include "log.h"
#include "proto.h"
#include "record.h"
#include "server.h"
#include "xalloc.h"

#define END_TIMEOUT 10.0
#define END_TRIES 60

typedef struct dest {
    net_addr addr;
    stream_file *file; /* created on the first record for this destination */
} dest;

typedef struct copy_job {
    server *s;
    rpc_conn *manager; /* held */
    uint64_t replace_ct;
    uint64_t phase_id; /* the phase's name, echoed in its end report (0: none given) */
    bool full;
    hashspace *old_rhs, *new_whs;
    dest *dests;
    size_t ndests;
    int outstanding;
    uint64_t sent, failed;
    uint64_t damage; /* damaged spots of the database when the walk began */
} copy_job;

/* The end of a phase must reach a manager: it is retried every second for
 * END_TRIES seconds, over the link the request came on or any other. */
typedef struct end_report {
    server *s;
    rpc_conn *manager; /* held, may be NULL */
    uint32_t method;
    uint64_t replace_ct, phase_id;
    bool ok;
    int tries;
} end_report;

static void end_send(end_report *e);

static void end_free(end_report *e)
{
    if (e->manager) rpc_release(e->manager);
    free(e);
}

static void end_retry_cb(evutil_socket_t fd, short what, void *arg) { end_send(arg); }

static void end_reply(void *arg, rpc_status st, const msgpack_object *r)
{
    end_report *e = arg;
    char why[KUMO_ERRLEN];
    if (st == RPC_OK) {
        end_free(e);
        return;
    }
    log_warn("replace: manager did not take the end of a phase: %s", rpc_strerror(st, r, why, sizeof(why)));
    struct timeval tv = {1, 0};
    event_base_once(e->s->base, -1, EV_TIMEOUT, end_retry_cb, e, &tv);
}

static void end_send(end_report *e)
{
    server *s = e->s;
    rpc_conn *c = e->manager && !rpc_is_closed(e->manager) ? e->manager : NULL;
    if (!c && s->managers) c = links_any(s->managers);
    if (!c || ++e->tries > END_TRIES || s->stopping) {
        log_warn("replace: could not report the end of a phase to a manager");
        end_free(e);
        return;
    }
    msgpack_packer *pk = rpc_call_begin(c, e->method, END_TIMEOUT, end_reply, e);
    msgpack_pack_array(pk, e->phase_id ? 3 : 2);
    msgpack_pack_uint64(pk, e->replace_ct);
    if (e->ok) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    if (e->phase_id) msgpack_pack_uint64(pk, e->phase_id);
    rpc_call_end(c);
}

static void report_end(server *s, rpc_conn *manager, uint32_t method, uint64_t replace_ct, uint64_t phase_id, bool ok)
{
    end_report *e = xcalloc(1, sizeof(*e)); /* a lost report would stall the replace */
    e->s = s;
    e->manager = manager;
    if (manager) rpc_hold(manager);
    e->method = method;
    e->replace_ct = replace_ct;
    e->phase_id = phase_id;
    e->ok = ok;
    end_send(e);
}

/* The progress record, if it is still this job's (a newer replace resets it). */
static replace_progress *progress_of(const copy_job *j)
{
    return j->s->progress.replace_ct == j->replace_ct ? &j->s->progress : NULL;
}

static void job_release(copy_job *j)
{
    if (--j->outstanding > 0) return;
    replace_progress *p = progress_of(j);
    if (p) p->ended = progress_now();
    log_info("replace copy done: %llu records sent, %llu failed", (unsigned long long)j->sent,
             (unsigned long long)j->failed);
    j->s->replace_copying = false;
    report_end(j->s, j->manager, MGR_REPLACE_COPY_END, j->replace_ct, j->phase_id, j->failed == 0);
    if (j->manager) rpc_release(j->manager);
    hashspace_unref(j->old_rhs);
    hashspace_unref(j->new_whs);
    free(j->dests);
    free(j);
}

typedef struct transfer {
    copy_job *j;
    uint64_t count;
} transfer;

static void transfer_done(void *arg, bool ok, uint64_t applied)
{
    transfer *t = arg;
    copy_job *j = t->j;
    if (!ok) {
        j->failed += t->count;
        log_warn("replace: a transfer of %llu records failed", (unsigned long long)t->count);
    }
    free(t);
    job_release(j);
}

/* The walk is over: hand each destination its file. */
static void offer_dest(copy_job *j, dest *d)
{
    if (!d->file) return;
    uint64_t n = stream_file_count(d->file);
    transfer *t = n ? malloc(sizeof(*t)) : NULL;
    if (!t) {
        if (n) j->failed += n;
        stream_file_abandon(d->file);
        d->file = NULL;
        return;
    }
    t->j = j;
    t->count = n;
    j->outstanding++;
    j->sent += n;
    stream_file_offer(j->s, d->file, &d->addr, transfer_done, t);
    d->file = NULL;
}

static dest *dest_for(copy_job *j, const net_addr *a)
{
    for (size_t i = 0; i < j->ndests; i++)
        if (net_equal(&j->dests[i].addr, a)) return &j->dests[i];
    return NULL;
}

static bool contains(const hashspace *hs, const uint32_t *idx, size_t n, const net_addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (net_equal(&hs->ring.nodes[idx[i]].addr, a)) return true;
    return false;
}

/* Whether this server sends the record (hashspace_copy_plan): it is the
 * piece's in-sync sender, or every owner was away and it holds a copy. */
static bool is_sender(const copy_job *j, const hashspace_plan *p)
{
    const net_addr *self = &j->s->self;
    if (p->sender >= 0) return net_equal(&p->holder[p->sender], self);
    if (!p->exchange) return false;
    for (size_t i = 0; i < p->n; i++)
        if (net_equal(&p->holder[i], self)) return true;
    return false;
}

static void queue_record(copy_job *j, const net_addr *to, const void *key, size_t klen, const void *val, size_t vlen)
{
    dest *d = dest_for(j, to);
    if (!d) return;
    if (!d->file) {
        char err[KUMO_ERRLEN];
        if (!(d->file = stream_file_new(j->s, err))) {
            log_error("replace: %s", err);
            j->failed++;
            return;
        }
    }
    stream_file_add(d->file, key, klen, val, vlen);
    replace_progress *p = progress_of(j);
    if (p) p->queued++;
}

static int copy_record(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    copy_job *j = arg;
    server *s = j->s;
    if (s->replace_latest > j->replace_ct) { /* superseded: stop, the new one copies */
        j->failed++;
        return 1;
    }
    replace_progress *prog = progress_of(j);
    if (prog) prog->walked++;
    if (klen <= RECORD_KEY_HEADER || vlen < RECORD_TOMBSTONE) return 0;
    uint64_t h = record_key_hash(key, klen);
    uint32_t old[KUMO_REPLICAS], nw[KUMO_REPLICAS];
    size_t nold = hashspace_live_owners(j->old_rhs, h, old);
    size_t nnew = hashspace_live_owners(j->new_whs, h, nw);
    if (!j->full) {
        hashspace_plan p;
        hashspace_copy_plan(j->new_whs, j->old_rhs, h, &p);
        if (!is_sender(j, &p)) return 0;
    }
    /* To every live new owner that is catching up or did not hold the key:
     * an old owner that stayed in sync has it already. */
    for (size_t i = 0; i < nnew; i++) {
        const ring_node *to = &j->new_whs->ring.nodes[nw[i]];
        if (net_equal(&to->addr, &s->self)) continue;
        if (!j->full && !to->catchup && contains(j->old_rhs, old, nold, &to->addr)) continue;
        queue_record(j, &to->addr, key, klen, val, vlen);
    }
    return 0;
}

static void copy_walked(server *s, void *arg, bool ok)
{
    copy_job *j = arg;
    replace_progress *p = progress_of(j);
    if (p) p->walk_ended = progress_now();
    if (!ok) j->failed++; /* the manager retries the copy */
    uint64_t spots, bytes;
    store_damage(s->db, &spots, &bytes);
    if (spots > j->damage) {
        /* What was there was not sent: the round must not pass on this
         * copy. The rest is sent (newer wins), and this server asks to
         * catch up (repair.c), so the next round does without it. */
        log_warn("replace copy: the walk stepped over damage in the database; this copy counts as failed");
        j->failed++;
    }
    for (size_t i = 0; i < j->ndests; i++) {
        if (ok) offer_dest(j, &j->dests[i]);
        else if (j->dests[i].file) stream_file_abandon(j->dests[i].file);
    }
    job_release(j);
}

/* w, round_rhs: the layout the manager started the round from, so this
 * server plans exactly as the manager judges (round_rhs NULL from an older
 * manager: then our own rhs). Both taken. */
static void copy_phase(server *s, rpc_conn *c, uint64_t replace_ct, uint64_t phase_id, bool full, hashspace *w,
                       hashspace *round_rhs)
{
    copy_job *j = xcalloc(1, sizeof(*j));
    j->dests = xcalloc(w->ring.nnodes + 1, sizeof(dest));
    j->s = s;
    j->manager = c;
    rpc_hold(c);
    j->replace_ct = replace_ct;
    j->full = full;
    j->phase_id = phase_id;
    j->old_rhs = round_rhs ? round_rhs : hashspace_ref(s->rhs);
    j->new_whs = w;
    for (size_t i = 0; i < w->ring.nnodes; i++) j->dests[j->ndests++].addr = w->ring.nodes[i].addr;
    j->outstanding = 1; /* the walk itself */
    uint64_t bytes;
    store_damage(s->db, &j->damage, &bytes);
    s->replace_copying = true;
    s->progress = (replace_progress){.replace_ct = replace_ct, .started = progress_now(), .total = store_count(s->db), .sent_base = s->moved_sent, .sent_bytes_base = s->moved_sent_bytes, .full = full};
    log_info("replace copy start%s: %llu records to walk", full ? " (full)" : "", (unsigned long long)s->progress.total);
    data_walk(s, copy_record, copy_walked, j);
}

typedef struct delete_ctx {
    server *s;
    rpc_conn *manager; /* held */
    hashspace *whs;    /* the layout this phase deletes towards */
    uint64_t replace_ct, phase_id;
    uint64_t removed;
} delete_ctx;

static int delete_record(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    delete_ctx *x = arg;
    server *s = x->s;
    char err[KUMO_ERRLEN];
    /* A newer layout arrived while walking: another replace is under way,
     * which may need these records as its source; its delete phase will
     * clean up. */
    if (s->whs != x->whs) return 1;
    if (klen > RECORD_KEY_HEADER && hashspace_is_owner(x->whs, record_key_hash(key, klen), &s->self)) return 0;
    /* Not ours any more (or malformed): remove, unless a newer write arrived meanwhile. */
    if (store_remove_if_older(s->db, key, klen, record_clocktime(val, vlen), err) == 1) x->removed++;
    return 0;
}

static void delete_walked(server *s, void *arg, bool ok)
{
    delete_ctx *x = arg;
    s->replace_deleting = false;
    log_info("replace delete done: %llu records removed", (unsigned long long)x->removed);
    report_end(s, x->manager, MGR_REPLACE_DELETE_END, x->replace_ct, x->phase_id, true);
    rpc_release(x->manager);
    hashspace_unref(x->whs);
    free(x);
}

static void delete_phase(server *s, rpc_conn *c, uint64_t replace_ct, uint64_t phase_id)
{
    cluster_set_hashspaces(s, NULL, hashspace_ref(s->whs));
    int at = hashspace_find(s->whs, &s->self);
    if (at < 0 || !s->whs->ring.nodes[at].active) {
        /* Not an attached, live member: our data is nobody's copy now, but it
         * may be the only one left after a disaster, so keep it. */
        log_info("replace delete skipped: this server is not attached");
        report_end(s, c, MGR_REPLACE_DELETE_END, replace_ct, phase_id, true);
        return;
    }
    delete_ctx *x = xcalloc(1, sizeof(*x));
    *x = (delete_ctx){.s = s, .manager = c, .whs = hashspace_ref(s->whs), .replace_ct = replace_ct, .phase_id = phase_id};
    rpc_hold(c);
    s->replace_deleting = true;
    data_walk(s, delete_record, delete_walked, x);
}

/* The phase's whs, adopted by the rule of pushed ones (hashspace_adopt). Returns a
 * reference to it (the caller's), or NULL if malformed. */
static hashspace *adopt_whs(server *s, const msgpack_object *params)
{
    char err[KUMO_ERRLEN];
    const msgpack_object *o = rpc_arg(params, 0);
    hashspace *w = o ? hashspace_unpack(o, err) : NULL;
    if (!w) return NULL;
    hashspace *nw = hashspace_adopt(w, s->whs, true);
    if (nw) cluster_set_hashspaces(s, nw, NULL);
    return w;
}

/* The copy's 4th parameter, the rhs the round started from; NULL if absent
 * or malformed. */
static hashspace *round_rhs(const msgpack_object *params)
{
    char err[KUMO_ERRLEN];
    const msgpack_object *o = rpc_arg(params, 3);
    hashspace *r = o ? hashspace_unpack(o, err) : NULL;
    if (o && !r) log_warn("replace: bad rhs in a copy request: %s", err);
    return r;
}

bool replace_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    uint64_t ct;
    bool full = false;
    switch (method) {
    case SRV_REPLACE_COPY:
    case SRV_REPLACE_DELETE: {
        hashspace *w = rpc_arg_uint(params, 1, &ct) ? adopt_whs(s, params) : NULL;
        if (!w) {
            rpc_reply_error(c, msgid, "bad params");
            return true;
        }
        uint64_t phase_id = 0; /* a manager before phase names sends none */
        rpc_arg_bool(params, 2, &full);
        rpc_arg_uint(params, 4, &phase_id);
        if (ct > s->replace_latest) s->replace_latest = ct;
        rpc_reply_bool(c, msgid, true);
        if (method == SRV_REPLACE_COPY) {
            copy_phase(s, c, ct, phase_id, full, w, round_rhs(params));
        } else {
            hashspace_unref(w);
            delete_phase(s, c, ct, phase_id);
        }
        return true;
    }
    default: return false;
    }
}

/* ---- progress ---- */

const char *replace_progress_phase(const server *s)
{
    const replace_progress *p = &s->progress;
    return p->started == 0 ? "idle" : p->ended > 0    ? "done"
                                  : p->walk_ended > 0 ? "send"
                                                      : "walk";
}

void replace_pack_progress(const server *s, msgpack_packer *pk)
{
    const replace_progress *p = &s->progress;
    double end = p->ended > 0 ? p->ended : progress_now();
    const backup_progress *b = &s->backup;
    msgpack_pack_map(pk, 13);
    rpc_pack_str(pk, "phase");
    rpc_pack_str(pk, replace_progress_phase(s));
    rpc_pack_str(pk, "full");
    if (p->full) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    rpc_pack_str(pk, "total");
    msgpack_pack_uint64(pk, p->total);
    rpc_pack_str(pk, "walked");
    msgpack_pack_uint64(pk, p->walked);
    rpc_pack_str(pk, "queued");
    msgpack_pack_uint64(pk, p->queued);
    rpc_pack_str(pk, "sent");
    msgpack_pack_uint64(pk, s->moved_sent - p->sent_base);
    rpc_pack_str(pk, "sent_bytes");
    msgpack_pack_uint64(pk, s->moved_sent_bytes - p->sent_bytes_base);
    rpc_pack_str(pk, "elapsed");
    msgpack_pack_double(pk, p->started > 0 ? end - p->started : 0);
    rpc_pack_str(pk, "walk_seconds");
    msgpack_pack_double(pk, p->walk_ended > 0 ? p->walk_ended - p->started : 0);
    /* the last backup, a walk too */
    rpc_pack_str(pk, "backup_phase");
    rpc_pack_str(pk, b->started == 0 ? "idle" : b->ended > 0 ? "done"
                                                             : "walk");
    rpc_pack_str(pk, "backup_total");
    msgpack_pack_uint64(pk, b->total);
    rpc_pack_str(pk, "backup_walked");
    msgpack_pack_uint64(pk, b->walked);
    rpc_pack_str(pk, "backup_elapsed");
    msgpack_pack_double(pk, b->started > 0 ? (b->ended > 0 ? b->ended : progress_now()) - b->started : 0);
}

/*
 * data — the data path of kumo-server: Get, Set (and the other
 * read-modify-writes), Delete from gateways, Replicate from primaries, and
 * the status counters kumostat reads.
 *
 * A write is accepted only by the key's coordinator: the first live owner in
 * whs. The coordinator stamps the value with a new ClockTime, applies the
 * operation atomically (store_modify), sends the resulting bytes to the other
 * live owners — and during a replace also to the live rhs owners that still
 * serve reads — and answers after every one of them acknowledged (or at once
 * with WF_ASYNC). Replicas keep whichever of two versions has the newer
 * ClockTime, so retries and reordering never roll a key back.
 *
 * What a write does to the stored record is apply.c's.
 *
 * Expiry is judged by the cluster's time (clock_now_seconds, a write's
 * ClockTime), moved by the debug clock's offset when a test set one
 * (SRV_DEBUG_TIME, kumo-server --debug-time; clock.h).
 *
 * Calls: apply, store, record, hashspace, clock, rpc, cluster.c. Thread rule: main loop.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "binlog.h"
#include "log.h"
#include "apply.h"
#include "proto.h"
#include "record.h"
#include "server.h"
#include "xalloc.h"

#define REPLICATE_TIMEOUT 5.0
#define REPLICATE_RETRY_USEC 200000
#define FAILED_KEEP 1024 /* failed writes remembered for undo chains */

/* ---- replication of one write to the other owners ---- */

/* What a write made outside the view's lease (cluster.c) replaced: kept
 * until its replicas have answered, to be put back if one holds us fault. */
typedef struct write_undo {
    bool kept;    /* the write changed the record, and this is what was there */
    bool had;     /* there was a record (else the write created the key) */
    uint8_t *old; /* its bytes (malloc'd) */
    size_t oldlen;
} write_undo;

typedef struct repl repl;

/* One replica of a write: retried -S/-D times while it is still an owner. */
typedef struct repl_to {
    repl *r;
    net_addr to;
    int tries;
    bool maybe_applied; /* a try failed in a way that may have written it there (a timeout, a lost link) */
} repl_to;

/* A write on its way to the other owners: one allocation holds it, its
 * targets and the bytes they are sent (a request's mallocs were a tenth of
 * a coordinator's work). */
struct repl {
    server *s;
    rpc_conn *client; /* held until the reply */
    uint32_t msgid;
    int waiting;
    int targets;       /* replicas sent to */
    int refused_clean; /* of them, those that refused it because they hold us fault (handle_replicate),
                        * with no earlier try that may have written it */
    bool failed;
    bool undone; /* failed, and our own record of it undone */
    int code;
    uint64_t ct;
    uint64_t number;
    uint8_t *value; /* OP_GAT, OP_INCR, OP_DECR: the record to return (in rec's tail) */
    size_t vlen;
    uint64_t hash;
    uint64_t epoch; /* s->write_epoch when the targets were chosen */
    size_t klen, rlen;
    int max_tries;
    char why[96];
    write_undo undo; /* outside the view's lease: what the write replaced */
    repl_to to[2 * KUMO_REPLICAS];
    uint8_t rec[]; /* dbkey | record, resent on a retry; then the value to return */
};

static void pack_result(rpc_conn *c, uint32_t msgid, int code, uint64_t ct, uint64_t number, const void *value,
                        size_t vlen)
{
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint32(pk, (uint32_t)code);
    msgpack_pack_uint64(pk, ct);
    msgpack_pack_uint64(pk, number);
    if (value) rpc_pack_bytes(pk, value, vlen);
    else msgpack_pack_nil(pk);
    rpc_call_end(c);
}

static void reply_write(repl *r)
{
    if (r->undone && r->refused_clean == r->targets) {
        /* Every replica refused it at once and ours is undone: not applied,
         * so the gateway may send it again to the coordinator it knows, an
         * incr or an append too (router.c failed). */
        rpc_reply_error(r->client, r->msgid, ERR_OBSOLETE_HS);
    } else if (r->failed) {
        rpc_reply_error(r->client, r->msgid, "replication failed: %s", r->why);
    } else {
        pack_result(r->client, r->msgid, r->code, r->ct, r->number, r->value, r->vlen);
    }
}

/* A failed write undone (or not: a later one was stored), and what it
 * replaced. Several writes of one key may be in flight when they fail
 * (requests that waited in a socket run one after the other), each
 * replacing the one before; undoing the last puts back the one before it,
 * itself failed. So undo() follows these from what a failed write replaced
 * back to a record that is not such a write. Kept until no write is in
 * flight. */
typedef struct failed_write {
    struct failed_write *next;
    server *s;
    uint64_t ct;
    write_undo base; /* owns base.old */
    size_t klen;
    uint8_t key[]; /* dbkey: a ClockTime alone may be another server's too */
} failed_write;

static const write_undo *failed_base(const failed_write *of, uint64_t ct)
{
    for (const failed_write *e = of->s->failed_writes; e; e = e->next)
        if (e->ct == ct && e->klen == of->klen && memcmp(e->key, of->key, of->klen) == 0) return &e->base;
    return NULL;
}

static void failed_free_from(failed_write *e)
{
    while (e) {
        failed_write *next = e->next;
        free(e->base.old);
        free(e);
        e = next;
    }
}

static void failed_forget(server *s)
{
    failed_free_from(s->failed_writes);
    s->failed_writes = NULL;
    s->nfailed_writes = 0;
}

/* Keep the FAILED_KEEP newest: a chain is a few writes of one key in
 * flight together, so the oldest are long done. */
static void failed_trim(server *s)
{
    failed_write *e = s->failed_writes;
    for (int i = 1; e && i < FAILED_KEEP; i++) e = e->next;
    if (!e) return;
    failed_free_from(e->next);
    e->next = NULL;
    s->nfailed_writes = FAILED_KEEP;
}

/* store_modify callback of undo(): if the write's record is still the one
 * stored, put back the oldest record of the chain it replaced. */
static store_verdict undo_cb(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    const failed_write *e = arg;
    if (!old || oldlen < RECORD_TOMBSTONE || record_clocktime(old, oldlen) != e->ct) return STORE_KEEP;
    const write_undo *b = &e->base, *before;
    while (b->had && b->oldlen >= RECORD_TOMBSTONE && (before = failed_base(e, record_clocktime(b->old, b->oldlen))))
        b = before; /* ClockTimes fall along the chain: it ends */
    if (!b->had) return STORE_REMOVE;
    *out = b->old;
    *outlen = b->oldlen;
    return STORE_WRITE;
}

/* A write made outside the view's lease (cluster.c) failed: a replica
 * refused it because it holds us fault, or none answered (cut off, or
 * stopped, as we may have been). Such a write may have run on a copy that
 * missed what the owners that coordinated meanwhile acknowledged (an incr
 * from an old count, an append to an old list), and its ClockTime, the
 * newest, would win over every one of them. So what it replaced goes back,
 * unless a newer record replaced the write meanwhile (a later write of
 * ours, which puts back the chain when it fails in turn, or a replica's).
 * A failed write may be applied or not, so a legitimate one loses nothing
 * it was promised. Returns whether our record of it was replaced. A write
 * made inside the lease stays: every manager had just confirmed our view. */
static bool undo(repl *r)
{
    server *s = r->s;
    char err[KUMO_ERRLEN];
    if (!r->undo.kept) return false;
    failed_write *e = malloc(sizeof(*e) + r->klen);
    if (!e) {
        log_error("undo a failed write: out of memory");
        return false;
    }
    *e = (failed_write){.next = s->failed_writes, .ct = r->ct, .base = r->undo, .s = s, .klen = r->klen};
    memcpy(e->key, r->rec, r->klen);
    r->undo = (write_undo){0};
    s->failed_writes = e;
    if (++s->nfailed_writes > 2 * FAILED_KEEP) failed_trim(s); /* writes never all done: keep the newest */
    int rc = store_modify(s->db, r->rec, r->klen, undo_cb, e, err);
    if (rc < 0) log_error("undo a failed write: %s", err);
    return rc > 0;
}

static void repl_finish(repl *r)
{
    server *s = r->s;
    if (--r->waiting > 0) return;
    s->writes_inflight--;
    if (r->failed) r->undone = undo(r);
    if (r->epoch != s->write_epoch) s->writes_old--;
    if (r->client) {
        reply_write(r);
        rpc_release(r->client);
    }
    free(r->undo.old);
    free(r);
    if (s->writes_inflight == 0) failed_forget(s);
}

static void repl_send(repl_to *t);

static void repl_retry_cb(evutil_socket_t fd, short what, void *arg) { repl_send(arg); }

/* Whether a replica's error is handle_replicate's refusal of a sender it
 * holds fault. */
static bool refused_as_stale(const msgpack_object *result)
{
    return result && result->type == MSGPACK_OBJECT_STR && result->via.str.size == strlen(ERR_OBSOLETE_HS) &&
           memcmp(result->via.str.ptr, ERR_OBSOLETE_HS, result->via.str.size) == 0;
}

static void repl_done(void *arg, rpc_status st, const msgpack_object *result)
{
    repl_to *t = arg;
    repl *r = t->r;
    server *s = r->s;
    if (st == RPC_OK && result && result->type == MSGPACK_OBJECT_POSITIVE_INTEGER && result->via.u64 > r->ct) {
        /* The replica holds a newer ClockTime than ours: a coordinator before
         * us (this key moved) stamped it with a clock ahead of ours, so our
         * write would lose to an older one. Fail it, and move our clock past
         * that stamp so the gateway's retry is stamped newer. */
        clock_update(&s->clock, result->via.u64);
        if (!r->failed) {
            char buf[NET_ADDRSTRLEN];
            r->failed = true;
            snprintf(r->why, sizeof(r->why), "%s: holds a newer version", net_format(&t->to, buf, sizeof(buf)));
            log_warn("replication failed: %s", r->why);
        }
    }
    if (st == RPC_ERR_REMOTE && refused_as_stale(result)) {
        /* The replica holds us fault (cluster.c, a stale view): no retry. */
        r->refused_clean += !t->maybe_applied;
        cluster_stale_view(s, &t->to);
        if (!r->failed) {
            char buf[NET_ADDRSTRLEN];
            r->failed = true;
            snprintf(r->why, sizeof(r->why), "%s: %s", net_format(&t->to, buf, sizeof(buf)), ERR_OBSOLETE_HS);
        }
        repl_finish(r);
        return;
    }
    if (st != RPC_OK) {
        t->maybe_applied |= st != RPC_ERR_UNSENT;
        /* A replica that is no longer an owner (the manager marked it fault
         * meanwhile) owes us nothing; one that still is gets another try. */
        bool owner = hashspace_is_owner(s->whs, r->hash, &t->to) || hashspace_is_owner(s->rhs, r->hash, &t->to);
        if (owner && ++t->tries <= r->max_tries && !s->stopping) {
            s->repl_retries++;
            struct timeval tv = {0, REPLICATE_RETRY_USEC};
            event_base_once(s->base, -1, EV_TIMEOUT, repl_retry_cb, t, &tv);
            return;
        }
        if (owner) s->repl_failures++;
        if (owner && !r->failed) {
            char buf[NET_ADDRSTRLEN], why[KUMO_ERRLEN];
            r->failed = true;
            snprintf(r->why, sizeof(r->why), "%s: %s", net_format(&t->to, buf, sizeof(buf)),
                     rpc_strerror(st, result, why, sizeof(why)));
            log_warn("replication failed: %s", r->why);
            binlog_event(LOG_LVL_WARN, "replicate_failed", BL_BYTES("key", r->rec + 8, r->klen - 8), BL_ADDR("to", &t->to), BL_UINT("clocktime", r->ct), BL_STR("error", r->why));
        }
    }
    repl_finish(r);
}

static void repl_send(repl_to *t)
{
    repl *r = t->r;
    rpc_conn *pc = cluster_peer(r->s, &t->to);
    if (!pc) {
        repl_done(t, RPC_ERR_LOST, NULL);
        return;
    }
    msgpack_packer *pk = rpc_call_begin(pc, SRV_REPLICATE, REPLICATE_TIMEOUT, repl_done, t);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint32(pk, 0);
    rpc_pack_bytes(pk, r->rec, r->klen);
    rpc_pack_bytes(pk, r->rec + r->klen, r->rlen);
    rpc_call_end(pc);
}

/* Collect the nodes that must receive a write of `hash` besides this one:
 * the other live owners in whs and, while a replace runs, the live rhs
 * owners that are not among them. */
static size_t replicas(server *s, uint64_t hash, net_addr out[2 * KUMO_REPLICAS])
{
    uint32_t idx[KUMO_REPLICAS];
    size_t n = 0;
    hashspace *spaces[2] = {s->whs, s->rhs};
    for (int k = 0; k < 2; k++) {
        if (k == 1 && s->rhs == s->whs) break;
        size_t m = hashspace_live_owners(spaces[k], hash, idx);
        for (size_t i = 0; i < m; i++) {
            const net_addr *a = &spaces[k]->ring.nodes[idx[i]].addr;
            if (net_equal(a, &s->self)) continue;
            bool dup = false;
            for (size_t j = 0; j < n; j++) dup = dup || net_equal(&out[j], a);
            if (!dup) out[n++] = *a;
        }
    }
    return n;
}

/* Send `val` to every replica; answer the client when all are done (or
 * now if async). Takes care of the reply in every case. */
static void replicate(server *s, rpc_conn *client, uint32_t msgid, uint64_t hash, const char *key,
                      size_t klen, const write_ctx *w, write_undo *u)
{
    net_addr to[2 * KUMO_REPLICAS];
    size_t n = replicas(s, hash, to);
    const void *val = w->out;
    size_t vlen = w->outlen;
    /* Outside the view's lease a write may be undone (undo), so it is not
     * acknowledged before its replicas answered, async or not. */
    bool async = (w->wflags & WF_ASYNC) && !u->kept;
    bool with_value = w->op == OP_GAT || w->op == OP_INCR || w->op == OP_DECR || w->op == OP_MG_WIN;
    size_t reclen = n > 0 ? klen + vlen : 0;
    repl *r = xmalloc(sizeof(*r) + reclen + (with_value ? vlen : 0));
    memset(r, 0, sizeof(*r));
    r->s = s;
    r->epoch = s->write_epoch;
    s->writes_inflight++;
    r->code = w->code;
    r->ct = w->ct;
    r->number = w->number;
    if (with_value) {
        r->value = r->rec + reclen;
        memcpy(r->value, val, vlen);
        r->vlen = vlen;
    }
    r->waiting = (int)n + 1; /* +1: our own reference, dropped below */
    r->targets = (int)n;
    r->undo = *u; /* ours now */
    *u = (write_undo){0};
    if (!async) {
        r->client = client;
        r->msgid = msgid;
        rpc_hold(client);
    } else {
        r->client = NULL;
        repl tmp = *r;
        tmp.client = client;
        tmp.msgid = msgid;
        reply_write(&tmp);
    }
    r->hash = hash;
    r->max_tries = w->op == OP_DELETE_INTERNAL ? s->cfg->delete_retries : s->cfg->set_retries;
    r->klen = klen;
    r->rlen = vlen;
    if (n > 0) {
        memcpy(r->rec, key, klen);
        memcpy(r->rec + klen, val, vlen);
    }
    for (size_t i = 0; i < n; i++) {
        repl_to *t = &r->to[i];
        t->r = r;
        t->to = to[i];
        repl_send(t);
    }
    repl_finish(r);
}

/* ---- handlers ---- */

typedef struct keeping {
    store_modify_fn fn;
    write_ctx *w;
    write_undo *u;
} keeping;

static store_verdict apply_keeping(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    keeping *k = arg;
    store_verdict v = k->fn(k->w, old, oldlen, out, outlen);
    if (v != STORE_KEEP) {
        k->u->kept = true;
        k->u->had = old != NULL;
        if (old) {
            k->u->old = xmalloc(oldlen);
            memcpy(k->u->old, old, oldlen);
            k->u->oldlen = oldlen;
        }
    }
    return v;
}

/* Run a write at its coordinator: fn (apply_set, apply_delete) over the
 * stored record, atomically. Outside the view's lease what it replaces is
 * kept in *u (the caller frees u->old unless replicate took it). */
static int apply_write(server *s, const char *key, size_t klen, store_modify_fn fn, write_ctx *w, write_undo *u,
                       char *err)
{
    if (!cluster_view_leased(s)) {
        keeping k = {.fn = fn, .w = w, .u = u};
        return store_modify(s->db, key, klen, apply_keeping, &k, err);
    }
    if (fn == apply_set && apply_blind(w)) return store_modify_blind(s->db, key, klen, fn, w, err);
    return store_modify(s->db, key, klen, fn, w, err);
}

/* Whether this server coordinates writes of hash (hashspace_coordinator):
 * never while it is catching up. */
static bool is_coordinator(server *s, uint64_t hash)
{
    if (s->stale_view) return false;
    const net_addr *c = hashspace_coordinator(s->whs, s->rhs, hash);
    return c && net_equal(c, &s->self);
}

static bool check_key(rpc_conn *c, uint32_t msgid, const char *key, size_t klen)
{
    if (klen <= RECORD_KEY_HEADER) {
        rpc_reply_error(c, msgid, "bad key");
        return false;
    }
    return true;
}

/* One key of a get. Returns 1 with the stored bytes in *v (the caller frees
 * them), 0 for a miss, -1 when the key is malformed (*why says so) or this
 * server is not one of its live owners. */
static int get_one(server *s, const char *key, size_t klen, void **v, size_t *vlen, const char **why)
{
    *v = NULL;
    if (klen <= RECORD_KEY_HEADER) {
        *why = "bad key";
        return -1;
    }
    uint64_t hash = record_key_hash(key, klen);
    if (!hashspace_is_owner(s->rhs, hash, &s->self) && !hashspace_is_owner(s->whs, hash, &s->self)) {
        *why = ERR_OBSOLETE_HS;
        return -1;
    }
    /* Still catching up: this copy may lack acknowledged writes, so it must
     * not answer for the cluster (a gateway with an older hash space asked;
     * the refusal sends it to an in-sync owner). */
    if (s->catching_up) {
        *why = ERR_CATCHING_UP;
        return -1;
    }
    if (s->stale_view) { /* marked fault while it did not run: its copy may be old */
        *why = ERR_OBSOLETE_HS;
        return -1;
    }
    s->cmd_get++;
    *v = store_get(s->db, key, klen, vlen);
    record_value rv;
    uint32_t now = clock_now_seconds(&s->clock);
    if (*v && apply_live(*v, *vlen, now, clock_shift(now, s->debug_offset), s->flush_floor, &rv)) return 1;
    free(*v);
    *v = NULL;
    return 0;
}

static void handle_get(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const char *key, *why;
    size_t klen, vlen;
    void *v;
    if (!rpc_arg_bytes(params, 0, &key, &klen)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    int rc = get_one(s, key, klen, &v, &vlen, &why);
    if (rc < 0) {
        rpc_reply_error(c, msgid, "%s", why);
    } else if (rc == 0) {
        rpc_reply_nil(c, msgid);
    } else {
        rpc_pack_bytes(rpc_reply_begin(c, msgid), v, vlen);
        rpc_call_end(c);
    }
    free(v);
}

/* The gets a gateway collected for this server in one loop turn: one answer
 * per key, in order, each the value, nil or the error a lone SRV_GET would
 * have answered (the gateway retries those keys elsewhere). */
static void handle_get_many(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const msgpack_object *keys = rpc_arg(params, 0);
    if (!keys || keys->type != MSGPACK_OBJECT_ARRAY || keys->via.array.size > SRV_GET_MANY_MAX) {
        rpc_reply_error(c, msgid, "bad params: an array of at most %d keys", SRV_GET_MANY_MAX);
        return;
    }
    uint32_t n = keys->via.array.size;
    for (uint32_t i = 0; i < n; i++) {
        const char *key;
        size_t klen;
        if (!rpc_arg_bytes(keys, i, &key, &klen)) {
            rpc_reply_error(c, msgid, "bad params: key %u is not bytes", i);
            return;
        }
    }
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        const char *key, *why;
        size_t klen, vlen;
        void *v;
        rpc_arg_bytes(keys, i, &key, &klen);
        int rc = get_one(s, key, klen, &v, &vlen, &why);
        if (rc < 0) rpc_pack_str(pk, why);
        else if (rc == 0) msgpack_pack_nil(pk);
        else rpc_pack_bytes(pk, v, vlen);
        free(v);
    }
    rpc_call_end(c);
}

static void handle_set(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t op, flags, cas, delta = 0, initial = 0;
    const char *key, *val;
    size_t klen, vlen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_uint(params, 0, &op) || !rpc_arg_uint(params, 1, &flags) ||
        !rpc_arg_bytes(params, 2, &key, &klen) || !rpc_arg_bytes(params, 3, &val, &vlen) ||
        !rpc_arg_uint(params, 4, &cas)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    rpc_arg_uint(params, 5, &delta);
    rpc_arg_uint(params, 6, &initial);
    record_value parsed;
    if (!check_key(c, msgid, key, klen)) return;
    if (record_value_parse(val, vlen, &parsed) < 0 || parsed.tombstone) {
        rpc_reply_error(c, msgid, "bad value");
        return;
    }
    uint64_t hash = record_key_hash(key, klen);
    if (!is_coordinator(s, hash)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    s->cmd_set++;
    uint8_t *copy = xmalloc(vlen);
    memcpy(copy, val, vlen);
    /* The write's time is its ClockTime's: a relative exptime ends that
     * many seconds after it (on the debug clock, if one is set), the same
     * moment for every owner. */
    uint64_t ct = clock_next(&s->clock);
    write_ctx w = {.op = (int)op, .wflags = (uint32_t)flags, .cas = cas, .delta = delta, .initial = initial, .ct = ct, .floor = s->flush_floor, .now = clock_seconds(ct), .exp_now = clock_shift(clock_seconds(ct), s->debug_offset), .val = copy, .vlen = vlen};
    record_set_clocktime(copy, w.ct);
    record_resolve_exptime(copy, vlen, w.exp_now);
    write_undo u = {0};
    int rc = apply_write(s, key, klen, apply_set, &w, &u, err);
    if (rc < 0) {
        log_error("set: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
    } else if (!w.written) {
        pack_result(c, msgid, w.code, 0, 0, w.op == OP_MG_WIN ? w.out : NULL, w.outlen);
    } else {
        replicate(s, c, msgid, hash, key, klen, &w, &u);
    }
    free(u.old);
    free(w.buf);
    free(copy);
}

static void handle_delete(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t flags, cas = 0;
    const char *key;
    size_t klen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_uint(params, 0, &flags) || !rpc_arg_bytes(params, 1, &key, &klen)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    rpc_arg_uint(params, 2, &cas);
    if (!check_key(c, msgid, key, klen)) return;
    uint64_t hash = record_key_hash(key, klen);
    if (!is_coordinator(s, hash)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    s->cmd_delete++;
    uint64_t ct = clock_next(&s->clock);
    write_ctx w = {.op = OP_DELETE_INTERNAL, .wflags = (uint32_t)flags, .cas = cas, .ct = ct, .floor = s->flush_floor, .now = clock_seconds(ct), .exp_now = clock_shift(clock_seconds(ct), s->debug_offset)};
    write_undo u = {0};
    if (apply_write(s, key, klen, apply_delete, &w, &u, err) < 0) {
        log_error("delete: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
    } else if (!w.written && !w.resend) { /* a cas mismatch */
        pack_result(c, msgid, w.code, 0, 0, NULL, 0);
    } else {
        gc_tombstone(s, key, klen, w.out, w.outlen);
        replicate(s, c, msgid, hash, key, klen, &w, &u);
    }
    free(u.old);
}

static void handle_replicate(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t flags;
    const char *key, *val;
    size_t klen, vlen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_uint(params, 0, &flags) || !rpc_arg_bytes(params, 1, &key, &klen) ||
        !rpc_arg_bytes(params, 2, &val, &vlen) || klen <= RECORD_KEY_HEADER || vlen < RECORD_TOMBSTONE) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    /* A sender our whs marks fault was lost and runs on a stale hash space:
     * its write ran on a copy that misses what its keys' coordinators since
     * acknowledged, and, stamped by its clock, would win over them here.
     * Refused before anything is taken from it, its clock included; the
     * sender stops serving (repl_done). Any other difference of views is
     * accepted: an extra copy is removed by the next replace, a refused one
     * would fail the write. */
    if (cluster_peer_is_fault(s, c)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    clock_update(&s->clock, record_clocktime(val, vlen));
    int rc = flags & WF_MEND ? store_mend(s->db, key, klen, val, vlen, err) : store_update(s->db, key, klen, val, vlen, err);
    if (rc < 0) {
        log_error("replicate: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
        return;
    }
    if (rc == 1) gc_tombstone(s, key, klen, val, vlen);
    if (rc == 0) { /* kept ours: if it is newer, say so (repl_done) */
        size_t n;
        void *held = store_get(s->db, key, klen, &n);
        uint64_t held_ct = held && n >= RECORD_TOMBSTONE ? record_clocktime(held, n) : 0;
        free(held);
        if (held_ct > record_clocktime(val, vlen)) {
            rpc_reply_uint(c, msgid, held_ct);
            return;
        }
    }
    rpc_reply_bool(c, msgid, rc == 1);
}

static void handle_status(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t what;
    if (!rpc_arg_uint(params, 0, &what)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    switch (what) {
    case ST_PID: rpc_reply_uint(c, msgid, (uint64_t)getpid()); break;
    case ST_UPTIME: rpc_reply_uint(c, msgid, (uint64_t)(time(NULL) - s->started)); break;
    case ST_TIME: rpc_reply_uint(c, msgid, (uint64_t)time(NULL)); break;
    case ST_VERSION: rpc_pack_str(rpc_reply_begin(c, msgid), PACKAGE_VERSION); break;
    case ST_CMD_GET: rpc_reply_uint(c, msgid, s->cmd_get); break;
    case ST_CMD_SET: rpc_reply_uint(c, msgid, s->cmd_set); break;
    case ST_CMD_DELETE: rpc_reply_uint(c, msgid, s->cmd_delete); break;
    case ST_ITEMS: rpc_reply_uint(c, msgid, store_count(s->db)); break;
    case ST_CLOCKTIME: rpc_reply_uint(c, msgid, clock_peek(&s->clock)); break;
    case ST_RHS: hashspace_pack(s->rhs, rpc_reply_begin(c, msgid)); break;
    case ST_WHS: hashspace_pack(s->whs, rpc_reply_begin(c, msgid)); break;
    case ST_DB_BYTES: rpc_reply_uint(c, msgid, store_file_size(s->db)); break;
    case ST_REPLACE: {
        uint64_t flags = 0;
        int at = hashspace_find(s->whs, &s->self);
        if (at < 0 || !s->whs->ring.nodes[at].active) flags |= 0x01; /* not an attached, live member */
        else if (s->whs->ring.nodes[at].catchup) flags |= 0x10;      /* catching up */
        if (s->whs->clocktime != s->rhs->clocktime) flags |= 0x02;
        if (s->replace_copying) flags |= 0x04;
        if (s->replace_deleting) flags |= 0x08;
        rpc_reply_uint(c, msgid, flags);
        break;
    }
    case ST_REPLACE_MOVED: {
        msgpack_packer *pk = rpc_reply_begin(c, msgid);
        msgpack_pack_array(pk, 4);
        msgpack_pack_uint64(pk, s->moved_sent);
        msgpack_pack_uint64(pk, s->moved_sent_bytes);
        msgpack_pack_uint64(pk, s->moved_recv);
        msgpack_pack_uint64(pk, s->moved_recv_bytes);
        rpc_call_end(c);
        break;
    }
    default: rpc_reply_error(c, msgid, "unknown status %llu", (unsigned long long)what); break;
    }
}

/* ---- walks over the whole database, in steps ---- */

/* Records per loop turn: a few milliseconds, so requests and keepalives
 * wait at most that long behind a walk. */
#define WALK_STEP 500
/* ...and at most this many bytes of keys and values: with 64 KiB values, 500
 * records compressed for each destination of a copy took long enough to
 * silence the server's keepalives. */
#define WALK_STEP_BYTES (1024 * 1024)

typedef struct walk {
    server *s;
    store_iter_fn fn;
    data_walk_done_fn done;
    void *arg;
    bool started;
} walk;

static void walk_cb(evutil_socket_t fd, short what, void *arg)
{
    walk *w = arg;
    server *s = w->s;
    char err[KUMO_ERRLEN];
    int rc;
    if (s->stopping) {
        if (w->started) store_walk_abort(s->db);
        rc = -1;
        snprintf(err, sizeof(err), "shutting down");
    } else if (!w->started && (rc = store_walk_begin(s->db, err)) != 0) {
        if (rc == 1) { /* another walk has the iterator: wait for it */
            struct timeval tv = {0, 100000};
            event_base_once(s->base, -1, EV_TIMEOUT, walk_cb, w, &tv);
            return;
        }
    } else {
        w->started = true;
        rc = store_walk_step(s->db, w->fn, w->arg, WALK_STEP, WALK_STEP_BYTES, err);
        if (rc == 1) {
            /* Not a zero timeout: libevent activates a zero-timeout
             * event_base_once at once, in the same pass over the active
             * queue, so the walk would run to its end without the loop ever
             * polling its sockets. A whole replace walk of 1M keys starved
             * every request and keepalive for seconds, and the manager
             * declared the servers lost. A 1 us timer waits for the next
             * loop turn, after the sockets are served. */
            struct timeval next_turn = {0, 1};
            event_base_once(s->base, -1, EV_TIMEOUT, walk_cb, w, &next_turn);
            return;
        }
    }
    if (rc < 0) log_error("database walk: %s", err);
    damage_walked(s);
    w->done(s, w->arg, rc == 0);
    free(w);
}

void data_walk(server *s, store_iter_fn fn, data_walk_done_fn done, void *arg)
{
    walk *w = calloc(1, sizeof(*w));
    if (!w) {
        done(s, arg, false);
        return;
    }
    *w = (walk){.s = s, .fn = fn, .done = done, .arg = arg};
    struct timeval zero = {0, 0};
    event_base_once(s->base, -1, EV_TIMEOUT, walk_cb, w, &zero);
}

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- flush_all ---- */

static char *flush_path(server *s)
{
    char *p = NULL;
    if (asprintf(&p, "%s.flush", store_path(s->db)) < 0) return NULL;
    return p;
}

void data_load_flush(server *s)
{
    char *path = flush_path(s);
    FILE *f = path ? fopen(path, "r") : NULL;
    unsigned long long v;
    if (f && fscanf(f, "%llu", &v) == 1) {
        s->flush_floor = v;
        log_info("flush_all floor %llu from %s", v, path);
    }
    if (f) fclose(f);
    free(path);
}

static int save_flush(server *s, char *err)
{
    char *path = flush_path(s), line[32];
    if (!path) return kumo_err(err, "out of memory");
    int n = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)s->flush_floor);
    int rc = kumo_save_file(path, line, (size_t)n, err);
    free(path);
    return rc;
}

typedef struct sweep_ctx {
    server *s;
    uint64_t removed;
} sweep_ctx;

static void sweep_done(server *s, void *arg, bool ok)
{
    sweep_ctx *x = arg;
    log_info("flush_all: %llu records removed", (unsigned long long)x->removed);
    free(x);
}

static int sweep_record(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    sweep_ctx *x = arg;
    char err[KUMO_ERRLEN];
    if (record_clocktime(val, vlen) < x->s->flush_floor &&
        store_remove_if_older(x->s->db, key, klen, x->s->flush_floor - 1, err) == 1)
        x->removed++;
    return 0;
}

/* The flush time has come: free the space of what it invalidated. */
static void flush_sweep(evutil_socket_t fd, short what, void *arg)
{
    server *s = arg;
    sweep_ctx *x = calloc(1, sizeof(*x));
    if (!x) return;
    x->s = s;
    data_walk(s, sweep_record, sweep_done, x);
}

static void handle_flush(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t delay = 0;
    char err[KUMO_ERRLEN];
    rpc_arg_uint(params, 0, &delay);
    if (delay > 60u * 60 * 24 * 365) delay = 60u * 60 * 24 * 365;
    /* Everything written before the flush moment goes; the moment is a
     * ClockTime so a write in the same second after a plain flush_all stays. */
    uint64_t floor = delay == 0 ? clock_next(&s->clock) : ((uint64_t)clock_now_seconds(&s->clock) + delay) << 32;
    if (floor > s->flush_floor) s->flush_floor = floor;
    if (save_flush(s, err) < 0) {
        log_error("flush_all: %s", err);
        rpc_reply_error(c, msgid, "%s", err);
        return;
    }
    if (!s->flush_timer) s->flush_timer = evtimer_new(s->base, flush_sweep, s);
    struct timeval tv = {(time_t)delay, 0};
    evtimer_add(s->flush_timer, &tv);
    rpc_reply_bool(c, msgid, true);
}

/* ---- the debug clock ---- */

/* SRV_DEBUG_TIME [offset]: the gateway's debugtime (kumo-server
 * --debug-time only). The offset moves the time exptimes are judged by;
 * the ClockTimes, and so the order of writes and the skew check, stay on
 * the real clocks. A delayed flush_all still to come is due as many
 * seconds sooner as the clock moved on (memcached counts its delay on the
 * same clock as exptimes); one whose moment has now passed takes effect at
 * once, for everything written so far. */
static void handle_debug_time(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    int64_t offset;
    char err[KUMO_ERRLEN];
    if (!s->cfg->debug_time) {
        rpc_reply_error(c, msgid, "debug clock not enabled (kumo-server --debug-time)");
        return;
    }
    if (!rpc_arg_int(params, 0, &offset) || offset < -CLOCK_DEBUG_MAX || offset > CLOCK_DEBUG_MAX) {
        rpc_reply_error(c, msgid, "bad params: an offset within %lld seconds", (long long)CLOCK_DEBUG_MAX);
        return;
    }
    int64_t moved = offset - s->debug_offset;
    s->debug_offset = offset;
    log_info("debug clock: offset %lld s", (long long)offset);
    uint32_t now = clock_now_seconds(&s->clock), due = clock_seconds(s->flush_floor);
    if (moved != 0 && due > now) {
        int64_t left = (int64_t)due - (int64_t)now - moved;
        if (left <= 0) s->flush_floor = clock_next(&s->clock);
        else s->flush_floor = (uint64_t)clock_shift(now, left) << 32;
        if (save_flush(s, err) < 0) {
            log_error("debug clock: %s", err);
            rpc_reply_error(c, msgid, "%s", err);
            return;
        }
        if (!s->flush_timer) s->flush_timer = evtimer_new(s->base, flush_sweep, s);
        struct timeval tv = {(time_t)(left > 0 ? left : 0), 0};
        evtimer_add(s->flush_timer, &tv);
    }
    rpc_reply_bool(c, msgid, true);
}

/* ---- backup ---- */

/* A backup is a walk that copies every record into a new database beside
 * ours (dst.tmp, renamed to dst when complete), a few thousand records per
 * loop turn, so the server keeps serving meanwhile. Each record is copied
 * whole; writes made during the walk may or may not be in it, which is what
 * kumomergedb's newest-wins merge expects of backups. */
typedef struct backup_job {
    server *s;
    rpc_conn *client; /* held */
    uint32_t msgid;
    store *dst;
    char *path, *tmp;
    uint64_t records;
    uint64_t damage; /* damaged spots of the database when the walk began */
    bool failed;
    char err[KUMO_ERRLEN];
} backup_job;

static int backup_record(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    backup_job *b = arg;
    if (store_put(b->dst, key, klen, val, vlen, b->err) < 0) {
        b->failed = true;
        return 1;
    }
    b->records++;
    b->s->backup.walked++;
    return 0;
}

static void backup_walked(server *s, void *arg, bool ok)
{
    backup_job *b = arg;
    if (!ok && !b->failed) {
        b->failed = true;
        snprintf(b->err, sizeof(b->err), "%s: the database walk failed", store_path(s->db));
    }
    uint64_t spots, bytes;
    store_damage(s->db, &spots, &bytes);
    if (spots > b->damage && !b->failed) { /* a backup that lacks records must not pass for a whole one */
        b->failed = true;
        snprintf(b->err, sizeof(b->err), "%s: the database is damaged (%llu bytes stepped over)", store_path(s->db),
                 (unsigned long long)bytes);
    }
    store_close(b->dst); /* syncs the copy */
    s->backup.ended = progress_now();
    if (!b->failed && rename(b->tmp, b->path) != 0) {
        b->failed = true;
        snprintf(b->err, sizeof(b->err), "%s: %s", b->path, strerror(errno));
    }
    if (b->failed) {
        unlink(b->tmp);
        log_error("backup: %s", b->err);
        rpc_reply_error(b->client, b->msgid, "%s", b->err);
    } else {
        log_info("backup written to %s (%llu records)", b->path, (unsigned long long)b->records);
        rpc_pack_str(rpc_reply_begin(b->client, b->msgid), b->path);
        rpc_call_end(b->client);
    }
    rpc_release(b->client);
    free(b->path);
    free(b->tmp);
    free(b);
}

static void handle_backup(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const char *sfx;
    size_t n;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_bytes(params, 0, &sfx, &n) || n == 0 || n > 64 || memchr(sfx, '/', n) || memchr(sfx, '#', n) || memchr(sfx, '\0', n) ||
        (n == 2 && memcmp(sfx, "..", 2) == 0)) {
        rpc_reply_error(c, msgid, "bad backup suffix (1 to 64 bytes, no '/' or '#')");
        return;
    }
    backup_job *b = calloc(1, sizeof(*b));
    if (!b || asprintf(&b->path, "%s-%.*s", store_path(s->db), (int)n, sfx) < 0 ||
        asprintf(&b->tmp, "%s.tmp", b->path) < 0) {
        if (b) free(b->path);
        free(b);
        rpc_reply_error(c, msgid, "out of memory");
        return;
    }
    struct stat st;
    if (lstat(b->tmp, &st) == 0 && S_ISREG(st.st_mode)) unlink(b->tmp); /* left by an interrupted backup */
    if (!(b->dst = store_open(b->tmp, err))) {
        log_error("backup: %s", err);
        rpc_reply_error(c, msgid, "%s", err);
        free(b->path);
        free(b->tmp);
        free(b);
        return;
    }
    b->s = s;
    b->client = c;
    b->msgid = msgid;
    rpc_hold(c);
    s->backup = (backup_progress){.started = progress_now(), .total = store_count(s->db)};
    uint64_t bytes;
    store_damage(s->db, &b->damage, &bytes);
    data_walk(s, backup_record, backup_walked, b);
}

void data_stop(server *s)
{
    if (s->flush_timer) event_free(s->flush_timer);
    s->flush_timer = NULL;
}

bool data_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_GET: handle_get(s, c, msgid, params); return true;
    case SRV_GET_MANY: handle_get_many(s, c, msgid, params); return true;
    case SRV_SET: handle_set(s, c, msgid, params); return true;
    case SRV_DELETE: handle_delete(s, c, msgid, params); return true;
    case SRV_FLUSH: handle_flush(s, c, msgid, params); return true;
    case SRV_DEBUG_TIME: handle_debug_time(s, c, msgid, params); return true;
    case SRV_BACKUP: handle_backup(s, c, msgid, params); return true;
    case SRV_REPLICATE: handle_replicate(s, c, msgid, params); return true;
    case SRV_STATUS: handle_status(s, c, msgid, params); return true;
    default: return false;
    }
}

/*
 * router — where each request goes, and what happens when it fails.
 *
 * The gateway holds the managers' latest whs and rhs. A get goes to the
 * first live owner of the key in rhs — or, when its connection has nothing
 * unanswered, to another live owner whose batch this turn already opened —
 * and on an error to the next owner, then the next-next; after each full
 * round it waits one tick and asks the managers for fresh hash spaces (-G
 * rounds in all). A write goes only to the
 * coordinator — the first live owner in whs — and is retried there after a
 * tick, with fresh hash spaces, -S/-D times: writes never fall back to
 * another node, because only the coordinator may order them.
 * A "not found" is an answer, not an error, and is never retried.
 *
 * Gets are batched: the gets of one loop turn bound for one server leave
 * together at the turn's end as one SRV_GET_MANY (one frame each way, one
 * reply to decode), or as a plain SRV_GET when there is only one. The batch
 * is sent by a job its first get queues on the loop's turn (turn.h), which
 * runs after the reads that filled it; the socket's own flush follows, so the
 * batch still costs no extra write. A write to that server sends the batch
 * first, so requests reach a server in the order they were made. A key the server answers with an error
 * fails alone and is retried at its next owner like any failed get.
 *
 * Calls: rpc, turn, hashspace, record, ring, log, daemon. Thread rule: its worker's loop (workers.c).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "gateway.h"
#include "links.h"
#include "binlog.h"
#include "log.h"
#include "proto.h"
#include "record.h"
#include "xalloc.h"

#define GET_TIMEOUT 2.0 /* then the next owner: reads see latency, not errors */
#define WRITE_TIMEOUT 10.0
#define HS_REQUEST_TIMEOUT 5.0

/* ---- hash spaces ---- */

static void notify_state(gateway *g)
{
    size_t active = 0; /* servers that may serve: in sync */
    for (size_t i = 0; i < g->whs->ring.nnodes; i++)
        active += g->whs->ring.nodes[i].active && !g->whs->ring.nodes[i].catchup;
    if (active > 0 && !g->ready_notified) {
        g->ready_notified = true;
        if (g->group->ready_one(g)) daemon_notify("READY=1");
    }
    if (g->index == 0)
        daemon_notify("STATUS=%s%s, %zu active servers",
                      g->managers && links_unreachable(g->managers) ? "no manager reachable (check -m/-p), " : "",
                      active ? "serving" : "waiting for servers", active);
}

static void adopt(gateway *g, const msgpack_object *pair)
{
    char err[KUMO_ERRLEN];
    if (pair->type != MSGPACK_OBJECT_ARRAY || pair->via.array.size < 2) return;
    hashspace *w = hashspace_unpack(&pair->via.array.ptr[0], err);
    hashspace *r = hashspace_unpack(&pair->via.array.ptr[1], err);
    if (!w || !r) {
        log_warn("bad hash space from manager: %s", err);
    } else {
        bool changed = false;
        hashspace *nw = hashspace_adopt(w, g->whs, true), *nr = hashspace_adopt(r, g->rhs, true);
        if (nw) {
            changed |= !hashspace_same_nodes(nw, g->whs);
            hashspace_unref(g->whs);
            g->whs = nw;
        }
        if (nr) {
            changed |= !hashspace_same_nodes(nr, g->rhs);
            hashspace_unref(g->rhs);
            g->rhs = nr;
        }
        if (changed) {
            log_info("new hash space: %zu servers", g->whs->ring.nnodes);
            binlog_event(LOG_LVL_INFO, "hash_space", BL_UINT("whs_ct", g->whs->clocktime), BL_UINT("rhs_ct", g->rhs->clocktime), BL_UINT("servers", g->whs->ring.nnodes));
            notify_state(g);
        }
    }
    hashspace_unref(w);
    hashspace_unref(r);
}

static void hs_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    if (st == RPC_OK) adopt(arg, result);
}

/* Ask every connected manager for its hash spaces, at most once a tick. */
static void refresh(gateway *g)
{
    double now = clock_mono();
    if (now - g->last_refresh < g->cfg->common.clock_interval) return;
    g->last_refresh = now;
    for (size_t i = 0; g->managers && i < links_count(g->managers); i++) {
        rpc_conn *c = links_conn(g->managers, i);
        if (!c) continue;
        msgpack_pack_array(rpc_call_begin(c, MGR_HS_REQUEST, HS_REQUEST_TIMEOUT, hs_reply, g), 0);
        rpc_call_end(c);
    }
}

/* ---- manager links (links.h) ---- */

static void manager_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    gateway *g = arg;
    if (method == GW_HS_PUSH) {
        adopt(g, params);
        rpc_reply_bool(c, msgid, true);
        return;
    }
    rpc_reply_error(c, msgid, "unknown method %u", method);
}

/* STATUS= says when no manager is reachable, and when one is again. */
static void manager_link(void *arg) { notify_state(arg); }

static void manager_hello(void *arg, rpc_conn *c) { notify_state(arg); }

/* Why nothing can serve a request whose key has no owner to go to, when
 * waiting will not help: no manager reachable (no fresh hash space can
 * come), or a hash space without a single active server. NULL: retry. */
static const char *nothing_serves(const gateway *g)
{
    if (g->managers && links_up(g->managers) == 0)
        return hashspace_blank(g->whs) ? "no manager reachable and no hash space yet" : "no manager reachable";
    if (!hashspace_blank(g->whs) && hashspace_empty(g->whs) && hashspace_empty(g->rhs)) return "no active server";
    return NULL;
}

/* ---- server connections ---- */

static void server_on_close(void *arg, rpc_conn *c)
{
    gateway *g = arg;
    for (size_t i = 0; i < g->nservers; i++)
        if (g->servers[i]->conn == c) g->servers[i]->conn = NULL;
}

static void server_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *p)
{
    rpc_reply_error(c, msgid, "a gateway serves no requests");
}

static void batch_cb(void *arg);

/* The server at addr, connected (or connecting); NULL only without memory. */
static gw_server *server_get(gateway *g, const net_addr *addr)
{
    gw_server *s = NULL;
    for (size_t i = 0; i < g->nservers && !s; i++)
        if (net_equal(&g->servers[i]->addr, addr)) s = g->servers[i];
    if (!s) {
        if (g->nservers == g->servers_cap) {
            size_t ncap = g->servers_cap ? g->servers_cap * 2 : 8;
            gw_server **ns = realloc(g->servers, ncap * sizeof(*ns));
            if (!ns) return NULL;
            g->servers = ns;
            g->servers_cap = ncap;
        }
        s = calloc(1, sizeof(*s));
        if (!s) return NULL;
        s->turn = turn_join(g->base);
        s->send_batch = (turn_job){.fn = batch_cb, .arg = s};
        if (!s->turn) {
            free(s);
            return NULL;
        }
        s->g = g;
        s->addr = *addr;
        g->servers[g->nservers++] = s;
    }
    if (!s->conn) {
        rpc_handlers h = {.on_request = server_on_request, .on_close = server_on_close, .arg = g};
        s->conn = rpc_connect(g->base, addr, g->cfg->common.connect_timeout, &h, &g->rpc_self);
    }
    return s->conn ? s : NULL;
}

static rpc_conn *server_conn(gateway *g, const net_addr *addr)
{
    gw_server *s = server_get(g, addr);
    return s ? s->conn : NULL;
}

/* ---- operations ---- */

enum { ROP_GET,
       ROP_SET,
       ROP_DELETE };

typedef struct rop {
    gateway *g;
    int kind;
    router_write w;
    uint64_t hash;
    int attempt;
    int max_attempts;
    bool any_owner; /* a get that may start at any live owner */
    unsigned first; /* a get: the owner (index among the live ones) tried first */
    double started;
    uint8_t *val;
    size_t vlen;
    router_get_fn get_fn;
    router_write_fn write_fn;
    void *arg;
    size_t dklen;
    uint8_t dbkey[]; /* be64(hash) | key */
} rop;

/* Operations with room for any memcached key, kept for this thread's next
 * ones (linked through `arg` while here): a get's own allocation, given
 * back when it ends. */
#define ROP_POOL_MAX 256
static _Thread_local rop *rop_pool;
static _Thread_local size_t rop_pooled;

void router_pool_drain(void)
{
    while (rop_pool) {
        rop *r = rop_pool;
        rop_pool = r->arg;
        free(r);
    }
    rop_pooled = 0;
}

static rop *rop_new(gateway *g, int kind, const char *key, size_t klen)
{
    /* Callers rely on callbacks never running inside the call; with no
     * memory for a few dozen bytes there is no sane way on (xalloc.h). */
    rop *r;
    if (klen <= KUMO_MAX_KEY && rop_pool) {
        r = rop_pool;
        rop_pool = r->arg;
        rop_pooled--;
        memset(r, 0, sizeof(*r));
    } else {
        r = xcalloc(1, sizeof(*r) + RECORD_KEY_HEADER + (klen <= KUMO_MAX_KEY ? KUMO_MAX_KEY : klen));
    }
    r->g = g;
    r->started = clock_mono();
    g->ops_inflight++;
    r->kind = kind;
    r->hash = ring_hash(key, klen);
    r->dklen = RECORD_KEY_HEADER + klen;
    record_key_write(r->dbkey, r->hash, key, klen);
    return r;
}

static void rop_free(rop *r)
{
    int kind = r->kind == ROP_GET ? GW_LAT_GET : r->kind == ROP_SET ? GW_LAT_WRITE
                                                                    : GW_LAT_DELETE;
    pthread_mutex_lock(&r->g->latency_lock);
    metrics_hist_observe(&r->g->latency[kind], clock_mono() - r->started);
    pthread_mutex_unlock(&r->g->latency_lock);
    if (r->attempt > 1) r->g->stats.retries += (uint64_t)(r->attempt - 1);
    r->g->ops_inflight--;
    free(r->val);
    if (r->dklen <= RECORD_KEY_HEADER + KUMO_MAX_KEY && rop_pooled < ROP_POOL_MAX) {
        r->arg = rop_pool;
        rop_pool = r;
        rop_pooled++;
        return;
    }
    free(r);
}

static void attempt(rop *r);

static void retry_cb(evutil_socket_t fd, short what, void *arg) { attempt(arg); }

static void retry_later(rop *r)
{
    struct timeval tv = clock_timeval(r->g->cfg->common.clock_interval);
    event_base_once(r->g->base, -1, EV_TIMEOUT, retry_cb, r, &tv);
}

static void finish_error_cb(evutil_socket_t fd, short what, void *arg)
{
    rop *r = arg;
    if (r->kind == ROP_GET) {
        r->get_fn(r->arg, false, NULL, 0);
    } else {
        router_result res = {.ok = false};
        r->write_fn(r->arg, &res);
    }
    rop_free(r);
}

/* Give up; the callback runs from the loop, never inside a router_* call. */
static void finish_error(rop *r, const char *why)
{
    struct timeval zero = {0, 0};
    r->g->stats.errors++;
    log_warn("%s of a key failed after %d attempts: %s",
             r->kind == ROP_GET ? "get" : r->kind == ROP_SET ? "write"
                                                             : "delete",
             r->attempt, why);
    binlog_event(LOG_LVL_WARN, r->kind == ROP_GET ? "get_failed" : r->kind == ROP_SET ? "set_failed"
                                                                                      : "delete_failed",
                 BL_BYTES("key", r->dbkey + 8, r->dklen - 8), BL_UINT("attempts", r->attempt), BL_STR("error", why));
    event_base_once(r->g->base, -1, EV_TIMEOUT, finish_error_cb, r, &zero);
}

/* Whether repeating the write gives the same result as doing it once. */
static bool idempotent(const rop *r)
{
    if (r->kind == ROP_GET || r->kind == ROP_DELETE) return true;
    return (r->w.op == OP_SET || r->w.op == OP_TOUCH || r->w.op == OP_GAT) && r->w.cas == 0;
}

/* Decide what to do after a failed attempt. */
static void failed(rop *r, rpc_status st, const msgpack_object *result)
{
    char why[KUMO_ERRLEN];
    rpc_strerror(st, result, why, sizeof(why));
    log_debug("attempt %d failed: %s", r->attempt, why);
    refresh(r->g);
    /* A write refused as "not mine" was not applied and is safe to repeat;
     * after any other failure (timeout, lost connection, a replica that did
     * not answer) it may have been applied, and an append or incr must not
     * be applied twice: the client hears the error instead. */
    if (r->g->stopping) {
        finish_error(r, why);
        return;
    }
    bool not_applied = st == RPC_ERR_UNSENT || (st == RPC_ERR_REMOTE && (!result || strcmp(why, ERR_OBSOLETE_HS) == 0));
    if (!idempotent(r) && !not_applied) {
        finish_error(r, why);
        return;
    }
    if (r->attempt >= r->max_attempts) {
        finish_error(r, why);
        return;
    }
    if (r->kind == ROP_GET && r->attempt % KUMO_REPLICAS != 0) attempt(r); /* next owner now */
    else retry_later(r);
}

static void get_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    rop *r = arg;
    if (st != RPC_OK) {
        failed(r, st, result);
        return;
    }
    if (result->type == MSGPACK_OBJECT_BIN) r->get_fn(r->arg, true, result->via.bin.ptr, result->via.bin.size);
    else r->get_fn(r->arg, true, NULL, 0);
    rop_free(r);
}

static void write_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    rop *r = arg;
    uint64_t code, ct;
    router_result res = {.ok = true};
    if (st == RPC_OK && (!rpc_arg_uint(result, 0, &code) || !rpc_arg_uint(result, 1, &ct))) {
        st = RPC_ERR_REMOTE;
        result = NULL;
    }
    if (st != RPC_OK) {
        failed(r, st, result);
        return;
    }
    res.code = (int)code;
    res.ct = ct;
    rpc_arg_uint(result, 2, &res.number);
    const char *v;
    if (rpc_arg_bytes(result, 3, &v, &res.vlen)) res.value = v;
    r->write_fn(r->arg, &res);
    rop_free(r);
}

/* One SRV_GET_MANY in flight: its gets, in the order of the keys. */
typedef struct get_batch {
    size_t n;
    rop *rops[];
} get_batch;

static void get_many_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    get_batch *b = arg;
    bool whole = st == RPC_OK && result->type == MSGPACK_OBJECT_ARRAY && result->via.array.size == b->n;
    for (size_t i = 0; i < b->n; i++) {
        rop *r = b->rops[i];
        if (!whole) {
            failed(r, st == RPC_OK ? RPC_ERR_REMOTE : st, st == RPC_OK ? NULL : result);
            continue;
        }
        const msgpack_object *o = &result->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_BIN) {
            r->get_fn(r->arg, true, o->via.bin.ptr, o->via.bin.size);
        } else if (o->type == MSGPACK_OBJECT_NIL) {
            r->get_fn(r->arg, true, NULL, 0);
        } else {
            failed(r, RPC_ERR_REMOTE, o->type == MSGPACK_OBJECT_STR ? o : NULL);
            continue;
        }
        rop_free(r);
    }
    free(b);
}

/* Send what s->batch holds: SRV_GET for one key, SRV_GET_MANY for more. */
static void send_batch(gw_server *s)
{
    size_t n = s->nbatch;
    if (n == 0) return;
    s->nbatch = 0;
    gateway *g = s->g;
    if (g->open_batch == s) g->open_batch = NULL;
    rpc_conn *c = server_conn(g, &s->addr);
    get_batch *b = n > 1 ? malloc(sizeof(*b) + n * sizeof(b->rops[0])) : NULL;
    if (!c || (n > 1 && !b)) {
        free(b);
        rop *rops[ROUTER_BATCH_MAX];
        memcpy(rops, s->batch, n * sizeof(rops[0]));
        for (size_t i = 0; i < n; i++) failed(rops[i], RPC_ERR_UNSENT, NULL);
        return;
    }
    msgpack_packer *pk;
    if (n == 1) {
        rop *r = s->batch[0];
        pk = rpc_call_begin(c, SRV_GET, GET_TIMEOUT, get_reply, r);
        msgpack_pack_array(pk, 1);
        rpc_pack_bytes(pk, r->dbkey, r->dklen);
        rpc_call_end(c);
        return;
    }
    b->n = n;
    memcpy(b->rops, s->batch, n * sizeof(b->rops[0]));
    pk = rpc_call_begin(c, SRV_GET_MANY, GET_TIMEOUT, get_many_reply, b);
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) rpc_pack_bytes(pk, b->rops[i]->dbkey, b->rops[i]->dklen);
    rpc_call_end(c);
}

static void batch_cb(void *arg) { send_batch(arg); }

/* Queue a get for s; it leaves at the end of this loop turn. */
static void batch_get(gw_server *s, rop *r)
{
    if (s->nbatch == ROUTER_BATCH_MAX) send_batch(s);
    if (s->nbatch++ == 0) turn_queue(s->turn, &s->send_batch);
    s->batch[s->nbatch - 1] = r;
    s->g->open_batch = s;
}

/* Where a get starts among the key's n live owners: every live owner holds
 * every acknowledged write (synchronous replication), so any will do, and
 * the one whose batch this turn is already filling makes the batches fewer
 * and larger; otherwise the primary. Over turns the open batch moves with
 * the first key of each turn, so the load stays spread. With -As/-Ad a
 * replica may lag its coordinator, and gets start at the primary. */
static unsigned first_owner(const rop *r, const hashspace *hs, const uint32_t *owners, size_t n)
{
    const gateway *g = r->g;
    if (!r->any_owner || !g->open_batch || g->cfg->async_set || g->cfg->async_delete) return 0;
    for (size_t i = 1; i < n; i++)
        if (net_equal(&hs->ring.nodes[owners[i]].addr, &g->open_batch->addr)) return (unsigned)i;
    return 0;
}

static void attempt(rop *r)
{
    gateway *g = r->g;
    uint32_t owners[KUMO_REPLICAS];
    hashspace *hs = g->rhs;
    /* Only in-sync owners: a catching-up one may lack acknowledged writes,
     * so it neither answers a read nor coordinates a write. */
    size_t n = r->kind == ROP_GET ? hashspace_serving_owners(hs, r->hash, owners) : 0;
    const net_addr *to = r->kind == ROP_GET ? NULL : hashspace_coordinator(g->whs, g->rhs, r->hash);
    int k = r->attempt++;
    if (r->kind == ROP_GET ? n == 0 : !to) {
        const char *why = nothing_serves(g);
        if (why) finish_error(r, why); /* answer now, not after every retry */
        else failed(r, RPC_ERR_REMOTE, NULL);
        return;
    }
    if (r->kind == ROP_GET) {
        if (k == 0) r->first = first_owner(r, hs, owners, n);
        to = &hs->ring.nodes[owners[(r->first + (size_t)k) % n]].addr;
    }
    gw_server *s = server_get(g, to);
    if (!s) {
        failed(r, RPC_ERR_UNSENT, NULL);
        return;
    }
    if (r->kind == ROP_GET) {
        batch_get(s, r);
        return;
    }
    /* A write leaves behind the gets queued before it, so a connection's
     * pipelined get-then-delete still reads first. */
    send_batch(s);
    rpc_conn *c = server_conn(g, to);
    if (!c) {
        failed(r, RPC_ERR_UNSENT, NULL);
        return;
    }
    msgpack_packer *pk;
    switch (r->kind) {
    case ROP_SET:
        pk = rpc_call_begin(c, SRV_SET, WRITE_TIMEOUT, write_reply, r);
        msgpack_pack_array(pk, 7);
        msgpack_pack_uint32(pk, (uint32_t)r->w.op);
        msgpack_pack_uint32(pk, r->w.flags);
        rpc_pack_bytes(pk, r->dbkey, r->dklen);
        rpc_pack_bytes(pk, r->val, r->vlen);
        msgpack_pack_uint64(pk, r->w.cas);
        msgpack_pack_uint64(pk, r->w.delta);
        msgpack_pack_uint64(pk, r->w.initial);
        break;
    default:
        pk = rpc_call_begin(c, SRV_DELETE, WRITE_TIMEOUT, write_reply, r);
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint32(pk, r->w.flags);
        rpc_pack_bytes(pk, r->dbkey, r->dklen);
        msgpack_pack_uint64(pk, r->w.cas);
        break;
    }
    rpc_call_end(c);
}

/* Defer the first attempt's failure path: callbacks never run inside the call. */
static void start_cb(evutil_socket_t fd, short what, void *arg) { attempt(arg); }

void router_get(gateway *g, const char *key, size_t klen, bool any_owner, router_get_fn fn, void *arg)
{
    rop *r = rop_new(g, ROP_GET, key, klen);
    r->any_owner = any_owner;
    r->get_fn = fn;
    r->arg = arg;
    r->max_attempts = KUMO_REPLICAS * g->cfg->get_retries;
    if (hashspace_empty(g->rhs)) {
        struct timeval zero = {0, 0};
        event_base_once(g->base, -1, EV_TIMEOUT, start_cb, r, &zero);
        return;
    }
    attempt(r);
}

void router_write_op(gateway *g, const router_write *w, const char *key, size_t klen, uint8_t *val, size_t vlen,
                     router_write_fn fn, void *arg)
{
    bool del = w->op == OP_DELETE;
    rop *r = rop_new(g, del ? ROP_DELETE : ROP_SET, key, klen);
    r->w = *w;
    r->val = val;
    r->vlen = vlen;
    r->write_fn = fn;
    r->arg = arg;
    r->max_attempts = (del ? g->cfg->delete_retries : g->cfg->set_retries) + 1;
    attempt(r);
}

/* ---- flush_all and debugtime: every server in either hash space ---- */

typedef struct flush_op {
    gateway *g; /* counted in ops_inflight, so a SIGTERM drain waits for it */
    int waiting;
    bool failed;
    router_write_fn fn;
    void *arg;
} flush_op;

static void flush_done(flush_op *f)
{
    if (--f->waiting > 0) return;
    f->g->ops_inflight--;
    router_result res = {.ok = !f->failed};
    f->fn(f->arg, &res);
    free(f);
}

static void flush_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    flush_op *f = arg;
    if (st != RPC_OK) f->failed = true;
    flush_done(f);
}

static void flush_start_cb(evutil_socket_t fd, short what, void *arg) { flush_done(arg); }

/* `method [param]` to every active server in whs and every active rhs
 * server not in whs; fn gets ok when every one of them succeeded. */
static void broadcast(gateway *g, uint32_t method, int64_t param, router_write_fn fn, void *arg)
{
    flush_op *f = xcalloc(1, sizeof(*f));
    f->g = g;
    g->ops_inflight++;
    f->fn = fn;
    f->arg = arg;
    f->waiting = 1; /* released from the loop, so fn never runs inside this call */
    hashspace *spaces[2] = {g->whs, g->rhs};
    for (int k = 0; k < 2; k++) {
        const ring *rg = &spaces[k]->ring;
        for (size_t i = 0; i < rg->nnodes; i++) {
            if (!rg->nodes[i].active) continue;
            if (k == 1 && hashspace_find(g->whs, &rg->nodes[i].addr) >= 0) continue;
            rpc_conn *c = server_conn(g, &rg->nodes[i].addr);
            if (!c) {
                f->failed = true;
                continue;
            }
            f->waiting++;
            msgpack_packer *pk = rpc_call_begin(c, method, WRITE_TIMEOUT, flush_reply, f);
            msgpack_pack_array(pk, 1);
            msgpack_pack_int64(pk, param); /* as a uint when >= 0 */
            rpc_call_end(c);
        }
    }
    struct timeval zero = {0, 0};
    event_base_once(g->base, -1, EV_TIMEOUT, flush_start_cb, f, &zero);
}

void router_flush(gateway *g, int64_t when, router_write_fn fn, void *arg)
{
    /* The servers take a delay, and count it on the cluster's clock. */
    uint32_t now = (uint32_t)time(NULL), at = when > 0 ? record_exptime(when, now) : 0;
    broadcast(g, SRV_FLUSH, at > now ? (int64_t)(at - now) : 0, fn, arg);
}

void router_debug_time(gateway *g, int64_t offset, router_write_fn fn, void *arg)
{
    broadcast(g, SRV_DEBUG_TIME, offset, fn, arg);
}

/* ---- cluster size for stats ---- */

typedef struct sizes_op {
    gateway *g; /* counted in ops_inflight, as flush_op */
    int waiting;
    size_t servers;
    router_sizes sum;
    router_sizes_fn fn;
    void *arg;
} sizes_op;

static void sizes_done(sizes_op *op)
{
    if (--op->waiting > 0) return;
    op->g->ops_inflight--;
    size_t copies = op->servers < KUMO_REPLICAS ? op->servers : KUMO_REPLICAS;
    if (copies > 0) {
        op->sum.items /= copies;
        op->sum.bytes /= copies;
    }
    op->fn(op->arg, &op->sum);
    free(op);
}

static void sizes_reply(void *arg, rpc_status st, const msgpack_object *result, bool bytes)
{
    sizes_op *op = arg;
    if (st == RPC_OK && result->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (bytes) op->sum.bytes += result->via.u64;
        else op->sum.items += result->via.u64;
    } else {
        op->sum.ok = false;
    }
    sizes_done(op);
}

static void items_reply(void *arg, rpc_status st, const msgpack_object *r) { sizes_reply(arg, st, r, false); }
static void bytes_reply(void *arg, rpc_status st, const msgpack_object *r) { sizes_reply(arg, st, r, true); }
static void sizes_start_cb(evutil_socket_t fd, short what, void *arg) { sizes_done(arg); }

void router_sizes_get(gateway *g, router_sizes_fn fn, void *arg)
{
    sizes_op *op = xcalloc(1, sizeof(*op));
    op->g = g;
    g->ops_inflight++;
    op->fn = fn;
    op->arg = arg;
    op->sum.ok = true;
    op->waiting = 1;
    const ring *rg = &g->whs->ring;
    for (size_t i = 0; i < rg->nnodes; i++) {
        if (!rg->nodes[i].active) continue;
        rpc_conn *c = server_conn(g, &rg->nodes[i].addr);
        if (!c) continue;
        op->servers++;
        for (int k = 0; k < 2; k++) {
            op->waiting++;
            msgpack_packer *pk = rpc_call_begin(c, SRV_STATUS, GET_TIMEOUT, k ? bytes_reply : items_reply, op);
            msgpack_pack_array(pk, 1);
            msgpack_pack_uint32(pk, k ? ST_DB_BYTES : ST_ITEMS);
            rpc_call_end(c);
        }
    }
    struct timeval zero = {0, 0};
    event_base_once(g->base, -1, EV_TIMEOUT, sizes_start_cb, op, &zero);
}

int router_start(gateway *g, char *err)
{
    const char *names[3] = {g->cfg->manager1, g->cfg->manager2, NULL};
    g->whs = hashspace_new(NULL, 0, 0);
    g->rhs = hashspace_ref(g->whs);
    links_config lc = {.names = names, .default_port = KUMO_MANAGER_PORT, .retry = g->cfg->common.clock_interval, .connect_timeout = g->cfg->common.connect_timeout, .on_unreachable = manager_link, .quiet = g->index != 0}; /* every worker has links: one WARN is enough */
    rpc_handlers h = {.on_request = manager_on_request, .on_hello = manager_hello, .arg = g};
    g->managers = links_new(g->base, &lc, &h, &g->rpc_self);
    if (!g->managers) return kumo_err(err, "out of memory");
    notify_state(g);
    return 0;
}

void router_stop(gateway *g)
{
    g->stopping = true;
    links_free(g->managers);
    g->managers = NULL;
    for (size_t i = 0; i < g->nservers; i++) {
        gw_server *s = g->servers[i];
        rop *rops[ROUTER_BATCH_MAX];
        size_t n = s->nbatch;
        memcpy(rops, s->batch, n * sizeof(rops[0]));
        s->nbatch = 0;
        for (size_t j = 0; j < n; j++) failed(rops[j], RPC_ERR_UNSENT, NULL); /* stopping: no retry */
        rpc_close(s->conn);
        turn_cancel(s->turn, &s->send_batch);
        turn_leave(s->turn);
        free(s);
    }
    g->open_batch = NULL;
    free(g->servers);
    hashspace_unref(g->whs);
    hashspace_unref(g->rhs);
}

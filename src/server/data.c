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
 * Calls: store, record, hashspace, rpc, cluster.c. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "proto.h"
#include "record.h"
#include "server.h"

#define REPLICATE_TIMEOUT 5.0

/* ---- the operation applied under the key's lock ---- */

typedef struct write_ctx {
    int op;
    uint64_t cas;
    uint64_t ct;
    uint32_t now;
    const uint8_t *val; /* incoming value (ct already set), or NULL for delete */
    size_t vlen;
    uint8_t *buf; /* built value (append/prepend), freed by the caller */
    int code;
    bool written;
    const void *out;
    size_t outlen;
    uint8_t tomb[RECORD_TOMBSTONE];
} write_ctx;

static bool live(const void *old, size_t oldlen, uint32_t now, record_value *v)
{
    if (!old || record_value_parse(old, oldlen, v) < 0 || v->tombstone) return false;
    return !record_expired(v, now);
}

static store_verdict apply_set(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    write_ctx *w = arg;
    record_value ov, nv;
    bool exists = live(old, oldlen, w->now, &ov);
    w->code = CODE_STORED;
    switch (w->op) {
    case OP_SET: break;
    case OP_CAS:
        if (!exists) { w->code = CODE_NOT_FOUND; return STORE_KEEP; }
        if (ov.clocktime != w->cas) { w->code = CODE_EXISTS; return STORE_KEEP; }
        break;
    case OP_ADD:
        if (exists) { w->code = CODE_NOT_STORED; return STORE_KEEP; }
        break;
    case OP_REPLACE:
        if (!exists) { w->code = CODE_NOT_STORED; return STORE_KEEP; }
        break;
    case OP_APPEND:
    case OP_PREPEND: {
        if (!exists) { w->code = CODE_NOT_STORED; return STORE_KEEP; }
        if (record_value_parse(w->val, w->vlen, &nv) < 0) { w->code = CODE_NOT_STORED; return STORE_KEEP; }
        size_t n = ov.payload_len + nv.payload_len;
        w->buf = malloc(record_mc_size(n));
        if (!w->buf) { w->code = CODE_NOT_STORED; return STORE_KEEP; }
        record_mc_header(w->buf, w->ct, ov.flags, ov.exptime);
        uint8_t *p = w->buf + record_mc_size(0);
        const record_value *first = w->op == OP_APPEND ? &ov : &nv;
        const record_value *second = w->op == OP_APPEND ? &nv : &ov;
        memcpy(p, first->payload, first->payload_len);
        memcpy(p + first->payload_len, second->payload, second->payload_len);
        *out = w->buf;
        *outlen = record_mc_size(n);
        w->out = *out;
        w->outlen = *outlen;
        w->written = true;
        return STORE_WRITE;
    }
    default: w->code = CODE_NOT_STORED; return STORE_KEEP;
    }
    *out = w->val;
    *outlen = w->vlen;
    w->out = w->val;
    w->outlen = w->vlen;
    w->written = true;
    return STORE_WRITE;
}

static store_verdict apply_delete(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen)
{
    write_ctx *w = arg;
    record_value ov;
    w->code = live(old, oldlen, w->now, &ov) ? CODE_STORED : CODE_NOT_FOUND;
    if (old && oldlen == RECORD_TOMBSTONE) return STORE_KEEP; /* already deleted */
    record_tombstone(w->tomb, w->ct);
    *out = w->out = w->tomb;
    *outlen = w->outlen = RECORD_TOMBSTONE;
    w->written = true;
    return STORE_WRITE;
}

/* ---- replication of one write to the other owners ---- */

typedef struct repl {
    server *s;
    rpc_conn *client; /* held until the reply */
    uint32_t msgid;
    int waiting;
    bool failed;
    int code;
    uint64_t ct;
    char why[96];
} repl;

static void reply_write(repl *r)
{
    if (r->failed) {
        rpc_reply_error(r->client, r->msgid, "replication failed: %s", r->why);
    } else {
        msgpack_packer *pk = rpc_reply_begin(r->client, r->msgid);
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint32(pk, (uint32_t)r->code);
        msgpack_pack_uint64(pk, r->ct);
        rpc_call_end(r->client);
    }
}

static void repl_done(void *arg, rpc_status st, const msgpack_object *result)
{
    repl *r = arg;
    if (st != RPC_OK && !r->failed) {
        r->failed = true;
        rpc_strerror(st, result, r->why, sizeof(r->why));
    }
    if (--r->waiting > 0) return;
    if (r->client) {
        reply_write(r);
        rpc_release(r->client);
    }
    free(r);
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
                      size_t klen, const void *val, size_t vlen, int code, uint64_t ct, bool async)
{
    net_addr to[2 * KUMO_REPLICAS];
    size_t n = replicas(s, hash, to);
    repl *r = calloc(1, sizeof(*r));
    if (!r) {
        rpc_reply_error(client, msgid, "out of memory");
        return;
    }
    r->s = s;
    r->code = code;
    r->ct = ct;
    r->waiting = (int)n + 1; /* +1: our own reference, dropped below */
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
    for (size_t i = 0; i < n; i++) {
        rpc_conn *pc = cluster_peer(s, &to[i]);
        if (!pc) {
            r->failed = true;
            snprintf(r->why, sizeof(r->why), "out of memory");
            r->waiting--;
            continue;
        }
        msgpack_packer *pk = rpc_call_begin(pc, SRV_REPLICATE, REPLICATE_TIMEOUT, repl_done, r);
        msgpack_pack_array(pk, 3);
        msgpack_pack_uint32(pk, 0);
        rpc_pack_bytes(pk, key, klen);
        rpc_pack_bytes(pk, val, vlen);
        rpc_call_end(pc);
    }
    repl_done(r, RPC_OK, NULL);
}

/* ---- handlers ---- */

static bool check_key(rpc_conn *c, uint32_t msgid, const char *key, size_t klen)
{
    if (klen <= RECORD_KEY_HEADER) {
        rpc_reply_error(c, msgid, "bad key");
        return false;
    }
    return true;
}

static void handle_get(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const char *key;
    size_t klen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_bytes(params, 0, &key, &klen)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    if (!check_key(c, msgid, key, klen)) return;
    uint64_t hash = record_key_hash(key, klen);
    if (!hashspace_is_owner(s->rhs, hash, &s->self) && !hashspace_is_owner(s->whs, hash, &s->self)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    s->cmd_get++;
    size_t vlen;
    void *v = store_get(s->db, key, klen, &vlen);
    if (!v || vlen < RECORD_VALUE_HEADER) {
        rpc_reply_nil(c, msgid);
    } else {
        rpc_pack_bytes(rpc_reply_begin(c, msgid), v, vlen);
        rpc_call_end(c);
    }
    (void)err;
    free(v);
}

static void handle_set(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t op, flags, cas;
    const char *key, *val;
    size_t klen, vlen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_uint(params, 0, &op) || !rpc_arg_uint(params, 1, &flags) ||
        !rpc_arg_bytes(params, 2, &key, &klen) || !rpc_arg_bytes(params, 3, &val, &vlen) ||
        !rpc_arg_uint(params, 4, &cas)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    record_value parsed;
    if (!check_key(c, msgid, key, klen)) return;
    if (record_value_parse(val, vlen, &parsed) < 0 || parsed.tombstone) {
        rpc_reply_error(c, msgid, "bad value");
        return;
    }
    uint64_t hash = record_key_hash(key, klen);
    if (!hashspace_is_primary(s->whs, hash, &s->self)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    s->cmd_set++;
    uint8_t *copy = malloc(vlen);
    if (!copy) {
        rpc_reply_error(c, msgid, "out of memory");
        return;
    }
    memcpy(copy, val, vlen);
    write_ctx w = {.op = (int)op, .cas = cas, .ct = clock_next(&s->clock), .now = (uint32_t)time(NULL),
                   .val = copy, .vlen = vlen};
    record_set_clocktime(copy, w.ct);
    if (store_modify(s->db, key, klen, apply_set, &w, err) < 0) {
        log_error("set: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
    } else if (!w.written) {
        msgpack_packer *pk = rpc_reply_begin(c, msgid);
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint32(pk, (uint32_t)w.code);
        msgpack_pack_uint64(pk, 0);
        rpc_call_end(c);
    } else {
        replicate(s, c, msgid, hash, key, klen, w.out, w.outlen, w.code, w.ct, flags & WF_ASYNC);
    }
    free(w.buf);
    free(copy);
}

static void handle_delete(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t flags;
    const char *key;
    size_t klen;
    char err[KUMO_ERRLEN];
    if (!rpc_arg_uint(params, 0, &flags) || !rpc_arg_bytes(params, 1, &key, &klen)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    if (!check_key(c, msgid, key, klen)) return;
    uint64_t hash = record_key_hash(key, klen);
    if (!hashspace_is_primary(s->whs, hash, &s->self)) {
        rpc_reply_error(c, msgid, ERR_OBSOLETE_HS);
        return;
    }
    s->cmd_delete++;
    write_ctx w = {.ct = clock_next(&s->clock), .now = (uint32_t)time(NULL)};
    if (store_modify(s->db, key, klen, apply_delete, &w, err) < 0) {
        log_error("delete: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
        return;
    }
    if (!w.written) {
        /* Already a tombstone here: nothing newer to tell the replicas. */
        msgpack_packer *pk = rpc_reply_begin(c, msgid);
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint32(pk, (uint32_t)w.code);
        msgpack_pack_uint64(pk, 0);
        rpc_call_end(c);
        return;
    }
    replicate(s, c, msgid, hash, key, klen, w.tomb, RECORD_TOMBSTONE, w.code, w.ct, flags & WF_ASYNC);
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
    /* Accepted even from a node whose view differs from ours: an extra copy
     * is removed by the next replace, a refused one would fail the write. */
    clock_update(&s->clock, record_clocktime(val, vlen));
    int rc = store_update(s->db, key, klen, val, vlen, err);
    if (rc < 0) {
        log_error("replicate: %s", err);
        rpc_reply_error(c, msgid, "store failed: %s", err);
        return;
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
    case ST_REPLACE: {
        uint64_t flags = 0;
        if (!hashspace_is_owner(s->whs, 0, &s->self) && hashspace_find(s->whs, &s->self) < 0) flags |= 0x01;
        if (s->whs->clocktime != s->rhs->clocktime) flags |= 0x02;
        rpc_reply_uint(c, msgid, flags);
        break;
    }
    default: rpc_reply_error(c, msgid, "unknown status %llu", (unsigned long long)what); break;
    }
}

bool data_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_GET: handle_get(s, c, msgid, params); return true;
    case SRV_SET: handle_set(s, c, msgid, params); return true;
    case SRV_DELETE: handle_delete(s, c, msgid, params); return true;
    case SRV_REPLICATE: handle_replicate(s, c, msgid, params); return true;
    case SRV_STATUS: handle_status(s, c, msgid, params); return true;
    default: return false;
    }
}

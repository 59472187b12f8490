/*
 * binary — the memcached binary protocol, as memcached 1.6 serves it
 * (proto_bin.c), over the in-order reply queue of client.c.
 *
 * Every packet memproto_parse() accepts becomes one queued request; its
 * answer is written into the request's buffer, at once or from the router
 * callback, and leaves in request order. A quiet opcode leaves out only the
 * answer that says nothing new: SETQ, DELETEQ, INCREMENTQ ... send nothing
 * on success; GETQ, GETKQ, GATQ, GATKQ nothing on a miss (a hit is sent).
 * Errors are always sent. NOOP needs nothing special: the queue already
 * sends everything before it first.
 *
 * Each request is at most one router call: gets go to router_get; every
 * write and read-modify-write (set ... prepend, delete, incr/decr, touch,
 * gat) is one router_write_op, run atomically at the key's coordinator. The
 * CAS of an item is its stored ClockTime; a write answers with the new one.
 * A failure after every retry answers ENOMEM (memcached's status when it
 * cannot do what was asked, and kumofs 0.4's) with a text naming the
 * operation. The counters are memcached's, shared with text.c.
 *
 * Where this departs from memcached, on purpose:
 *  - TOUCH runs as OP_GAT, fetching the value, so that its answer carries
 *    the item's flags as memcached's does;
 *  - incr/decr with a CAS on a missing key answers KEY_ENOENT instead of
 *    creating it (the server checks a CAS before anything else);
 *  - an unknown opcode's body is skipped exactly (memcached skips its key
 *    and extras twice and loses the stream);
 *  - VERBOSITY answers success (memcached 1.6 has no handler for it: it
 *    answers UNKNOWN_COMMAND after swallowing 4 bytes of what follows);
 *  - STAT items/slabs/sizes answer an empty list: there are no slabs.
 *
 * Calls: memproto (parser), client, router, record. Thread rule: its worker's loop.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "config.h"
#include "memproto.h"
#include "proto.h"
#include "record.h"

/* A request's own data: what its answer needs once the router is back. */
typedef struct bop {
    creq *r;
    uint8_t opcode; /* as sent: echoed */
    uint8_t cmd;    /* without the quiet bit */
    bool quiet;
    uint32_t opaque;
    uint64_t cas;
    uint64_t tag; /* a get's client_part_begin tag */
    size_t klen;
    char key[]; /* for GETK/GATK answers */
} bop;

/* The largest key and value put_item copies next to its header. */
#define BINARY_INLINE 1024

static void put_header(const bop *b, uint16_t status, uint8_t extlen, uint16_t keylen, uint32_t bodylen,
                       uint64_t cas)
{
    uint8_t h[MEMPROTO_HEADER];
    memproto_response_header(h, b->opcode, status, extlen, keylen, bodylen, b->opaque, cas);
    client_write(b->r, h, sizeof(h));
}

/* An error answer: memcached's text for the status, or `text`. Never quiet. */
static void put_error(const bop *b, uint16_t status, const char *text)
{
    if (!text) text = memproto_status_text(status);
    size_t n = strlen(text);
    put_header(b, status, 0, 0, (uint32_t)n, 0);
    client_write(b->r, text, n);
}

/* A success without a body; nothing for a quiet opcode. */
static void put_ok(const bop *b, uint64_t cas)
{
    if (!b->quiet) put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, 0, cas);
}

/* A hit: 4-byte flags as extras, the key for GETK/GATK, and the value
 * unless it is a TOUCH. Sent for quiet gets too. */
static void put_item(const bop *b, const record_value *v, uint64_t cas)
{
    bool with_key = b->cmd == MEMPROTO_GETK || b->cmd == MEMPROTO_GATK;
    size_t vlen = b->cmd == MEMPROTO_TOUCH ? 0 : v->payload_len;
    size_t klen = with_key ? b->klen : 0;
    uint8_t flags[4] = {(uint8_t)(v->flags >> 24), (uint8_t)(v->flags >> 16), (uint8_t)(v->flags >> 8),
                        (uint8_t)v->flags};
    if (klen + vlen <= BINARY_INLINE) { /* header, extras, key and value in one write */
        uint8_t m[MEMPROTO_HEADER + 4 + BINARY_INLINE];
        memproto_response_header(m, b->opcode, MEMPROTO_STATUS_SUCCESS, 4, (uint16_t)klen, (uint32_t)(4 + klen + vlen),
                                 b->opaque, cas);
        memcpy(m + MEMPROTO_HEADER, flags, 4);
        memcpy(m + MEMPROTO_HEADER + 4, b->key, klen);
        if (vlen) memcpy(m + MEMPROTO_HEADER + 4 + klen, v->payload, vlen);
        client_write(b->r, m, MEMPROTO_HEADER + 4 + klen + vlen);
        return;
    }
    put_header(b, MEMPROTO_STATUS_SUCCESS, 4, (uint16_t)klen, (uint32_t)(4 + klen + vlen), cas);
    client_write(b->r, flags, 4);
    if (klen) client_write(b->r, b->key, klen);
    if (vlen) client_write(b->r, v->payload, vlen);
}

/* A miss of a get or touch: nothing if quiet; GETK/GATK carry the key
 * instead of the text, as memcached's write_bin_miss_response does. */
static void put_miss(const bop *b)
{
    if (b->quiet) return;
    if (b->cmd == MEMPROTO_GETK || b->cmd == MEMPROTO_GATK) {
        put_header(b, MEMPROTO_STATUS_KEY_ENOENT, 0, (uint16_t)b->klen, (uint32_t)b->klen, 0);
        client_write(b->r, b->key, b->klen);
        return;
    }
    put_error(b, MEMPROTO_STATUS_KEY_ENOENT, NULL);
}

/* A queued request for q, with its bop. NULL when out of memory: then the
 * connection is closing, or the request already holds an ENOMEM answer. */
static bop *op_new(client *c, const memproto_request *q)
{
    creq *r = client_req(c, false);
    if (!r) {
        c->close_after_flush = true; /* cannot even queue an answer */
        return NULL;
    }
    size_t klen = q->key ? q->keylen : 0;
    bop *b = client_req_state(r, sizeof(*b) + klen);
    bop tmp = {.r = r, .opcode = q->opcode, .cmd = q->cmd, .quiet = q->quiet, .opaque = q->opaque, .cas = q->cas};
    if (!b) {
        put_error(&tmp, MEMPROTO_STATUS_ENOMEM, NULL);
        client_done(r);
        return NULL;
    }
    *b = tmp;
    b->klen = klen;
    if (klen) memcpy(b->key, q->key, klen);
    return b;
}

/* Answer q with an error at once. */
static void reply_error(client *c, const memproto_request *q, uint16_t status)
{
    bop *b = op_new(c, q);
    if (!b) return;
    put_error(b, status, NULL);
    client_done(b->r);
}

/* The last thing a router callback does. */
static void finish(bop *b)
{
    client_done(b->r);
    client_call_end(b->r);
}

/* ---- get getq getk getkq ---- */

static void get_done(void *arg, bool ok, const void *value, size_t vlen)
{
    bop *b = arg;
    client_part_end_tag(b->r->c, b->tag, vlen);
    gateway_stats *st = &b->r->c->g->stats;
    record_value v;
    if (!ok) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "get failed");
    } else if (!value || record_value_parse(value, vlen, &v) < 0 || v.tombstone) {
        st->get_misses++;
        put_miss(b);
    } else { /* expiry was judged by the server (text.c, hit) */
        st->get_hits++;
        put_item(b, &v, v.clocktime);
    }
    finish(b);
}

static void do_get(client *c, const memproto_request *q)
{
    bop *b = op_new(c, q);
    if (!b) return;
    c->g->stats.cmd_get++;
    b->tag = client_part_begin(c, q->key, q->keylen);
    client_call_begin(b->r);
    router_get(c->g, q->key, q->keylen, client_settled(c), get_done, b);
}

/* ---- set add replace append prepend (and their quiet forms) ---- */

static void store_done(void *arg, const router_result *res)
{
    bop *b = arg;
    gateway_stats *st = &b->r->c->g->stats;
    bool concat = b->cmd == MEMPROTO_APPEND || b->cmd == MEMPROTO_PREPEND;
    bool cas = b->cas != 0 && !concat; /* memcached's NREAD_CAS */
    if (!res->ok) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "store failed");
    } else if (res->code == CODE_STORED) {
        if (cas) st->cas_hits++;
        put_ok(b, res->ct);
    } else if (res->code == CODE_EXISTS) {
        if (cas) st->cas_badval++;
        put_error(b, MEMPROTO_STATUS_KEY_EEXISTS, NULL);
    } else if (res->code == CODE_NOT_FOUND) {
        /* Only a conditional write misses: a cas, or append/prepend with a
         * cas, which memcached answers NOT_STORED as without one. */
        if (cas) st->cas_misses++;
        put_error(b, concat ? MEMPROTO_STATUS_NOT_STORED : MEMPROTO_STATUS_KEY_ENOENT, NULL);
    } else {
        /* memcached's complete_update_bin: NOT_STORED speaks per command. */
        put_error(b,
                  b->cmd == MEMPROTO_ADD       ? MEMPROTO_STATUS_KEY_EEXISTS
                  : b->cmd == MEMPROTO_REPLACE ? MEMPROTO_STATUS_KEY_ENOENT
                                               : MEMPROTO_STATUS_NOT_STORED,
                  NULL);
    }
    finish(b);
}

static int store_op(const memproto_request *q)
{
    switch (q->cmd) {
    case MEMPROTO_APPEND: return OP_APPEND; /* a cas makes it conditional */
    case MEMPROTO_PREPEND: return OP_PREPEND;
    default: break;
    }
    if (q->cas != 0) return OP_CAS; /* set, add and replace alike, as memcached */
    return q->cmd == MEMPROTO_ADD ? OP_ADD : q->cmd == MEMPROTO_REPLACE ? OP_REPLACE
                                                                        : OP_SET;
}

static void do_store(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    bool concat = q->cmd == MEMPROTO_APPEND || q->cmd == MEMPROTO_PREPEND;
    size_t vlen;
    /* append/prepend keep the stored flags and exptime (the server does). */
    uint8_t *val = record_mc_value(concat ? 0 : q->flags, concat ? 0 : q->exptime, q->value, q->vlen, &vlen);
    if (!val) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, NULL);
        client_done(b->r);
        return;
    }
    g->stats.cmd_set++;
    router_write w = {.op = store_op(q), .cas = q->cas, .flags = g->cfg->async_set ? WF_ASYNC : 0};
    client_call_begin(b->r);
    router_write_op(g, &w, q->key, q->keylen, val, vlen, store_done, b);
}

/* ---- delete deleteq ---- */

static void delete_done(void *arg, const router_result *res)
{
    bop *b = arg;
    gateway_stats *st = &b->r->c->g->stats;
    if (!res->ok) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "delete failed");
    } else if (res->code == CODE_STORED) {
        st->delete_hits++;
        put_ok(b, 0);
    } else if (res->code == CODE_EXISTS) {
        put_error(b, MEMPROTO_STATUS_KEY_EEXISTS, NULL);
    } else {
        st->delete_misses++;
        put_error(b, MEMPROTO_STATUS_KEY_ENOENT, NULL);
    }
    finish(b);
}

static void do_delete(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    router_write w = {.op = OP_DELETE, .cas = q->cas, .flags = g->cfg->async_delete ? WF_ASYNC : 0};
    client_call_begin(b->r);
    router_write_op(g, &w, q->key, q->keylen, NULL, 0, delete_done, b);
}

/* ---- increment decrement (and quiet) ---- */

static void arith_done(void *arg, const router_result *res)
{
    bop *b = arg;
    gateway_stats *st = &b->r->c->g->stats;
    bool incr = b->cmd == MEMPROTO_INCREMENT;
    if (!res->ok) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "incr/decr failed");
    } else if (res->code == CODE_STORED) {
        if (incr) st->incr_hits++;
        else st->decr_hits++;
        if (!b->quiet) {
            uint8_t num[8];
            for (int i = 0; i < 8; i++) num[i] = (uint8_t)(res->number >> (56 - 8 * i));
            put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, 8, res->ct);
            client_write(b->r, num, 8);
        }
    } else if (res->code == CODE_NON_NUMERIC) {
        put_error(b, MEMPROTO_STATUS_DELTA_BADVAL, NULL);
    } else if (res->code == CODE_EXISTS) {
        put_error(b, MEMPROTO_STATUS_KEY_EEXISTS, NULL);
    } else if (res->code == CODE_NOT_FOUND) {
        if (incr) st->incr_misses++;
        else st->decr_misses++;
        put_error(b, MEMPROTO_STATUS_KEY_ENOENT, NULL);
    } else {
        put_error(b, MEMPROTO_STATUS_NOT_STORED, NULL);
    }
    finish(b);
}

static void do_arith(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    bool create = q->exptime != MEMPROTO_INCR_NO_CREATE;
    size_t vlen;
    /* The header is what a created item gets: flags 0, the exptime given. */
    uint8_t *val = record_mc_value(0, create ? q->exptime : 0, NULL, 0, &vlen);
    if (!val) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, NULL);
        client_done(b->r);
        return;
    }
    router_write w = {.op = q->cmd == MEMPROTO_INCREMENT ? OP_INCR : OP_DECR,
                      .flags = create ? WF_VIVIFY : 0,
                      .cas = q->cas,
                      .delta = q->delta,
                      .initial = q->initial};
    client_call_begin(b->r);
    router_write_op(g, &w, q->key, q->keylen, val, vlen, arith_done, b);
}

/* ---- touch gat gatq gatk gatkq ---- */

static void touch_done(void *arg, const router_result *res)
{
    bop *b = arg;
    gateway_stats *st = &b->r->c->g->stats;
    record_value v;
    if (!res->ok) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "touch failed");
    } else if (res->code == CODE_STORED) {
        st->touch_hits++;
        if (!res->value || record_value_parse(res->value, res->vlen, &v) < 0 || v.tombstone)
            memset(&v, 0, sizeof(v)); /* the server always sends it; be safe */
        put_item(b, &v, res->ct);
    } else if (res->code == CODE_NOT_FOUND) {
        st->touch_misses++;
        put_miss(b);
    } else {
        put_error(b, MEMPROTO_STATUS_ENOMEM, "touch failed");
    }
    finish(b);
}

static void do_touch(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    size_t vlen;
    uint8_t *val = record_mc_value(0, q->exptime, NULL, 0, &vlen);
    if (!val) {
        put_error(b, MEMPROTO_STATUS_ENOMEM, NULL);
        client_done(b->r);
        return;
    }
    g->stats.cmd_touch++;
    router_write w = {.op = OP_GAT}; /* also for TOUCH: its answer has the flags */
    client_call_begin(b->r);
    router_write_op(g, &w, q->key, q->keylen, val, vlen, touch_done, b);
}

/* ---- flush flushq ---- */

static void flush_done(void *arg, const router_result *res)
{
    bop *b = arg;
    if (res->ok) put_ok(b, 0);
    else put_error(b, MEMPROTO_STATUS_ENOMEM, "flush failed");
    finish(b);
}

static void do_flush(client *c, const memproto_request *q)
{
    bop *b = op_new(c, q);
    if (!b) return;
    c->g->stats.cmd_flush++;
    client_call_begin(b->r);
    router_flush(c->g, q->exptime, flush_done, b);
}

/* ---- stat ---- */

/* One key/value packet of a STAT answer (a stats_emit_fn). */
static void put_stat(void *arg, const char *key, const char *val)
{
    const bop *b = arg;
    size_t klen = strlen(key), vlen = strlen(val);
    put_header(b, MEMPROTO_STATUS_SUCCESS, 0, (uint16_t)klen, (uint32_t)(klen + vlen), 0);
    client_write(b->r, key, klen);
    client_write(b->r, val, vlen);
}

/* The empty packet that ends a STAT answer. */
static void put_stat_end(const bop *b) { put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, 0, 0); }

static void sizes_done(void *arg, const router_sizes *sz)
{
    bop *b = arg;
    stats_general(b->r->c->g, sz, put_stat, b);
    put_stat_end(b);
    finish(b);
}

static bool key_is(const memproto_request *q, const char *s)
{
    size_t n = strlen(s);
    return q->keylen == n && memcmp(q->key, s, n) == 0;
}

static void do_stat(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    if (q->keylen == 0) {
        client_call_begin(b->r);
        router_sizes_get(g, sizes_done, b);
        return;
    }
    if (key_is(q, "settings")) {
        stats_settings(g, put_stat, b);
        put_stat_end(b);
    } else if (key_is(q, "reset")) {
        stats_reset(g);
        put_stat_end(b);
    } else if (key_is(q, "items") || key_is(q, "slabs") || key_is(q, "sizes")) {
        put_stat_end(b); /* no slabs in a replicated store */
    } else {
        put_error(b, MEMPROTO_STATUS_KEY_ENOENT, NULL);
    }
    client_done(b->r);
}

/* ---- the rest, answered at once ---- */

static void do_simple(client *c, const memproto_request *q)
{
    bop *b = op_new(c, q);
    if (!b) return;
    switch (q->cmd) {
    case MEMPROTO_VERSION:
        put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, (uint32_t)strlen(GATEWAY_VERSION), 0);
        client_write(b->r, GATEWAY_VERSION, strlen(GATEWAY_VERSION));
        break;
    case MEMPROTO_QUIT:
        put_ok(b, 0);
        c->close_after_flush = true;
        break;
    default: /* NOOP, VERBOSITY */
        put_ok(b, 0);
        break;
    }
    client_done(b->r);
}

/* SASL, served only under -Y: PLAIN ("[authzid] NUL user NUL password")
 * against -Y's file, as memcached -S checks a MEMCACHED_SASL_PWDB file.
 * Without -Y: UNKNOWN_COMMAND, as memcached without -S. */
static void do_sasl(client *c, const memproto_request *q)
{
    gateway *g = c->g;
    bop *b = op_new(c, q);
    if (!b) return;
    const char *v = q->value, *user, *pass;
    const char *z1 = q->vlen ? memchr(v, '\0', q->vlen) : NULL;
    const char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(v + q->vlen - z1 - 1)) : NULL;
    if (!g->cfg->users) {
        put_error(b, MEMPROTO_STATUS_UNKNOWN_COMMAND, NULL);
    } else if (q->cmd == MEMPROTO_SASL_LIST_MECHS) {
        put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, 5, 0);
        client_write(b->r, "PLAIN", 5);
    } else if (q->keylen > MEMPROTO_SASL_MECH_MAX) {
        put_error(b, MEMPROTO_STATUS_EINVAL, NULL);
    } else if (q->cmd == MEMPROTO_SASL_AUTH && q->keylen == 5 && memcmp(q->key, "PLAIN", 5) == 0 && z2 &&
               (user = z1 + 1, pass = z2 + 1,
                users_check(g->cfg->users, user, (size_t)(z2 - user), pass, (size_t)(v + q->vlen - pass)))) {
        g->stats.auth_cmds++;
        put_header(b, MEMPROTO_STATUS_SUCCESS, 0, 0, 13, 0);
        client_write(b->r, "Authenticated", 13);
        c->parse = binary_parse;
    } else {
        g->stats.auth_cmds++;
        g->stats.auth_errors++;
        put_error(b, MEMPROTO_STATUS_AUTH_ERROR, NULL);
    }
    client_done(b->r);
}

static void dispatch(client *c, const memproto_request *q)
{
    switch (q->cmd) {
    case MEMPROTO_GET:
    case MEMPROTO_GETK: do_get(c, q); break;
    case MEMPROTO_SET:
    case MEMPROTO_ADD:
    case MEMPROTO_REPLACE:
    case MEMPROTO_APPEND:
    case MEMPROTO_PREPEND: do_store(c, q); break;
    case MEMPROTO_DELETE: do_delete(c, q); break;
    case MEMPROTO_INCREMENT:
    case MEMPROTO_DECREMENT: do_arith(c, q); break;
    case MEMPROTO_TOUCH:
    case MEMPROTO_GAT:
    case MEMPROTO_GATK: do_touch(c, q); break;
    case MEMPROTO_FLUSH: do_flush(c, q); break;
    case MEMPROTO_STAT: do_stat(c, q); break;
    case MEMPROTO_SASL_LIST_MECHS:
    case MEMPROTO_SASL_AUTH:
    case MEMPROTO_SASL_STEP: do_sasl(c, q); break;
    default: do_simple(c, q); break; /* NOOP VERSION QUIT VERBOSITY */
    }
}

/* The command's place in the order rules of its connection (client.h). */
static creq_kind kind_of(const memproto_request *q)
{
    switch (q->cmd) {
    case MEMPROTO_GET:
    case MEMPROTO_GETK: return CREQ_READ;
    case MEMPROTO_FLUSH:
    case MEMPROTO_STAT: return CREQ_BARRIER;
    case MEMPROTO_NOOP:
    case MEMPROTO_VERSION:
    case MEMPROTO_QUIT:
    case MEMPROTO_VERBOSITY:
    case MEMPROTO_SASL_LIST_MECHS:
    case MEMPROTO_SASL_AUTH:
    case MEMPROTO_SASL_STEP: return CREQ_LOCAL;
    default: return CREQ_WRITE;
    }
}

/* Parse and start one request; value_max bounds a value. */
static size_t parse_with(client *c, const char *buf, size_t len, size_t value_max)
{
    gateway *g = c->g;
    memproto_request q;
    size_t used = 0;
    memproto_result st = memproto_parse(buf, len, value_max, &q, &used);
    switch (st) {
    case MEMPROTO_NEED_MORE: return 0;
    case MEMPROTO_OK:
        creq_kind kind = kind_of(&q);
        if ((kind == CREQ_WRITE && !client_may_write(c, q.key, q.keylen)) || !client_may_start(c, kind))
            return 0; /* parsed again when it may */
        dispatch(c, &q);
        break;
    case MEMPROTO_BAD_MAGIC: c->close_after_flush = true; break;
    case MEMPROTO_BAD_LENGTHS:
        reply_error(c, &q, MEMPROTO_STATUS_UNKNOWN_COMMAND);
        c->close_after_flush = true;
        break;
    case MEMPROTO_INVALID:
        reply_error(c, &q, MEMPROTO_STATUS_EINVAL);
        c->close_after_flush = true;
        break;
    case MEMPROTO_UNKNOWN:
        reply_error(c, &q, MEMPROTO_STATUS_UNKNOWN_COMMAND);
        c->discard = q.swallow;
        break;
    case MEMPROTO_TOO_LARGE:
        g->stats.store_too_large++;
        reply_error(c, &q, MEMPROTO_STATUS_E2BIG);
        c->discard = q.swallow;
        break;
    }
    g->stats.bytes_read += used + q.swallow;
    return used;
}

size_t binary_parse(client *c, const char *buf, size_t len)
{
    return parse_with(c, buf, len, (size_t)c->g->cfg->item_size_max);
}

/* The largest SASL exchange read before a client has authenticated. */
#define SASL_VALUE_MAX 1024

size_t binary_auth_parse(client *c, const char *buf, size_t len)
{
    const uint8_t *p = (const uint8_t *)buf;
    /* memcached refuses every other opcode once the lengths add up, before
     * looking at the key or the opcode, and closes */
    if (len >= MEMPROTO_HEADER && p[0] == MEMPROTO_REQ_MAGIC) {
        uint8_t op = p[1];
        uint32_t keylen = (uint32_t)p[2] << 8 | p[3], bodylen = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 |
                                                                (uint32_t)p[10] << 8 | p[11];
        if (keylen + p[4] <= bodylen && op != MEMPROTO_SASL_LIST_MECHS && op != MEMPROTO_SASL_AUTH &&
            op != MEMPROTO_SASL_STEP && op != MEMPROTO_VERSION) {
            memproto_request q = {.opcode = op,
                                  .opaque = (uint32_t)p[12] << 24 | (uint32_t)p[13] << 16 | (uint32_t)p[14] << 8 | p[15]};
            reply_error(c, &q, MEMPROTO_STATUS_AUTH_ERROR);
            c->close_after_flush = true;
            return len;
        }
    }
    return parse_with(c, buf, len, SASL_VALUE_MAX);
}

/* The -b port negotiates like -t (text.c): memcached serves both protocols
 * on every port, and kumofs 0.4 command lines keep working. */

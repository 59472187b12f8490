/*
 * text — the memcached text protocol: the classic commands and the meta
 * commands (mg ms md ma mn me), as memcached 1.6's protocol.txt defines
 * them, over the in-order reply queue of client.c.
 *
 * Retrievals send one router call per key, as many at once as the
 * connection's window and budgets allow (client.c), and stream the answer
 * in key order as the keys come back. Every write and read-modify-write (set … cas, incr/decr, touch,
 * gat, ms, md, ma, mg with T) is one router_write_op: it runs atomically at
 * the key's coordinator, which answers with memcached's result word.
 * Meta return flags are echoed in the order the client asked for them.
 * Not supported, answered with CLIENT_ERROR: base64 keys (b) and the
 * stale-while-revalidate flags (mg N/R, md I, ms I) — see docs/protocol.md.
 *
 * Calls: memtext (parser), client, router, record, log. Thread rule: its worker's loop.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "config.h"
#include "log.h"
#include "memtext.h"
#include "proto.h"
#include "record.h"

/* ---- meta flags ---- */

#define META_MAX_OPAQUE 32

typedef struct meta {
    char ret[MEMTEXT_MAX_TOKENS]; /* return flags, in request order */
    size_t nret;
    bool v, q, has_cas, has_ttl, has_flags, vivify;
    uint64_t cas;
    int64_t ttl, vivify_ttl;
    uint32_t flags;
    char mode;
    uint64_t delta, initial;
    char opaque[META_MAX_OPAQUE + 1];
} meta;

static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 20) return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_i64(const char *p, size_t n, int64_t *out)
{
    uint64_t v;
    bool neg = n > 0 && p[0] == '-';
    if (!parse_u64(p + neg, n - neg, &v) || v > INT64_MAX) return false;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* Parse the flag tokens of a meta command; NULL or a CLIENT_ERROR text. */
static const char *parse_meta(const memtext_request *q, meta *m)
{
    bool seen[128] = {false};
    bool arith = q->cmd == MEMTEXT_MA;
    /* memcached words a bad number differently for ma than for the others */
    const char *bad_num = arith ? "invalid or duplicate flag" : "bad token in command line format";
    memset(m, 0, sizeof(*m));
    m->delta = 1;
    for (size_t i = 0; i < q->ntokens; i++) {
        const char *t = q->tokens[i].p, *a = t + 1;
        size_t n = q->tokens[i].len - 1;
        uint64_t u;
        if ((unsigned char)t[0] < 128) {
            if (seen[(unsigned char)t[0]]) return arith ? "invalid or duplicate flag" : "duplicate flag";
            seen[(unsigned char)t[0]] = true;
        }
        switch (t[0]) {
        case 'v': m->v = true; break;
        case 'q': m->q = true; break;
        case 'c': case 'f': case 'k': case 's': case 't': case 'h': case 'l':
            m->ret[m->nret++] = t[0];
            break;
        case 'O':
            if (n > META_MAX_OPAQUE) return "opaque token too long";
            memcpy(m->opaque, a, n);
            m->opaque[n] = '\0';
            m->ret[m->nret++] = 'O';
            break;
        case 'C':
            if (!parse_u64(a, n, &m->cas)) return bad_num;
            m->has_cas = true;
            break;
        case 'T':
            if (!parse_i64(a, n, &m->ttl)) return bad_num;
            m->has_ttl = true;
            break;
        case 'N':
            if (!parse_i64(a, n, &m->vivify_ttl)) return bad_num;
            m->vivify = true;
            break;
        case 'F':
            if (!parse_u64(a, n, &u) || u > UINT32_MAX) return bad_num;
            m->flags = (uint32_t)u;
            m->has_flags = true;
            break;
        case 'D':
            if (!parse_u64(a, n, &m->delta)) return bad_num;
            break;
        case 'J':
            if (!parse_u64(a, n, &m->initial)) return bad_num;
            break;
        case 'M':
            if (n != 1) return "bad token in command line format";
            m->mode = a[0];
            break;
        case 'b': return "base64 keys are not supported";
        case 'E': case 'I': case 'R': case 'S': case 'u': case 'x': case 'P': case 'L':
            /* cache-control flags with no meaning in a replicated store */
            return "unsupported flag";
        default: return "invalid flag";
        }
    }
    return NULL;
}

/* Append " c123 f0 kfoo …" for the requested return flags. */
static void meta_ret(struct evbuffer *out, const meta *m, const char *key, size_t klen, const record_value *v,
                     uint64_t ct, uint32_t now)
{
    for (size_t i = 0; i < m->nret; i++) {
        switch (m->ret[i]) {
        case 'c': evbuffer_add_printf(out, " c%" PRIu64, v ? v->clocktime : ct); break;
        case 'f': evbuffer_add_printf(out, " f%" PRIu32, v ? v->flags : 0); break;
        case 'k': evbuffer_add_printf(out, " k%.*s", (int)klen, key); break;
        case 'O': evbuffer_add_printf(out, " O%s", m->opaque); break;
        case 's': evbuffer_add_printf(out, " s%zu", v ? v->payload_len : 0); break;
        case 't':
            if (!v || v->exptime == 0) evbuffer_add_printf(out, " t-1");
            else evbuffer_add_printf(out, " t%lld", (long long)v->exptime - (long long)now);
            break;
        case 'h': evbuffer_add(out, " h0", 3); break;
        case 'l': evbuffer_add(out, " l0", 3); break;
        default: break;
        }
    }
}

/* ---- per-request state ---- */

typedef struct kslot {
    char *key;
    size_t klen;
    uint8_t *rec; /* the stored record on a hit */
    size_t rlen;
    bool done; /* answered */
    bool error;
} kslot;

typedef struct kctx {
    creq *r;
    size_t i;
} kctx;

/* One allocation per request: the struct, then the kslot and kctx arrays,
 * then the key bytes. */
typedef struct tstate {
    int cmd;
    size_t nkeys;
    kslot *keys;
    kctx *ctx;
    meta m;
    /* a retrieval streams: keys [0, emit) are formatted, [emit, next) are
     * in flight or answered, [next, nkeys) wait for room */
    size_t next, emit;
    bool any_owner;  /* decided when the request started */
    bool failed;     /* a key failed after every retry */
    bool answered;   /* a VALUE went out */
    int64_t exptime; /* gat, gats */
} tstate;

static void tstate_free(void *p)
{
    tstate *t = p;
    if (!t) return;
    for (size_t i = 0; i < t->nkeys; i++) free(t->keys[i].rec);
    free(t);
}

/* A request with state for `nkeys` keys copied from q (keys[0] for writes). */
static creq *req_with_state(client *c, const memtext_request *q, size_t nkeys, bool quiet)
{
    creq *r = client_req(c, quiet);
    if (!r) return NULL;
    size_t keybytes = 0;
    for (size_t i = 0; i < nkeys; i++) keybytes += q->keys[i].len;
    tstate *t = calloc(1, sizeof(*t) + nkeys * (sizeof(kslot) + sizeof(kctx)) + keybytes);
    r->state = t;
    r->free_state = tstate_free;
    if (!t) {
        client_reply(r, "SERVER_ERROR out of memory\r\n");
        return NULL;
    }
    t->cmd = q->cmd;
    t->keys = (kslot *)(t + 1);
    t->ctx = (kctx *)(t->keys + nkeys);
    char *kb = (char *)(t->ctx + nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        kslot *k = &t->keys[i];
        k->klen = q->keys[i].len;
        k->key = kb;
        memcpy(kb, q->keys[i].p, k->klen);
        kb += k->klen;
        t->ctx[i] = (kctx){r, i};
        t->nkeys++;
    }
    return r;
}

static void keep_record(kslot *k, const void *rec, size_t len)
{
    if (!rec) return;
    k->rec = malloc(len ? len : 1);
    if (!k->rec) {
        k->error = true;
        return;
    }
    memcpy(k->rec, rec, len);
    k->rlen = len;
}

/* A value record for a write: header (flags, exptime) and payload. */
static uint8_t *make_value(uint32_t flags, int64_t exptime, const void *data, size_t len, size_t *vlen)
{
    uint8_t *v = malloc(record_mc_size(len));
    if (!v) return NULL;
    record_mc_header(v, 0, flags, record_exptime_wire(exptime));
    if (len) memcpy(v + record_mc_size(0), data, len);
    *vlen = record_mc_size(len);
    return v;
}

/* ---- get gets gat gats ---- */

/* Whether a key's answer is a value. The servers judged its expiry, by
 * the cluster's clock (docs/protocol.md, "Expiry and clocks"): the
 * gateway's own clock may be off, so it does not judge again. */
static bool hit(const kslot *k, record_value *v)
{
    return k->rec && record_value_parse(k->rec, k->rlen, v) == 0 && !v->tombstone;
}

/* " <n>" at p; returns the end. */
static char *put_uint(char *p, uint64_t n)
{
    char tmp[20];
    size_t i = 0;
    do tmp[i++] = (char)('0' + n % 10); while (n /= 10);
    *p++ = ' ';
    while (i) *p++ = tmp[--i];
    return p;
}

/* One key's answer, in key order: VALUE <key> <flags> <bytes>[ <cas>]. */
static void format_key(creq *r, kslot *k)
{
    tstate *t = r->state;
    gateway *g = r->c->g;
    bool touch = t->cmd == MEMTEXT_GAT || t->cmd == MEMTEXT_GATS;
    record_value v;
    if (k->error) {
        t->failed = true;
        return;
    }
    if (!hit(k, &v)) {
        g->stats.get_misses++;
        if (touch) g->stats.touch_misses++;
        return;
    }
    g->stats.get_hits++;
    if (touch) g->stats.touch_hits++;
    char line[6 + MEMTEXT_MAX_KEY + 3 * 21 + 2], *e = line; /* without printf */
    memcpy(e, "VALUE ", 6);
    e += 6;
    memcpy(e, k->key, k->klen);
    e += k->klen;
    e = put_uint(e, v.flags);
    e = put_uint(e, v.payload_len);
    if (t->cmd == MEMTEXT_GETS || t->cmd == MEMTEXT_GATS) e = put_uint(e, v.clocktime);
    *e++ = '\r';
    *e++ = '\n';
    evbuffer_add(r->out, line, (size_t)(e - line));
    evbuffer_add(r->out, v.payload, v.payload_len);
    evbuffer_add(r->out, "\r\n", 2);
    t->answered = true;
}

/* Format the keys answered so far, in order, and end the answer after the
 * last: END, or SERVER_ERROR when keys failed and none was found. The
 * answer leaves as it grows (client.c streams the first request's). */
static void format_ready(creq *r)
{
    tstate *t = r->state;
    while (t->emit < t->nkeys && t->keys[t->emit].done) {
        kslot *k = &t->keys[t->emit++];
        format_key(r, k);
        free(k->rec);
        k->rec = NULL;
    }
    if (t->emit < t->nkeys) return;
    if (t->failed && !t->answered) evbuffer_add_printf(r->out, "SERVER_ERROR get failed\r\n");
    else evbuffer_add(r->out, "END\r\n", 5);
    client_done(r);
}

static void key_done(kctx *x, bool ok, const void *value, size_t vlen)
{
    creq *r = x->r;
    tstate *t = r->state;
    kslot *k = &t->keys[x->i];
    if (!ok) k->error = true;
    else keep_record(k, value, vlen);
    k->done = true;
    client_part_end(r->c, k->key, k->klen, vlen);
    format_ready(r);
    client_call_end(r);
}

static void get_done(void *arg, bool ok, const void *value, size_t vlen) { key_done(arg, ok, value, vlen); }

static void gat_done(void *arg, const router_result *res)
{
    bool hit = res->ok && res->code == CODE_STORED;
    key_done(arg, res->ok, hit ? res->value : NULL, hit ? res->vlen : 0);
}

/* Send the keys the window and the budgets let out now (creq.more). */
static void retrieve_more(creq *r)
{
    tstate *t = r->state;
    client *c = r->c;
    bool touch = t->cmd == MEMTEXT_GAT || t->cmd == MEMTEXT_GATS;
    while (t->next < t->nkeys && client_part_allowed(c)) {
        size_t i = t->next++;
        kslot *k = &t->keys[i];
        client_part_begin(c, k->key, k->klen);
        client_call_begin(r);
        if (!touch) {
            router_get(c->g, k->key, k->klen, t->any_owner, get_done, &t->ctx[i]);
            continue;
        }
        size_t vlen;
        uint8_t *val = make_value(0, t->exptime, NULL, 0, &vlen);
        router_write w = {.op = OP_GAT};
        router_write_op(c->g, &w, k->key, k->klen, val, val ? vlen : 0, gat_done, &t->ctx[i]);
    }
    if (t->next == t->nkeys) client_parts_sent(r);
}

static void do_retrieve(client *c, const memtext_request *q)
{
    gateway *g = c->g;
    bool touch = q->cmd == MEMTEXT_GAT || q->cmd == MEMTEXT_GATS;
    creq *r = req_with_state(c, q, q->nkeys, false);
    if (!r) return;
    tstate *t = r->state;
    g->stats.cmd_get += q->nkeys;
    if (touch) g->stats.cmd_touch += q->nkeys;
    if (q->nkeys == 0) {
        format_ready(r);
        return;
    }
    t->any_owner = client_settled(c);
    t->exptime = q->exptime;
    r->more = retrieve_more;
    client_parts_start(r);
}

/* ---- classic writes ---- */

static void store_done(void *arg, const router_result *res)
{
    creq *r = arg;
    tstate *t = r->state;
    gateway_stats *st = &r->c->g->stats;
    bool cas = t->cmd == MEMTEXT_CAS;
    if (!res->ok) client_reply(r, "SERVER_ERROR store failed\r\n");
    else if (res->code == CODE_STORED) {
        if (cas) st->cas_hits++;
        client_reply(r, "STORED\r\n");
    } else if (res->code == CODE_NOT_STORED) client_reply(r, "NOT_STORED\r\n");
    else if (res->code == CODE_EXISTS) {
        if (cas) st->cas_badval++;
        client_reply(r, "EXISTS\r\n");
    } else {
        if (cas) st->cas_misses++;
        client_reply(r, "NOT_FOUND\r\n");
    }
    client_call_end(r);
}

static int store_op(int cmd)
{
    switch (cmd) {
    case MEMTEXT_ADD: return OP_ADD;
    case MEMTEXT_REPLACE: return OP_REPLACE;
    case MEMTEXT_APPEND: return OP_APPEND;
    case MEMTEXT_PREPEND: return OP_PREPEND;
    case MEMTEXT_CAS: return OP_CAS;
    default: return OP_SET;
    }
}

static bool too_large(creq *r, size_t len)
{
    gateway *g = r->c->g;
    if (len <= (size_t)g->cfg->item_size_max) return false;
    g->stats.store_too_large++;
    client_reply(r, "SERVER_ERROR object too large for cache\r\n");
    return true;
}

static void do_store(client *c, const memtext_request *q)
{
    gateway *g = c->g;
    creq *r = req_with_state(c, q, 1, q->noreply);
    if (!r || too_large(r, q->data_len)) return;
    size_t vlen;
    uint8_t *val = make_value(q->flags, q->exptime, q->data, q->data_len, &vlen);
    if (!val) {
        client_reply(r, "SERVER_ERROR out of memory\r\n");
        return;
    }
    g->stats.cmd_set++;
    router_write w = {.op = store_op(q->cmd), .cas = q->cmd == MEMTEXT_CAS ? q->cas : 0,
                      .flags = g->cfg->async_set ? WF_ASYNC : 0};
    client_call_begin(r);
    router_write_op(g, &w, q->keys[0].p, q->keys[0].len, val, vlen, store_done, r);
}

static void delete_done(void *arg, const router_result *res)
{
    creq *r = arg;
    gateway_stats *st = &r->c->g->stats;
    if (!res->ok) client_reply(r, "SERVER_ERROR delete failed\r\n");
    else if (res->code == CODE_STORED) {
        st->delete_hits++;
        client_reply(r, "DELETED\r\n");
    } else {
        st->delete_misses++;
        client_reply(r, "NOT_FOUND\r\n");
    }
    client_call_end(r);
}

static void arith_done(void *arg, const router_result *res)
{
    creq *r = arg;
    tstate *t = r->state;
    gateway_stats *st = &r->c->g->stats;
    bool incr = t->cmd == MEMTEXT_INCR;
    if (!res->ok) client_reply(r, "SERVER_ERROR store failed\r\n");
    else if (res->code == CODE_STORED) {
        if (incr) st->incr_hits++;
        else st->decr_hits++;
        evbuffer_add_printf(r->out, "%" PRIu64 "\r\n", res->number);
        client_done(r);
    } else if (res->code == CODE_NON_NUMERIC) {
        client_reply(r, "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    } else {
        if (incr) st->incr_misses++;
        else st->decr_misses++;
        client_reply(r, "NOT_FOUND\r\n");
    }
    client_call_end(r);
}

static void touch_done(void *arg, const router_result *res)
{
    creq *r = arg;
    gateway_stats *st = &r->c->g->stats;
    if (!res->ok) client_reply(r, "SERVER_ERROR store failed\r\n");
    else if (res->code == CODE_STORED) {
        st->touch_hits++;
        client_reply(r, "TOUCHED\r\n");
    } else {
        st->touch_misses++;
        client_reply(r, "NOT_FOUND\r\n");
    }
    client_call_end(r);
}

static void do_keyed_write(client *c, const memtext_request *q)
{
    gateway *g = c->g;
    creq *r = req_with_state(c, q, 1, q->noreply);
    if (!r) return;
    router_write w = {.op = OP_DELETE};
    router_write_fn fn = delete_done;
    size_t vlen = 0;
    uint8_t *val = NULL;
    if (q->cmd == MEMTEXT_DELETE) {
        if (g->cfg->async_delete) w.flags = WF_ASYNC;
    } else {
        val = make_value(0, q->cmd == MEMTEXT_TOUCH ? q->exptime : 0, NULL, 0, &vlen);
        if (!val) {
            client_reply(r, "SERVER_ERROR out of memory\r\n");
            return;
        }
        if (q->cmd == MEMTEXT_TOUCH) {
            g->stats.cmd_touch++;
            w.op = OP_TOUCH;
            fn = touch_done;
        } else {
            w.op = q->cmd == MEMTEXT_INCR ? OP_INCR : OP_DECR;
            w.delta = q->delta;
            fn = arith_done;
        }
    }
    client_call_begin(r);
    router_write_op(g, &w, q->keys[0].p, q->keys[0].len, val, vlen, fn, r);
}

static void flush_done(void *arg, const router_result *res)
{
    creq *r = arg;
    client_reply(r, res->ok ? "OK\r\n" : "SERVER_ERROR flush failed\r\n");
    client_call_end(r);
}

static void do_flush(client *c, const memtext_request *q)
{
    creq *r = client_req(c, q->noreply);
    if (!r) return;
    c->g->stats.cmd_flush++;
    client_call_begin(r);
    router_flush(c->g, q->delay, flush_done, r);
}

/* ---- stats ---- */

/* "STAT name value" (a stats_emit_fn). */
static void put_stat(void *arg, const char *name, const char *value)
{
    evbuffer_add_printf(arg, "STAT %s %s\r\n", name, value);
}

static void sizes_done(void *arg, const router_sizes *sz)
{
    creq *r = arg;
    stats_general(r->c->g, sz, put_stat, r->out);
    evbuffer_add(r->out, "END\r\n", 5);
    client_done(r);
    client_call_end(r);
}

static void do_stats(client *c, const memtext_request *q)
{
    creq *r = client_req(c, false);
    if (!r) return;
    if (q->arg.len == 0) {
        client_call_begin(r);
        router_sizes_get(c->g, sizes_done, r);
        return;
    }
    if (q->arg.len == 8 && memcmp(q->arg.p, "settings", 8) == 0) {
        stats_settings(c->g, put_stat, r->out);
        evbuffer_add(r->out, "END\r\n", 5);
    } else if (q->arg.len == 5 && memcmp(q->arg.p, "reset", 5) == 0) {
        stats_reset(c->g);
        evbuffer_add(r->out, "RESET\r\n", 7);
    } else if ((q->arg.len == 5 && memcmp(q->arg.p, "items", 5) == 0) ||
             (q->arg.len == 5 && memcmp(q->arg.p, "slabs", 5) == 0) ||
             (q->arg.len == 5 && memcmp(q->arg.p, "sizes", 5) == 0) ||
             (q->arg.len == 5 && memcmp(q->arg.p, "conns", 5) == 0))
        evbuffer_add(r->out, "END\r\n", 5); /* no slabs in a replicated store */
    else evbuffer_add_printf(r->out, "ERROR\r\n");
    client_done(r);
}

/* ---- meta commands ---- */

static creq *meta_req(client *c, const memtext_request *q, meta *m)
{
    const char *bad = parse_meta(q, m);
    c->g->stats.cmd_meta++;
    if (bad) {
        creq *r = client_req(c, false);
        if (r) {
            evbuffer_add_printf(r->out, "CLIENT_ERROR %s\r\n", bad);
            client_done(r);
        }
        return NULL;
    }
    creq *r = req_with_state(c, q, q->cmd == MEMTEXT_MN ? 0 : 1, false);
    if (r) ((tstate *)r->state)->m = *m;
    return r;
}

/* "HD"/"VA" + return flags, or a miss word; honours q. */
static void meta_answer(creq *r, const char *word, const record_value *v, uint64_t ct, bool quiet_ok)
{
    tstate *t = r->state;
    if (t->m.q && quiet_ok) {
        r->quiet = true;
        client_done(r);
        return;
    }
    evbuffer_add(r->out, word, 2);
    if (word[0] == 'H' || word[0] == 'V' || word[0] == 'N' || word[0] == 'E')
        meta_ret(r->out, &t->m, t->keys[0].key, t->keys[0].klen, v, ct, (uint32_t)time(NULL));
    evbuffer_add(r->out, "\r\n", 2);
    client_done(r);
}

static void mg_finish(creq *r, bool ok, const void *rec, size_t len)
{
    tstate *t = r->state;
    gateway *g = r->c->g;
    record_value v;
    if (!ok) {
        client_reply(r, "SERVER_ERROR get failed\r\n");
        return;
    }
    keep_record(&t->keys[0], rec, len);
    if (!hit(&t->keys[0], &v)) {
        g->stats.get_misses++;
        if (t->m.q) {
            r->quiet = true;
            client_done(r);
            return;
        }
        /* a miss echoes only the key and the opaque */
        evbuffer_add(r->out, "EN", 2);
        for (size_t i = 0; i < t->m.nret; i++) {
            if (t->m.ret[i] == 'k') evbuffer_add_printf(r->out, " k%.*s", (int)t->keys[0].klen, t->keys[0].key);
            else if (t->m.ret[i] == 'O') evbuffer_add_printf(r->out, " O%s", t->m.opaque);
        }
        evbuffer_add(r->out, "\r\n", 2);
        client_done(r);
        return;
    }
    g->stats.get_hits++;
    if (!t->m.v) {
        meta_answer(r, "HD", &v, v.clocktime, false);
        return;
    }
    evbuffer_add_printf(r->out, "VA %zu", v.payload_len);
    meta_ret(r->out, &t->m, t->keys[0].key, t->keys[0].klen, &v, v.clocktime, (uint32_t)time(NULL));
    evbuffer_add(r->out, "\r\n", 2);
    evbuffer_add(r->out, v.payload, v.payload_len);
    evbuffer_add(r->out, "\r\n", 2);
    client_done(r);
}

static void mg_get_done(void *arg, bool ok, const void *value, size_t vlen)
{
    creq *r = arg;
    tstate *t = r->state;
    client_part_end(r->c, t->keys[0].key, t->keys[0].klen, vlen);
    mg_finish(r, ok, value, vlen);
    client_call_end(r);
}

static void mg_gat_done(void *arg, const router_result *res)
{
    creq *r = arg;
    mg_finish(r, res->ok, res->ok && res->code == CODE_STORED ? res->value : NULL, res->vlen);
    client_call_end(r);
}

static void me_done(void *arg, bool ok, const void *rec, size_t len)
{
    creq *r = arg;
    tstate *t = r->state;
    client_part_end(r->c, t->keys[0].key, t->keys[0].klen, len);
    record_value v;
    uint32_t now = (uint32_t)time(NULL);
    if (!ok) {
        client_reply(r, "SERVER_ERROR get failed\r\n");
    } else {
        keep_record(&t->keys[0], rec, len);
        if (!hit(&t->keys[0], &v)) {
            client_reply(r, "EN\r\n");
        } else {
            evbuffer_add_printf(r->out, "ME %.*s exp=%lld la=0 cas=%" PRIu64 " fetch=no cls=1 size=%zu\r\n",
                                (int)t->keys[0].klen, t->keys[0].key,
                                v.exptime ? (long long)v.exptime - now : -1LL, v.clocktime, v.payload_len);
            client_done(r);
        }
    }
    client_call_end(r);
}

static void ms_done(void *arg, const router_result *res)
{
    creq *r = arg;
    if (!res->ok) client_reply(r, "SERVER_ERROR store failed\r\n");
    else if (res->code == CODE_STORED) meta_answer(r, "HD", NULL, res->ct, true);
    else if (res->code == CODE_NOT_STORED) meta_answer(r, "NS", NULL, 0, false);
    else if (res->code == CODE_EXISTS) meta_answer(r, "EX", NULL, 0, false);
    else meta_answer(r, "NF", NULL, 0, false);
    client_call_end(r);
}

static void md_done(void *arg, const router_result *res)
{
    creq *r = arg;
    gateway_stats *st = &r->c->g->stats;
    if (!res->ok) client_reply(r, "SERVER_ERROR delete failed\r\n");
    else if (res->code == CODE_STORED) {
        st->delete_hits++;
        meta_answer(r, "HD", NULL, 0, true);
    } else if (res->code == CODE_EXISTS) meta_answer(r, "EX", NULL, 0, false);
    else {
        st->delete_misses++;
        meta_answer(r, "NF", NULL, 0, false);
    }
    client_call_end(r);
}

static void ma_done(void *arg, const router_result *res)
{
    creq *r = arg;
    tstate *t = r->state;
    if (!res->ok) client_reply(r, "SERVER_ERROR store failed\r\n");
    else if (res->code == CODE_STORED) {
        record_value v, *vp = NULL;
        if (res->value && record_value_parse(res->value, res->vlen, &v) == 0) vp = &v;
        if (t->m.q) {
            r->quiet = true;
            client_done(r);
        } else if (t->m.v) {
            char num[24];
            int n = snprintf(num, sizeof(num), "%" PRIu64, res->number);
            evbuffer_add_printf(r->out, "VA %d", n);
            meta_ret(r->out, &t->m, t->keys[0].key, t->keys[0].klen, vp, res->ct, (uint32_t)time(NULL));
            evbuffer_add_printf(r->out, "\r\n%s\r\n", num);
            client_done(r);
        } else {
            meta_answer(r, "HD", vp, res->ct, true);
        }
    } else if (res->code == CODE_NON_NUMERIC) {
        client_reply(r, "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    } else if (res->code == CODE_EXISTS) meta_answer(r, "EX", NULL, 0, false);
    else meta_answer(r, "NF", NULL, 0, false);
    client_call_end(r);
}

static void do_meta(client *c, const memtext_request *q)
{
    gateway *g = c->g;
    meta m;
    creq *r;
    if (q->cmd == MEMTEXT_MN) {
        if ((r = client_req(c, false))) client_reply(r, "MN\r\n");
        return;
    }
    if (!(r = meta_req(c, q, &m))) return;
    tstate *t = r->state;
    const char *key = t->keys[0].key;
    size_t klen = t->keys[0].klen, vlen = 0;
    uint8_t *val = NULL;
    router_write w = {.cas = m.has_cas ? m.cas : 0};
    switch (q->cmd) {
    case MEMTEXT_ME:
        client_part_begin(c, key, klen);
        client_call_begin(r);
        router_get(g, key, klen, client_settled(c), me_done, r);
        return;
    case MEMTEXT_MG:
        g->stats.cmd_get++;
        client_call_begin(r);
        if (!m.has_ttl) {
            client_part_begin(c, key, klen);
            router_get(g, key, klen, client_settled(c), mg_get_done, r);
            return;
        }
        g->stats.cmd_touch++;
        val = make_value(0, m.ttl, NULL, 0, &vlen);
        w.op = OP_GAT;
        w.cas = 0;
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, mg_gat_done, r);
        return;
    case MEMTEXT_MS:
        if (too_large(r, q->data_len)) return;
        switch (m.mode ? m.mode : 'S') {
        case 'S': case 's': w.op = OP_SET; break;
        case 'E': case 'e': w.op = OP_ADD; break;
        case 'A': case 'a': w.op = OP_APPEND; break;
        case 'P': case 'p': w.op = OP_PREPEND; break;
        case 'R': case 'r': w.op = OP_REPLACE; break;
        default: client_reply(r, "CLIENT_ERROR invalid mode for ms M token\r\n"); return;
        }
        g->stats.cmd_set++;
        val = make_value(m.flags, m.has_ttl ? m.ttl : 0, q->data, q->data_len, &vlen);
        client_call_begin(r);
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, ms_done, r);
        return;
    case MEMTEXT_MD:
        w.op = OP_DELETE;
        client_call_begin(r);
        router_write_op(g, &w, key, klen, NULL, 0, md_done, r);
        return;
    case MEMTEXT_MA:
        switch (m.mode ? m.mode : 'I') {
        case 'I': case 'i': case '+': w.op = OP_INCR; break;
        case 'D': case 'd': case '-': w.op = OP_DECR; break;
        default: client_reply(r, "CLIENT_ERROR invalid mode for ma M token\r\n"); return;
        }
        w.delta = m.delta;
        w.initial = m.initial;
        if (m.vivify) w.flags |= WF_VIVIFY;
        if (m.has_ttl) w.flags |= WF_TOUCH;
        val = make_value(0, m.has_ttl ? m.ttl : m.vivify ? m.vivify_ttl : 0, NULL, 0, &vlen);
        client_call_begin(r);
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, ma_done, r);
        return;
    default: client_reply(r, "ERROR\r\n"); return;
    }
}

/* ---- dispatch ---- */

static void dispatch(client *c, const memtext_request *q)
{
    creq *r;
    switch (q->cmd) {
    case MEMTEXT_GET:
    case MEMTEXT_GETS:
    case MEMTEXT_GAT:
    case MEMTEXT_GATS: do_retrieve(c, q); break;
    case MEMTEXT_SET:
    case MEMTEXT_ADD:
    case MEMTEXT_REPLACE:
    case MEMTEXT_APPEND:
    case MEMTEXT_PREPEND:
    case MEMTEXT_CAS: do_store(c, q); break;
    case MEMTEXT_DELETE:
    case MEMTEXT_INCR:
    case MEMTEXT_DECR:
    case MEMTEXT_TOUCH: do_keyed_write(c, q); break;
    case MEMTEXT_FLUSH_ALL: do_flush(c, q); break;
    case MEMTEXT_STATS: do_stats(c, q); break;
    case MEMTEXT_VERSION:
        if ((r = client_req(c, false))) client_reply(r, "VERSION " GATEWAY_VERSION "\r\n");
        break;
    case MEMTEXT_VERBOSITY:
        if ((r = client_req(c, q->noreply))) client_reply(r, "OK\r\n");
        break;
    case MEMTEXT_QUIT: c->close_after_flush = true; break;
    default: do_meta(c, q); break;
    }
}

/* The command's place in the order rules of its connection (client.h). */
static creq_kind kind_of(const memtext_request *q)
{
    switch (q->cmd) {
    case MEMTEXT_GET:
    case MEMTEXT_GETS:
    case MEMTEXT_ME: return CREQ_READ;
    case MEMTEXT_MG:
        for (size_t i = 0; i < q->ntokens; i++)
            if (q->tokens[i].p[0] == 'T') return CREQ_WRITE; /* a touch */
        return CREQ_READ;
    case MEMTEXT_FLUSH_ALL:
    case MEMTEXT_STATS: return CREQ_BARRIER;
    case MEMTEXT_VERSION:
    case MEMTEXT_VERBOSITY:
    case MEMTEXT_QUIT:
    case MEMTEXT_MN: return CREQ_LOCAL;
    default: return CREQ_WRITE;
    }
}

/* The order rules: a write waits for the earlier gets of its keys. */
static bool may_start(client *c, const memtext_request *q)
{
    creq_kind kind = kind_of(q);
    if (kind == CREQ_WRITE) {
        size_t n = q->cmd == MEMTEXT_GAT || q->cmd == MEMTEXT_GATS ? q->nkeys : 1;
        for (size_t i = 0; i < n; i++)
            if (!client_may_write(c, q->keys[i].p, q->keys[i].len)) return false;
    }
    return client_may_start(c, kind);
}

static size_t text_parse(client *c, const char *buf, size_t len)
{
    memtext_request *q = c->proto;
    size_t consumed = 0;
    const char *errmsg = NULL;
    creq *r;
    memtext_status st = memtext_parse(buf, len, q, &consumed, &errmsg);
    switch (st) {
    case MEMTEXT_NEED_MORE:
        /* Refuse an oversized value before buffering it, as memcached does. */
        if (q->need > 0 && q->data_len > (size_t)c->g->cfg->item_size_max) {
            if ((r = client_req(c, q->noreply))) {
                c->g->stats.store_too_large++;
                client_reply(r, "SERVER_ERROR object too large for cache\r\n");
            }
            c->discard = q->need;
        }
        return 0;
    case MEMTEXT_OK:
        if (!may_start(c, q)) return 0; /* parsed again when it may */
        dispatch(c, q);
        break;
    case MEMTEXT_ERROR:
        if ((r = client_req(c, false))) client_reply(r, "ERROR\r\n");
        break;
    case MEMTEXT_CLIENT_ERROR:
    case MEMTEXT_CLOSE:
        if ((r = client_req(c, st == MEMTEXT_CLIENT_ERROR && q->noreply))) {
            evbuffer_add_printf(r->out, "CLIENT_ERROR %s\r\n", errmsg ? errmsg : "bad command line format");
            client_done(r);
        }
        if (st == MEMTEXT_CLOSE) c->close_after_flush = true;
        c->discard = q->swallow;
        break;
    }
    c->g->stats.bytes_read += consumed;
    return consumed;
}

void text_accept(gateway *g, int fd)
{
    memtext_request *q = calloc(1, sizeof(*q));
    if (!q) {
        close(fd);
        return;
    }
    client_new(g, fd, text_parse, q);
}

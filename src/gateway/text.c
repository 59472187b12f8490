/*
 * text — the memcached text protocol: the classic commands and the meta
 * commands (mg ms md ma mn me), as memcached 1.6's protocol.txt defines
 * them, over the in-order reply queue of client.c.
 *
 * Retrievals send one router call per key, as many at once as the
 * connection's window and budgets allow (client.c), and stream the answer
 * in key order as the keys come back. Every write and read-modify-write (set … cas, incr/decr, touch,
 * gat, ms, md, ma, mg with T, md I, an mg that may win a recache token) is
 * one router_write_op: it runs atomically at the key's coordinator, which
 * answers with memcached's result word.
 * Meta flags are read as memcached 1.6.18 reads them; return flags are
 * echoed in the order the client asked for them. Base64 keys (b) are
 * decoded here. Not supported, answered as memcached answers an unknown
 * flag: mg h l (docs/protocol.md §9.3).
 * Also here: -Y (the users file, text authentication), the protocol chosen
 * by a connection's first byte, shutdown, cache_memlimit and debugtime (the
 * debug clock, --debug-time: TTLs shown by meta commands and R's recache
 * time are counted on it, as the servers count exptimes).
 *
 * Calls: memtext (parser), client, router, record, clock, log. Thread rule: its worker's loop.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "memproto.h"
#include "memtext.h"
#include "proto.h"
#include "record.h"

/* The time exptimes are judged by: the wall clock, moved by the debug
 * clock's offset (debugtime; 0 unless --debug-time). */
static uint32_t mc_now(const gateway *g)
{
    return clock_shift((uint32_t)time(NULL), atomic_load(&g->group->debug_offset));
}

/* ---- meta flags ---- */

/* memcached's bound on an opaque token, its 'O' included. */
#define META_MAX_OPAQUE 32

typedef struct meta {
    char ret[MEMTEXT_MAX_TOKENS]; /* return flags, in request order */
    size_t nret;
    bool v, q, b, has_cas, has_ttl, has_flags, vivify, invalidate, recache;
    uint64_t cas;
    int64_t ttl, vivify_ttl, recache_ttl;
    uint32_t flags;
    char mode;
    uint64_t delta, initial;
    char opaque[META_MAX_OPAQUE + 1]; /* with its 'O' */
    uint8_t key[MEMTEXT_MAX_KEY];     /* b: the decoded key */
    size_t klen;
} meta;

/* base64 as memcached decodes it (its base64.c): bytes outside the
 * alphabet are skipped, '=' counts as a zero digit, the digits must come in
 * fours, and the first padded four ends the key. Returns the decoded length,
 * 0 when that is not base64 (memcached's "error decoding key"). */
static size_t b64_decode(const char *src, size_t len, uint8_t *out, size_t cap)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t block[4];
    size_t n = 0, count = 0, o = 0, pad = 0;
    for (size_t i = 0; i < len; i++)
        if (src[i] == '=' || (src[i] && strchr(alpha, src[i]))) n++;
    if (n == 0 || n % 4 || n / 4 * 3 > cap) return 0;
    for (size_t i = 0; i < len; i++) {
        const char *d = src[i] && src[i] != '=' ? strchr(alpha, src[i]) : NULL;
        if (!d && src[i] != '=') continue;
        if (src[i] == '=') pad++;
        block[count++] = d ? (uint8_t)(d - alpha) : 0;
        if (count < 4) continue;
        out[o++] = (uint8_t)(block[0] << 2 | block[1] >> 4);
        out[o++] = (uint8_t)(block[1] << 4 | block[2] >> 2);
        out[o++] = (uint8_t)(block[2] << 6 | block[3]);
        count = 0;
        if (pad) {
            if (pad > 2) return 0;
            o -= pad;
            break;
        }
    }
    return o;
}

static void b64_put(struct evbuffer *out, const uint8_t *in, size_t len)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char buf[(MEMTEXT_MAX_KEY + 2) / 3 * 4], *p = buf;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *p++ = alpha[v >> 18 & 63];
        *p++ = alpha[v >> 12 & 63];
        *p++ = i + 1 < len ? alpha[v >> 6 & 63] : '=';
        *p++ = i + 2 < len ? alpha[v & 63] : '=';
    }
    evbuffer_add(out, buf, (size_t)(p - buf));
}

/* " k<key>", or " k<base64> b" for a key that came base64-encoded. */
static void meta_key(struct evbuffer *out, const meta *m, const char *key, size_t klen)
{
    evbuffer_add(out, " k", 2);
    if (!m->b) {
        evbuffer_add(out, key, klen);
        return;
    }
    b64_put(out, (const uint8_t *)key, klen);
    evbuffer_add(out, " b", 2);
}

/* memcached's safe_strto* (an optional sign, decimal digits), with the
 * range of the C type memcached reads into. */
static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n > 0 && p[0] == '+') p++, n--;
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

static bool parse_i32(const char *p, size_t n, int64_t *out)
{
    uint64_t v;
    bool neg = n > 0 && p[0] == '-';
    if (!parse_u64(p + neg, n - neg, &v) || v > (neg ? 2147483648u : 2147483647u)) return false;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* Parse the flag tokens of a meta command as memcached 1.6's
 * _meta_flag_preparse does, and refuse what kumofs cannot honour with the
 * answer memcached gives a flag it does not know. NULL, or the
 * CLIENT_ERROR text. key/klen: the key token, decoded in place into m->key
 * under b. */
static const char *parse_meta(const memtext_request *q, meta *m)
{
    bool seen[128] = {false};
    int cmd = q->cmd;
    const char *err = NULL;
    uint64_t u;
    memset(m, 0, sizeof(*m));
    m->delta = 1;
    for (size_t i = 0; i < q->ntokens; i++) {
        const char *t = q->tokens[i].p, *a = t + 1;
        size_t n = q->tokens[i].len - 1;
        unsigned char f = (unsigned char)t[0];
        if (f >= 127 || seen[f]) return "duplicate flag";
        seen[f] = true;
        switch (f) {
        case 'b':
            m->b = true;
            m->klen = b64_decode(q->keys[0].p, q->keys[0].len, m->key, sizeof(m->key));
            if (m->klen == 0) err = "error decoding key";
            break;
        case 'N':
            if (!parse_i32(a, n, &m->vivify_ttl)) err = "bad token in command line format";
            m->vivify = true;
            break;
        case 'T':
            if (!parse_i32(a, n, &m->ttl)) err = "bad token in command line format";
            m->has_ttl = true;
            break;
        case 'R':
            if (!parse_i32(a, n, &m->recache_ttl)) err = "bad token in command line format";
            m->recache = true;
            break;
        case 'I':
            /* md: mark stale instead of deleting (OP_INVALIDATE); ms with C:
             * store stale when the CAS is older (WF_STALE) */
            m->invalidate = true;
            break;
        case 'h':
        case 'l':
            /* hit-before and last-access: every read would have to write */
            if (cmd == MEMTEXT_MG) return "invalid flag";
            break;
        case 'v': m->v = true; break;
        case 'q': m->q = true; break;
        case 'u':
        case 'P':
        case 'L': break;
        case 'c':
        case 'f':
        case 'k':
        case 's':
        case 't':
            m->ret[m->nret++] = (char)f;
            break;
        case 'O':
            m->ret[m->nret++] = 'O';
            if (n + 1 <= META_MAX_OPAQUE) memcpy(m->opaque, t, n + 1);
            break;
        case 'F':
            if (!parse_u64(a, n, &u) || u > UINT32_MAX) err = "bad command line format";
            else m->flags = (uint32_t)u;
            m->has_flags = true;
            break;
        case 'C':
            if (!parse_u64(a, n, &m->cas)) err = "bad token in command line format";
            m->has_cas = true;
            break;
        case 'M':
            if (n != 1) err = "incorrect length for M token";
            else m->mode = a[0];
            break;
        case 'J':
            if (!parse_u64(a, n, &m->initial)) err = "invalid numeric initial value";
            break;
        case 'D':
            if (!parse_u64(a, n, &m->delta)) err = "invalid numeric delta value";
            break;
        default: return "invalid flag";
        }
    }
    if (err) return err;
    for (size_t i = 0; i < q->ntokens; i++)
        if (q->tokens[i].p[0] == 'O' && q->tokens[i].len > META_MAX_OPAQUE) return "opaque token too long";
    return NULL;
}

/* The return flags each meta reply carries in memcached 1.6.18: mg's hit
 * all of them, ms's answers O k c, ma's success c t O k, and every other
 * answer (a miss, md, a failed ms or ma) only O and k. */
static const char *meta_fills(int cmd, const char *word)
{
    if (cmd == MEMTEXT_MG && word[0] != 'E') return "cfkOst";
    if (cmd == MEMTEXT_MS) return "ckO";
    if (cmd == MEMTEXT_MA && (word[0] == 'H' || word[0] == 'V')) return "ctkO";
    return "kO";
}

/* Append " c123 f0 kfoo …" for the requested return flags that `fills`
 * names. */
static void meta_ret(struct evbuffer *out, const meta *m, const char *fills, const char *key, size_t klen,
                     const record_value *v, uint64_t ct, uint32_t now)
{
    for (size_t i = 0; i < m->nret; i++) {
        if (!strchr(fills, m->ret[i])) continue;
        switch (m->ret[i]) {
        case 'c': evbuffer_add_printf(out, " c%" PRIu64, v ? v->clocktime : ct); break;
        case 'f': evbuffer_add_printf(out, " f%" PRIu32, v ? v->flags : 0); break;
        case 'k': meta_key(out, m, key, klen); break;
        case 'O': evbuffer_add_printf(out, " %s", m->opaque); break;
        case 's': evbuffer_add_printf(out, " s%zu", v ? v->payload_len : 0); break;
        case 't':
            if (!v || v->exptime == 0) evbuffer_add_printf(out, " t-1");
            else evbuffer_add_printf(out, " t%lld", (long long)v->exptime - (long long)now);
            break;
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
    uint64_t tag; /* client_part_begin's, while in flight */
    bool done;    /* answered */
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
}

/* A request of command cmd with state for `nkeys` keys copied from keys. */
static creq *req_with_state(client *c, int cmd, const memtext_token *keys, size_t nkeys, bool quiet)
{
    creq *r = client_req(c, quiet);
    if (!r) return NULL;
    size_t keybytes = 0;
    for (size_t i = 0; i < nkeys; i++) keybytes += keys[i].len;
    tstate *t = client_req_state(r, sizeof(*t) + nkeys * (sizeof(kslot) + sizeof(kctx)) + keybytes);
    r->free_state = tstate_free;
    if (!t) {
        client_reply(r, "SERVER_ERROR out of memory\r\n");
        return NULL;
    }
    t->cmd = cmd;
    t->keys = (kslot *)(t + 1);
    t->ctx = (kctx *)(t->keys + nkeys);
    char *kb = (char *)(t->ctx + nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        kslot *k = &t->keys[i];
        k->klen = keys[i].len;
        k->key = kb;
        memcpy(kb, keys[i].p, k->klen);
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

/* ---- get gets gat gats ---- */

/* Whether a key's answer is a value. The servers judged its expiry, by
 * the cluster's clock (docs/protocol.md, "Expiry and clocks"): the
 * gateway's own clock may be off, so it does not judge again. */
static bool hit(const void *rec, size_t rlen, record_value *v)
{
    return rec && record_value_parse(rec, rlen, v) == 0 && !v->tombstone;
}

/* " <n>" at p; returns the end. */
static char *put_uint(char *p, uint64_t n)
{
    char tmp[20];
    size_t i = 0;
    do tmp[i++] = (char)('0' + n % 10);
    while (n /= 10);
    *p++ = ' ';
    while (i) *p++ = tmp[--i];
    return p;
}

/* The largest value format_key copies next to its VALUE line. */
#define TEXT_INLINE_VALUE 1024

/* One key's answer, in key order: VALUE <key> <flags> <bytes>[ <cas>],
 * from its record (rec: NULL on a miss). */
static void format_key(creq *r, const kslot *k, const void *rec, size_t rlen)
{
    tstate *t = r->state;
    gateway *g = r->c->g;
    bool touch = t->cmd == MEMTEXT_GAT || t->cmd == MEMTEXT_GATS;
    record_value v;
    if (k->error) {
        t->failed = true;
        return;
    }
    if (!hit(rec, rlen, &v)) {
        g->stats.get_misses++;
        if (touch) g->stats.touch_misses++;
        return;
    }
    g->stats.get_hits++;
    if (touch) g->stats.touch_hits++;
    /* The line, the value and its CRLF in one write when the value is
     * small (a write per piece cost a call into the staging each). */
    char line[6 + MEMTEXT_MAX_KEY + 3 * 21 + 2 + TEXT_INLINE_VALUE + 2], *e = line; /* without printf */
    memcpy(e, "VALUE ", 6);
    e += 6;
    memcpy(e, k->key, k->klen);
    e += k->klen;
    e = put_uint(e, v.flags);
    e = put_uint(e, v.payload_len);
    if (t->cmd == MEMTEXT_GETS || t->cmd == MEMTEXT_GATS) e = put_uint(e, v.clocktime);
    *e++ = '\r';
    *e++ = '\n';
    if (v.payload_len <= TEXT_INLINE_VALUE) {
        memcpy(e, v.payload, v.payload_len);
        e += v.payload_len;
        *e++ = '\r';
        *e++ = '\n';
        client_write(r, line, (size_t)(e - line));
    } else {
        client_write(r, line, (size_t)(e - line));
        client_write(r, v.payload, v.payload_len);
        client_write(r, "\r\n", 2);
    }
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
        format_key(r, k, k->rec, k->rlen);
        free(k->rec);
        k->rec = NULL;
    }
    if (t->emit < t->nkeys) return;
    static const char failed[] = "SERVER_ERROR get failed\r\n", end[] = "END\r\n";
    if (t->failed && !t->answered) client_write(r, failed, sizeof failed - 1);
    else client_write(r, end, sizeof end - 1);
    client_done(r);
}

static void key_done(kctx *x, bool ok, const void *value, size_t vlen)
{
    creq *r = x->r;
    tstate *t = r->state;
    kslot *k = &t->keys[x->i];
    k->done = true;
    client_part_end_tag(r->c, k->tag, vlen);
    if (ok && x->i == t->emit) { /* next in line: answered from the reply itself */
        t->emit++;
        format_key(r, k, value, vlen);
    } else if (!ok) {
        k->error = true;
    } else {
        keep_record(k, value, vlen);
    }
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
        k->tag = client_part_begin(c, k->key, k->klen);
        client_call_begin(r);
        if (!touch) {
            router_get(c->g, k->key, k->klen, t->any_owner, get_done, &t->ctx[i]);
            continue;
        }
        size_t vlen;
        uint8_t *val = record_mc_value(0, t->exptime, NULL, 0, &vlen);
        router_write w = {.op = OP_GAT};
        router_write_op(c->g, &w, k->key, k->klen, val, val ? vlen : 0, gat_done, &t->ctx[i]);
    }
    if (t->next == t->nkeys) client_parts_sent(r);
}

static void do_retrieve(client *c, const memtext_request *q)
{
    gateway *g = c->g;
    bool touch = q->cmd == MEMTEXT_GAT || q->cmd == MEMTEXT_GATS;
    creq *r = req_with_state(c, q->cmd, q->keys, q->nkeys, false);
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
    creq *r = req_with_state(c, q->cmd, q->keys, 1, q->noreply);
    if (!r || too_large(r, q->data_len)) return;
    size_t vlen;
    uint8_t *val = record_mc_value(q->flags, q->exptime, q->data, q->data_len, &vlen);
    if (!val) {
        client_reply(r, "SERVER_ERROR out of memory\r\n");
        return;
    }
    g->stats.cmd_set++;
    router_write w = {.op = store_op(q->cmd), .cas = q->cmd == MEMTEXT_CAS ? q->cas : 0, .flags = g->cfg->async_set ? WF_ASYNC : 0};
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
    creq *r = req_with_state(c, q->cmd, q->keys, 1, q->noreply);
    if (!r) return;
    router_write w = {.op = OP_DELETE};
    router_write_fn fn = delete_done;
    size_t vlen = 0;
    uint8_t *val = NULL;
    if (q->cmd == MEMTEXT_DELETE) {
        if (g->cfg->async_delete) w.flags = WF_ASYNC;
    } else {
        val = record_mc_value(0, q->cmd == MEMTEXT_TOUCH ? q->exptime : 0, NULL, 0, &vlen);
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
    /* memcached's md and ma word every flag error alike */
    if (bad && (q->cmd == MEMTEXT_MD || q->cmd == MEMTEXT_MA) && strcmp(bad, "opaque token too long") != 0)
        bad = "invalid or duplicate flag";
    if (bad) {
        creq *r = client_req(c, false);
        if (r) {
            evbuffer_add_printf(r->out, "CLIENT_ERROR %s\r\n", bad);
            client_done(r);
        }
        return NULL;
    }
    memtext_token key = m->b ? (memtext_token){(const char *)m->key, m->klen} : q->keys[0];
    creq *r = req_with_state(c, q->cmd, &key, 1, false);
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
    meta_ret(r->out, &t->m, meta_fills(t->cmd, word), t->keys[0].key, t->keys[0].klen, v, ct, mc_now(r->c->g));
    evbuffer_add(r->out, "\r\n", 2);
    client_done(r);
}

/* mg's answer: the record v (NULL: a miss). won: this reader was handed
 * the win token. Z (a token is out), X (stale) and W (won) follow the
 * return flags in memcached's order. */
static void mg_reply(creq *r, const record_value *v, bool won)
{
    tstate *t = r->state;
    gateway *g = r->c->g;
    uint32_t now = mc_now(g);
    if (!v) {
        g->stats.get_misses++;
        if (t->m.q) {
            r->quiet = true;
            client_done(r);
            return;
        }
        evbuffer_add(r->out, "EN", 2);
        meta_ret(r->out, &t->m, meta_fills(t->cmd, "EN"), t->keys[0].key, t->keys[0].klen, NULL, 0, 0);
        evbuffer_add(r->out, "\r\n", 2);
        client_done(r);
        return;
    }
    g->stats.get_hits++;
    if (t->m.v) evbuffer_add_printf(r->out, "VA %zu", v->payload_len);
    else evbuffer_add(r->out, "HD", 2);
    meta_ret(r->out, &t->m, meta_fills(t->cmd, "VA"), t->keys[0].key, t->keys[0].klen, v, v->clocktime, now);
    if (!won && (v->meta & RECORD_META_WON)) evbuffer_add(r->out, " Z", 2);
    if (v->meta & RECORD_META_STALE) evbuffer_add(r->out, " X", 2);
    if (won) evbuffer_add(r->out, " W", 2);
    evbuffer_add(r->out, "\r\n", 2);
    if (t->m.v) {
        evbuffer_add(r->out, v->payload, v->payload_len);
        evbuffer_add(r->out, "\r\n", 2);
    }
    client_done(r);
}

static void mg_win_done(void *arg, const router_result *res)
{
    creq *r = arg;
    record_value v;
    bool found = res->ok && res->value && record_value_parse(res->value, res->vlen, &v) == 0 && !v.tombstone;
    if (!res->ok) client_reply(r, "SERVER_ERROR get failed\r\n");
    else mg_reply(r, found && res->code != CODE_NOT_FOUND ? &v : NULL, found && res->code == CODE_STORED);
    client_call_end(r);
}

/* The record mg read (or touched). A reader may win the token that tells
 * it to recache: with N on a miss (the key is created empty), on a stale
 * record, or with R on one expiring sooner than R seconds, when no token
 * is out yet. The coordinator decides who wins (OP_MG_WIN), atomically. */
static void mg_finish(creq *r, bool ok, const void *rec, size_t len)
{
    tstate *t = r->state;
    gateway *g = r->c->g;
    uint32_t now = mc_now(g);
    record_value v;
    if (!ok) {
        client_reply(r, "SERVER_ERROR get failed\r\n");
        return;
    }
    keep_record(&t->keys[0], rec, len);
    bool live = hit(t->keys[0].rec, t->keys[0].rlen, &v);
    uint32_t recache = t->m.recache ? record_exptime(t->m.recache_ttl, now) : 0;
    bool may_win = live ? !(v.meta & RECORD_META_WON) &&
                              ((v.meta & RECORD_META_STALE) || (recache && v.exptime && v.exptime < recache))
                        : t->m.vivify;
    if (!may_win) {
        mg_reply(r, live ? &v : NULL, false);
        return;
    }
    size_t vlen;
    uint8_t *val = record_mc_value(0, t->m.vivify ? t->m.vivify_ttl : 0, NULL, 0, &vlen);
    router_write w = {.op = OP_MG_WIN, .flags = t->m.vivify ? WF_VIVIFY : 0, .initial = recache};
    client_call_begin(r);
    router_write_op(g, &w, t->keys[0].key, t->keys[0].klen, val, val ? vlen : 0, mg_win_done, r);
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
    uint32_t now = mc_now(r->c->g);
    if (!ok) {
        client_reply(r, "SERVER_ERROR get failed\r\n");
    } else {
        keep_record(&t->keys[0], rec, len);
        if (!hit(t->keys[0].rec, t->keys[0].rlen, &v)) {
            client_reply(r, "EN\r\n");
        } else {
            evbuffer_add(r->out, "ME ", 3);
            if (t->m.b) b64_put(r->out, (const uint8_t *)t->keys[0].key, t->keys[0].klen);
            else evbuffer_add(r->out, t->keys[0].key, t->keys[0].klen);
            evbuffer_add_printf(r->out, " exp=%lld la=0 cas=%" PRIu64 " fetch=no cls=1 size=%zu\r\n",
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
            meta_ret(r->out, &t->m, meta_fills(t->cmd, "VA"), t->keys[0].key, t->keys[0].klen, vp, res->ct,
                     mc_now(r->c->g));
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

/* me <key> [b]: memcached reads no flags but a b right after the key, and
 * answers a key that came base64-encoded in base64 when it is not printable. */
static void do_me(client *c, const memtext_request *q)
{
    meta m;
    memset(&m, 0, sizeof(m));
    memtext_token key = q->keys[0];
    c->g->stats.cmd_meta++;
    if (q->ntokens >= 1 && q->tokens[0].len == 1 && q->tokens[0].p[0] == 'b') {
        m.klen = b64_decode(key.p, key.len, m.key, sizeof(m.key));
        creq *e;
        if (m.klen == 0) {
            if ((e = client_req(c, false))) client_reply(e, "CLIENT_ERROR bad command line format\r\n");
            return;
        }
        for (size_t i = 0; i < m.klen; i++) m.b = m.b || m.key[i] <= ' ' || m.key[i] >= 0x7f;
        key = (memtext_token){(const char *)m.key, m.klen};
    }
    creq *r = req_with_state(c, q->cmd, &key, 1, false);
    if (!r) return;
    tstate *t = r->state;
    t->m = m;
    client_part_begin(c, t->keys[0].key, t->keys[0].klen);
    client_call_begin(r);
    router_get(c->g, t->keys[0].key, t->keys[0].klen, client_settled(c), me_done, r);
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
    if (q->cmd == MEMTEXT_ME) {
        do_me(c, q);
        return;
    }
    if (!(r = meta_req(c, q, &m))) return;
    tstate *t = r->state;
    const char *key = t->keys[0].key;
    size_t klen = t->keys[0].klen, vlen = 0;
    uint8_t *val = NULL;
    router_write w = {.cas = m.has_cas ? m.cas : 0};
    switch (q->cmd) {
    case MEMTEXT_MG:
        g->stats.cmd_get++;
        client_call_begin(r);
        if (!m.has_ttl) {
            client_part_begin(c, key, klen);
            router_get(g, key, klen, client_settled(c), mg_get_done, r);
            return;
        }
        g->stats.cmd_touch++;
        val = record_mc_value(0, m.ttl, NULL, 0, &vlen);
        w.op = OP_GAT;
        w.cas = 0;
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, mg_gat_done, r);
        return;
    case MEMTEXT_MS:
        if (too_large(r, q->data_len)) return;
        switch (m.mode ? m.mode : 'S') {
        case 'S': w.op = OP_SET; break;
        case 'E': w.op = OP_ADD; break;
        case 'A': w.op = OP_APPEND; break;
        case 'P': w.op = OP_PREPEND; break;
        case 'R': w.op = OP_REPLACE; break;
        default: client_reply(r, "CLIENT_ERROR invalid mode for ms M token\r\n"); return;
        }
        /* memcached turns set and replace with a CAS into its cas command,
         * which a CAS of 0 never matches */
        if (m.has_cas && (w.op == OP_SET || w.op == OP_REPLACE)) {
            w.op = OP_CAS;
            if (m.invalidate) w.flags |= WF_STALE;
        }
        g->stats.cmd_set++;
        val = record_mc_value(m.flags, m.has_ttl ? m.ttl : 0, q->data, q->data_len, &vlen);
        client_call_begin(r);
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, ms_done, r);
        return;
    case MEMTEXT_MD:
        if (m.invalidate) { /* mark stale, bump the CAS, T sets the TTL */
            w.op = OP_INVALIDATE;
            if (m.has_ttl) w.flags |= WF_TOUCH;
            val = record_mc_value(0, m.has_ttl ? m.ttl : 0, NULL, 0, &vlen);
            client_call_begin(r);
            router_write_op(g, &w, key, klen, val, val ? vlen : 0, md_done, r);
            return;
        }
        w.op = OP_DELETE;
        client_call_begin(r);
        router_write_op(g, &w, key, klen, NULL, 0, md_done, r);
        return;
    case MEMTEXT_MA:
        switch (m.mode ? m.mode : 'I') {
        case 'I':
        case '+': w.op = OP_INCR; break;
        case 'D':
        case '-': w.op = OP_DECR; break;
        default: client_reply(r, "CLIENT_ERROR invalid mode for ma M token\r\n"); return;
        }
        w.delta = m.delta;
        w.initial = m.initial;
        if (m.vivify) w.flags |= WF_VIVIFY;
        if (m.has_ttl) w.flags |= WF_TOUCH;
        val = record_mc_value(0, m.has_ttl ? m.ttl : m.vivify ? m.vivify_ttl
                                                              : 0,
                              NULL, 0, &vlen);
        client_call_begin(r);
        router_write_op(g, &w, key, klen, val, val ? vlen : 0, ma_done, r);
        return;
    default: client_reply(r, "ERROR\r\n"); return;
    }
}

/* ---- administration ---- */

/* shutdown [graceful]: only with -A, as memcached. Both forms stop the
 * gateway the way SIGTERM does (it finishes what is in flight), and close
 * this connection without a reply. */
static void do_shutdown(client *c, const memtext_request *q)
{
    creq *r;
    if (!c->g->cfg->shutdown_command) {
        if ((r = client_req(c, false))) client_reply(r, "ERROR: shutdown not enabled\r\n");
        return;
    }
    if (q->arg.len == 0 || (q->arg.len == 8 && memcmp(q->arg.p, "graceful", 8) == 0 && q->ntokens == 0)) {
        log_info("shutdown command from a client");
        c->close_after_flush = true;
        kill(getpid(), SIGTERM);
        return;
    }
    if ((r = client_req(c, false))) client_reply(r, "CLIENT_ERROR invalid shutdown mode\r\n");
}

/* cache_memlimit <megabytes>: memcached's answers, but no effect: the
 * gateway caches nothing, the servers' databases are sized on disk. */
static void do_memlimit(client *c, const memtext_request *q)
{
    creq *r = client_req(c, q->noreply);
    if (!r) return;
    if (q->delay < 0) client_reply(r, "ERROR\r\n");
    else if (q->delay < 8) client_reply(r, "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n");
    else if (q->delay > 1000000000) client_reply(r, "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n");
    else client_reply(r, "OK\r\n");
}

/* debugtime <seconds>: only with --debug-time, as memcached serves it only
 * in its debug builds; without, ERROR, as an unknown command. The clock
 * moves on by the seconds given (memcached adds them up too), and the new
 * offset goes to every server (SRV_DEBUG_TIME), so that every owner of a
 * key judges its exptime alike. A bad number is CLIENT_ERROR (memcached:
 * ERROR); pausing the clock (memcached's "p" and "r") is not served. */
static void debugtime_done(void *arg, const router_result *res)
{
    creq *r = arg;
    client_reply(r, res->ok ? "OK\r\n" : "SERVER_ERROR debugtime not taken by every server\r\n");
    client_call_end(r);
}

static void do_debugtime(client *c, const memtext_request *q)
{
    creq *r = client_req(c, false);
    if (!r) return;
    if (!c->g->cfg->debug_time) {
        client_reply(r, "ERROR\r\n");
        return;
    }
    if (q->delay == INT64_MIN) {
        client_reply(r, "CLIENT_ERROR bad command line format\r\n");
        return;
    }
    gateway_group *grp = c->g->group;
    int64_t old = atomic_load(&grp->debug_offset), next;
    do {
        if (!clock_debug_add(old, q->delay, &next)) {
            client_reply(r, "CLIENT_ERROR debugtime out of range\r\n");
            return;
        }
    } while (!atomic_compare_exchange_weak(&grp->debug_offset, &old, next));
    log_info("debugtime %lld: the debug clock's offset is %lld s", (long long)q->delay, (long long)next);
    client_call_begin(r);
    router_debug_time(c->g, next, debugtime_done, r);
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
    case MEMTEXT_SHUTDOWN: do_shutdown(c, q); break;
    case MEMTEXT_CACHE_MEMLIMIT: do_memlimit(c, q); break;
    case MEMTEXT_DEBUGTIME: do_debugtime(c, q); break;
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
    case MEMTEXT_DEBUGTIME:
    case MEMTEXT_STATS: return CREQ_BARRIER;
    case MEMTEXT_SHUTDOWN: return CREQ_BARRIER; /* after what came before it */
    case MEMTEXT_VERSION:
    case MEMTEXT_VERBOSITY:
    case MEMTEXT_QUIT:
    case MEMTEXT_CACHE_MEMLIMIT:
    case MEMTEXT_MN: return CREQ_LOCAL;
    default: return CREQ_WRITE;
    }
}

/* Whether a write of the request's key may start: for a meta command with
 * b, the key the router sees is the decoded one. */
static bool may_write_key(client *c, const memtext_request *q, const memtext_token *key)
{
    bool b64 = false;
    if (q->cmd >= MEMTEXT_MG && q->cmd <= MEMTEXT_ME)
        for (size_t i = 0; i < q->ntokens; i++) b64 = b64 || q->tokens[i].p[0] == 'b';
    if (!b64) return client_may_write(c, key->p, key->len);
    uint8_t raw[MEMTEXT_MAX_KEY + 4];
    size_t n = b64_decode(key->p, key->len, raw, sizeof(raw));
    return client_may_write(c, (const char *)raw, n);
}

/* The order rules: a write waits for the earlier gets of its keys. */
static bool may_start(client *c, const memtext_request *q)
{
    creq_kind kind = kind_of(q);
    if (kind == CREQ_WRITE) {
        size_t n = q->cmd == MEMTEXT_GAT || q->cmd == MEMTEXT_GATS ? q->nkeys : 1;
        for (size_t i = 0; i < n; i++)
            if (!may_write_key(c, q, &q->keys[i])) return false;
    }
    return client_may_start(c, kind);
}

size_t text_parse(client *c, const char *buf, size_t len)
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
    case MEMTEXT_HANGUP:
        /* replies to earlier requests still go out (memcached drops them) */
        c->close_after_flush = true;
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

/* ---- -Y: client authentication ---- */

/* Split s[0..n) on spaces into at most max tokens; returns how many. */
static size_t split(const char *s, size_t n, memtext_token *t, size_t max)
{
    size_t k = 0, i = 0;
    while (i < n && k < max) {
        while (i < n && s[i] == ' ') i++;
        if (i == n) break;
        size_t b = i;
        while (i < n && s[i] != ' ') i++;
        t[k++] = (memtext_token){s + b, i - b};
    }
    return k;
}

/* A text connection before it authenticates (-Y), as memcached 1.5.15's
 * try_read_command_asciiauth: the first command must be
 * "set <any key> <flags> <exptime> <bytes>" whose data is "<user> <pass>";
 * STORED and the connection is served, or an error and it may try again.
 * The data is bounded by MEMTEXT_LONG_LINE (memcached waits for any size). */
size_t text_auth_parse(client *c, const char *buf, size_t len)
{
    gateway *g = c->g;
    memtext_token t[6];
    uint64_t size = 0;
    creq *r;
    const char *nl = memchr(buf, '\n', len);
    if (!nl) {
        if (len > MEMTEXT_LONG_LINE) c->close_after_flush = true;
        return c->close_after_flush ? len : 0;
    }
    size_t line = (size_t)(nl - buf) + 1, n = line - 1;
    if (n > 0 && buf[n - 1] == '\r') n--;
    size_t k = split(buf, n, t, 6);
    bool digits = k >= 5 && t[4].len > 0 && t[4].len <= 10;
    for (size_t i = 0; digits && i < t[4].len; i++) {
        digits = t[4].p[i] >= '0' && t[4].p[i] <= '9';
        size = size * 10 + (uint64_t)(t[4].p[i] - '0');
    }
    if (!digits || t[0].len != 3 || memcmp(t[0].p, "set", 3) != 0 || size > MEMTEXT_LONG_LINE) {
        if ((r = client_req(c, false))) client_reply(r, "CLIENT_ERROR unauthenticated\r\n");
        return line;
    }
    if (len < line + size + 2) return 0;
    const char *data = buf + line;
    if (!(r = client_req(c, false))) return line + size + 2;
    if (data[size] != '\r' || data[size + 1] != '\n') {
        client_reply(r, "CLIENT_ERROR bad command line termination\r\n");
    } else if (split(data, size, t, 2) < 2) {
        client_reply(r, "CLIENT_ERROR bad authentication token format\r\n");
    } else {
        g->stats.auth_cmds++;
        if (users_check(g->cfg->users, t[0].p, t[0].len, t[1].p, t[1].len)) {
            client_reply(r, "STORED\r\n");
            c->parse = text_parse;
        } else {
            g->stats.auth_errors++;
            client_reply(r, "CLIENT_ERROR authentication failure\r\n");
        }
    }
    g->stats.bytes_read += line + size + 2;
    return line + size + 2;
}

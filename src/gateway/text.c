/*
 * text — memcached text-protocol connections.
 *
 * Each parsed request becomes an entry in the connection's queue with its
 * own output buffer. Requests run concurrently (a pipelined client gets its
 * gets and sets fanned out to the servers at once), but output leaves in
 * request order: after any request completes, the finished prefix of the
 * queue is moved to the socket. A connection that closes while requests are
 * in flight is freed when the last of them completes.
 *
 * Calls: memtext (parser), router, record, log. Thread rule: main loop.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "gateway.h"
#include "log.h"
#include "memtext.h"
#include "proto.h"
#include "record.h"

#define MAX_QUEUED 1024 /* requests in flight per connection before reading pauses */

typedef struct tconn tconn;

typedef struct key_slot {
    char *key;
    size_t klen;
    uint8_t *value; /* the stored record, NULL on a miss */
    size_t vlen;
} key_slot;

typedef struct treq {
    struct treq *next;
    tconn *c;
    struct evbuffer *out;
    bool done;
    bool noreply;
    int cmd;
    int waiting;
    size_t nkeys;
    key_slot *keys;
} treq;

struct tconn {
    gateway *g;
    struct bufferevent *bev;
    treq *head, *tail;
    size_t queued;
    int inflight; /* router callbacks still to come */
    bool closed;
    bool close_after_flush;
    bool paused; /* reading stopped: too many requests in flight */
    size_t discard; /* bytes of a refused data block still to drop */
    memtext_request req; /* parse scratch (large: 256 keys) */
};

static void conn_free(tconn *c)
{
    while (c->head) {
        treq *r = c->head;
        c->head = r->next;
        evbuffer_free(r->out);
        free(r->keys);
        free(r);
    }
    free(c);
}

static void conn_close(tconn *c)
{
    if (c->closed) return;
    c->closed = true;
    c->g->stats.curr_connections--;
    bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->inflight == 0) conn_free(c);
}

static treq *req_new(tconn *c, int cmd, bool noreply)
{
    treq *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->out = evbuffer_new();
    if (!r->out) {
        free(r);
        return NULL;
    }
    r->c = c;
    r->cmd = cmd;
    r->noreply = noreply;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
    c->queued++;
    return r;
}

/* Move the finished prefix of the queue to the socket. */
static void flush(tconn *c)
{
    if (c->closed) return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->head && c->head->done) {
        treq *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->queued--;
        if (!r->noreply) evbuffer_add_buffer(out, r->out);
        evbuffer_free(r->out);
        for (size_t i = 0; i < r->nkeys; i++) {
            free(r->keys[i].key);
            free(r->keys[i].value);
        }
        free(r->keys);
        free(r);
    }
    if (c->paused && c->queued < MAX_QUEUED / 2) {
        /* Input may already be buffered: run the parser again, later. */
        c->paused = false;
        bufferevent_enable(c->bev, EV_READ);
        bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    }
    if (c->close_after_flush && !c->head && evbuffer_get_length(out) == 0) conn_close(c);
}

static void reply(treq *r, const char *text)
{
    evbuffer_add(r->out, text, strlen(text));
    r->done = true;
}

/* A router callback arrived for r: account for it, flush, maybe free the conn. */
static void complete(treq *r)
{
    tconn *c = r->c;
    c->inflight--;
    if (c->closed) {
        if (c->inflight == 0) conn_free(c);
        return;
    }
    flush(c);
}

/* ---- get / gets ---- */

static void get_done(void *arg, bool ok, const void *value, size_t vlen);

typedef struct get_ctx {
    treq *r;
    size_t i;
} get_ctx;

static void format_gets(treq *r)
{
    gateway *g = r->c->g;
    uint32_t now = (uint32_t)time(NULL);
    bool failed = false;
    for (size_t i = 0; i < r->nkeys; i++) {
        key_slot *k = &r->keys[i];
        record_value v;
        if (k->vlen == SIZE_MAX) {
            failed = true;
            continue;
        }
        if (!k->value || record_value_parse(k->value, k->vlen, &v) < 0 || v.tombstone || record_expired(&v, now)) {
            g->stats.get_misses++;
            continue;
        }
        g->stats.get_hits++;
        evbuffer_add_printf(r->out, "VALUE %.*s %" PRIu32 " %zu", (int)k->klen, k->key, v.flags, v.payload_len);
        if (r->cmd == MEMTEXT_GETS) evbuffer_add_printf(r->out, " %" PRIu64, v.clocktime);
        evbuffer_add(r->out, "\r\n", 2);
        evbuffer_add(r->out, v.payload, v.payload_len);
        evbuffer_add(r->out, "\r\n", 2);
    }
    if (failed && evbuffer_get_length(r->out) == 0) {
        /* Nothing could be read at all: say so instead of a silent miss. */
        evbuffer_add_printf(r->out, "SERVER_ERROR get failed\r\n");
    } else {
        evbuffer_add(r->out, "END\r\n", 5);
    }
    r->done = true;
}

static void get_done(void *arg, bool ok, const void *value, size_t vlen)
{
    get_ctx *x = arg;
    treq *r = x->r;
    key_slot *k = &r->keys[x->i];
    free(x);
    if (!ok) {
        k->vlen = SIZE_MAX; /* marks an error */
    } else if (value) {
        k->value = malloc(vlen ? vlen : 1);
        if (k->value) {
            memcpy(k->value, value, vlen);
            k->vlen = vlen;
        } else {
            k->vlen = SIZE_MAX;
        }
    }
    if (--r->waiting == 0) format_gets(r);
    complete(r);
}

static void do_get(tconn *c, const memtext_request *q)
{
    treq *r = req_new(c, q->cmd, false);
    if (!r) return;
    r->keys = calloc(q->nkeys, sizeof(key_slot));
    if (!r->keys) {
        reply(r, "SERVER_ERROR out of memory\r\n");
        return;
    }
    r->nkeys = q->nkeys;
    r->waiting = (int)q->nkeys;
    c->g->stats.cmd_get += q->nkeys;
    for (size_t i = 0; i < q->nkeys; i++) {
        key_slot *k = &r->keys[i];
        k->klen = q->keys[i].len;
        k->key = malloc(k->klen);
        get_ctx *x = malloc(sizeof(*x));
        if (!k->key || !x) {
            free(x);
            k->vlen = SIZE_MAX;
            if (--r->waiting == 0) format_gets(r);
            continue;
        }
        memcpy(k->key, q->keys[i].p, k->klen);
        x->r = r;
        x->i = i;
        c->inflight++;
        router_get(c->g, k->key, k->klen, get_done, x);
    }
}

/* ---- storage commands ---- */

static void store_done(void *arg, bool ok, int code, uint64_t ct)
{
    treq *r = arg;
    if (!ok) reply(r, "SERVER_ERROR store failed\r\n");
    else if (code == CODE_STORED) reply(r, "STORED\r\n");
    else if (code == CODE_NOT_STORED) reply(r, "NOT_STORED\r\n");
    else if (code == CODE_EXISTS) reply(r, "EXISTS\r\n");
    else reply(r, "NOT_FOUND\r\n");
    complete(r);
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

static void do_store(tconn *c, const memtext_request *q)
{
    gateway *g = c->g;
    treq *r = req_new(c, q->cmd, q->noreply);
    if (!r) return;
    if (q->data_len > (size_t)g->cfg->item_size_max) {
        reply(r, "SERVER_ERROR object too large for cache\r\n");
        return;
    }
    size_t vlen = record_mc_size(q->data_len);
    uint8_t *val = malloc(vlen);
    if (!val) {
        reply(r, "SERVER_ERROR out of memory\r\n");
        return;
    }
    record_mc_header(val, 0, q->flags, record_exptime(q->exptime, (uint32_t)time(NULL)));
    memcpy(val + record_mc_size(0), q->data, q->data_len);
    g->stats.cmd_set++;
    c->inflight++;
    bool async = g->cfg->async_set || q->noreply;
    router_set(g, store_op(q->cmd), q->keys[0].p, q->keys[0].len, val, vlen, q->cas, async, store_done, r);
}

static void delete_done(void *arg, bool ok, int code, uint64_t ct)
{
    treq *r = arg;
    if (!ok) reply(r, "SERVER_ERROR delete failed\r\n");
    else if (code == CODE_STORED) reply(r, "DELETED\r\n");
    else reply(r, "NOT_FOUND\r\n");
    complete(r);
}

static void do_delete(tconn *c, const memtext_request *q)
{
    treq *r = req_new(c, q->cmd, q->noreply);
    if (!r) return;
    c->g->stats.cmd_delete++;
    c->inflight++;
    router_delete(c->g, q->keys[0].p, q->keys[0].len, c->g->cfg->async_delete || q->noreply, delete_done, r);
}

/* ---- everything else ---- */

static void do_stats(tconn *c, const memtext_request *q)
{
    gateway *g = c->g;
    treq *r = req_new(c, q->cmd, false);
    if (!r) return;
    if (q->arg.len > 0) {
        reply(r, "END\r\n"); /* sub-statistics are not kept yet */
        return;
    }
    time_t now = time(NULL);
    evbuffer_add_printf(r->out,
                        "STAT pid %ld\r\nSTAT uptime %ld\r\nSTAT time %ld\r\nSTAT version %s\r\n"
                        "STAT curr_connections %" PRIu64 "\r\nSTAT total_connections %" PRIu64 "\r\n"
                        "STAT cmd_get %" PRIu64 "\r\nSTAT cmd_set %" PRIu64 "\r\nSTAT get_hits %" PRIu64
                        "\r\nSTAT get_misses %" PRIu64 "\r\nSTAT cmd_delete %" PRIu64 "\r\nEND\r\n",
                        (long)getpid(), (long)(now - g->started), (long)now, PACKAGE_VERSION,
                        g->stats.curr_connections, g->stats.total_connections, g->stats.cmd_get, g->stats.cmd_set,
                        g->stats.get_hits, g->stats.get_misses, g->stats.cmd_delete);
    r->done = true;
}

static void dispatch(tconn *c, const memtext_request *q)
{
    treq *r;
    switch (q->cmd) {
    case MEMTEXT_GET:
    case MEMTEXT_GETS: do_get(c, q); break;
    case MEMTEXT_SET:
    case MEMTEXT_ADD:
    case MEMTEXT_REPLACE:
    case MEMTEXT_APPEND:
    case MEMTEXT_PREPEND:
    case MEMTEXT_CAS: do_store(c, q); break;
    case MEMTEXT_DELETE: do_delete(c, q); break;
    case MEMTEXT_STATS: do_stats(c, q); break;
    case MEMTEXT_VERSION:
        if ((r = req_new(c, q->cmd, false))) reply(r, "VERSION " PACKAGE_VERSION "\r\n");
        break;
    case MEMTEXT_VERBOSITY:
        if ((r = req_new(c, q->cmd, q->noreply))) reply(r, "OK\r\n");
        break;
    case MEMTEXT_QUIT: c->close_after_flush = true; break;
    default:
        if ((r = req_new(c, q->cmd, q->noreply))) reply(r, "SERVER_ERROR not supported\r\n");
        break;
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    tconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->closed && !c->close_after_flush) {
        size_t len = evbuffer_get_length(in);
        if (c->discard > 0 && len > 0) {
            size_t n = len < c->discard ? len : c->discard;
            evbuffer_drain(in, n);
            c->discard -= n;
            continue;
        }
        if (len == 0) break;
        if (c->queued >= MAX_QUEUED) {
            c->paused = true;
            bufferevent_disable(bev, EV_READ);
            break;
        }
        const char *buf = (const char *)evbuffer_pullup(in, -1);
        size_t consumed = 0;
        const char *errmsg = NULL;
        memtext_status st = memtext_parse(buf, len, &c->req, &consumed, &errmsg);
        treq *r;
        if (st == MEMTEXT_NEED_MORE) {
            /* Refuse an oversized value before buffering it, as memcached does. */
            if (c->req.need > 0 && c->req.data_len > (size_t)c->g->cfg->item_size_max) {
                if ((r = req_new(c, 0, c->req.noreply))) reply(r, "SERVER_ERROR object too large for cache\r\n");
                c->discard = c->req.need;
                continue;
            }
            break;
        }
        switch (st) {
        case MEMTEXT_OK: dispatch(c, &c->req); break;
        case MEMTEXT_ERROR:
            if ((r = req_new(c, 0, false))) reply(r, "ERROR\r\n");
            break;
        case MEMTEXT_CLIENT_ERROR:
        case MEMTEXT_CLOSE:
            if ((r = req_new(c, 0, st == MEMTEXT_CLIENT_ERROR && c->req.noreply))) {
                evbuffer_add_printf(r->out, "CLIENT_ERROR %s\r\n", errmsg ? errmsg : "bad command line format");
                r->done = true;
            }
            if (st == MEMTEXT_CLOSE) c->close_after_flush = true;
            c->discard = c->req.swallow;
            break;
        default: break;
        }
        evbuffer_drain(in, consumed);
    }
    if (!c->closed) flush(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    tconn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) conn_close(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    tconn *c = arg;
    if (c->close_after_flush && !c->head) conn_close(c);
}

void text_accept(gateway *g, int fd)
{
    tconn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    net_tune(fd);
    c->g = g;
    c->bev = bufferevent_socket_new(g->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        close(fd);
        free(c);
        return;
    }
    g->stats.curr_connections++;
    g->stats.total_connections++;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

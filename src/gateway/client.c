/*
 * client — memcached client connections and their in-order reply queue
 * (see client.h).
 */
#include "client.h"

#include "ring.h"
#include "xalloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

/* Requests, with their output buffers, kept for the next ones of this
 * thread: a get took a calloc and an evbuffer_new and gave both back. */
#define REQ_POOL_MAX 256
static _Thread_local creq *req_pool;
static _Thread_local size_t req_pooled;

static void req_free(creq *r)
{
    if (r->free_state) r->free_state(r->state);
    if (r->state != r->scratch) free(r->state);
    if (req_pooled < REQ_POOL_MAX && evbuffer_drain(r->out, evbuffer_get_length(r->out)) == 0) {
        r->next = req_pool;
        req_pool = r;
        req_pooled++;
        return;
    }
    evbuffer_free(r->out);
    free(r);
}

void client_pool_drain(void)
{
    while (req_pool) {
        creq *r = req_pool;
        req_pool = r->next;
        evbuffer_free(r->out);
        free(r);
    }
    req_pooled = 0;
}

static void conn_free(client *c)
{
    while (c->head) {
        creq *r = c->head;
        c->head = r->next;
        req_free(r);
    }
    free(c->proto);
    free(c->reading);
    free(c->in);
    free(c);
}

static void conn_close(client *c)
{
    if (c->closed) return;
    c->closed = true;
    if (c->prev) c->prev->next = c->next;
    else c->g->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    c->g->stats.curr_connections--;
    if (c->waiting) {
        client **p = &c->g->flow.wait_head, *prev = NULL;
        while (*p != c) {
            prev = *p;
            p = &(*p)->wait_next;
        }
        *p = c->wait_next;
        if (c->g->flow.wait_tail == c) c->g->flow.wait_tail = prev;
        c->waiting = false;
    }
    if (c->paused) STORE(c->g->flow.paused, LOAD(c->g->flow.paused) - 1);
    sio_free(c->io);
    c->io = NULL;
    if (c->inflight == 0) conn_free(c);
}

creq *client_req(client *c, bool quiet)
{
    creq *r = req_pool;
    if (r) {
        struct evbuffer *out = r->out; /* drained when it was given back */
        req_pool = r->next;
        req_pooled--;
        memset(r, 0, offsetof(creq, scratch));
        r->out = out;
    } else {
        if (!(r = calloc(1, sizeof(*r)))) return NULL;
        if (!(r->out = evbuffer_new())) {
            free(r);
            return NULL;
        }
    }
    r->c = c;
    r->quiet = quiet;
    r->kind = c->next_kind;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
    c->queued++;
    c->unanswered++;
    c->open[r->kind]++;
    return r;
}

void *client_req_state(creq *r, size_t size)
{
    if (size <= sizeof(r->scratch)) {
        memset(r->scratch, 0, size);
        r->state = r->scratch;
    } else {
        r->state = calloc(1, size);
    }
    return r->state;
}

/* ---- flow control ---- */

static size_t conn_budget(const client *c) { return (size_t)c->g->cfg->max_conn_buffer_kib * 1024; }

/* Answers not yet written: the socket's output and every queued request's. */
static size_t buffered(const client *c)
{
    size_t n = c->io ? sio_output_length(c->io) : 0;
    for (const creq *r = c->head; r; r = r->next) n += evbuffer_get_length(r->out);
    return n;
}

static void wait_for_room(client *c)
{
    gw_flow *f = &c->g->flow;
    if (c->waiting) return;
    c->waiting = true;
    c->wait_next = NULL;
    if (f->wait_tail) f->wait_tail->wait_next = c;
    else f->wait_head = c;
    f->wait_tail = c;
}

bool client_part_allowed(client *c)
{
    gateway *g = c->g;
    uint64_t est = LOAD(g->flow.estimate);
    if (c->waiting || c->parts >= CLIENT_WINDOW || buffered(c) + c->parts * est >= conn_budget(c)) return false;
    /* One get of each connection may always be in flight, so every
     * connection moves; beyond that, the worker's budget decides. */
    if (c->parts > 0 && LOAD(g->flow.parts) * est >= (uint64_t)g->cfg->max_inflight_kib * 1024) {
        wait_for_room(c);
        return false;
    }
    return true;
}

/* What a get in flight is known by, for "a write of this key waits for
 * it": eight bytes at a time, multiplied and folded (a byte-wise FNV-1a
 * cost 200 instructions per 32-byte key, twice per get; the ring's SHA-1
 * a thousand). Two keys that collide only make a write wait. */
static uint64_t key_tag(const char *key, size_t klen)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ klen, w;
    size_t i = 0;
    for (; i + 8 <= klen; i += 8) {
        memcpy(&w, key + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, key + i, klen - i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

uint64_t client_part_begin(client *c, const char *key, size_t klen)
{
    if (c->nreading == c->capreading) {
        size_t ncap = c->capreading ? c->capreading * 2 : 16;
        c->reading = xrealloc(c->reading, ncap * sizeof(*c->reading));
        c->capreading = ncap;
    }
    uint64_t tag = key_tag(key, klen);
    c->reading[c->nreading++] = tag;
    c->parts++;
    STORE(c->g->flow.parts, LOAD(c->g->flow.parts) + 1);
    return tag;
}

void client_part_end(client *c, const char *key, size_t klen, size_t bytes)
{
    client_part_end_tag(c, key_tag(key, klen), bytes);
}

void client_part_end_tag(client *c, uint64_t h, size_t bytes)
{
    gw_flow *f = &c->g->flow;
    for (size_t i = 0; i < c->nreading; i++) {
        if (c->reading[i] != h) continue;
        c->reading[i] = c->reading[--c->nreading];
        break;
    }
    /* Up at once to a larger answer, half the way down to a smaller one: a
     * burst of large values is budgeted from its first answer on, and a
     * dozen small answers bring the estimate down from -I. */
    uint64_t est = LOAD(f->estimate), n = bytes + 64;
    STORE(f->estimate, n > est ? n : (est + n) / 2);
    STORE(f->parts, LOAD(f->parts) - 1);
    c->parts--;
    c->held = false; /* room: try the held request again */
}

void client_parts_start(creq *r)
{
    r->c->partial = r;
    r->more(r);
}

void client_parts_sent(creq *r)
{
    if (r->c->partial == r) r->c->partial = NULL;
    r->more = NULL;
}

bool client_may_write(client *c, const char *key, size_t klen)
{
    if (c->nreading == 0) return true;
    uint64_t h = key_tag(key, klen);
    for (size_t i = 0; i < c->nreading; i++) {
        if (c->reading[i] == h) {
            c->held = true;
            return false;
        }
    }
    return true;
}

bool client_may_start(client *c, creq_kind kind)
{
    bool ok;
    switch (kind) {
    case CREQ_READ: ok = c->open[CREQ_BARRIER] == 0 && client_part_allowed(c); break;
    case CREQ_WRITE: ok = c->open[CREQ_BARRIER] == 0; break;
    case CREQ_BARRIER: ok = c->unanswered == 0; break;
    default: ok = true; break;
    }
    if (ok) c->next_kind = kind;
    else c->held = true;
    return ok;
}

static bool must_pause(const client *c)
{
    return c->queued >= CLIENT_MAX_QUEUED || c->partial || buffered(c) >= conn_budget(c);
}

static void pause_reading(client *c)
{
    if (c->paused) return;
    c->paused = true;
    STORE(c->g->flow.paused, LOAD(c->g->flow.paused) + 1);
    STORE(c->g->flow.pauses, LOAD(c->g->flow.pauses) + 1);
    sio_read_enable(c->io, false);
}

/* Resume reading once the queue has room and the answers left, and try a
 * held request again once something it waited for happened (`held` is
 * cleared by a completion, an answered get, drained output or room in the
 * worker's budget): resuming without cause would parse it again at once,
 * forever. */
static void maybe_resume(client *c)
{
    if (!c->paused || c->held || c->closed || c->queued >= CLIENT_MAX_QUEUED / 2 || c->partial ||
        buffered(c) >= conn_budget(c) / 2)
        return;
    c->paused = false;
    STORE(c->g->flow.paused, LOAD(c->g->flow.paused) - 1);
    sio_read_enable(c->io, true); /* runs the parser again on buffered input */
}

/* Let the streaming request send what room allows, then maybe read on. */
static void pump(client *c)
{
    while (!c->closed && c->partial && !c->waiting) {
        creq *r = c->partial;
        r->more(r);
        if (c->partial == r) break; /* no more room for now */
    }
    maybe_resume(c);
}

/* Room in the worker's budget: the connections waiting for it go on, first
 * come first. */
static void wake_waiters(gateway *g)
{
    gw_flow *f = &g->flow;
    while (f->wait_head) {
        client *c = f->wait_head;
        f->wait_head = c->wait_next;
        if (!f->wait_head) f->wait_tail = NULL;
        c->waiting = false;
        c->held = false;
        c->inflight++; /* pump may complete requests */
        pump(c);
        bool again = c->waiting;
        if (--c->inflight == 0 && c->closed) conn_free(c);
        if (again) break; /* still no room */
    }
}

void client_flow_init(gateway *g) { STORE(g->flow.estimate, (uint64_t)g->cfg->item_size_max); }

/* An answer's bytes to the socket: a small one is copied into the socket's
 * staging array (sio_append) and leaves in one send with whatever else this
 * loop turn answered; a large one moves to its evbuffer without a copy. */
#define CLIENT_COPY_MAX 4096

static void emit(client *c, struct evbuffer *from)
{
    size_t n = evbuffer_get_length(from);
    c->g->stats.bytes_written += n;
    if (n > CLIENT_COPY_MAX) {
        evbuffer_add_buffer(sio_output(c->io), from);
        sio_wrote(c->io);
        return;
    }
    struct evbuffer_iovec v[4];
    int nv = evbuffer_peek(from, -1, NULL, v, 4);
    if (nv < 0 || nv > 4) { /* in many pieces: move them as they are */
        evbuffer_add_buffer(sio_output(c->io), from);
        sio_wrote(c->io);
        return;
    }
    for (int i = 0; i < nv; i++) {
        if (sio_append(c->io, v[i].iov_base, v[i].iov_len) < 0) {
            conn_close(c); /* out of memory: the answer cannot be kept whole */
            return;
        }
    }
    evbuffer_drain(from, n);
}

/* Close once everything is answered and sent, after a request that ends
 * the connection or the client's end of input. */
static void maybe_finish(client *c)
{
    if (c->closed || c->head || sio_output_length(c->io) > 0) return;
    if (c->close_after_flush || sio_at_eof(c->io)) conn_close(c);
}

/* Move the finished prefix of the queue to the socket, and what the first
 * unfinished request has so far: a multi-get streams its answer. */
static void flush(client *c)
{
    if (c->closed) return;
    while (c->head && c->head->done && !c->closed) {
        creq *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->queued--;
        if (!r->quiet && evbuffer_get_length(r->out) > 0) emit(c, r->out);
        req_free(r);
    }
    if (c->closed) return;
    creq *h = c->head;
    if (h && !h->quiet && evbuffer_get_length(h->out) > 0) emit(c, h->out);
    if (c->closed) return;
    pump(c);
    maybe_finish(c);
}

void client_write(creq *r, const void *p, size_t n)
{
    client *c = r->c;
    if (c->head == r && !r->quiet && !c->closed && evbuffer_get_length(r->out) == 0) {
        c->g->stats.bytes_written += n;
        if (sio_append(c->io, p, n) < 0) conn_close(c); /* out of memory: the answer cannot be kept whole */
        return;
    }
    evbuffer_add(r->out, p, n);
}

void client_done(creq *r)
{
    if (r->done) return;
    r->done = true;
    r->c->unanswered--;
    r->c->open[r->kind]--;
    r->c->held = false; /* the held request may go now */
}

bool client_settled(const client *c) { return c->unanswered <= 1; }

void client_reply(creq *r, const char *text)
{
    evbuffer_add(r->out, text, strlen(text));
    client_done(r);
}

void client_call_begin(creq *r) { r->c->inflight++; }

void client_call_end(creq *r)
{
    client *c = r->c; /* r may be freed by the flush */
    gateway *g = c->g;
    flush(c);
    if (--c->inflight == 0 && c->closed) conn_free(c);
    if (g->flow.wait_head) wake_waiters(g);
}

/* Parse and start the requests at buf, as many as may start now; returns
 * the bytes consumed. */
static size_t consume(client *c, const char *buf, size_t len)
{
    size_t off = 0;
    while (!c->closed && !c->close_after_flush && off < len) {
        if (c->discard > 0) {
            size_t n = len - off < c->discard ? len - off : c->discard;
            off += n;
            c->discard -= n;
            continue;
        }
        if (must_pause(c)) {
            pause_reading(c);
            break;
        }
        c->next_kind = CREQ_LOCAL;
        size_t used = c->parse(c, buf + off, len - off);
        if (c->held && used == 0) {
            pause_reading(c); /* until earlier requests complete */
            break;
        }
        if (used == 0 && c->discard == 0) break;
        off += used;
    }
    return off;
}

/* One recv's room: the worker's buffer, and what a connection's own
 * buffer keeps free for the next read. */
#define CLIENT_READ (16 * 1024)
static _Thread_local char worker_in[CLIENT_READ];

/* Keep len unparsed bytes from p as the connection's input (p may point
 * into it). False: out of memory. */
static bool keep_input(client *c, const char *p, size_t len)
{
    if (len == 0) { /* all parsed: an idle connection holds nothing */
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        return true;
    }
    if (p == c->in) { /* nothing consumed */
        c->in_len = len;
        return true;
    }
    if (!c->in || c->in_cap < len) {
        char *n = malloc(len);
        if (!n) return false;
        memcpy(n, p, len);
        free(c->in);
        c->in = n;
        c->in_cap = len;
    } else {
        memmove(c->in, p, len);
    }
    c->in_len = len;
    return true;
}

/* What of the n bytes the parse left is kept: nothing once the connection
 * is closing (quit, a protocol error), whose input is never parsed again.
 * Reading goes on, so that the close is not a reset that would cut off the
 * answers still leaving, but a client that goes on sending while it reads
 * nothing must not grow the buffer without end. */
static size_t unparsed(const client *c, size_t n) { return c->close_after_flush ? 0 : n; }

static void read_cb(void *arg, sio *io)
{
    client *c = arg;
    /* Hold the connection: a parse may complete requests and close it. */
    c->inflight++;
    if (c->in_len > 0 && !c->in_partial) { /* resumed: the kept requests go before any new read */
        size_t used0 = consume(c, c->in, c->in_len);
        if (!c->closed && !keep_input(c, c->in + used0, unparsed(c, c->in_len - used0))) conn_close(c);
        c->in_partial = !c->paused;
        if (c->closed || c->paused || c->close_after_flush) {
            flush(c);
            goto out;
        }
    }
    char *buf = worker_in;
    if (c->in_len > 0 && c->in_cap - c->in_len < CLIENT_READ) { /* a request in pieces: its buffer grows */
        size_t cap = c->in_cap * 2 > c->in_len + CLIENT_READ ? c->in_cap * 2 : c->in_len + CLIENT_READ;
        char *n = realloc(c->in, cap);
        if (!n) {
            conn_close(c);
            goto out;
        }
        c->in = n;
        c->in_cap = cap;
    }
    if (c->in_len > 0) buf = c->in;
    size_t len = c->in_len;
    ssize_t n = sio_recv(io, buf + len, CLIENT_READ);
    if (n < 0) {  /* closed (close_cb ran), or the end of input (eof_cb ran) */
        flush(c); /* what the kept requests answered at once leaves; a finished connection closes */
        goto out;
    }
    len += (size_t)n;
    size_t used = consume(c, buf, len);
    if (!c->closed && !keep_input(c, buf + used, unparsed(c, len - used))) conn_close(c);
    c->in_partial = !c->paused;
    flush(c);
out:
    if (--c->inflight == 0 && c->closed) conn_free(c);
}

static void close_cb(void *arg, sio *io, int err)
{
    (void)io;
    (void)err;
    conn_close(arg);
}

/* The client shut its side (shutdown(SHUT_WR), `nc -N`): the requests it
 * sent are answered before the connection closes, as memcached and
 * twemproxy do. Runs inside read_cb's sio_recv (reads are direct), which
 * then flushes. The end of input is only read with nothing held, so the
 * input kept, if any, is a request it cut off: that never completes. */
static void eof_cb(void *arg, sio *io)
{
    (void)io;
    keep_input(arg, NULL, 0);
}

static void drained_cb(void *arg, sio *io)
{
    client *c = arg;
    (void)io;
    c->held = false; /* the answers left: a held get may have room now */
    c->inflight++;   /* closing must not free c under us */
    maybe_finish(c);
    if (!c->closed) pump(c);
    if (--c->inflight == 0 && c->closed) conn_free(c);
}

static const sio_ops client_sio_ops = {
    .on_read = read_cb,
    .on_drained = drained_cb,
    .on_close = close_cb,
    .on_eof = eof_cb,
};

void client_close_all(gateway *g)
{
    while (g->clients) {
        client *c = g->clients;
        bool busy = c->inflight > 0;
        conn_close(c);          /* frees c unless requests are in flight */
        if (busy) conn_free(c); /* their callbacks will not come any more */
    }
}

client *client_new(gateway *g, int fd, client_parse_fn parse, void *proto_state)
{
    client *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        free(proto_state);
        return NULL;
    }
    c->g = g;
    c->parse = parse;
    c->proto = proto_state;
    c->io = sio_new(g->base, fd, &client_sio_ops, c);
    if (!c->io) {
        free(proto_state);
        free(c);
        return NULL;
    }
    sio_read_direct(c->io, true);
    g->stats.curr_connections++;
    g->stats.total_connections++;
    c->next = g->clients;
    if (c->next) c->next->prev = c;
    g->clients = c;
    return c;
}

/*
 * client — memcached client connections and their in-order reply queue
 * (see client.h).
 */
#include "client.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void req_free(creq *r)
{
    evbuffer_free(r->out);
    if (r->free_state) r->free_state(r->state);
    free(r);
}

static void conn_free(client *c)
{
    while (c->head) {
        creq *r = c->head;
        c->head = r->next;
        req_free(r);
    }
    free(c->proto);
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
    sio_free(c->io);
    c->io = NULL;
    if (c->inflight == 0) conn_free(c);
}

creq *client_req(client *c, bool quiet)
{
    creq *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->out = evbuffer_new();
    if (!r->out) {
        free(r);
        return NULL;
    }
    r->c = c;
    r->quiet = quiet;
    if (c->tail) c->tail->next = r;
    else c->head = r;
    c->tail = r;
    c->queued++;
    c->unanswered++;
    return r;
}

static bool must_pause(client *c)
{
    return c->queued >= CLIENT_MAX_QUEUED || evbuffer_get_length(sio_output(c->io)) >= CLIENT_MAX_OUTPUT;
}

/* Resume reading once half the queue and the whole output are gone. */
static void maybe_resume(client *c)
{
    if (!c->paused || c->queued >= CLIENT_MAX_QUEUED / 2 ||
        evbuffer_get_length(sio_output(c->io)) >= CLIENT_MAX_OUTPUT / 2)
        return;
    c->paused = false;
    sio_read_enable(c->io, true); /* runs the parser again on buffered input */
}

/* Move the finished prefix of the queue to the socket. */
static void flush(client *c)
{
    if (c->closed) return;
    struct evbuffer *out = sio_output(c->io);
    size_t before = evbuffer_get_length(out);
    while (c->head && c->head->done) {
        creq *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        c->queued--;
        if (!r->quiet) {
            c->g->stats.bytes_written += evbuffer_get_length(r->out);
            evbuffer_add_buffer(out, r->out);
        }
        req_free(r);
    }
    if (evbuffer_get_length(out) != before) sio_wrote(c->io);
    maybe_resume(c);
    if (c->close_after_flush && !c->head && evbuffer_get_length(out) == 0) conn_close(c);
}

void client_done(creq *r)
{
    if (r->done) return;
    r->done = true;
    r->c->unanswered--;
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
    flush(c);
    if (--c->inflight == 0 && c->closed) conn_free(c);
}

static void read_cb(void *arg, sio *io)
{
    client *c = arg;
    struct evbuffer *in = sio_input(io);
    /* Hold the connection: a parse may complete requests and close it. */
    c->inflight++;
    while (!c->closed && !c->close_after_flush) {
        size_t len = evbuffer_get_length(in);
        if (len == 0) break;
        if (c->discard > 0) {
            size_t n = len < c->discard ? len : c->discard;
            evbuffer_drain(in, n);
            c->discard -= n;
            continue;
        }
        if (must_pause(c)) {
            c->paused = true;
            sio_read_enable(io, false);
            break;
        }
        size_t used = c->parse(c, (const char *)evbuffer_pullup(in, -1), len);
        if (used == 0 && c->discard == 0) break;
        if (!c->closed) evbuffer_drain(in, used);
    }
    flush(c);
    if (--c->inflight == 0 && c->closed) conn_free(c);
}

static void close_cb(void *arg, sio *io, int err)
{
    (void)io;
    (void)err;
    conn_close(arg);
}

static void drained_cb(void *arg, sio *io)
{
    client *c = arg;
    (void)io;
    if (c->close_after_flush && !c->head) conn_close(c);
    else maybe_resume(c);
}

static const sio_ops client_sio_ops = {
    .on_read = read_cb,
    .on_drained = drained_cb,
    .on_close = close_cb,
};

void client_close_all(gateway *g)
{
    while (g->clients) {
        client *c = g->clients;
        bool busy = c->inflight > 0;
        conn_close(c);              /* frees c unless requests are in flight */
        if (busy) conn_free(c);     /* their callbacks will not come any more */
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
    g->stats.curr_connections++;
    g->stats.total_connections++;
    c->next = g->clients;
    if (c->next) c->next->prev = c;
    g->clients = c;
    return c;
}

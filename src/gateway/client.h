/*
 * client — a memcached client connection, whatever its protocol.
 *
 * The protocol module (text.c, binary.c) parses requests out of the input
 * and turns each into a creq appended to the connection's queue; it fills
 * the request's output buffer, possibly later from router callbacks, and
 * marks it done. Output leaves strictly in request order: whenever a request
 * completes, the finished prefix of the queue goes to the socket. Reading
 * pauses while too many requests are in flight or too much output waits. A connection that closes
 * with requests in flight is freed when the last router callback arrives.
 *
 * Thread rule: its worker's loop. Calls: sio, libevent.
 */
#ifndef KUMO_CLIENT_H
#define KUMO_CLIENT_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>

#include "gateway.h"
#include "sio.h"

/* Backpressure on one connection: reading pauses while this many requests
 * are in flight, or while this much output waits for a client that does not
 * read. A non-reading client therefore holds at most CLIENT_MAX_OUTPUT plus
 * CLIENT_MAX_QUEUED replies in the gateway's memory. */
#define CLIENT_MAX_QUEUED 128
#define CLIENT_MAX_OUTPUT (1024 * 1024)

typedef struct client client;

typedef struct creq {
    struct creq *next;
    client *c;
    struct evbuffer *out;
    bool done;
    bool quiet;  /* produce no output (noreply, quiet binary opcodes) */
    int waiting; /* protocol's own count of outstanding sub-operations */
    void *state; /* protocol's per-request data, freed with free_state */
    void (*free_state)(void *state);
} creq;

/* Parse and start the one request at the head of the input. Returns the
 * bytes consumed (0 = need more, unless it set c->discard). May also set
 * c->close_after_flush. */
typedef size_t (*client_parse_fn)(client *c, const char *buf, size_t len);

struct client {
    gateway *g;
    client *prev, *next; /* the gateway's open connections (g->clients) */
    sio *io;
    client_parse_fn parse;
    creq *head, *tail;
    size_t queued;
    size_t unanswered; /* queued requests not yet done */
    int inflight; /* router callbacks still to come */
    bool closed;
    bool close_after_flush;
    bool paused;
    size_t discard; /* input bytes to drop before parsing again */
    void *proto;    /* the protocol's per-connection scratch, freed at close */
};

/* Close and free every connection (at exit). */
void client_close_all(gateway *g);
/* Take over an accepted socket; proto_state is freed with free() at the end. */
client *client_new(gateway *g, int fd, client_parse_fn parse, void *proto_state);
/* A new request at the tail of the queue (NULL when out of memory). */
creq *client_req(client *c, bool quiet);
/* r's output is complete. It leaves (and r is freed) at the next flush:
 * the end of the current read, or client_call_end. */
void client_done(creq *r);
/* True when no request before the newest one is still unanswered, so
 * nothing this connection wrote can still be on its way to the replicas. */
bool client_settled(const client *c);
/* Reply with a fixed string and complete. */
void client_reply(creq *r, const char *text);
/* Bracket every router call made for r: begin before the call, end as the
 * last thing in the callback (after filling r): it flushes, which may free
 * r, and may free the connection. */
void client_call_begin(creq *r);
void client_call_end(creq *r);

#endif

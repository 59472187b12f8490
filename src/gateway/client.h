/*
 * client — a memcached client connection, whatever its protocol.
 *
 * The protocol module (text.c, binary.c) parses requests out of the input
 * and turns each into a creq appended to the connection's queue; it fills
 * the request's output buffer, possibly later from router callbacks, and
 * marks it done. Output leaves strictly in request order: whenever a request
 * completes, the finished prefix of the queue goes to the socket, and so
 * does what the first unfinished request has so far (a multi-get streams).
 * Reading pauses while too many requests are in flight, too much output
 * waits, or the next request must wait (creq_kind). A connection that closes
 * with requests in flight is freed when the last router callback arrives.
 *
 * Flow control (docs/architecture.md §15): a connection holds at most
 * --max-conn-buffer of unsent answers plus estimated gets in flight, and a
 * worker at most --max-inflight of estimated gets in flight; a connection
 * that finds the worker's budget spent waits in line for it.
 *
 * Input is read straight from the socket (sio_recv) into the worker's
 * read buffer and parsed there; only the bytes of a request that has not
 * fully arrived, or must wait, are copied into the connection's own
 * buffer (memcached 1.6's thread read buffer): an idle connection holds
 * no input memory, and a request that arrives whole is never copied.
 *
 * Thread rule: its worker's loop. Calls: sio, libevent.
 */
#ifndef KUMO_CLIENT_H
#define KUMO_CLIENT_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdalign.h>

#include "gateway.h"
#include "sio.h"

/* Backpressure on one connection: reading pauses while this many requests
 * are queued, while too much output waits for a client that does not read
 * (--max-conn-buffer), or while the next request must wait for earlier ones
 * (the order rules below). */
#define CLIENT_MAX_QUEUED 128
/* At most this many gets of one connection in flight at once; a multi-get
 * with more keys streams through this window. */
#define CLIENT_WINDOW 128

/* What a request does, for the order rules of one connection: requests take
 * effect in the order they were sent. A read may run beside earlier reads
 * and writes (a read after an unanswered write goes to the coordinator,
 * behind the write on the same server connection); a write waits for the
 * earlier reads of its keys, which might otherwise see it (a read has no
 * effect, so a write may overtake the reads of other keys); a barrier
 * (flush_all, stats) waits for everything before it, and everything after
 * waits for it. */
typedef enum creq_kind {
    CREQ_LOCAL,   /* answered by the gateway alone (version, errors) */
    CREQ_READ,    /* get, gets, mg, me, binary get */
    CREQ_WRITE,   /* storage, delete, incr/decr, touch, gat, ms, md, ma */
    CREQ_BARRIER, /* flush_all, stats */
    CREQ_KINDS
} creq_kind;

typedef struct client client;

/* Bytes of per-request state that need no allocation (see creq.scratch). */
#define CREQ_SCRATCH 1024

typedef struct creq {
    struct creq *next;
    client *c;
    struct evbuffer *out;
    creq_kind kind;
    /* A request with more parts (keys) than the window lets out at once:
     * sends what the budget allows now; called again as room frees up,
     * until it calls client_parts_sent. */
    void (*more)(struct creq *r);
    bool done;
    bool quiet;                      /* produce no output (noreply, quiet binary opcodes) */
    int waiting;                     /* protocol's own count of outstanding sub-operations */
    void *state;                     /* protocol's per-request data (client_req_state) */
    void (*free_state)(void *state); /* releases what state holds; may be NULL */
    /* Room for a small state, kept with the request across reuses: a
     * get of one key allocates nothing. */
    _Alignas(max_align_t) unsigned char scratch[CREQ_SCRATCH];
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
    size_t unanswered;       /* queued requests not yet done */
    size_t open[CREQ_KINDS]; /* ... by kind */
    creq_kind next_kind;     /* what client_req makes: set by client_may_start, LOCAL otherwise */
    creq *partial;           /* the request still sending parts, if any (at most one) */
    size_t parts;            /* its gets (and any other request's) in flight */
    uint64_t *reading;       /* the key hashes of those gets (a multiset) */
    size_t nreading, capreading;
    client *wait_next; /* in g->flow.waiting: room in the worker's budget is awaited */
    bool waiting;
    int inflight; /* router callbacks still to come */
    bool closed;
    bool close_after_flush;
    bool paused;
    bool held;      /* the next request waits for earlier ones or for room */
    size_t discard; /* input bytes to drop before parsing again */
    char *in;       /* input not parsed yet (a partial or held request), or NULL */
    size_t in_len, in_cap;
    bool in_partial; /* in holds an incomplete request (not a held one) */
    void *proto;     /* the protocol's per-connection scratch, freed at close */
};

/* A worker's flow control starts from the largest answer (-I). */
void client_flow_init(gateway *g);
/* Close and free every connection (at exit). */
void client_close_all(gateway *g);
/* Take over an accepted socket; proto_state is freed with free() at the end. */
client *client_new(gateway *g, int fd, client_parse_fn parse, void *proto_state);
/* Whether a request of this kind may start now (the order rules and the
 * get budget). The parser asks once it has a whole request; on false it
 * consumes nothing, and parsing resumes when earlier requests complete.
 * On true, client_req makes requests of this kind until the parse returns. */
bool client_may_start(client *c, creq_kind kind);
/* Whether no earlier get of this key is in flight; a write asks for each of
 * its keys before client_may_start (false holds it, as above). */
bool client_may_write(client *c, const char *key, size_t klen);
/* A new request at the tail of the queue (NULL when out of memory). */
creq *client_req(client *c, bool quiet);
/* size zeroed bytes for r->state, which is set to them: r's scratch when
 * they fit, else allocated. The client frees them with r, after
 * r->free_state. NULL: out of memory. */
void *client_req_state(creq *r, size_t size);
/* Add to r's answer. While r heads the queue and has nothing waiting, the
 * bytes go to the socket's staging array at once, with no evbuffer in
 * between; otherwise to r->out, to leave in order. */
void client_write(creq *r, const void *p, size_t n);
/* Free the requests this thread keeps for reuse (a worker's last act, and
 * main's after every connection is gone): nothing is left for LeakSanitizer. */
void client_pool_drain(void);
/* Parts: every get a request sends counts against the connection's window
 * and budget (--max-conn-buffer) and the worker's (--max-inflight), by the
 * worker's running estimate of a get's answer. */
bool client_part_allowed(client *c);
/* Returns the key's tag, for client_part_end_tag. */
uint64_t client_part_begin(client *c, const char *key, size_t klen);
/* A get's answer of `bytes` arrived (call before client_call_end). */
void client_part_end(client *c, const char *key, size_t klen, size_t bytes);
/* The same, by the tag client_part_begin returned (no second hash). */
void client_part_end_tag(client *c, uint64_t tag, size_t bytes);
/* r sends parts over time through r->more (set it first); calls it once now. */
void client_parts_start(creq *r);
/* r has sent its last part. */
void client_parts_sent(creq *r);
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

/*
 * rpc — msgpack-rpc style messaging between kumofs nodes over sio
 * sockets (wire format in docs/protocol.md).
 *
 *   request  [0, msgid:uint, method:uint, params:array]
 *   response [1, msgid:uint, error:nil|str, result]
 *   hello    [2, role:uint, address:bin, version:uint, clock:uint, incarnation:uint, nonce:bin|nil,
 *             wall:uint]
 *   proof    [3, proof:bin]                     (only with a cluster key)
 *
 * Both ends send hello first; requests may be queued before the peer's
 * hello arrives. With a cluster key (rpc_self.key, auth.h) the hello
 * carries a nonce, each side answers the peer's nonce with a proof, and
 * nothing else is sent or dispatched until then: queued requests wait in
 * the connection, on_hello runs only once the peer's proof checked out, and
 * a peer without the key (or with another one, or without a proof within
 * RPC_HELLO_TIMEOUT) is logged once and disconnected. A connection is
 * symmetric: either side may call the other (the manager pushes hash spaces
 * down the connection a server opened). Frames are bounded by RPC_MAX_FRAME
 * before they are buffered whole, and everything before the hello is done
 * by RPC_MAX_HELLO: an unauthenticated peer makes us hold a few KiB at most.
 *
 * Ownership: rpc_connect/rpc_accept return a connection owned by the
 * caller until handlers->on_close runs (the connection broke or the peer
 * misbehaved); after on_close returns, the pointer is dead. rpc_close()
 * closes from the owner's side and does not call on_close. Either way every
 * pending call's callback runs once with RPC_ERR_LOST (RPC_ERR_UNSENT when
 * it never left).
 *
 * An accepted connection is held by rpc_self.admit (admit.h) until its
 * hello is done: a daemon holds only so many connections from strangers.
 *
 * Thread rule: a connection belongs to the thread of its event_base; every
 * function must be called from that thread.
 * Calls: net, clock (hello carries the sender's clock), auth, admit, log.
 */
#ifndef KUMO_RPC_H
#define KUMO_RPC_H

#include <event2/event.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "admit.h"
#include "auth.h"
#include "clock.h"
#include "kumo.h"
#include "net.h"
#include "ring.h"

#define RPC_VERSION 1
#define RPC_MAX_FRAME (64u * 1024 * 1024)
/* Until a peer's hello is done (with a key: its proof checked out), it may
 * send RPC_MAX_HELLO bytes in all and take RPC_HELLO_TIMEOUT seconds from
 * accept (a peer we dialled: from connect, and only with a key); more, or
 * later, closes the connection. A hello takes at most 85 bytes ([2, role,
 * 18-byte address, version, clock, incarnation, 32-byte nonce, wall]) and a
 * proof 36; the rest is room for elements a later version may add. */
#define RPC_MAX_HELLO 512u
/* A peer whose wall clock (sent in its hello) is further off ours than
 * this is logged and counted (rpc_clock_stats). */
#define RPC_CLOCK_SKEW_WARN 2
#define RPC_HELLO_TIMEOUT 5.0

/* The first element of every frame. */
typedef enum rpc_msg {
    RPC_MSG_REQUEST = 0,  /* [0, msgid, method, params] (msgid 0: one-way) */
    RPC_MSG_RESPONSE = 1, /* [1, msgid, error, result] */
    RPC_MSG_HELLO = 2,    /* [2, role, address, version, clock, incarnation, nonce|nil, wall] */
    RPC_MSG_PROOF = 3,    /* [3, proof] (cluster key only) */
} rpc_msg;

typedef enum rpc_role {
    RPC_ROLE_MANAGER = 0,
    RPC_ROLE_SERVER = 1,
    RPC_ROLE_GATEWAY = 2,
    RPC_ROLE_TOOL = 3,
} rpc_role;

typedef enum rpc_status {
    RPC_OK = 0,
    RPC_ERR_LOST,    /* connection closed before the reply (the request may have been served) */
    RPC_ERR_UNSENT,  /* the request never left: no connection, or no key handshake */
    RPC_ERR_TIMEOUT, /* no reply in time */
    RPC_ERR_REMOTE,  /* the peer answered with an error; result = the error */
} rpc_status;

typedef struct rpc_conn rpc_conn;

/* A reply (or its failure). result is valid only during the call. */
typedef void (*rpc_reply_fn)(void *arg, rpc_status st, const msgpack_object *result);

typedef struct rpc_handlers {
    /* A request arrived: answer it now or later with rpc_reply_*(c, msgid…)
     * unless the method is one-way. params is valid only during the call. */
    void (*on_request)(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method,
                       const msgpack_object *params);
    /* The peer's hello arrived, and with a key its proof (rpc_peer_role/addr
     * are now valid). */
    void (*on_hello)(void *arg, rpc_conn *c);
    /* The connection is gone; drop every pointer to it. */
    void (*on_close)(void *arg, rpc_conn *c);
    void *arg;
} rpc_handlers;

typedef struct rpc_self {
    rpc_role role;
    net_addr addr;        /* what the peer should know us as (may be unset for tools) */
    clock_hlc *clock;     /* may be NULL (gateways have no clock) */
    const auth_key *key;  /* the cluster key, or NULL for none; must outlive the connections */
    uint64_t incarnation; /* random per server process, so a manager can tell a restart from a
                             reconnect; 0 for the other roles */
    admit *admit;         /* accepted connections wait here until their hello is done; NULL: no bound. Must
                     outlive the connections, and every rpc_accept sharing it runs on one loop */
    size_t max_output;    /* an accepted connection stops reading while this many bytes of ours wait
                          for the peer, until it took them all; 0 = no bound */
    uint8_t ring_keylen;  /* a server placed by a key of its own (ring.h): its 9th hello element */
    const uint8_t *ring_key;
} rpc_self;

/* Take over an accepted socket. NULL: refused by self->admit, the peer
 * already gone, or out of memory; the socket is closed either way. Admitting
 * it may close an older connection that has not finished its hello (its
 * on_close runs before this returns). */
rpc_conn *rpc_accept(struct event_base *base, int fd, const rpc_handlers *h, const rpc_self *self);
/* Start connecting; fails (later, through on_close) after connect_timeout s.
 * Returns NULL only if no socket could be made. */
rpc_conn *rpc_connect(struct event_base *base, const net_addr *peer, double connect_timeout,
                      const rpc_handlers *h, const rpc_self *self);
void rpc_close(rpc_conn *c);
/* Keep the struct (not the connection) alive past on_close, so a reply that
 * completes later can find out the connection died: rpc_reply_* on a dead
 * connection does nothing. Every rpc_hold needs one rpc_release. */
void rpc_hold(rpc_conn *c);
void rpc_release(rpc_conn *c);
bool rpc_is_closed(const rpc_conn *c);

bool rpc_hello_done(const rpc_conn *c);
rpc_role rpc_peer_role(const rpc_conn *c);
const net_addr *rpc_peer_addr(const rpc_conn *c); /* announced address */
const char *rpc_peer_name(const rpc_conn *c);     /* "1.2.3.4:19800" or the socket peer */
uint64_t rpc_peer_incarnation(const rpc_conn *c); /* 0 if the peer sent none */
/* The ring key the peer said it is placed by; 0 if none (placed by its address). */
size_t rpc_peer_ring_key(const rpc_conn *c, const uint8_t **key);
size_t rpc_pending(const rpc_conn *c);

/* Flow control (rpc_self.max_output), over every connection of the process. */
typedef struct rpc_flow {
    size_t paused;   /* connections not reading now */
    uint64_t pauses; /* times a connection stopped reading */
} rpc_flow;
void rpc_flow_stats(rpc_flow *out);
/* Open connections whose peer's wall clock is more than RPC_CLOCK_SKEW_WARN
 * off ours, and the skew (theirs minus ours, s) of the latest such hello. */
void rpc_clock_stats(size_t *skewed, int64_t *last_skew);
/* The peer's wall clock minus ours at its hello, s; 0 if it sent none. */
int64_t rpc_peer_skew(const rpc_conn *c);
void *rpc_get_data(const rpc_conn *c);
void rpc_set_data(rpc_conn *c, void *data);

/* Send a request: pack exactly one object (the params array) into the
 * returned packer, then call rpc_call_end. fn runs exactly once, never from
 * inside rpc_call_begin/end. timeout in seconds. */
msgpack_packer *rpc_call_begin(rpc_conn *c, uint32_t method, double timeout, rpc_reply_fn fn, void *arg);
void rpc_call_end(rpc_conn *c);
/* Send a one-way request (no reply expected; msgid 0). */
msgpack_packer *rpc_notify_begin(rpc_conn *c, uint32_t method);

/* Answer: pack exactly one result object, then rpc_call_end(c). */
msgpack_packer *rpc_reply_begin(rpc_conn *c, uint32_t msgid);
void rpc_reply_error(rpc_conn *c, uint32_t msgid, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void rpc_reply_nil(rpc_conn *c, uint32_t msgid);
void rpc_reply_bool(rpc_conn *c, uint32_t msgid, bool v);
void rpc_reply_uint(rpc_conn *c, uint32_t msgid, uint64_t v);

/* Small helpers for reading params. */
const msgpack_object *rpc_arg(const msgpack_object *params, uint32_t i); /* NULL if absent */
bool rpc_arg_uint(const msgpack_object *params, uint32_t i, uint64_t *out);
bool rpc_arg_int(const msgpack_object *params, uint32_t i, int64_t *out); /* either sign, within int64 */
bool rpc_arg_bool(const msgpack_object *params, uint32_t i, bool *out);
bool rpc_arg_bytes(const msgpack_object *params, uint32_t i, const char **p, size_t *len);
void rpc_pack_bytes(msgpack_packer *pk, const void *p, size_t len);

/* The hello of docs/protocol.md §1.1 and the key proof of §1.1, the one
 * encoder of daemons and tools: self's role, address, incarnation and
 * ring key, the clock given, a nonce (NULL without a cluster key). */
void rpc_pack_hello(msgpack_packer *pk, const rpc_self *self, uint64_t clock, const uint8_t *nonce);
void rpc_pack_proof(msgpack_packer *pk, const auth_key *key, bool connected, uint8_t role,
                    const uint8_t peer_nonce[AUTH_NONCE_LEN], const uint8_t nonce[AUTH_NONCE_LEN]);

/* A hello's fields, pointing into the object; the one decoder. */
typedef struct rpc_hello {
    uint64_t role, version, clock, incarnation, wall; /* 0: not sent */
    const char *addr, *nonce, *ring_key;              /* nonce NULL: none (nil, or an older peer) */
    size_t addrlen, noncelen, ring_keylen;
} rpc_hello;
/* false when o is not a well-formed hello (types, role above 3, a 9th
 * element that is not 1 or more bytes); the version is for the caller. */
bool rpc_hello_parse(const msgpack_object *o, rpc_hello *h);
void rpc_pack_str(msgpack_packer *pk, const char *s);
/* Human text for a failed call (includes a remote error's message). */
const char *rpc_strerror(rpc_status st, const msgpack_object *result, char *buf, size_t len);

#endif

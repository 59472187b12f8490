/*
 * rpc — node messaging over sio sockets (see rpc.h).
 *
 * Pending calls live in a table indexed by `msgid & mask`. msgids are handed
 * out sequentially, so two outstanding calls collide only when more than
 * `cap` calls separate the oldest from the newest; then the table doubles.
 * Lookup and insert are O(1) with no hashing and no per-call allocation.
 * Timeouts are found by a sweep every RPC_SWEEP seconds over the table.
 *
 * A connection is freed only when no callback of ours is on the stack
 * (c->busy == 0), so handlers may close it from inside a callback.
 *
 * With a cluster key, c->pk writes into c->held until our proof is out (it
 * needs the peer's nonce), so requests queued early follow the proof on the
 * wire; the peer's hello is kept aside and "done" only when its proof checks
 * out. A request, or a response, before that closes the connection.
 *
 * Calls: net, sio, mpguard, mpread, clock, auth, admit, log, msgpack, libevent. Thread rule: see rpc.h.
 */
#include "rpc.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "mpguard.h"
#include "mpread.h"
#include "sio.h"

#define RPC_SWEEP 0.25
#define RPC_READ_CHUNK (64 * 1024)
#define RPC_DIRECT_READ (16 * 1024) /* room made in the input buffer before each read */
#define RPC_IN_KEEP (256 * 1024)    /* an input buffer larger than this goes once empty */

/* Flow control over the process's connections (rpc_flow_stats). */
static _Atomic size_t flow_paused_now;
static _Atomic uint64_t flow_pauses;
/* Peers whose wall clock is off ours (rpc_clock_stats). */
static _Atomic size_t clock_skewed_now;
static _Atomic int64_t clock_skew_last;

typedef struct pending {
    uint32_t msgid; /* 0 = free slot */
    rpc_reply_fn fn;
    void *arg;
    double deadline;
} pending;

struct rpc_conn {
    struct event_base *base;
    sio *io;
    struct event *sweep;
    struct event *connect_timer;
    rpc_handlers h;
    rpc_self self;
    /* Input: bytes read into `in`; frames are decoded from `start`, the
     * first byte not yet dispatched (see pump). */
    char *in;
    size_t in_len, in_cap, start;
    bool guarded;            /* the frame at start did not arrive whole: the guard checks it */
    bool in_direct;          /* hello done and the socket's evbuffer empty: it stays so (sio_read_direct) */
    size_t checked;          /* ... up to here */
    mpguard guard;           /* bounds what a frame that arrives in pieces may declare */
    mpread_arena arena;      /* the decoded frame's arrays and maps */
    msgpack_packer pk;       /* writes to the socket's output */
    msgpack_sbuffer scratch; /* target of packers on a dead connection */
    msgpack_packer scratch_pk;
    pending *slots;
    uint32_t cap; /* power of two */
    uint32_t npending;
    uint32_t next_msgid;
    bool hello_done; /* with a key: and the peer's proof checked out */
    bool connected;  /* the TCP connection was established */
    /* cluster-key handshake (auth.h), when self.key is set */
    bool outbound;          /* we opened the TCP connection */
    bool peer_hello;        /* the peer's hello arrived; its proof is awaited */
    bool proof_sent;        /* ours is out, and c->held was flushed after it */
    struct evbuffer *held;  /* what c->pk wrote before our proof went out */
    double hello_deadline;  /* RPC_HELLO_TIMEOUT */
    admit_entry *admission; /* accepted, hello not done yet: held by self.admit */
    size_t hello_bytes;     /* decoded before the hello was done (RPC_MAX_HELLO) */
    uint64_t peer_clock;
    int64_t peer_skew; /* its wall clock minus ours at its hello, s (0: unknown) */
    bool skewed;       /* counted in clock_skewed_now */
    uint8_t nonce[AUTH_NONCE_LEN], peer_nonce[AUTH_NONCE_LEN];
    bool dead;
    bool paused;  /* not reading: too much of our output waits (flow control) */
    bool pumping; /* pump is on the stack */
    int busy;
    rpc_role peer_role;
    net_addr peer_addr;
    uint64_t peer_incarnation;
    uint8_t peer_ring_keylen;
    uint8_t peer_ring_key[RING_KEY_MAX];
    char name[NET_ADDRSTRLEN];
    void *data;
};

static int pk_write(void *data, const char *buf, size_t len)
{
    rpc_conn *c = data;
    return sio_append(c->io, buf, len);
}

/* Before our cluster-key proof is out: hold everything back. */
static int held_write(void *data, const char *buf, size_t len)
{
    return evbuffer_add((struct evbuffer *)data, buf, len);
}

/* ---- deferred "lost" replies for calls made on a dead connection ---- */

typedef struct deferred {
    rpc_reply_fn fn;
    void *arg;
} deferred;

static void deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    deferred *d = arg;
    d->fn(d->arg, RPC_ERR_UNSENT, NULL);
    free(d);
}

static void defer_unsent(struct event_base *base, rpc_reply_fn fn, void *arg)
{
    deferred *d = malloc(sizeof(*d));
    struct timeval zero = {0, 0};
    if (!d) abort(); /* out of memory while failing a call: nothing sane left */
    d->fn = fn;
    d->arg = arg;
    event_base_once(base, -1, EV_TIMEOUT, deferred_cb, d, &zero);
}

/* ---- lifetime ---- */

static void conn_free(rpc_conn *c)
{
    free(c->in);
    mpread_free(&c->arena);
    msgpack_sbuffer_destroy(&c->scratch);
    if (c->held) evbuffer_free(c->held);
    free(c->slots);
    free(c);
}

static void release(rpc_conn *c)
{
    if (--c->busy == 0 && c->dead) conn_free(c);
}

static void teardown(rpc_conn *c, bool notify)
{
    if (c->dead) return;
    c->dead = true;
    if (c->paused) atomic_fetch_sub_explicit(&flow_paused_now, 1, memory_order_relaxed);
    if (c->skewed) atomic_fetch_sub_explicit(&clock_skewed_now, 1, memory_order_relaxed);
    admit_leave(c->self.admit, c->admission, false);
    c->admission = NULL;
    c->busy++;
    sio_free(c->io);
    c->io = NULL;
    if (c->sweep) event_free(c->sweep);
    c->sweep = NULL;
    if (c->connect_timer) event_free(c->connect_timer);
    c->connect_timer = NULL;
    for (uint32_t i = 0; i < c->cap; i++) {
        pending p = c->slots[i];
        if (!p.msgid) continue;
        c->slots[i].msgid = 0;
        c->npending--;
        /* Held behind a proof that never went out: never sent. */
        bool sent = c->connected && (!c->self.key || c->proof_sent);
        p.fn(p.arg, sent ? RPC_ERR_LOST : RPC_ERR_UNSENT, NULL);
    }
    if (notify && c->h.on_close) c->h.on_close(c->h.arg, c);
    release(c);
}

void rpc_close(rpc_conn *c)
{
    if (c) teardown(c, false);
}

/* ---- pending table ---- */

static int table_grow(rpc_conn *c)
{
    for (uint32_t ncap = c->cap * 2;; ncap *= 2) {
        pending *ns = calloc(ncap, sizeof(*ns));
        if (!ns) return -1;
        bool clash = false;
        for (uint32_t i = 0; i < c->cap && !clash; i++) {
            if (!c->slots[i].msgid) continue;
            pending *dst = &ns[c->slots[i].msgid & (ncap - 1)];
            if (dst->msgid) clash = true;
            else *dst = c->slots[i];
        }
        if (!clash) {
            free(c->slots);
            c->slots = ns;
            c->cap = ncap;
            return 0;
        }
        free(ns);
    }
}

static uint32_t alloc_msgid(rpc_conn *c)
{
    uint32_t id = c->next_msgid++;
    if (id == 0) id = c->next_msgid++; /* 0 marks one-way messages and free slots */
    return id;
}

static pending *table_take(rpc_conn *c, uint32_t msgid)
{
    pending *p = &c->slots[msgid & (c->cap - 1)];
    if (msgid == 0 || p->msgid != msgid) return NULL;
    return p;
}

/* A peer we accepted must finish its hello in time, and with a key every
 * peer its proof; a peer we dialled without a key is left to the calls'
 * own timeouts, as before the bound existed. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    rpc_conn *c = arg;
    if (!c->hello_done && c->connected && (!c->outbound || c->self.key) && clock_mono() > c->hello_deadline) {
        if (c->self.key) log_warn("%s: no cluster key proof within %.0f s, closing", c->name, RPC_HELLO_TIMEOUT);
        else log_warn("%s: no hello within %.0f s, closing", c->name, RPC_HELLO_TIMEOUT);
        teardown(c, true);
        return;
    }
    if (c->npending == 0) return;
    double now = clock_mono();
    c->busy++;
    for (uint32_t i = 0; i < c->cap && !c->dead; i++) {
        pending p = c->slots[i];
        if (!p.msgid || p.deadline > now) continue;
        c->slots[i].msgid = 0;
        c->npending--;
        p.fn(p.arg, RPC_ERR_TIMEOUT, NULL);
    }
    release(c);
}

/* ---- sending ---- */

static msgpack_packer *dead_packer(rpc_conn *c)
{
    msgpack_sbuffer_clear(&c->scratch);
    return &c->scratch_pk;
}

void rpc_pack_hello(msgpack_packer *pk, const rpc_self *self, uint64_t clock, const uint8_t *nonce)
{
    msgpack_pack_array(pk, self->ring_keylen ? 9 : 8);
    msgpack_pack_uint8(pk, RPC_MSG_HELLO);
    msgpack_pack_uint8(pk, (uint8_t)self->role);
    rpc_pack_bytes(pk, self->addr.id, self->addr.len);
    msgpack_pack_uint32(pk, RPC_VERSION);
    msgpack_pack_uint64(pk, clock);
    msgpack_pack_uint64(pk, self->incarnation);
    if (nonce) rpc_pack_bytes(pk, nonce, AUTH_NONCE_LEN);
    else msgpack_pack_nil(pk);
    msgpack_pack_uint64(pk, (uint64_t)time(NULL)); /* our wall clock, for the peer's skew check */
    if (self->ring_keylen) rpc_pack_bytes(pk, self->ring_key, self->ring_keylen);
}

void rpc_pack_proof(msgpack_packer *pk, const auth_key *key, bool connected, uint8_t role,
                    const uint8_t peer_nonce[AUTH_NONCE_LEN], const uint8_t nonce[AUTH_NONCE_LEN])
{
    uint8_t proof[AUTH_PROOF_LEN];
    auth_proof(key, connected, role, peer_nonce, nonce, proof);
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint8(pk, RPC_MSG_PROOF);
    rpc_pack_bytes(pk, proof, sizeof(proof));
}

/* Straight to the socket's buffer: c->pk may still be holding requests back. */
static void send_hello(rpc_conn *c)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, c, pk_write);
    rpc_pack_hello(&pk, &c->self, c->self.clock ? clock_peek(c->self.clock) : 0, c->self.key ? c->nonce : NULL);
}

/* The peer's nonce is known: prove we hold the key, then let out what
 * was queued meanwhile, and write straight to the socket from now on. */
static void send_proof(rpc_conn *c)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, c, pk_write);
    rpc_pack_proof(&pk, c->self.key, c->outbound, (uint8_t)c->self.role, c->peer_nonce, c->nonce);
    evbuffer_add_buffer(sio_output(c->io), c->held);
    msgpack_packer_init(&c->pk, c, pk_write);
    c->proof_sent = true;
}

/* A peer whose wall clock is far from ours: nothing breaks (ordering is by
 * ClockTime, expiry by the cluster's clock, which follows the fastest node),
 * but every TTL then runs on the fast clock, so the operator must hear of it. */
static void check_skew(rpc_conn *c)
{
    int64_t d = c->peer_skew;
    if (c->peer_role == RPC_ROLE_TOOL) return; /* no part in the cluster's time */
    if (d <= RPC_CLOCK_SKEW_WARN && d >= -RPC_CLOCK_SKEW_WARN) return;
    c->skewed = true;
    atomic_fetch_add_explicit(&clock_skewed_now, 1, memory_order_relaxed);
    atomic_store_explicit(&clock_skew_last, d, memory_order_relaxed);
    log_warn("%s: its clock is %lld s %s ours; the cluster's time (expiry, flush_all with a delay) follows the "
             "fastest clock: synchronize the clocks (NTP)",
             c->name, (long long)(d > 0 ? d : -d), d > 0 ? "ahead of" : "behind");
}

void rpc_clock_stats(size_t *skewed, int64_t *last_skew)
{
    *skewed = atomic_load_explicit(&clock_skewed_now, memory_order_relaxed);
    *last_skew = atomic_load_explicit(&clock_skew_last, memory_order_relaxed);
}

int64_t rpc_peer_skew(const rpc_conn *c) { return c->peer_skew; }

/* The peer is who it says (and, with a key, proved it). */
static void hello_complete(rpc_conn *c)
{
    c->hello_done = true;
    admit_leave(c->self.admit, c->admission, true);
    c->admission = NULL;
    c->guard.limit = RPC_MAX_FRAME; /* for a frame that arrives in pieces (pump) */
    c->arena.max_objects = RPC_MAX_FRAME / MPGUARD_ELEM_COST;
    sio_read_direct(c->io, true);
    if (c->self.clock && c->peer_clock) clock_update(c->self.clock, c->peer_clock);
    check_skew(c);
    if (c->h.on_hello) c->h.on_hello(c->h.arg, c);
}

/* Log why a peer is turned away, once, and close. */
static void refuse(rpc_conn *c, const char *why)
{
    log_warn("%s: %s, closing", c->name, why);
    /* Best effort, without blocking: let out what is queued (our hello and
     * proof, when the peer's hello and proof arrived in one read), so the
     * peer can tell "another key" from a broken connection. */
    if (evbuffer_write(sio_output(c->io), sio_fd(c->io)) < 0)
        log_debug("%s: %s", c->name, strerror(errno));
    teardown(c, true);
}

/* msgpack's smallest form of an unsigned integer, as msgpack_pack_uint32
 * writes it; returns its length. */
static size_t put_uint(uint8_t *p, uint32_t v)
{
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        return 1;
    }
    if (v <= 0xff) {
        p[0] = 0xcc;
        p[1] = (uint8_t)v;
        return 2;
    }
    if (v <= 0xffff) {
        p[0] = 0xcd;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)v;
        return 3;
    }
    p[0] = 0xce;
    p[1] = (uint8_t)(v >> 24);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 8);
    p[4] = (uint8_t)v;
    return 5;
}

/* A frame's first three elements, [type, msgid, method] or [type, msgid,
 * nil] (method < 0), in one write to c->pk: packed one by one they were
 * four calls into the socket's staging. */
static void pack_head(rpc_conn *c, uint8_t type, uint32_t msgid, int64_t method)
{
    uint8_t h[1 + 1 + 5 + 5], *p = h;
    *p++ = 0x94; /* array of 4 */
    *p++ = type; /* a positive fixint */
    p += put_uint(p, msgid);
    if (method < 0) *p++ = 0xc0;
    else p += put_uint(p, (uint32_t)method);
    c->pk.callback(c->pk.data, (const char *)h, (size_t)(p - h));
}

msgpack_packer *rpc_call_begin(rpc_conn *c, uint32_t method, double timeout, rpc_reply_fn fn, void *arg)
{
    if (c->dead) {
        defer_unsent(c->base, fn, arg);
        return dead_packer(c);
    }
    uint32_t id = alloc_msgid(c);
    while (c->slots[id & (c->cap - 1)].msgid) {
        if (table_grow(c) < 0) {
            defer_unsent(c->base, fn, arg);
            return dead_packer(c);
        }
    }
    pending *p = &c->slots[id & (c->cap - 1)];
    p->msgid = id;
    p->fn = fn;
    p->arg = arg;
    p->deadline = clock_mono() + timeout;
    c->npending++;
    pack_head(c, RPC_MSG_REQUEST, id, method);
    return &c->pk;
}

void rpc_call_end(rpc_conn *c) { (void)c; /* sio flushes at the end of the loop iteration */ }

msgpack_packer *rpc_notify_begin(rpc_conn *c, uint32_t method)
{
    if (c->dead) return dead_packer(c);
    pack_head(c, RPC_MSG_REQUEST, 0, method);
    return &c->pk;
}

msgpack_packer *rpc_reply_begin(rpc_conn *c, uint32_t msgid)
{
    if (c->dead || msgid == 0) return dead_packer(c);
    pack_head(c, RPC_MSG_RESPONSE, msgid, -1);
    return &c->pk;
}

void rpc_reply_error(rpc_conn *c, uint32_t msgid, const char *fmt, ...)
{
    char msg[KUMO_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->dead || msgid == 0) return;
    msgpack_pack_array(&c->pk, 4);
    msgpack_pack_uint8(&c->pk, RPC_MSG_RESPONSE);
    msgpack_pack_uint32(&c->pk, msgid);
    rpc_pack_str(&c->pk, msg);
    msgpack_pack_nil(&c->pk);
}

void rpc_reply_nil(rpc_conn *c, uint32_t msgid) { msgpack_pack_nil(rpc_reply_begin(c, msgid)); }

void rpc_reply_bool(rpc_conn *c, uint32_t msgid, bool v)
{
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    if (v) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
}

void rpc_reply_uint(rpc_conn *c, uint32_t msgid, uint64_t v)
{
    msgpack_pack_uint64(rpc_reply_begin(c, msgid), v);
}

/* ---- receiving ---- */

static bool obj_uint(const msgpack_object *o, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *out = o->via.u64;
    return true;
}

static bool obj_bytes(const msgpack_object *o, const char **p, size_t *len)
{
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *len = o->via.bin.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *len = o->via.str.size;
        return true;
    }
    return false;
}

bool rpc_hello_parse(const msgpack_object *o, rpc_hello *h)
{
    memset(h, 0, sizeof(*h));
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 5) return false;
    const msgpack_object *a = o->via.array.ptr;
    uint64_t type;
    size_t n = o->via.array.size;
    if (!obj_uint(&a[0], &type) || type != RPC_MSG_HELLO || !obj_uint(&a[1], &h->role) || h->role > RPC_ROLE_TOOL ||
        !obj_bytes(&a[2], &h->addr, &h->addrlen) || !obj_uint(&a[3], &h->version) || !obj_uint(&a[4], &h->clock))
        return false;
    if (n >= 6) obj_uint(&a[5], &h->incarnation); /* optional: older peers send 5 */
    if (n >= 7 && !obj_bytes(&a[6], &h->nonce, &h->noncelen)) h->nonce = NULL;
    if (n >= 8) obj_uint(&a[7], &h->wall);
    if (n >= 9 && (!obj_bytes(&a[8], &h->ring_key, &h->ring_keylen) || h->ring_keylen == 0)) return false;
    return true;
}

/* Returns false if the peer broke the protocol (the caller closes). */
static bool dispatch(rpc_conn *c, const msgpack_object *o)
{
    uint64_t type, msgid, v;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1) return false;
    const msgpack_object *a = o->via.array.ptr;
    if (!obj_uint(&a[0], &type)) return false;

    if (type == RPC_MSG_HELLO) {
        rpc_hello h;
        if (c->hello_done || c->peer_hello || !rpc_hello_parse(o, &h)) return false;
        bool has_nonce = h.nonce != NULL;
        if (h.version != RPC_VERSION) {
            log_warn("%s: protocol version %llu, expected %d", c->name, (unsigned long long)h.version, RPC_VERSION);
            return false;
        }
        if (h.addrlen > 0) {
            if (net_from_id(&c->peer_addr, h.addr, h.addrlen) < 0) return false;
            net_format(&c->peer_addr, c->name, sizeof(c->name));
        }
        c->peer_role = (rpc_role)h.role;
        c->peer_incarnation = h.incarnation;
        c->peer_clock = h.clock;
        if (h.wall > 0) c->peer_skew = (int64_t)h.wall - (int64_t)time(NULL);
        if (h.ring_keylen > RING_KEY_MAX) return false;
        if (h.ring_keylen) memcpy(c->peer_ring_key, h.ring_key, h.ring_keylen);
        c->peer_ring_keylen = (uint8_t)h.ring_keylen;
        if (!c->self.key) {
            if (has_nonce) refuse(c, "the peer requires a cluster key and we have none (--cluster-key-file)");
            else hello_complete(c);
            return true;
        }
        if (!has_nonce || h.noncelen != AUTH_NONCE_LEN) {
            refuse(c, "the peer has no cluster key and ours is set (--cluster-key-file)");
            return true;
        }
        memcpy(c->peer_nonce, h.nonce, AUTH_NONCE_LEN);
        c->peer_hello = true;
        send_proof(c);
        return true;
    }
    if (type == RPC_MSG_PROOF) {
        const char *p;
        size_t len;
        if (!c->self.key || !c->peer_hello || c->hello_done || o->via.array.size != 2 || !obj_bytes(&a[1], &p, &len))
            return false;
        if (!auth_verify(c->self.key, !c->outbound, (uint8_t)c->peer_role, c->nonce, c->peer_nonce, p, len)) {
            refuse(c, "wrong cluster key proof (not the same --cluster-key-file)");
            return true;
        }
        hello_complete(c);
        return true;
    }
    if (!c->hello_done && c->peer_hello) {
        refuse(c, "a message before the cluster key proof");
        return true;
    }
    if (!c->hello_done || o->via.array.size != 4 || !obj_uint(&a[1], &msgid) || msgid > UINT32_MAX)
        return false;
    if (type == RPC_MSG_REQUEST) {
        if (!obj_uint(&a[2], &v) || v > UINT32_MAX || a[3].type != MSGPACK_OBJECT_ARRAY) return false;
        if (c->h.on_request) c->h.on_request(c->h.arg, c, (uint32_t)msgid, (uint32_t)v, &a[3]);
        return true;
    }
    if (type == RPC_MSG_RESPONSE) {
        pending *slot = table_take(c, (uint32_t)msgid);
        if (!slot) return true; /* late reply to a call that already timed out */
        pending p = *slot;
        slot->msgid = 0;
        c->npending--;
        if (a[2].type != MSGPACK_OBJECT_NIL) p.fn(p.arg, RPC_ERR_REMOTE, &a[2]);
        else p.fn(p.arg, RPC_OK, &a[3]);
        return true;
    }
    return false;
}

/* ---- flow control ----
 * A peer that sends requests faster than it reads our answers would make us
 * hold every answer. So a connection the peer opened (we serve it) stops
 * reading once self.max_output bytes of ours wait for the peer, and reads
 * again when the peer has taken them all. Only accepted connections pause:
 * we always read the connections we opened, so two nodes never wait for
 * each other. */

static bool must_pause(const rpc_conn *c)
{
    return !c->outbound && c->self.max_output && !c->dead &&
           sio_output_length(c->io) >= c->self.max_output;
}

static void pause_reading(rpc_conn *c)
{
    c->paused = true;
    atomic_fetch_add_explicit(&flow_paused_now, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&flow_pauses, 1, memory_order_relaxed);
    sio_read_enable(c->io, false);
}

void rpc_flow_stats(rpc_flow *out)
{
    out->paused = atomic_load_explicit(&flow_paused_now, memory_order_relaxed);
    out->pauses = atomic_load_explicit(&flow_pauses, memory_order_relaxed);
}

/* Room for n more bytes of input: what was dispatched is dropped first. */
static bool in_room(rpc_conn *c, size_t n)
{
    if (c->start > 0) {
        memmove(c->in, c->in + c->start, c->in_len - c->start);
        c->in_len -= c->start;
        if (c->guarded) c->checked -= c->start;
        c->start = 0;
    }
    if (c->in_cap - c->in_len >= n) return true;
    size_t cap = c->in_cap * 2 > c->in_len + n ? c->in_cap * 2 : c->in_len + n;
    char *p = realloc(c->in, cap);
    if (!p) return false;
    c->in = p;
    c->in_cap = cap;
    return true;
}

/* Move input the socket's evbuffer holds (what came with or before the
 * hello) into `in`; the count moved, 0 when there is none or after
 * closing. Before the hello is done (and with a key the proof), at most
 * RPC_MAX_HELLO bytes in all. */
static size_t take_input(rpc_conn *c)
{
    if (c->in_direct) return 0;
    struct evbuffer *in = sio_input(c->io);
    size_t n = evbuffer_get_length(in);
    if (n == 0) return 0;
    if (n > RPC_READ_CHUNK) n = RPC_READ_CHUNK;
    if (!c->hello_done) {
        size_t left = RPC_MAX_HELLO - c->hello_bytes - (c->in_len - c->start);
        if (left == 0) {
            log_warn("%s: more than %u bytes before the %s, closing", c->name, RPC_MAX_HELLO,
                     c->self.key ? "cluster key proof" : "hello");
            teardown(c, true);
            return 0;
        }
        if (n > left) n = left;
    }
    if (!in_room(c, n)) {
        log_error("%s: out of memory reading a frame", c->name);
        teardown(c, true);
        return 0;
    }
    ev_ssize_t got = evbuffer_remove(in, c->in + c->in_len, n);
    if (got <= 0) return 0;
    c->in_len += (size_t)got;
    return (size_t)got;
}

/* Whether a whole frame may lie at start. A frame is first decoded as if
 * it had arrived whole, which it almost always has: one pass over it, and
 * the decode takes no more memory than the frame's bytes allow (mpread.h),
 * which one read bounds. One that has not is then checked by the guard as
 * its pieces arrive, so a frame that declares more than the limit is
 * refused before it is buffered, and it is decoded again only once the
 * guard has seen all of it: a frame in many pieces costs two decodes and
 * one guard pass, never one decode per piece. The guard stops at the
 * frame's end; the limit is the hello's (RPC_MAX_HELLO) until the hello is
 * done, RPC_MAX_FRAME after. False: more input is needed, or the
 * connection was closed. */
static bool frame_ready(rpc_conn *c)
{
    if (c->start == c->in_len) return false;
    if (!c->guarded) return true;
    if (c->checked < c->in_len) {
        ptrdiff_t k = mpguard_feed_object(&c->guard, c->in + c->checked, c->in_len - c->checked);
        if (k < 0) {
            if (c->hello_done)
                log_warn("%s: a frame declares more than %u bytes could hold, closing", c->name, RPC_MAX_FRAME);
            else log_warn("%s: a hello declares more than %u bytes, closing", c->name, RPC_MAX_HELLO);
            teardown(c, true);
            return false;
        }
        c->checked += (size_t)k;
    }
    return c->checked > c->start && mpguard_between(&c->guard);
}

/* Dispatch the whole frames the input holds, then take more from the
 * evbuffer, until the input is used up, the connection dies, or it pauses
 * (flow control, below).
 *
 * A frame is decoded in place (mpread): its strings and bins point into
 * `in`, its arrays and maps into the arena, which is rewound after each
 * frame. Handlers never keep a frame's objects past their return, which
 * this relies on. */
static void pump(rpc_conn *c)
{
    /* Never nested: the frame being handled lives in the arena and the
     * input a nested pump would reuse. The outer loop takes what arrived
     * meanwhile. */
    if (c->pumping) return;
    c->pumping = true;
    c->busy++;
    while (!c->dead && !c->paused) {
        if (frame_ready(c)) {
            msgpack_object o;
            ptrdiff_t n = mpread_object(&c->arena, c->in + c->start, c->in_len - c->start, &o);
            if (n == 0 && !c->guarded) { /* not all here: the guard follows it from now on */
                mpread_reset(&c->arena);
                mpguard_init(&c->guard, c->hello_done ? RPC_MAX_FRAME : RPC_MAX_HELLO);
                c->guarded = true;
                c->checked = c->start;
                continue;
            }
            if (n > 0) {
                c->start += (size_t)n;
                c->guarded = false;
                if (!c->hello_done) c->hello_bytes += (size_t)n;
            }
            bool ok = n > 0 && dispatch(c, &o);
            mpread_reset(&c->arena);
            if (!ok) {
                log_warn("%s: %s, closing", c->name, n > 0 ? "protocol error" : "malformed frame");
                teardown(c, true);
            } else if (must_pause(c)) {
                pause_reading(c);
            }
            continue;
        }
        if (c->dead || take_input(c) == 0) break;
    }
    if (c->start == c->in_len) { /* all dispatched: rewind, and give back a buffer a large frame grew */
        c->start = c->in_len = 0;
        if (c->in_cap > RPC_IN_KEEP) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    }
    c->pumping = false;
    release(c);
}

/* Once the hello is done, frames are read straight into `in`
 * (sio_read_direct), with no copy through the socket's input evbuffer;
 * what the hello's read left there is taken first. */
static void read_cb(void *arg, sio *io)
{
    rpc_conn *c = arg;
    c->busy++;
    if (c->hello_done && !c->in_direct) c->in_direct = evbuffer_get_length(sio_input(io)) == 0;
    if (c->in_direct && !c->paused && !c->pumping) {
        if (!in_room(c, RPC_DIRECT_READ)) {
            log_error("%s: out of memory reading a frame", c->name);
            teardown(c, true);
        } else {
            size_t room = c->in_cap - c->in_len;
            ssize_t n = sio_recv(io, c->in + c->in_len, room < RPC_READ_CHUNK ? room : RPC_READ_CHUNK);
            if (n > 0) c->in_len += (size_t)n;
        }
    }
    if (!c->dead) pump(c);
    release(c);
}

/* The peer read what we owed it: take its requests again. */
static void drained_cb(void *arg, sio *io)
{
    rpc_conn *c = arg;
    if (!c->paused) return;
    c->paused = false;
    atomic_fetch_sub_explicit(&flow_paused_now, 1, memory_order_relaxed);
    sio_read_enable(io, true);
    pump(c); /* what the input already holds */
}

static void connect_cb(void *arg, sio *io)
{
    rpc_conn *c = arg;
    (void)io;
    c->connected = true;
    c->hello_deadline = clock_mono() + RPC_HELLO_TIMEOUT;
    if (c->connect_timer) event_del(c->connect_timer);
}

static void close_cb(void *arg, sio *io, int err)
{
    rpc_conn *c = arg;
    (void)io;
    if (err == 0) log_debug("%s: connection closed", c->name);
    else log_debug("%s: connection failed: %s", c->name, strerror(err));
    teardown(c, true);
}

static const sio_ops rpc_sio_ops = {
    .on_read = read_cb,
    .on_drained = drained_cb,
    .on_connect = connect_cb,
    .on_close = close_cb,
};

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    rpc_conn *c = arg;
    log_debug("%s: connect timed out", c->name);
    teardown(c, true);
}

static rpc_conn *conn_new(struct event_base *base, const rpc_handlers *h, const rpc_self *self, bool outbound)
{
    rpc_conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->cap = 64;
    c->slots = calloc(c->cap, sizeof(pending));
    if (!c->slots) {
        free(c->slots);
        free(c);
        return NULL;
    }
    c->base = base;
    c->h = *h;
    c->self = *self;
    c->next_msgid = 1;
    mpguard_init(&c->guard, RPC_MAX_HELLO);                   /* raised to RPC_MAX_FRAME by hello_complete */
    c->arena.max_objects = RPC_MAX_HELLO / MPGUARD_ELEM_COST; /* what the guard lets a hello declare */
    c->peer_role = RPC_ROLE_TOOL;
    msgpack_sbuffer_init(&c->scratch);
    msgpack_packer_init(&c->scratch_pk, &c->scratch, msgpack_sbuffer_write);
    c->outbound = outbound;
    if (self->key) {
        char err[KUMO_ERRLEN];
        if (!(c->held = evbuffer_new()) || auth_nonce(c->nonce, err) < 0) {
            if (c->held) log_error("cluster key handshake: %s", err);
            conn_free(c);
            return NULL;
        }
    }
    c->hello_deadline = clock_mono() + RPC_HELLO_TIMEOUT;
    if (self->key) msgpack_packer_init(&c->pk, c->held, held_write);
    else msgpack_packer_init(&c->pk, c, pk_write);
    c->sweep = event_new(base, -1, EV_PERSIST, sweep_cb, c);
    struct timeval tv = {0, (suseconds_t)(RPC_SWEEP * 1e6)};
    event_add(c->sweep, &tv);
    return c;
}

/* admit.h: a newer stranger needs the room. */
static void evicted(void *arg)
{
    rpc_conn *c = arg;
    c->admission = NULL; /* admit forgot it already */
    log_debug("%s: hello not done, closed to make room for a newer connection", c->name);
    teardown(c, true);
}

/* A connection that never got its socket going. */
static void discard(rpc_conn *c)
{
    admit_leave(c->self.admit, c->admission, false);
    c->dead = true;
    event_free(c->sweep);
    conn_free(c);
}

rpc_conn *rpc_accept(struct event_base *base, int fd, const rpc_handlers *h, const rpc_self *self)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    net_addr a;
    rpc_conn *c = NULL;
    /* A peer gone already has no name, and nothing to serve. */
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0 || !(c = conn_new(base, h, self, false))) {
        close(fd);
        return NULL;
    }
    if (net_from_sockaddr(&a, (struct sockaddr *)&ss) == 0) net_format(&a, c->name, sizeof(c->name));
    if (self->admit && !(c->admission = admit_enter(self->admit, (struct sockaddr *)&ss, evicted, c))) {
        discard(c);
        close(fd);
        return NULL;
    }
    c->io = sio_new(base, fd, &rpc_sio_ops, c);
    if (!c->io) {
        discard(c);
        return NULL;
    }
    c->connected = true;
    send_hello(c);
    return c;
}

rpc_conn *rpc_connect(struct event_base *base, const net_addr *peer, double connect_timeout,
                      const rpc_handlers *h, const rpc_self *self)
{
    rpc_conn *c = conn_new(base, h, self, true);
    if (!c) return NULL;
    c->io = sio_connect(base, peer, &rpc_sio_ops, c);
    if (!c->io) {
        discard(c);
        return NULL;
    }
    send_hello(c);
    c->peer_addr = *peer;
    net_format(peer, c->name, sizeof(c->name));
    c->connect_timer = evtimer_new(base, connect_timeout_cb, c);
    struct timeval tv = {(time_t)connect_timeout, (suseconds_t)((connect_timeout - (double)(time_t)connect_timeout) * 1e6)};
    evtimer_add(c->connect_timer, &tv);
    return c;
}

void rpc_hold(rpc_conn *c) { c->busy++; }
void rpc_release(rpc_conn *c) { release(c); }
bool rpc_is_closed(const rpc_conn *c) { return c->dead; }

bool rpc_hello_done(const rpc_conn *c) { return c->hello_done; }
rpc_role rpc_peer_role(const rpc_conn *c) { return c->peer_role; }
const net_addr *rpc_peer_addr(const rpc_conn *c) { return &c->peer_addr; }
const char *rpc_peer_name(const rpc_conn *c) { return c->name; }
uint64_t rpc_peer_incarnation(const rpc_conn *c) { return c->peer_incarnation; }
size_t rpc_peer_ring_key(const rpc_conn *c, const uint8_t **key)
{
    *key = c->peer_ring_key;
    return c->peer_ring_keylen;
}
size_t rpc_pending(const rpc_conn *c) { return c->npending; }
void *rpc_get_data(const rpc_conn *c) { return c->data; }
void rpc_set_data(rpc_conn *c, void *data) { c->data = data; }

/* ---- argument helpers ---- */

const msgpack_object *rpc_arg(const msgpack_object *params, uint32_t i)
{
    if (params->type != MSGPACK_OBJECT_ARRAY || i >= params->via.array.size) return NULL;
    return &params->via.array.ptr[i];
}

bool rpc_arg_uint(const msgpack_object *params, uint32_t i, uint64_t *out)
{
    const msgpack_object *o = rpc_arg(params, i);
    return o && obj_uint(o, out);
}

bool rpc_arg_int(const msgpack_object *params, uint32_t i, int64_t *out)
{
    const msgpack_object *o = rpc_arg(params, i);
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > (uint64_t)INT64_MAX) return false;
    *out = (int64_t)o->via.u64;
    return true;
}

bool rpc_arg_bool(const msgpack_object *params, uint32_t i, bool *out)
{
    const msgpack_object *o = rpc_arg(params, i);
    if (!o || o->type != MSGPACK_OBJECT_BOOLEAN) return false;
    *out = o->via.boolean;
    return true;
}

bool rpc_arg_bytes(const msgpack_object *params, uint32_t i, const char **p, size_t *len)
{
    const msgpack_object *o = rpc_arg(params, i);
    return o && obj_bytes(o, p, len);
}

void rpc_pack_bytes(msgpack_packer *pk, const void *p, size_t len)
{
    if (len <= 255) { /* a key: bin 8 header and bytes in one write */
        uint8_t b[2 + 255];
        b[0] = 0xc4;
        b[1] = (uint8_t)len;
        memcpy(b + 2, p, len);
        pk->callback(pk->data, (const char *)b, len + 2);
        return;
    }
    msgpack_pack_bin(pk, len);
    msgpack_pack_bin_body(pk, p, len);
}

void rpc_pack_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

const char *rpc_strerror(rpc_status st, const msgpack_object *result, char *buf, size_t len)
{
    switch (st) {
    case RPC_OK: snprintf(buf, len, "ok"); break;
    case RPC_ERR_LOST: snprintf(buf, len, "connection lost"); break;
    case RPC_ERR_UNSENT: snprintf(buf, len, "cannot connect"); break;
    case RPC_ERR_TIMEOUT: snprintf(buf, len, "timed out"); break;
    case RPC_ERR_REMOTE: {
        const char *p;
        size_t n;
        if (result && obj_bytes(result, &p, &n)) snprintf(buf, len, "%.*s", (int)n, p);
        else snprintf(buf, len, "remote error");
        break;
    }
    }
    return buf;
}

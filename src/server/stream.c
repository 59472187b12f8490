/*
 * stream — the bulk copy of a replace, over the stream port (-L).
 *
 * The copy phase writes each destination's records ([key, value] msgpack
 * pairs) through zlib into an unlinked temporary file under -f, so a large
 * move needs disk, not memory. The sender then offers the file: an RPC
 * (SRV_REPLACE_OFFER [port, token, size]) tells the destination to connect
 * to the sender's stream port, present the token and read the compressed
 * bytes, which it inflates and applies with the newer-ClockTime-wins rule;
 * its reply to the offer (the number of records applied) ends the transfer.
 * The sender's socket is rate-limited by --replace-rate so a large move does
 * not starve client traffic. An offer nobody collects within OFFER_TTL
 * seconds, a lost connection or a corrupt stream fails the transfer, and the
 * replace is retried by the manager.
 *
 * The stream port has no handshake but the token, so it reads nothing else:
 * at most 8 bytes until the token is known (a read watermark), nothing at
 * all after it (a byte more closes the connection), and a connection that
 * has sent no valid token within STREAM_TOKEN_TIMEOUT is closed. Until
 * then it is held by s->stream_admit (admit.h), which bounds how many such
 * connections one address, and all of them, can make the server hold.
 *
 * Calls: store, record, rpc, admit, cluster.c, streamdec (parsing what
 * arrives), zlib, libevent. Thread rule: main loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "proto.h"
#include "record.h"
#include "server.h"
#include "xalloc.h"
#include "streamdec.h"

#define OFFER_TTL 120.0
#define STREAM_TOKEN_TIMEOUT 5.0 /* s from accept to the 8-byte token */
#define TOKEN_LEN 8
#define OFFER_RPC_TIMEOUT 3600.0
#define ZCHUNK (64 * 1024)

/* ---- writing a stream file ---- */

struct stream_file {
    z_stream zs;
    int fd;
    uint64_t count, bytes;
    msgpack_sbuffer one;
    msgpack_packer pk;
    bool failed;
};

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int deflate_some(stream_file *f, const void *in, size_t len, int flush)
{
    unsigned char out[ZCHUNK];
    f->zs.next_in = (Bytef *)(uintptr_t)in;
    f->zs.avail_in = (uInt)len;
    do {
        f->zs.next_out = out;
        f->zs.avail_out = sizeof(out);
        int rc = deflate(&f->zs, flush);
        if (rc == Z_STREAM_ERROR) return -1;
        size_t have = sizeof(out) - f->zs.avail_out;
        if (have && write_all(f->fd, out, have) < 0) return -1;
        f->bytes += have;
    } while (f->zs.avail_out == 0);
    return 0;
}

stream_file *stream_file_new(server *s, char *err)
{
    stream_file *f = calloc(1, sizeof(*f));
    if (!f) {
        kumo_err(err, "out of memory");
        return NULL;
    }
    char *path = NULL;
    if (asprintf(&path, "%s/kumo-replace-XXXXXX", s->cfg->tmpdir) < 0) {
        free(f);
        kumo_err(err, "out of memory");
        return NULL;
    }
    f->fd = mkstemp(path);
    if (f->fd < 0) {
        kumo_err(err, "%s: %s", path, strerror(errno));
        free(path);
        free(f);
        return NULL;
    }
    unlink(path); /* the file lives as long as the descriptor */
    free(path);
    if (deflateInit(&f->zs, Z_DEFAULT_COMPRESSION) != Z_OK) {
        close(f->fd);
        free(f);
        kumo_err(err, "zlib: deflateInit failed");
        return NULL;
    }
    msgpack_sbuffer_init(&f->one);
    msgpack_packer_init(&f->pk, &f->one, msgpack_sbuffer_write);
    return f;
}

void stream_file_add(stream_file *f, const void *key, size_t klen, const void *val, size_t vlen)
{
    if (f->failed) return;
    msgpack_sbuffer_clear(&f->one);
    msgpack_pack_array(&f->pk, 2);
    rpc_pack_bytes(&f->pk, key, klen);
    rpc_pack_bytes(&f->pk, val, vlen);
    if (deflate_some(f, f->one.data, f->one.size, Z_NO_FLUSH) < 0) f->failed = true;
    else f->count++;
}

uint64_t stream_file_count(const stream_file *f) { return f->count; }

static void file_free(stream_file *f)
{
    deflateEnd(&f->zs);
    msgpack_sbuffer_destroy(&f->one);
    if (f->fd >= 0) close(f->fd);
    free(f);
}

/* ---- offers (sender side) ---- */

typedef struct offer {
    struct offer *next;
    server *s;
    uint64_t token;
    int fd;
    uint64_t size, count;
    stream_done_fn fn;
    void *arg;
    struct event *expire;
    struct sender *taker; /* the connection collecting it */
    bool rpc_done;
} offer;

/* A connection on the stream port: a destination that reads its token,
 * then the file of the offer it collects (sd->o and o->taker point at each
 * other while it does). */
typedef struct sender {
    server *s;
    offer *o;
    struct bufferevent *bev;
    admit_entry *admission; /* until the token is known */
} sender;

/* Close it; one still waiting for its token failed to authenticate. */
static void sender_free(sender *sd)
{
    admit_leave(sd->s->stream_admit, sd->admission, false);
    if (sd->o) sd->o->taker = NULL; /* the offer waits for the RPC reply */
    bufferevent_free(sd->bev);
    free(sd);
}

static void offer_finish(offer *o, bool ok, uint64_t applied)
{
    server *s = o->s;
    if (ok) {
        s->moved_sent += o->count;
        s->moved_sent_bytes += o->size;
    }
    for (offer **pp = &s->offers; *pp; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    if (o->expire) event_free(o->expire);
    if (o->taker) sender_free(o->taker);
    if (o->fd >= 0) close(o->fd);
    o->fn(o->arg, ok, applied);
    free(o);
}

static void offer_expire_cb(evutil_socket_t fd, short what, void *arg)
{
    offer *o = arg;
    log_warn("replace stream: offer %llx was not collected in time", (unsigned long long)o->token);
    o->rpc_done = true; /* the reply, if it ever comes, finds nothing */
    offer_finish(o, false, 0);
}

typedef struct offer_call {
    server *s;
    uint64_t token;
} offer_call;

static offer *find_offer(server *s, uint64_t token)
{
    for (offer *o = s->offers; o; o = o->next)
        if (o->token == token) return o;
    return NULL;
}

static void offer_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    offer_call *oc = arg;
    offer *o = find_offer(oc->s, oc->token);
    char why[KUMO_ERRLEN];
    free(oc);
    if (!o) return;
    if (st != RPC_OK || result->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        log_warn("replace stream: transfer failed: %s", rpc_strerror(st, result, why, sizeof(why)));
        offer_finish(o, false, 0);
        return;
    }
    offer_finish(o, true, result->via.u64);
}

void stream_file_offer(server *s, stream_file *f, const net_addr *to, stream_done_fn fn, void *arg)
{
    char err[KUMO_ERRLEN];
    bool ok = !f->failed && deflate_some(f, NULL, 0, Z_FINISH) == 0;
    offer *o = ok ? calloc(1, sizeof(*o)) : NULL;
    offer_call *oc = o ? malloc(sizeof(*oc)) : NULL;
    rpc_conn *c = oc ? cluster_peer(s, to) : NULL;
    if (!c) {
        free(oc);
        free(o);
        file_free(f);
        fn(arg, false, 0);
        return;
    }
    o->s = s;
    /* The token is what lets a connection collect the file: unguessable. */
    if (getrandom(&o->token, sizeof(o->token), 0) != sizeof(o->token))
        o->token = ((uint64_t)time(NULL) << 32) ^ (uint64_t)(uintptr_t)o ^ (uint64_t)getpid();
    o->fd = f->fd;
    f->fd = -1;
    o->size = f->bytes;
    o->count = f->count;
    o->fn = fn;
    o->arg = arg;
    file_free(f);
    o->expire = evtimer_new(s->base, offer_expire_cb, o);
    struct timeval tv = {(time_t)OFFER_TTL, 0};
    evtimer_add(o->expire, &tv);
    o->next = s->offers;
    s->offers = o;
    oc->s = s;
    oc->token = o->token;
    msgpack_packer *pk = rpc_call_begin(c, SRV_REPLACE_OFFER, OFFER_RPC_TIMEOUT, offer_reply, oc);
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint32(pk, (uint32_t)s->cfg->stream_port);
    msgpack_pack_uint64(pk, o->token);
    msgpack_pack_uint64(pk, o->size);
    rpc_call_end(c);
    (void)err;
}

void stream_file_abandon(stream_file *f) { file_free(f); }

/* admit.h: a newer connection needs the room. */
static void sender_evicted(void *arg)
{
    sender *sd = arg;
    sd->admission = NULL; /* admit forgot it already */
    sender_free(sd);
}

static void sender_event_cb(struct bufferevent *bev, short what, void *arg)
{
    /* A timeout only comes before the token (stream_accept): a peer that
     * never sends one must not hold its descriptor. */
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) sender_free(arg);
}

static void sender_write_cb(struct bufferevent *bev, void *arg)
{
    sender *sd = arg;
    if (!sd->o) return;
    /* Everything is out: half-close so the receiver sees the end. */
    shutdown(bufferevent_getfd(bev), SHUT_WR);
}

/* After its token the receiver sends nothing; a byte more is not ours to keep. */
static void sender_extra_cb(struct bufferevent *bev, void *arg)
{
    log_warn("replace stream: the receiver sent more than its token, closing");
    sender_free(arg);
}

static void sender_read_cb(struct bufferevent *bev, void *arg)
{
    sender *sd = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (evbuffer_get_length(in) < TOKEN_LEN) return;
    uint8_t tok[TOKEN_LEN];
    evbuffer_remove(in, tok, TOKEN_LEN);
    uint64_t token = 0;
    for (int i = 0; i < TOKEN_LEN; i++) token = token << 8 | tok[i];
    offer *o = find_offer(sd->s, token);
    if (!o || o->taker) {
        log_warn("replace stream: unknown or taken token %llx", (unsigned long long)token);
        sender_free(sd);
        return;
    }
    admit_leave(sd->s->stream_admit, sd->admission, true);
    sd->admission = NULL;
    sd->o = o;
    o->taker = sd;
    evtimer_del(o->expire);
    bufferevent_set_timeouts(bev, NULL, NULL); /* the receiver sends nothing more */
    if (sd->s->rate) bufferevent_set_rate_limit(bev, sd->s->rate);
    if (o->size > 0) {
        int fd = dup(o->fd);
        if (fd < 0 || evbuffer_add_file(bufferevent_get_output(bev), fd, 0, (ev_off_t)o->size) < 0) {
            if (fd >= 0) close(fd);
            sender_free(sd);
            return;
        }
    }
    bufferevent_setwatermark(bev, EV_READ, 0, 1);
    bufferevent_setcb(bev, sender_extra_cb, sender_write_cb, sender_event_cb, sd);
    bufferevent_enable(bev, EV_WRITE);
}

static void stream_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    server *s = arg;
    sender *sd = calloc(1, sizeof(*sd));
    if (sd) sd->s = s;
    if (!sd || !(sd->admission = admit_enter(s->stream_admit, sa, sender_evicted, sd)) ||
        !(sd->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE))) {
        if (sd) admit_leave(s->stream_admit, sd->admission, false);
        free(sd);
        evutil_closesocket(fd);
        return;
    }
    net_tune(fd);
    bufferevent_setwatermark(sd->bev, EV_READ, 0, TOKEN_LEN); /* read the token, nothing more */
    bufferevent_setcb(sd->bev, sender_read_cb, NULL, sender_event_cb, sd);
    bufferevent_enable(sd->bev, EV_READ);
    struct timeval tv = {(time_t)STREAM_TOKEN_TIMEOUT, 0};
    bufferevent_set_timeouts(sd->bev, &tv, NULL);
}

/* ---- collecting (receiver side) ---- */

typedef struct pull {
    server *s;
    rpc_conn *c; /* held: the offer to answer */
    uint32_t msgid;
    struct bufferevent *bev;
    stream_decoder dec;
    uint64_t applied;
    char err[KUMO_ERRLEN];
} pull;

static void pull_finish(pull *p, bool ok)
{
    p->s->moved_recv += p->applied;
    p->s->moved_recv_bytes += p->dec.zs.total_in;
    if (ok) rpc_reply_uint(p->c, p->msgid, p->applied);
    else rpc_reply_error(p->c, p->msgid, "stream failed: %s", p->err[0] ? p->err : "connection lost");
    rpc_release(p->c);
    if (p->bev) bufferevent_free(p->bev);
    streamdec_free(&p->dec);
    free(p);
}

/* One record of the stream: newer ClockTime wins. */
static int apply_record(void *arg, const char *k, size_t kl, const char *v, size_t vl, char *err)
{
    pull *p = arg;
    clock_update(&p->s->clock, record_clocktime(v, vl));
    int rc = store_update(p->s->db, k, kl, v, vl, err);
    if (rc < 0) return -1;
    p->applied += (uint64_t)rc;
    if (rc == 1) gc_tombstone(p->s, k, kl, v, vl);
    return 0;
}

/* Decode and apply what has arrived; false (p finished and freed) on failure. */
static bool pull_input(pull *p)
{
    struct evbuffer *in = bufferevent_get_input(p->bev);
    unsigned char buf[ZCHUNK];
    int n;
    while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0) {
        if (streamdec_feed(&p->dec, buf, (size_t)n, apply_record, p, p->err) < 0) {
            pull_finish(p, false);
            return false;
        }
    }
    return true;
}

static void pull_read_cb(struct bufferevent *bev, void *arg) { pull_input(arg); }

static void pull_event_cb(struct bufferevent *bev, short what, void *arg)
{
    pull *p = arg;
    if (what & BEV_EVENT_CONNECTED) return; /* the token was queued before connecting */
    if (what & BEV_EVENT_EOF) {
        if (pull_input(p)) pull_finish(p, streamdec_finish(&p->dec, p->err) == 0);
        return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        snprintf(p->err, sizeof(p->err), "%s", (what & BEV_EVENT_TIMEOUT) ? "timed out" : "connection failed");
        pull_finish(p, false);
    }
}

static void handle_offer(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t port, token, size;
    if (!rpc_arg_uint(params, 0, &port) || !rpc_arg_uint(params, 1, &token) || !rpc_arg_uint(params, 2, &size) ||
        port == 0 || port > 65535 || rpc_peer_addr(c)->len == 0) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    pull *p = xcalloc(1, sizeof(*p));
    char err[KUMO_ERRLEN];
    if (streamdec_init(&p->dec, RPC_MAX_FRAME, err) < 0) {
        free(p);
        rpc_reply_error(c, msgid, "%s", err);
        return;
    }
    p->s = s;
    p->c = c;
    p->msgid = msgid;
    rpc_hold(c);
    net_addr from = *rpc_peer_addr(c);
    net_set_port(&from, (uint16_t)port);
    struct sockaddr_storage ss;
    socklen_t sl = net_sockaddr(&from, &ss);
    p->bev = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!p->bev) {
        pull_finish(p, false);
        return;
    }
    uint8_t tok[8];
    for (int i = 0; i < 8; i++) tok[i] = (uint8_t)(token >> (56 - 8 * i));
    bufferevent_write(p->bev, tok, sizeof(tok)); /* sent once connected */
    bufferevent_setcb(p->bev, pull_read_cb, NULL, pull_event_cb, p);
    struct timeval tv = {60, 0};
    bufferevent_set_timeouts(p->bev, &tv, NULL);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(p->bev, (struct sockaddr *)&ss, (int)sl) < 0) {
        snprintf(p->err, sizeof(p->err), "cannot connect to the stream port");
        pull_finish(p, false);
    }
}

bool stream_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (method != SRV_REPLACE_OFFER) return false;
    handle_offer(s, c, msgid, params);
    return true;
}

int stream_start(server *s, char *err)
{
    net_addr a = s->self; /* the interfaces of the cluster port (main.c) */
    if (s->listen_everywhere) memset(a.id + 2, 0, a.len - 2);
    net_set_port(&a, (uint16_t)s->cfg->stream_port);
    int fd = net_listen(&a, err);
    if (fd < 0) return -1;
    s->stream_admit = admit_new("stream", 0, 0);
    s->stream_listener = s->stream_admit ? daemon_listen(s->base, fd, stream_accept, s) : NULL;
    if (!s->stream_listener) {
        if (!s->stream_admit) close(fd);
        return kumo_err(err, "out of memory");
    }
    if (s->cfg->replace_rate > 0) {
        size_t bps = (size_t)(s->cfg->replace_rate * 1024 * 1024);
        struct timeval tick = {0, 100000};
        s->rate = ev_token_bucket_cfg_new(bps / 10, bps / 10, bps / 10, bps / 10, &tick);
    }
    return 0;
}

void stream_stop(server *s)
{
    while (s->offers) {
        s->offers->rpc_done = true;
        offer_finish(s->offers, false, 0);
    }
    daemon_listener_free(s->stream_listener);
    s->stream_listener = NULL;
    admit_evict_all(s->stream_admit); /* the connections that never sent a token */
    admit_free(s->stream_admit);
    s->stream_admit = NULL;
    if (s->rate) ev_token_bucket_cfg_free(s->rate);
    s->rate = NULL;
}

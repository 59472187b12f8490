/*
 * test_rpcread — how rpc.c takes a peer's frames in, on a real rpc_conn
 * over a socket pair, whatever the writes that carried them:
 *  - frames that came in the same write as the peer's hello, past the
 *    RPC_MAX_HELLO bytes taken before it is done, sit in the socket's input
 *    evbuffer when it is; they are dispatched, in order, before the
 *    connection switches to direct reads (`in_direct`);
 *  - after the switch, a frame written a byte at a time, a 300 KB frame in
 *    pieces (guarded, then decoded once whole) and 2000 frames in one write
 *    each arrive whole, once, in order.
 */
#include <event2/event.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rpc.h"
#include "tap.h"

#define MAXSEEN 4096

/* What on_request saw: each request's method and the length and first
 * byte of its one bin parameter. */
static uint32_t seen_method[MAXSEEN];
static size_t seen_len[MAXSEEN];
static char seen_first[MAXSEEN];
static int nseen, closes;

static void on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    (void)arg;
    (void)c;
    (void)msgid;
    const char *p = NULL;
    size_t len = 0;
    if (nseen < MAXSEEN && rpc_arg_bytes(params, 0, &p, &len)) {
        seen_method[nseen] = method;
        seen_len[nseen] = len;
        seen_first[nseen] = len ? p[0] : 0;
    }
    nseen++;
}

static void on_close(void *arg, rpc_conn *c)
{
    (void)arg;
    (void)c;
    closes++;
}

/* A notification [0, 0, method, [bin of len bytes of `fill`]] appended to sb. */
static void pack_note(msgpack_sbuffer *sb, uint32_t method, size_t len, char fill)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, 0);
    msgpack_pack_uint32(&pk, method);
    msgpack_pack_array(&pk, 1);
    char *v = malloc(len ? len : 1);
    memset(v, fill, len);
    msgpack_pack_bin(&pk, len);
    msgpack_pack_bin_body(&pk, v, len);
    free(v);
}

static void turns(struct event_base *base, int n)
{
    for (int i = 0; i < n; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

/* Write all n bytes, turning the loop while the socket is full; gives up
 * (leaving the checks to fail) when the connection stops reading. */
static void send_all(struct event_base *base, int fd, const char *p, size_t n)
{
    for (int stuck = 0; n > 0 && stuck < 1000;) {
        ssize_t w = send(fd, p, n, MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            stuck = 0;
        } else {
            turns(base, 1);
            stuck++;
        }
    }
}

/* Whether requests [from, from + n) were methods m0.., of len bytes of `fill`. */
static bool saw(int from, int n, uint32_t m0, size_t len, char fill)
{
    for (int i = 0; i < n; i++)
        if (seen_method[from + i] != m0 + (uint32_t)i || seen_len[from + i] != len ||
            (len && seen_first[from + i] != fill))
            return false;
    return true;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* what passed is printed even if the alarm ends it */
    alarm(60);                        /* a connection that stops taking input fails the test instead of hanging it */
    struct event_base *base = event_base_new();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) abort();
    int bufsz = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
    rpc_handlers h = {.on_request = on_request, .on_close = on_close};
    rpc_self self = {.role = RPC_ROLE_SERVER};
    rpc_conn *c = rpc_accept(base, sv[0], &h, &self);
    ok(c != NULL, "an rpc connection over a socket pair");

    /* The peer's hello and three frames in one write. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rpc_self peer = {.role = RPC_ROLE_TOOL};
    rpc_pack_hello(&pk, &peer, 0, NULL);
    for (uint32_t m = 0; m < 3; m++) pack_note(&sb, 100 + m, 1000 + m, (char)('a' + m));
    send_all(base, sv[1], sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    turns(base, 10);
    ok(rpc_hello_done(c), "the peer's hello is done");
    ok(nseen == 3 && seen_method[0] == 100 && seen_len[0] == 1000 && seen_first[0] == 'a' && seen_method[1] == 101 &&
           seen_len[1] == 1001 && seen_method[2] == 102 && seen_len[2] == 1002 && seen_first[2] == 'c',
       "three 1 KB frames written with the hello, past the %u bytes taken before it, are each dispatched once, "
       "in order (%d)",
       RPC_MAX_HELLO, nseen);

    /* Direct reads from here: a frame a byte at a time. */
    msgpack_sbuffer_init(&sb);
    pack_note(&sb, 200, 50, 'x');
    for (size_t i = 0; i < sb.size; i++) {
        send_all(base, sv[1], sb.data + i, 1);
        turns(base, 1);
    }
    msgpack_sbuffer_destroy(&sb);
    turns(base, 5);
    ok(nseen == 4 && saw(3, 1, 200, 50, 'x'), "a frame written a byte at a time arrives once, whole (%d)", nseen);

    /* A 300 KB frame in 7 pieces, the loop turning between them. */
    msgpack_sbuffer_init(&sb);
    pack_note(&sb, 300, 300000, 'L');
    size_t piece = sb.size / 7 + 1;
    for (size_t off = 0; off < sb.size; off += piece) {
        send_all(base, sv[1], sb.data + off, off + piece < sb.size ? piece : sb.size - off);
        turns(base, 20);
    }
    msgpack_sbuffer_destroy(&sb);
    turns(base, 20);
    ok(nseen == 5 && saw(4, 1, 300, 300000, 'L'), "a 300 KB frame in 7 pieces arrives once, whole (%d)", nseen);

    /* 2000 small frames in one write. */
    msgpack_sbuffer_init(&sb);
    for (uint32_t m = 0; m < 2000; m++) pack_note(&sb, 1000 + m, 40, 'k');
    send_all(base, sv[1], sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    turns(base, 200);
    ok(nseen == 2005 && saw(5, 2000, 1000, 40, 'k'), "2000 frames in one write: each once, in order (%d)",
       nseen - 5);
    ok(closes == 0 && !rpc_is_closed(c), "the connection stayed up");

    rpc_close(c);
    close(sv[1]);
    event_base_free(base);
    return done_testing();
}

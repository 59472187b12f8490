/*
 * test_rpcpack — the bytes rpc.c writes by hand are the bytes msgpack-c's
 * packer writes. rpc.c packs a frame's head ([type, msgid, method] or
 * [type, msgid, nil]) and a short bin (rpc_pack_bytes, up to 255 bytes) in
 * one write each, instead of one packer call per element; peers (and
 * kumofs 0.4) read them with any msgpack decoder, so they must be the same
 * minimal encodings:
 *  - rpc_pack_bytes at every length boundary of bin 8, 16 and 32;
 *  - replies, notifications and calls of a real rpc_conn (over a socket
 *    pair), at every width boundary of msgid and method, read back from the
 *    peer's end and compared with the frame msgpack-c packs.
 */
#include <event2/event.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rpc.h"
#include "slurp.h"
#include "tap.h"

static const uint32_t widths[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 0xffffffffu};
#define NWIDTHS (sizeof(widths) / sizeof(widths[0]))

/* A packer that appends to an sbuffer. */
static void sbuf_packer(msgpack_sbuffer *sb, msgpack_packer *pk)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
}

/* msgpack-c's frame: [type, msgid, method or nil, [bin]]. */
static void want_frame(msgpack_sbuffer *sb, int type, uint32_t msgid, int64_t method, const char *bin, size_t blen)
{
    msgpack_packer pk;
    sbuf_packer(sb, &pk);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, (uint8_t)type);
    msgpack_pack_uint32(&pk, msgid);
    if (method < 0) msgpack_pack_nil(&pk);
    else msgpack_pack_uint32(&pk, (uint32_t)method);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin(&pk, blen);
    msgpack_pack_bin_body(&pk, bin, blen);
}

static void on_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    (void)arg;
    (void)st;
    (void)result;
}

static int closes;
static void on_close(void *arg, rpc_conn *c)
{
    (void)arg;
    (void)c;
    closes++;
}

int main(void)
{
    static char bin[70000], got[1 << 18];
    for (size_t i = 0; i < sizeof(bin); i++) bin[i] = (char)(i * 7);

    /* rpc_pack_bytes against msgpack_pack_bin + body. */
    static const size_t lens[] = {0, 1, 31, 32, 254, 255, 256, 65535, 65536, 69999};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        msgpack_sbuffer a, b;
        msgpack_packer pa, pb;
        sbuf_packer(&a, &pa);
        sbuf_packer(&b, &pb);
        rpc_pack_bytes(&pa, bin, lens[i]);
        msgpack_pack_bin(&pb, lens[i]);
        msgpack_pack_bin_body(&pb, bin, lens[i]);
        ok(a.size == b.size && memcmp(a.data, b.data, a.size) == 0,
           "rpc_pack_bytes of %zu bytes: msgpack-c's bytes (%zu and %zu)", lens[i], a.size, b.size);
        msgpack_sbuffer_destroy(&a);
        msgpack_sbuffer_destroy(&b);
    }

    /* Frames of a real connection, read from the other end. */
    struct event_base *base = event_base_new();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) abort();
    rpc_handlers h = {.on_close = on_close};
    rpc_self self = {.role = RPC_ROLE_SERVER};
    rpc_conn *c = rpc_accept(base, sv[0], &h, &self);
    ok(c != NULL, "an rpc connection over a socket pair");
    event_base_loop(base, EVLOOP_NONBLOCK);
    size_t hello = slurp(sv[1], got, sizeof(got)); /* the hello goes first: not what is compared */
    ok(hello > 0, "it sent its hello (%zu bytes)", hello);

    int same_replies = 0, same_notes = 0;
    for (size_t i = 0; i < NWIDTHS; i++) {
        for (int kind = 0; kind < 2; kind++) {
            size_t blen = i * 31; /* short bins of many lengths */
            msgpack_packer *pk;
            if (kind == 0) {
                if (widths[i] == 0) continue; /* msgid 0 is a notification's: no reply */
                pk = rpc_reply_begin(c, widths[i]);
            } else {
                pk = rpc_notify_begin(c, widths[i]);
            }
            msgpack_pack_array(pk, 1);
            rpc_pack_bytes(pk, bin, blen);
            event_base_loop(base, EVLOOP_NONBLOCK);
            size_t n = slurp(sv[1], got, sizeof(got));
            msgpack_sbuffer want;
            if (kind == 0) want_frame(&want, 1, widths[i], -1, bin, blen);
            else want_frame(&want, 0, 0, widths[i], bin, blen);
            bool same = n == want.size && memcmp(got, want.data, n) == 0;
            if (kind == 0) same_replies += same;
            else same_notes += same;
            if (!same)
                diag("%s %u: %zu bytes, msgpack-c %zu", kind == 0 ? "reply to msgid" : "notify method", widths[i], n,
                     want.size);
            msgpack_sbuffer_destroy(&want);
        }
    }
    ok(same_replies == (int)NWIDTHS - 1, "replies [1, msgid, nil, result]: msgpack-c's bytes at every msgid width (%d)",
       same_replies);
    ok(same_notes == (int)NWIDTHS, "notifications [0, 0, method, params]: msgpack-c's bytes at every method width (%d)",
       same_notes);

    /* A call: its msgid is the connection's own; read it back and pack the same. */
    int same_calls = 0;
    for (size_t i = 0; i < NWIDTHS; i++) {
        msgpack_packer *pk = rpc_call_begin(c, widths[i], 30.0, on_reply, NULL);
        msgpack_pack_array(pk, 1);
        rpc_pack_bytes(pk, bin, 200);
        rpc_call_end(c);
        event_base_loop(base, EVLOOP_NONBLOCK);
        size_t n = slurp(sv[1], got, sizeof(got));
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        bool same = false;
        if (msgpack_unpack_next(&u, got, n, NULL) == MSGPACK_UNPACK_SUCCESS && u.data.type == MSGPACK_OBJECT_ARRAY &&
            u.data.via.array.size == 4) {
            msgpack_sbuffer want;
            want_frame(&want, 0, (uint32_t)u.data.via.array.ptr[1].via.u64, widths[i], bin, 200);
            same = n == want.size && memcmp(got, want.data, n) == 0;
            msgpack_sbuffer_destroy(&want);
        }
        msgpack_unpacked_destroy(&u);
        same_calls += same;
    }
    ok(same_calls == (int)NWIDTHS, "calls [0, msgid, method, params]: msgpack-c's bytes at every method width (%d)",
       same_calls);
    ok(closes == 0, "the connection stayed up");

    rpc_close(c);
    close(sv[1]);
    event_base_free(base);
    return done_testing();
}

/*
 * test_mpguard — the guard accepts every stream msgpack-c writes, fed whole
 * or a byte at a time, and refuses headers that declare more than the limit.
 */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "mpguard.h"
#include "tap.h"

static bool feed_all(const void *p, size_t n, uint64_t limit, bool bytewise)
{
    mpguard g;
    mpguard_init(&g, limit);
    if (!bytewise) return mpguard_feed(&g, p, n);
    for (size_t i = 0; i < n; i++)
        if (!mpguard_feed(&g, (const char *)p + i, 1)) return false;
    return true;
}

/* Feed with mpguard_feed_object in pieces of `step` bytes (0: whole):
 * the number of objects it saw end, or -1 when refused. Between two
 * objects the guard is back to its initial state (one object expected,
 * nothing declared, nothing half read). */
static int objects(const char *p, size_t n, uint64_t limit, size_t step)
{
    mpguard g;
    mpguard_init(&g, limit);
    int count = 0;
    size_t at = 0;
    while (at < n) {
        size_t len = step && n - at > step ? step : n - at;
        ptrdiff_t k = mpguard_feed_object(&g, p + at, len);
        if (k < 0 || (size_t)k > len) return -1;
        at += (size_t)k;
        if ((size_t)k < len || (g.expected == 1 && g.declared == 0 && g.skip == 0 && g.have == 0)) count++;
    }
    return count;
}

/* A stream of several top-level objects of every type. */
static void pack_sample(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint32(pk, 70000);
    msgpack_pack_uint64(pk, 1ull << 40);
    msgpack_pack_array(pk, 3);
    msgpack_pack_nil(pk);
    msgpack_pack_true(pk);
    msgpack_pack_map(pk, 2);
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "key", 3);
    msgpack_pack_double(pk, 1.5);
    msgpack_pack_int64(pk, -5);
    msgpack_pack_bin(pk, 300);
    static char big[70000];
    msgpack_pack_bin_body(pk, big, 300);
    msgpack_pack_str(pk, 70000);
    msgpack_pack_str_body(pk, big, 70000);
    msgpack_pack_ext(pk, 1, 7);
    msgpack_pack_ext_body(pk, "x", 1);
    msgpack_pack_ext(pk, 16, 7);
    msgpack_pack_ext_body(pk, big, 16);
    msgpack_pack_ext(pk, 40, 7);
    msgpack_pack_ext_body(pk, big, 40);
    for (int i = 0; i < 20; i++) msgpack_pack_array(pk, 1);
    msgpack_pack_uint16(pk, 9);
    msgpack_pack_array(pk, 0);
    msgpack_pack_map(pk, 0);
    msgpack_pack_str(pk, 0);
}

int main(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_sample(&pk);
    ok(feed_all(sb.data, sb.size, 1 << 20, false), "a stream of every type, fed whole");
    ok(feed_all(sb.data, sb.size, 1 << 20, true), "the same, a byte at a time");
    ok(!feed_all(sb.data, sb.size, 1000, false), "a 70000-byte string is refused under a 1000-byte limit");

    static const unsigned char huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char huge_map[] = {0xdf, 0x80, 0x00, 0x00, 0x00};
    static const unsigned char huge_str[] = {0xdb, 0x7f, 0xff, 0xff, 0xff};
    static const unsigned char huge_bin[] = {0xc6, 0x10, 0x00, 0x00, 0x00};
    static const unsigned char huge_ext[] = {0xc9, 0x10, 0x00, 0x00, 0x00, 0x01};
    static const unsigned char reserved[] = {0xc1};
    ok(!feed_all(huge_array, sizeof(huge_array), 1 << 26, false), "array32 of 2^32-1 elements refused");
    ok(!feed_all(huge_array, sizeof(huge_array), 1 << 26, true), "... also when the header comes a byte at a time");
    ok(!feed_all(huge_map, sizeof(huge_map), 1 << 26, false), "map32 of 2^31 pairs refused");
    ok(!feed_all(huge_str, sizeof(huge_str), 1 << 26, false), "str32 of 2 GiB refused");
    ok(!feed_all(huge_bin, sizeof(huge_bin), 1 << 26, false), "bin32 of 256 MiB refused");
    ok(!feed_all(huge_ext, sizeof(huge_ext), 1 << 26, false), "ext32 of 256 MiB refused");
    ok(!feed_all(reserved, sizeof(reserved), 1 << 26, false), "the reserved byte 0xc1 refused");

    /* Many small containers that add up past the limit within one object. */
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 3);
    for (int i = 0; i < 3; i++) msgpack_pack_array(&pk, 500);
    ok(!feed_all(sb.data, sb.size, 1000, false), "declarations add up within one top-level object");

    /* ...but the count starts again with every top-level object. */
    msgpack_sbuffer_clear(&sb);
    for (int i = 0; i < 50; i++) {
        msgpack_pack_array(&pk, 2);
        msgpack_pack_str(&pk, 10);
        msgpack_pack_str_body(&pk, "0123456789", 10);
        msgpack_pack_uint8(&pk, 1);
    }
    ok(feed_all(sb.data, sb.size, 100, false), "fifty small objects under a 100-byte limit each");
    ok(feed_all(sb.data, sb.size, 100, true), "... a byte at a time");

    /* A valid prefix, then a hostile header in the next object. */
    size_t n = sb.size;
    msgpack_sbuffer_write(&sb, (const char *)huge_array, sizeof(huge_array));
    ok(!feed_all(sb.data, sb.size, 1 << 20, false), "a hostile object after good ones is refused");
    ok(feed_all(sb.data, n, 1 << 20, false), "the good ones alone pass");

    /* mpguard_feed_object: one top-level object at a time, whole or a byte
     * at a time, and a limit raised between two objects (rpc.c's hello). */
    ok(objects(sb.data, n, 100, 0) == 50, "feed_object stops after each of the fifty objects");
    ok(objects(sb.data, n, 100, 1) == 50, "... also fed a byte at a time");
    msgpack_sbuffer_clear(&sb);
    pack_sample(&pk);
    ok(objects(sb.data, sb.size, 1 << 20, 7) == 9, "the sample stream holds nine top-level objects");
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "abc", 3);
    size_t first = sb.size;
    msgpack_pack_bin(&pk, 5000);
    static const char body[5000];
    msgpack_pack_bin_body(&pk, body, sizeof(body));
    mpguard g;
    mpguard_init(&g, 64);
    ptrdiff_t k = mpguard_feed_object(&g, sb.data, sb.size);
    ok(k == (ptrdiff_t)first, "a small object, then a large one: feed_object stops between them");
    ok(mpguard_feed_object(&g, sb.data + k, sb.size - (size_t)k) < 0, "the large one is over the small limit");
    mpguard_init(&g, 64);
    k = mpguard_feed_object(&g, sb.data, sb.size);
    g.limit = 1 << 20;
    ok(mpguard_feed_object(&g, sb.data + k, sb.size - (size_t)k) == (ptrdiff_t)(sb.size - (size_t)k),
       "... and passes once the limit is raised after the first");
    /* An element costs what the parser allocates for it, not its byte:
     * 64 MiB of frame may not declare 64 M elements (1.5 GiB of tables). */
    static const unsigned char many[] = {0xdd, 0x03, 0x00, 0x00, 0x00}; /* array32 of 48 M */
    ok(!feed_all(many, sizeof(many), 64u << 20, false), "an array of 48 M elements is refused under a 64 MiB limit");
    static const unsigned char some[] = {0xdd, 0x00, 0x20, 0x00, 0x00}; /* 2 M: 48 MiB of tables */
    mpguard_init(&g, 64u << 20);
    ok(mpguard_feed(&g, some, sizeof(some)), "... and one of 2 M is taken");
    msgpack_sbuffer_destroy(&sb);
    return done_testing();
}

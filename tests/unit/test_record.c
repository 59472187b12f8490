/*
 * test_record — stored key/value bytes exactly as record.h and docs/protocol.md §7
 * say: big-endian headers, 8-byte tombstones, meta = 0 original values,
 * memcached flags/exptime, and the memcached exptime rule.
 */
#include "record.h"

#include <string.h>

#include "tap.h"

static void test_key(void)
{
    uint8_t out[RECORD_KEY_HEADER + 5];
    record_key_write(out, 0x0102030405060708ull, "hello", 5);
    const uint8_t want[] = {1, 2, 3, 4, 5, 6, 7, 8, 'h', 'e', 'l', 'l', 'o'};
    ok(memcmp(out, want, sizeof(want)) == 0, "key = be64(hash) | key bytes");
    ok(record_key_hash(out, sizeof(out)) == 0x0102030405060708ull, "key hash read back");
    ok(record_key_hash(out, 8) == 0x0102030405060708ull, "key hash of an empty user key");
    is_int(record_key_hash(out, 7), 0, "key shorter than 8: hash 0");
    uint8_t k8[8];
    record_key_write(k8, 0xa2e8c5dc1dc6f4aaull, NULL, 0);
    const uint8_t w8[] = {0xa2, 0xe8, 0xc5, 0xdc, 0x1d, 0xc6, 0xf4, 0xaa};
    ok(memcmp(k8, w8, 8) == 0, "hash written big-endian (digest bytes 7..0)");
}

static void test_mc_value(void)
{
    uint8_t buf[64];
    is_int(record_mc_size(3), 21, "mc value size = 10 + 8 + payload");
    record_mc_header(buf, 0x1122334455667788ull, 0xdeadbeefu, 0x01020304u);
    memcpy(buf + 18, "abc", 3);
    const uint8_t want[] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* clocktime */
                            0x00, 0x01,                                     /* meta MC */
                            0xde, 0xad, 0xbe, 0xef,                         /* flags */
                            0x01, 0x02, 0x03, 0x04,                         /* exptime */
                            'a', 'b', 'c'};
    ok(memcmp(buf, want, sizeof(want)) == 0, "mc value bytes exactly");

    record_value v;
    is_int(record_value_parse(buf, 21, &v), 0, "parse mc value");
    ok(v.clocktime == 0x1122334455667788ull, "clocktime");
    ok(!v.tombstone, "not a tombstone");
    is_int(v.meta, RECORD_META_MC, "meta");
    ok(v.flags == 0xdeadbeefu, "flags");
    ok(v.exptime == 0x01020304u, "exptime");
    ok(v.payload == buf + 18 && v.payload_len == 3, "payload points into the buffer");

    is_int(record_value_parse(buf, 18, &v), 0, "zero-length mc payload");
    is_int(v.payload_len, 0, "  ... length 0");
    is_int(record_value_parse(buf, 17, &v), -1, "mc value too short for its header");
    is_int(record_value_parse(buf, 10, &v), -1, "mc meta with no header at all");

    /* the stale and win-token bits of the meta protocol */
    record_mc_state(buf, RECORD_META_STALE | RECORD_META_WON | 0x0100);
    is_int(record_value_parse(buf, 21, &v), 0, "mc value with STALE and WON");
    is_int(v.meta, RECORD_META_MC | RECORD_META_STALE | RECORD_META_WON, "  ... both kept, other bits not set");
    ok(v.payload_len == 3 && v.flags == 0xdeadbeefu, "  ... the rest read alike");
    record_mc_state(buf, 0);
    v.meta = 0;
    record_value_parse(buf, 21, &v);
    is_int(v.meta, RECORD_META_MC, "record_mc_state(0) clears them");
    buf[9] = RECORD_META_STALE;
    is_int(record_value_parse(buf, 21, &v), -1, "STALE without the mc header: rejected");
    buf[9] = RECORD_META_MC;

    ok(record_clocktime(buf, 21) == 0x1122334455667788ull, "record_clocktime of a value");
    record_set_clocktime(buf, 0x0a0b0c0d0e0f1011ull);
    const uint8_t ct[] = {0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x00, 0x01};
    ok(memcmp(buf, ct, sizeof(ct)) == 0, "set_clocktime rewrites only the first 8 bytes");
    ok(memcmp(buf + 10, want + 10, 11) == 0, "  ... rest untouched");
}

static void test_tombstone(void)
{
    uint8_t t[RECORD_TOMBSTONE + 1];
    record_tombstone(t, 0x0000000100000002ull);
    const uint8_t want[] = {0, 0, 0, 1, 0, 0, 0, 2};
    ok(memcmp(t, want, 8) == 0, "tombstone = be64(clocktime)");
    record_value v;
    is_int(record_value_parse(t, 8, &v), 0, "parse tombstone");
    ok(v.tombstone, "is a tombstone");
    ok(v.clocktime == 0x0000000100000002ull, "tombstone clocktime");
    ok(v.payload_len == 0 && v.flags == 0 && v.exptime == 0 && v.meta == 0, "tombstone: no data");
    ok(record_clocktime(t, 8) == 0x0000000100000002ull, "record_clocktime of a tombstone");
    is_int(record_value_parse(t, 7, &v), -1, "7 bytes rejected");
    is_int(record_value_parse(t, 0, &v), -1, "0 bytes rejected");
    t[8] = 0;
    is_int(record_value_parse(t, 9, &v), -1, "9 bytes rejected");
    is_int(record_clocktime(t, 7), 0, "record_clocktime of < 8 bytes is 0");
}

static void test_original(void)
{
    /* A kumofs 0.4 value: clocktime, meta 0, raw payload. */
    const uint8_t v04[] = {0x4b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0, 0, 'v', 'a', 'l'};
    record_value v;
    is_int(record_value_parse(v04, sizeof(v04), &v), 0, "meta = 0 original value parses");
    ok(!v.tombstone && v.meta == 0, "  ... meta 0, not a tombstone");
    ok(v.clocktime == 0x4b00000000000005ull, "  ... clocktime");
    ok(v.flags == 0 && v.exptime == 0, "  ... flags 0, no expiry");
    ok(v.payload == v04 + 10 && v.payload_len == 3 && memcmp(v.payload, "val", 3) == 0,
       "  ... whole data is the payload");
    is_int(record_value_parse(v04, 10, &v), 0, "meta = 0 with empty payload (10 bytes)");
    is_int(v.payload_len, 0, "  ... length 0");
    ok(!record_expired(&v, 0xffffffffu), "meta = 0 never expires");

    uint8_t bad[20] = {0};
    bad[8] = 0x00;
    bad[9] = 0x02;
    is_int(record_value_parse(bad, sizeof(bad), &v), -1, "meta bit 0x0002 (STALE) without 0x0001 rejected");
    bad[8] = 0x80;
    bad[9] = 0x01;
    is_int(record_value_parse(bad, sizeof(bad), &v), -1, "unknown meta bit 0x8000 rejected");
    bad[8] = 0x00;
    is_int(record_value_parse(bad, sizeof(bad), &v), 0, "known meta 0x0001 accepted");
}

static void test_exptime(void)
{
    const uint32_t now = 1700000000u;
    is_int(record_exptime(0, now), 0, "0 = never");
    is_int(record_exptime(1, now), now + 1, "1 s is relative");
    is_int(record_exptime(2592000, now), now + 2592000, "30 days exactly is relative");
    is_int(record_exptime(2592001, now), 2592001, "30 days + 1 s is absolute");
    is_int(record_exptime(1800000000, now), 1800000000, "a future unix time is absolute");
    is_int(record_exptime(-1, now), 1, "negative = already expired (1)");
    is_int(record_exptime(INT64_MIN, now), 1, "very negative = already expired");
    is_int(record_exptime(0x1ffffffffll, now), 0xffffffffu, "beyond uint32 clamps");
    is_int(record_exptime(100, 0xffffffffu - 10), 0xffffffffu, "relative overflow clamps");

    record_value v;
    memset(&v, 0, sizeof(v));
    v.exptime = record_exptime(-5, now);
    ok(record_expired(&v, now), "negative exptime is expired at once");
    v.exptime = record_exptime(10, now);
    ok(!record_expired(&v, now + 9), "relative 10 s: alive at +9");
    ok(record_expired(&v, now + 10), "relative 10 s: expired at +10");
    v.exptime = record_exptime(2592001, now);
    ok(record_expired(&v, now), "absolute time in the past is expired");
    v.exptime = record_exptime(0, now);
    ok(!record_expired(&v, 0xffffffffu), "0 never expires");
}

int main(void)
{
    test_key();
    test_mc_value();
    test_tombstone();
    test_original();
    test_exptime();
    return done_testing();
}

/*
 * test_mpread — src/lib/mpread.c against msgpack-c's own unpacker, which it
 * replaces on rpc's read path:
 *  - random objects (every format: fixints to 64-bit integers of both
 *    signs, floats, nil, booleans, str/bin/ext of every length class,
 *    arrays and maps nested a few deep) packed by msgpack-c decode to the
 *    object msgpack_unpack_next makes of them: the same length, type tags
 *    and values (floats bit for bit, NaN too);
 *  - every proper prefix of each is "need more" (0), never an object;
 *  - random byte strings: wherever msgpack-c decodes an object, mpread
 *    decodes the same one from the same bytes;
 *  - 0xc1 and nesting deeper than MPREAD_MAX_DEPTH are refused (-1);
 *  - an array that declares more elements than bytes follow is "need
 *    more", without allocating its table;
 *  - the arena is reused across frames and grows for a large one, and
 *    refuses an object holding more than max_objects elements in all.
 * Seed: argv[1], or the time (printed).
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mpread.h"
#include "tap.h"

/* msgpack-c allocates the table a random array or map header declares
 * (up to 2^32 elements) before it reads one of them, and reports a failed
 * allocation as an error, which the random-bytes round skips. Under
 * AddressSanitizer (--enable-asan) such a malloc aborts the process, or
 * maps and poisons gigabytes, instead of returning NULL: this hook, read by
 * ASan at start and unused in other builds, makes anything past 256 MiB
 * fail, and msgpack-c reports the error the round skips. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=256"; }

static uint64_t rng;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static const size_t lens[] = {0, 1, 5, 31, 32, 200, 255, 256, 300, 65535, 65536, 70000};

static void pack_random(msgpack_packer *pk, int depth)
{
    static char bytes[70000];
    int kind = (int)(next() % (depth < 4 ? 14 : 11));
    size_t len = lens[next() % (sizeof(lens) / sizeof(lens[0]))];
    if (len > 300 && next() % 4) len = next() % 64; /* mostly small */
    switch (kind) {
    case 0: msgpack_pack_uint64(pk, next() >> (next() % 64)); break;
    case 1: msgpack_pack_int64(pk, -(int64_t)(next() >> (next() % 63 + 1)) - 1); break;
    case 2: msgpack_pack_int8(pk, (int8_t)next()); break;
    case 3: msgpack_pack_int32(pk, (int32_t)next()); break; /* signed format, either sign */
    case 4: msgpack_pack_float(pk, (float)(next() % 100000) / 7.0f); break;
    case 5: msgpack_pack_double(pk, (double)next() / 3.0); break;
    case 6: next() & 1 ? msgpack_pack_nil(pk) : (next() & 1 ? msgpack_pack_true(pk) : msgpack_pack_false(pk)); break;
    case 7:
        msgpack_pack_str(pk, len);
        msgpack_pack_str_body(pk, bytes, len);
        break;
    case 8:
        msgpack_pack_bin(pk, len);
        msgpack_pack_bin_body(pk, bytes, len);
        break;
    case 9: {
        static const size_t fixed[] = {1, 2, 4, 8, 16, 3, 17, 300};
        size_t n = fixed[next() % 8];
        msgpack_pack_ext(pk, n, (int8_t)next());
        msgpack_pack_ext_body(pk, bytes, n);
        break;
    }
    case 10: msgpack_pack_uint8(pk, (uint8_t)next()); break;
    case 11:
    case 12: {
        size_t n = next() % 5 == 0 ? 16 + next() % 20 : next() % 6;
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) pack_random(pk, depth + 1);
        break;
    }
    default: {
        size_t n = next() % 5;
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < 2 * n; i++) pack_random(pk, depth + 1);
        break;
    }
    }
}

/* a and b are the same object: same type tags all the way down, same
 * values (floats by their bits, so a NaN equals itself, where
 * msgpack_object_equal says no). */
static bool same(const msgpack_object *a, const msgpack_object *b)
{
    if (a->type != b->type) return false;
    switch (a->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return memcmp(&a->via.f64, &b->via.f64, sizeof(double)) == 0;
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size) return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!same(&a->via.array.ptr[i], &b->via.array.ptr[i])) return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        if (a->via.map.size != b->via.map.size) return false;
        for (uint32_t i = 0; i < a->via.map.size; i++)
            if (!same(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
                !same(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
                return false;
        return true;
    default: return msgpack_object_equal(*a, *b);
    }
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : (uint64_t)time(NULL);
    rng = seed * 2654435761u + 1;
    diag("seed %llu (give it back as the argument)", (unsigned long long)seed);
    mpread_arena a = {0};
    msgpack_unpacked ref;
    msgpack_unpacked_init(&ref);

    int bad_obj = 0, bad_prefix = 0, n_obj = 0;
    for (int round = 0; round < 2000; round++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_random(&pk, 0);
        size_t off = 0;
        if (msgpack_unpack_next(&ref, sb.data, sb.size, &off) != MSGPACK_UNPACK_SUCCESS || off != sb.size) {
            bad_obj++;
            msgpack_sbuffer_destroy(&sb);
            continue;
        }
        msgpack_object got;
        mpread_reset(&a);
        ptrdiff_t n = mpread_object(&a, sb.data, sb.size, &got);
        if (n != (ptrdiff_t)sb.size || !same(&got, &ref.data)) {
            if (bad_obj++ < 3) {
                diag("round %d: mpread %td of %zu bytes", round, n, sb.size);
                msgpack_object_print(stdout, ref.data);
                printf("\n");
            }
        }
        n_obj++;
        /* Prefixes: a few, and the one a byte short. */
        for (int k = 0; k < 4 && sb.size > 1; k++) {
            size_t cut = k == 0 ? sb.size - 1 : next() % sb.size;
            mpread_reset(&a);
            if (mpread_object(&a, sb.data, cut, &got) != 0) bad_prefix++;
        }
        msgpack_sbuffer_destroy(&sb);
    }
    ok(bad_obj == 0, "%d random objects: the same object, length and types as msgpack-c's (%d differ)", n_obj, bad_obj);
    ok(bad_prefix == 0, "every proper prefix tried is \"need more\" (%d were not)", bad_prefix);

    /* Random bytes: wherever msgpack-c decodes, mpread agrees. */
    int agree = 0, differ = 0;
    for (int round = 0; round < 20000; round++) {
        unsigned char buf[48];
        size_t len = 1 + next() % sizeof(buf);
        for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)next();
        if (next() & 1) buf[0] = (unsigned char)(0x90 | (next() & 0x0f)); /* often an array, as frames are */
        size_t off = 0;
        if (msgpack_unpack_next(&ref, (const char *)buf, len, &off) != MSGPACK_UNPACK_SUCCESS) continue;
        msgpack_object got;
        mpread_reset(&a);
        ptrdiff_t n = mpread_object(&a, (const char *)buf, len, &got);
        if (n == (ptrdiff_t)off && same(&got, &ref.data)) agree++;
        else if (differ++ < 3) {
            diag("random bytes differ: mpread %td, msgpack-c %zu:", n, off);
            msgpack_object_print(stdout, ref.data);
            printf("\n");
        }
    }
    ok(differ == 0 && agree > 1000, "random bytes: %d objects msgpack-c decodes, decoded the same (%d not)", agree, differ);

    msgpack_object got;
    mpread_reset(&a); /* each decode starts from a rewound arena, as rpc's: the last random one left objects */
    ok(mpread_object(&a, "\xc1", 1, &got) == -1, "0xc1 is refused");
    mpread_reset(&a);
    ok(mpread_object(&a, "\x92\x01\xc1", 3, &got) == -1, "0xc1 inside an array is refused");
    char deep[MPREAD_MAX_DEPTH + 2];
    memset(deep, 0x91, sizeof(deep));
    deep[sizeof(deep) - 1] = 0x00;
    mpread_reset(&a);
    ok(mpread_object(&a, deep, sizeof(deep), &got) == -1, "%d arrays nested are refused", MPREAD_MAX_DEPTH + 1);
    mpread_reset(&a);
    ok(mpread_object(&a, deep + 2, sizeof(deep) - 2, &got) == (ptrdiff_t)sizeof(deep) - 2,
       "%d arrays nested are read", MPREAD_MAX_DEPTH - 1);
    mpread_reset(&a);
    ok(mpread_object(&a, "\xdd\xff\xff\xff\xff\x01", 6, &got) == 0,
       "an array declaring 2^32-1 elements with one byte behind it is \"need more\"");

    /* A frame of 10000 elements, then small ones again. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 10000);
    for (int i = 0; i < 10000; i++) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_int(&pk, i);
    }
    mpread_reset(&a);
    ptrdiff_t n = mpread_object(&a, sb.data, sb.size, &got);
    ok(n == (ptrdiff_t)sb.size && got.via.array.size == 10000 && got.via.array.ptr[9999].via.array.ptr[0].via.u64 == 9999,
       "a frame of 20000 objects decodes");
    mpread_reset(&a);
    ok(mpread_object(&a, "\x92\x01\x02", 3, &got) == 3 && got.via.array.ptr[1].via.u64 == 2,
       "and a small one after it, from the grown arena");
    msgpack_sbuffer_destroy(&sb);

    /* Encodings msgpack-c's packer never writes (it picks the shortest),
     * which a peer still may: each decodes as msgpack-c decodes it. */
    static const struct {
        const char *b;
        size_t n;
    } raw[] = {
        {"\xdd\x00\x00\x00\x02\x01\x02", 7},               /* array 32 */
        {"\xdc\x00\x00", 3},                               /* empty array 16 */
        {"\xde\x00\x01\xa1k\x01", 6},                      /* map 16 */
        {"\xdf\x00\x00\x00\x01\xc4\x01z\x81\x01\x02", 11}, /* map 32 holding a map */
        {"\xd1\x00\x05", 3},                               /* int 16, positive */
        {"\xd3\x00\x00\x00\x00\x00\x00\x00\x07", 9},       /* int 64, positive */
        {"\xd2\xff\xff\xff\xfe", 5},                       /* int 32, negative */
        {"\xcd\x00\x01", 3},                               /* uint 16 holding 1 */
        {"\xda\x00\x02hi", 5},                             /* str 16 */
        {"\xc6\x00\x00\x00\x01x", 6},                      /* bin 32 */
        {"\xc7\x00\x05", 3},                               /* ext 8 of length 0 */
        {"\xd8\x01"
         "0123456789abcdef",
         18}, /* fixext 16 */
    };
    int raw_bad = 0;
    for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
        size_t off = 0;
        mpread_reset(&a);
        ptrdiff_t rn = mpread_object(&a, raw[i].b, raw[i].n, &got);
        if (msgpack_unpack_next(&ref, raw[i].b, raw[i].n, &off) != MSGPACK_UNPACK_SUCCESS || rn != (ptrdiff_t)off ||
            off != raw[i].n || !same(&got, &ref.data)) {
            diag("raw encoding %zu differs", i);
            raw_bad++;
        }
    }
    ok(raw_bad == 0, "%zu encodings longer than needed decode as msgpack-c decodes them",
       sizeof(raw) / sizeof(raw[0]));

    /* Tables nested in a cut-off object: the arena never holds more
     * elements than the input has bytes (each nested header declaring as
     * many as follow would otherwise reserve 32 per byte). */
    static char nest[4096];
    memset(nest, 0, sizeof(nest));
    for (int d = 0; d < 30; d++) {
        size_t left = sizeof(nest) - (size_t)(d + 1) * 5;
        nest[d * 5] = (char)0xdd;
        nest[d * 5 + 1] = (char)(left >> 24);
        nest[d * 5 + 2] = (char)(left >> 16);
        nest[d * 5 + 3] = (char)(left >> 8);
        nest[d * 5 + 4] = (char)left;
    }
    mpread_reset(&a);
    ptrdiff_t nn = mpread_object(&a, nest, sizeof(nest), &got);
    ok(nn == 0 && a.objects <= sizeof(nest), "30 nested tables each declaring what follows: \"need more\", %zu elements for %zu bytes",
       a.objects, sizeof(nest));

    /* max_objects: what a frame may hold in all, nested tables counted. */
    mpread_arena small = {.max_objects = 10};
    ok(mpread_object(&small, "\x92\x98\0\0\0\0\0\0\0\0\x00", 11, &got) == 11,
       "an arena of 10 objects takes an array of 2 holding one of 8");
    mpread_reset(&small);
    ok(mpread_object(&small, "\x92\x99\0\0\0\0\0\0\0\0\0\x00", 12, &got) == -1,
       "and refuses one of 2 holding one of 9");
    mpread_free(&small);

    msgpack_unpacked_destroy(&ref);
    mpread_free(&a);
    return done_testing();
}

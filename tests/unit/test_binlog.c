/*
 * test_binlog — the binary log's record format: encode/decode round trip,
 * every field type, the length prefix, incremental decoding (MORE),
 * rejection of damage (CORRUPT) and resynchronisation, the limits, and the
 * writer (open, write, reopen after a rename, close).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binlog.h"
#include "tap.h"

static bool obj_is_str(const msgpack_object *o, const char *s)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static const msgpack_object *field(const binlog_record *r, const char *key)
{
    for (uint32_t i = 0; i < r->fields->size; i++)
        if (obj_is_str(&r->fields->ptr[i].key, key)) return &r->fields->ptr[i].val;
    return NULL;
}

static void test_roundtrip(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    net_addr a;
    char err[KUMO_ERRLEN];
    ok(net_parse("127.0.0.1:19801", 19800, &a, err) == 0, "parse an address");
    static const unsigned char key[] = {'k', 0, 0xff, '\n'};
    binlog_field f[] = {
        BL_STR("s", "hello world"),
        BL_BYTES("key", key, sizeof(key)),
        BL_UINT("clocktime", 0x123456789abcdefULL),
        BL_INT("neg", -42),
        BL_BOOL("yes", true),
        BL_ADDR("addr", &a),
        BL_STR("none", NULL),
        BL_BYTES("empty", NULL, 0),
    };
    ok(binlog_encode(&sb, 1700000000123456ULL, LOG_LVL_WARN, "server@127.0.0.1:19800", "server_lost", f,
                     sizeof(f) / sizeof(f[0])) == 0,
       "encode a record with every field type");
    const unsigned char *p = (const unsigned char *)sb.data;
    size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    is_int(n + 4, sb.size, "the 4-byte big-endian length covers the rest");
    ok(p[4] == 0x95, "the body is a msgpack array of 5");

    binlog_record r;
    binlog_record_init(&r);
    size_t used = 0;
    is_int(binlog_decode(sb.data, sb.size, &r, &used, err), BINLOG_OK, "decode it");
    is_int(used, sb.size, "the whole record is consumed");
    ok(r.time_us == 1700000000123456ULL, "time");
    is_int(r.level, LOG_LVL_WARN, "level");
    ok(r.node_len == 22 && memcmp(r.node, "server@127.0.0.1:19800", 22) == 0, "node");
    ok(r.event_len == 11 && memcmp(r.event, "server_lost", 11) == 0, "event");
    is_int(r.fields->size, 8, "8 fields");
    ok(obj_is_str(&r.fields->ptr[0].key, "s"), "fields keep their order");
    ok(field(&r, "s") && obj_is_str(field(&r, "s"), "hello world"), "str field");
    const msgpack_object *k = field(&r, "key");
    ok(k && k->type == MSGPACK_OBJECT_BIN && k->via.bin.size == sizeof(key) &&
           memcmp(k->via.bin.ptr, key, sizeof(key)) == 0,
       "bytes field is bin, byte for byte");
    ok(field(&r, "clocktime") && field(&r, "clocktime")->via.u64 == 0x123456789abcdefULL, "uint field");
    ok(field(&r, "neg") && field(&r, "neg")->type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
           field(&r, "neg")->via.i64 == -42,
       "int field");
    ok(field(&r, "yes") && field(&r, "yes")->type == MSGPACK_OBJECT_BOOLEAN && field(&r, "yes")->via.boolean,
       "bool field");
    ok(field(&r, "addr") && obj_is_str(field(&r, "addr"), "127.0.0.1:19801"), "address field as ip:port");
    ok(field(&r, "none") && field(&r, "none")->type == MSGPACK_OBJECT_NIL, "NULL string as nil");
    ok(field(&r, "empty") && field(&r, "empty")->type == MSGPACK_OBJECT_BIN && field(&r, "empty")->via.bin.size == 0,
       "empty bytes");

    /* Incremental: every proper prefix asks for more. */
    int more = 0;
    for (size_t i = 0; i < sb.size; i++)
        more += binlog_decode(sb.data, i, &r, &used, err) == BINLOG_MORE;
    is_int(more, sb.size, "every prefix of a record is MORE");

    /* Two records back to back. */
    ok(binlog_encode(&sb, 1, LOG_LVL_INFO, "n", "second", NULL, 0) == 0, "encode a record without fields");
    size_t first = used = 0;
    ok(binlog_decode(sb.data, sb.size, &r, &first, err) == BINLOG_OK, "first of two");
    ok(binlog_decode(sb.data + first, sb.size - first, &r, &used, err) == BINLOG_OK && r.fields->size == 0 &&
           r.event_len == 6,
       "second of two, no fields");
    binlog_record_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static void test_limits(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    char *big = malloc(3 * BINLOG_MAX_VALUE);
    memset(big, 'x', 3 * BINLOG_MAX_VALUE - 1);
    big[3 * BINLOG_MAX_VALUE - 1] = '\0';
    binlog_field f[BINLOG_MAX_FIELDS + 5];
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) f[i] = BL_STR("v", big);
    ok(binlog_encode(&sb, 1, LOG_LVL_INFO, "n", "big", f, sizeof(f) / sizeof(f[0])) == 0, "encode huge fields");
    binlog_record r;
    char err[KUMO_ERRLEN];
    size_t used;
    binlog_record_init(&r);
    ok(binlog_decode(sb.data, sb.size, &r, &used, err) == BINLOG_OK, "decode it");
    is_int(r.fields->size, BINLOG_MAX_FIELDS, "fields beyond BINLOG_MAX_FIELDS are dropped");
    is_int(r.fields->ptr[0].val.via.str.size, BINLOG_MAX_VALUE, "values are clipped to BINLOG_MAX_VALUE");
    binlog_record_free(&r);
    free(big);
    msgpack_sbuffer_destroy(&sb);
}

/* A record whose body is the given msgpack bytes. */
static size_t framed(unsigned char *out, const void *body, size_t n)
{
    out[0] = (unsigned char)(n >> 24);
    out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8);
    out[3] = (unsigned char)n;
    memcpy(out + 4, body, n);
    return n + 4;
}

static void test_damage(void)
{
    binlog_record r;
    char err[KUMO_ERRLEN];
    size_t used;
    unsigned char buf[256];
    binlog_record_init(&r);

    static const unsigned char zero_len[] = {0, 0, 0, 0, 0x95};
    is_int(binlog_decode(zero_len, sizeof(zero_len), &r, &used, err), BINLOG_CORRUPT, "length 0 is damage");
    static const unsigned char huge_len[] = {0x7f, 0, 0, 0, 0x95};
    is_int(binlog_decode(huge_len, sizeof(huge_len), &r, &used, err), BINLOG_CORRUPT,
           "a length over BINLOG_MAX_RECORD is damage, without waiting for it");
    static const unsigned char not_array[] = {0, 0, 0, 3, 0xa2, 'h', 'i'};
    is_int(binlog_decode(not_array, sizeof(not_array), &r, &used, err), BINLOG_CORRUPT, "a str body is damage");
    static const unsigned char short_array[] = {0x94, 1, 2, 0xa1, 'n', 0xa1, 'e'};
    is_int(binlog_decode(buf, framed(buf, short_array, sizeof(short_array)), &r, &used, err), BINLOG_CORRUPT,
           "an array of 4 is damage");
    /* [1, 2, "n", "e", {1: 2}]: a field name that is not a string */
    static const unsigned char int_key[] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0x81, 1, 2};
    is_int(binlog_decode(buf, framed(buf, int_key, sizeof(int_key)), &r, &used, err), BINLOG_CORRUPT,
           "an integer field name is damage");
    /* [1, 2, "n", "e", {}] + one byte too many inside the length */
    static const unsigned char extra[] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0x80, 0xc0};
    is_int(binlog_decode(buf, framed(buf, extra, sizeof(extra)), &r, &used, err), BINLOG_CORRUPT,
           "bytes after the array inside the length are damage");
    static const unsigned char good[] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0x80};
    is_int(binlog_decode(buf, framed(buf, good, sizeof(good)), &r, &used, err), BINLOG_OK, "the minimal record");
    /* An array that claims 2^32-1 elements inside a 12-byte record must be
     * refused before msgpack-c allocates for them. */
    static const unsigned char liar[] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0xdd, 0xff, 0xff, 0xff, 0xff};
    is_int(binlog_decode(buf, framed(buf, liar, sizeof(liar)), &r, &used, err), BINLOG_CORRUPT,
           "a container claiming 2^32-1 elements is refused without allocating");
    /* Nesting deeper than the limit. */
    unsigned char deep[64] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0x81, 0xa1, 'k'};
    size_t dn = 10;
    while (dn < 60) deep[dn++] = 0x91;
    deep[dn++] = 0xc0;
    is_int(binlog_decode(buf, framed(buf, deep, dn), &r, &used, err), BINLOG_CORRUPT, "deep nesting is refused");
    static const unsigned char reserved[] = {0x95, 1, 2, 0xa1, 'n', 0xa1, 'e', 0x81, 0xa1, 'k', 0xc1};
    is_int(binlog_decode(buf, framed(buf, reserved, sizeof(reserved)), &r, &used, err), BINLOG_CORRUPT,
           "the reserved byte 0xc1 is refused");

    /* Resync: garbage, then a good record; the first offset that decodes is
     * the record's. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_write(&sb, "garbage!\x01\x02", 10);
    binlog_encode(&sb, 5, LOG_LVL_ERROR, "node", "after_garbage", &BL_UINT("x", 1), 1);
    size_t at = 0;
    while (at < sb.size && binlog_decode(sb.data + at, sb.size - at, &r, &used, err) != BINLOG_OK) at++;
    is_int(at, 10, "resync finds the record after 10 bytes of garbage");
    ok(r.event_len == 13 && memcmp(r.event, "after_garbage", 13) == 0, "and it is the right one");
    msgpack_sbuffer_destroy(&sb);
    binlog_record_free(&r);
}

static size_t count_records(const char *path, const char *event)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char buf[65536];
    size_t len = fread(buf, 1, sizeof(buf), f), pos = 0, n = 0, used;
    char err[KUMO_ERRLEN];
    fclose(f);
    binlog_record r;
    binlog_record_init(&r);
    while (pos < len && binlog_decode(buf + pos, len - pos, &r, &used, err) == BINLOG_OK) {
        if (!event || (r.event_len == strlen(event) && memcmp(r.event, event, r.event_len) == 0)) n++;
        pos += used;
    }
    binlog_record_free(&r);
    return pos == len ? n : (size_t)-1;
}

static void test_writer(void)
{
    char dir[] = "/tmp/test_binlog.XXXXXX";
    char path[512], moved[512], err[KUMO_ERRLEN];
    ok(mkdtemp(dir) != NULL, "temporary directory");
    snprintf(path, sizeof(path), "%s/x.mpac", dir);
    snprintf(moved, sizeof(moved), "%s/x.mpac.1", dir);

    ok(!binlog_enabled(), "disabled before open");
    binlog_event(LOG_LVL_INFO, "nowhere", BL_STR("a", "b")); /* no file: a no-op */
    ok(binlog_open(NULL, err) == 0 && !binlog_enabled(), "no path: stays disabled");
    ok(binlog_open("/nonexistent-dir/x.mpac", err) == -1 && strstr(err, "/nonexistent-dir/x.mpac") != NULL,
       "a bad path is an error naming it");
    binlog_set_node("test@here");
    ok(binlog_open(path, err) == 0 && binlog_enabled(), "open");
    binlog_event(LOG_LVL_INFO, "one", BL_UINT("n", 1));
    binlog_event(LOG_LVL_WARN, "two");
    is_int(count_records(path, NULL), 2, "two records written");
    ok(rename(path, moved) == 0, "rotate: rename the file away");
    binlog_event(LOG_LVL_INFO, "three");
    is_int(count_records(moved, NULL), 3, "until reopened, records go to the renamed file");
    ok(binlog_reopen() == 0, "reopen");
    binlog_event(LOG_LVL_INFO, "four");
    is_int(count_records(path, NULL), 2, "the new file has the reopen record and the next one");
    is_int(count_records(path, "binlog_reopen"), 1, "a binlog_reopen record starts it");
    binlog_close();
    ok(!binlog_enabled(), "closed");
    binlog_event(LOG_LVL_INFO, "after close");
    is_int(count_records(path, NULL), 2, "nothing written after close");
    is_int(binlog_write_errors(), 0, "no write errors");
    unlink(path);
    unlink(moved);
    rmdir(dir);
}

int main(void)
{
    test_roundtrip();
    test_limits();
    test_damage();
    test_writer();
    return done_testing();
}

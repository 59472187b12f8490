/*
 * test_memproto — the memcached binary protocol parser against memcached
 * 1.6's dispatch rules: every proper prefix of a request asks for more, each
 * opcode's extras/key/value shape is checked, the errors come in memcached's
 * order with the right instruction to the caller (close, or answer and skip
 * the body without buffering it), and pipelined packets parse one by one.
 */
#include "memproto.h"
#include "tap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static memproto_request req;
static size_t used;

/* A request packet; returns its length. */
static size_t pkt(uint8_t *out, uint8_t opcode, const void *ext, uint8_t extlen, const char *key, const void *val,
                  size_t vlen, uint32_t opaque, uint64_t cas)
{
    size_t klen = key ? strlen(key) : 0;
    uint32_t body = (uint32_t)(extlen + klen + vlen);
    memset(out, 0, MEMPROTO_HEADER);
    out[0] = MEMPROTO_REQ_MAGIC;
    out[1] = opcode;
    out[2] = (uint8_t)(klen >> 8);
    out[3] = (uint8_t)klen;
    out[4] = extlen;
    for (int i = 0; i < 4; i++) out[8 + i] = (uint8_t)(body >> (24 - 8 * i));
    for (int i = 0; i < 4; i++) out[12 + i] = (uint8_t)(opaque >> (24 - 8 * i));
    for (int i = 0; i < 8; i++) out[16 + i] = (uint8_t)(cas >> (56 - 8 * i));
    size_t o = MEMPROTO_HEADER;
    if (extlen) memcpy(out + o, ext, extlen);
    o += extlen;
    if (klen) memcpy(out + o, key, klen);
    o += klen;
    if (vlen) memcpy(out + o, val, vlen);
    return o + vlen;
}

/* A bare header with arbitrary lengths (no body written). */
static void hdr(uint8_t *out, uint8_t opcode, uint16_t keylen, uint8_t extlen, uint32_t body)
{
    memset(out, 0, MEMPROTO_HEADER);
    out[0] = MEMPROTO_REQ_MAGIC;
    out[1] = opcode;
    out[2] = (uint8_t)(keylen >> 8);
    out[3] = (uint8_t)keylen;
    out[4] = extlen;
    for (int i = 0; i < 4; i++) out[8 + i] = (uint8_t)(body >> (24 - 8 * i));
}

static memproto_result parse_n(const void *p, size_t len) { return memproto_parse(p, len, 1024 * 1024, &req, &used); }

/* Every proper prefix asks for more and consumes nothing; once the header
 * is in, `need` is the whole packet; the whole is OK consuming all. */
static void prefixes_ok(const uint8_t *p, size_t len, const char *what)
{
    size_t bad = SIZE_MAX;
    for (size_t i = 0; i < len && bad == SIZE_MAX; i++) {
        if (parse_n(p, i) != MEMPROTO_NEED_MORE || used != 0) bad = i;
        else if (i >= MEMPROTO_HEADER && req.need != len) bad = i;
        else if (i < MEMPROTO_HEADER && req.need != 0) bad = i;
    }
    ok(bad == SIZE_MAX, "%s: all %zu proper prefixes need more", what, len);
    if (bad != SIZE_MAX) diag("prefix of %zu bytes did not", bad);
    is_int(parse_n(p, len), MEMPROTO_OK, "%s: whole packet OK", what);
    is_int(used, len, "%s: consumes the packet", what);
}

static const uint8_t ext8[8] = {0xde, 0xad, 0xbe, 0xef, 0, 0, 0x0e, 0x10}; /* flags, exptime 3600 */
static const uint8_t ext4[4] = {0, 0, 0, 60};
static const uint8_t ext20[20] = {0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 42, 0xff, 0xff, 0xff, 0xff};

static void test_get_family(void)
{
    uint8_t b[512];
    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } ops[] = {
        {MEMPROTO_GET, MEMPROTO_GET, false, "GET"},
        {MEMPROTO_GETQ, MEMPROTO_GET, true, "GETQ"},
        {MEMPROTO_GETK, MEMPROTO_GETK, false, "GETK"},
        {MEMPROTO_GETKQ, MEMPROTO_GETK, true, "GETKQ"},
    };
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        size_t n = pkt(b, ops[i].op, NULL, 0, "foo", NULL, 0, 0x01020304, 0);
        prefixes_ok(b, n, ops[i].name);
        is_int(req.opcode, ops[i].op, "%s: opcode echoed", ops[i].name);
        is_int(req.cmd, ops[i].cmd, "%s: cmd", ops[i].name);
        is_int(req.quiet, ops[i].quiet, "%s: quiet", ops[i].name);
        ok(req.key && req.keylen == 3 && memcmp(req.key, "foo", 3) == 0, "%s: key", ops[i].name);
        is_int(req.vlen, 0, "%s: no value", ops[i].name);
        is_int(req.opaque, 0x01020304, "%s: opaque", ops[i].name);

        n = pkt(b, ops[i].op, NULL, 0, NULL, NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without a key: invalid", ops[i].name);
        is_int(used, 0, "%s invalid: consumes nothing (the connection closes)", ops[i].name);
        n = pkt(b, ops[i].op, ext4, 4, "foo", NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with extras: invalid", ops[i].name);
        n = pkt(b, ops[i].op, NULL, 0, "foo", "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with a value: invalid", ops[i].name);
    }
}

static void test_storage(void)
{
    uint8_t b[512];
    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } ops[] = {
        {MEMPROTO_SET, MEMPROTO_SET, false, "SET"},
        {MEMPROTO_SETQ, MEMPROTO_SET, true, "SETQ"},
        {MEMPROTO_ADD, MEMPROTO_ADD, false, "ADD"},
        {MEMPROTO_ADDQ, MEMPROTO_ADD, true, "ADDQ"},
        {MEMPROTO_REPLACE, MEMPROTO_REPLACE, false, "REPLACE"},
        {MEMPROTO_REPLACEQ, MEMPROTO_REPLACE, true, "REPLACEQ"},
    };
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        size_t n = pkt(b, ops[i].op, ext8, 8, "key", "hello", 5, 7, 0x1122334455667788ull);
        prefixes_ok(b, n, ops[i].name);
        is_int(req.cmd, ops[i].cmd, "%s: cmd", ops[i].name);
        is_int(req.quiet, ops[i].quiet, "%s: quiet", ops[i].name);
        ok(req.flags == 0xdeadbeef && req.exptime == 3600, "%s: flags and exptime decoded", ops[i].name);
        ok(req.cas == 0x1122334455667788ull, "%s: cas", ops[i].name);
        ok(req.vlen == 5 && memcmp(req.value, "hello", 5) == 0, "%s: value", ops[i].name);
        ok(req.extras == b + MEMPROTO_HEADER, "%s: extras point into the buffer", ops[i].name);

        n = pkt(b, ops[i].op, ext8, 8, "key", NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_OK, "%s with an empty value: OK", ops[i].name);
        is_int(req.vlen, 0, "%s: empty value", ops[i].name);
        n = pkt(b, ops[i].op, ext4, 4, "key", "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with 4 bytes of extras: invalid", ops[i].name);
        n = pkt(b, ops[i].op, NULL, 0, "key", "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without extras: invalid", ops[i].name);
        n = pkt(b, ops[i].op, ext8, 8, NULL, "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without a key: invalid", ops[i].name);
    }

    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } cat[] = {
        {MEMPROTO_APPEND, MEMPROTO_APPEND, false, "APPEND"},
        {MEMPROTO_APPENDQ, MEMPROTO_APPEND, true, "APPENDQ"},
        {MEMPROTO_PREPEND, MEMPROTO_PREPEND, false, "PREPEND"},
        {MEMPROTO_PREPENDQ, MEMPROTO_PREPEND, true, "PREPENDQ"},
    };
    for (size_t i = 0; i < sizeof(cat) / sizeof(cat[0]); i++) {
        size_t n = pkt(b, cat[i].op, NULL, 0, "key", " world", 6, 0, 0);
        prefixes_ok(b, n, cat[i].name);
        is_int(req.cmd, cat[i].cmd, "%s: cmd", cat[i].name);
        is_int(req.quiet, cat[i].quiet, "%s: quiet", cat[i].name);
        ok(req.vlen == 6 && memcmp(req.value, " world", 6) == 0, "%s: value", cat[i].name);
        n = pkt(b, cat[i].op, ext8, 8, "key", "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with extras: invalid", cat[i].name);
        n = pkt(b, cat[i].op, NULL, 0, NULL, "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without a key: invalid", cat[i].name);
    }
}

static void test_keyed_others(void)
{
    uint8_t b[512];
    size_t n;

    n = pkt(b, MEMPROTO_DELETE, NULL, 0, "k", NULL, 0, 0, 99);
    prefixes_ok(b, n, "DELETE");
    ok(req.cas == 99 && req.cmd == MEMPROTO_DELETE && !req.quiet, "DELETE: cas, cmd");
    n = pkt(b, MEMPROTO_DELETEQ, NULL, 0, "k", NULL, 0, 0, 0);
    ok(parse_n(b, n) == MEMPROTO_OK && req.cmd == MEMPROTO_DELETE && req.quiet, "DELETEQ: quiet delete");
    n = pkt(b, MEMPROTO_DELETE, ext4, 4, "k", NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "DELETE with extras: invalid (memcached 1.6)");
    n = pkt(b, MEMPROTO_DELETE, NULL, 0, "k", "v", 1, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "DELETE with a value: invalid");
    n = pkt(b, MEMPROTO_DELETE, NULL, 0, NULL, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "DELETE without a key: invalid");

    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } ar[] = {
        {MEMPROTO_INCREMENT, MEMPROTO_INCREMENT, false, "INCREMENT"},
        {MEMPROTO_INCREMENTQ, MEMPROTO_INCREMENT, true, "INCREMENTQ"},
        {MEMPROTO_DECREMENT, MEMPROTO_DECREMENT, false, "DECREMENT"},
        {MEMPROTO_DECREMENTQ, MEMPROTO_DECREMENT, true, "DECREMENTQ"},
    };
    for (size_t i = 0; i < sizeof(ar) / sizeof(ar[0]); i++) {
        n = pkt(b, ar[i].op, ext20, 20, "counter", NULL, 0, 0, 0);
        prefixes_ok(b, n, ar[i].name);
        ok(req.cmd == ar[i].cmd && req.quiet == ar[i].quiet, "%s: cmd, quiet", ar[i].name);
        ok(req.delta == 5 && req.initial == 42 && req.exptime == MEMPROTO_INCR_NO_CREATE, "%s: extras decoded",
           ar[i].name);
        n = pkt(b, ar[i].op, ext8, 8, "counter", NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with 8 bytes of extras: invalid", ar[i].name);
        n = pkt(b, ar[i].op, ext20, 20, "counter", "1", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with a value: invalid", ar[i].name);
        n = pkt(b, ar[i].op, ext20, 20, NULL, NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without a key: invalid", ar[i].name);
    }

    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } t[] = {
        {MEMPROTO_TOUCH, MEMPROTO_TOUCH, false, "TOUCH"},
        {MEMPROTO_GAT, MEMPROTO_GAT, false, "GAT"},
        {MEMPROTO_GATQ, MEMPROTO_GAT, true, "GATQ"},
        {MEMPROTO_GATK, MEMPROTO_GATK, false, "GATK"},
        {MEMPROTO_GATKQ, MEMPROTO_GATK, true, "GATKQ"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        n = pkt(b, t[i].op, ext4, 4, "k", NULL, 0, 0, 0);
        prefixes_ok(b, n, t[i].name);
        ok(req.cmd == t[i].cmd && req.quiet == t[i].quiet && req.exptime == 60, "%s: cmd, quiet, exptime",
           t[i].name);
        n = pkt(b, t[i].op, NULL, 0, "k", NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without extras: invalid", t[i].name);
        n = pkt(b, t[i].op, ext4, 4, NULL, NULL, 0, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s without a key: invalid", t[i].name);
        n = pkt(b, t[i].op, ext4, 4, "k", "v", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with a value: invalid (memcached would desync)", t[i].name);
    }
}

static void test_keyless(void)
{
    uint8_t b[512];
    size_t n;
    static const struct {
        uint8_t op, cmd;
        bool quiet;
        const char *name;
    } z[] = {
        {MEMPROTO_NOOP, MEMPROTO_NOOP, false, "NOOP"},
        {MEMPROTO_VERSION, MEMPROTO_VERSION, false, "VERSION"},
        {MEMPROTO_QUIT, MEMPROTO_QUIT, false, "QUIT"},
        {MEMPROTO_QUITQ, MEMPROTO_QUIT, true, "QUITQ"},
        {MEMPROTO_FLUSH, MEMPROTO_FLUSH, false, "FLUSH"},
        {MEMPROTO_FLUSHQ, MEMPROTO_FLUSH, true, "FLUSHQ"},
        {MEMPROTO_STAT, MEMPROTO_STAT, false, "STAT"},
    };
    for (size_t i = 0; i < sizeof(z) / sizeof(z[0]); i++) {
        n = pkt(b, z[i].op, NULL, 0, NULL, NULL, 0, 0, 0);
        prefixes_ok(b, n, z[i].name);
        ok(req.cmd == z[i].cmd && req.quiet == z[i].quiet, "%s: cmd, quiet", z[i].name);
        ok(req.key == NULL && req.keylen == 0 && req.vlen == 0, "%s: no key, no value", z[i].name);
        n = pkt(b, z[i].op, NULL, 0, NULL, "x", 1, 0, 0);
        is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with a value: invalid", z[i].name);
        if (z[i].cmd != MEMPROTO_STAT) {
            n = pkt(b, z[i].op, NULL, 0, "k", NULL, 0, 0, 0);
            is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with a key: invalid", z[i].name);
        }
        if (z[i].cmd != MEMPROTO_FLUSH) {
            n = pkt(b, z[i].op, ext4, 4, NULL, NULL, 0, 0, 0);
            is_int(parse_n(b, n), MEMPROTO_INVALID, "%s with extras: invalid", z[i].name);
        }
    }

    n = pkt(b, MEMPROTO_FLUSH, ext4, 4, NULL, NULL, 0, 0, 0);
    prefixes_ok(b, n, "FLUSH with expiration");
    is_int(req.exptime, 60, "FLUSH: expiration decoded");
    n = pkt(b, MEMPROTO_FLUSHQ, ext8, 8, NULL, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "FLUSHQ with 8 bytes of extras: invalid");

    n = pkt(b, MEMPROTO_STAT, NULL, 0, "settings", NULL, 0, 0, 0);
    prefixes_ok(b, n, "STAT settings");
    ok(req.keylen == 8 && memcmp(req.key, "settings", 8) == 0, "STAT: sub-statistic as the key");

    const uint8_t lvl[4] = {0, 0, 0, 2};
    n = pkt(b, MEMPROTO_VERBOSITY, lvl, 4, NULL, NULL, 0, 0, 0);
    prefixes_ok(b, n, "VERBOSITY");
    is_int(req.level, 2, "VERBOSITY: level decoded");
    n = pkt(b, MEMPROTO_VERBOSITY, NULL, 0, NULL, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "VERBOSITY without extras: invalid");
}

static void test_errors(void)
{
    uint8_t b[1024] = {0};
    size_t n;

    is_int(parse_n(b, 0), MEMPROTO_NEED_MORE, "empty buffer: need more");
    b[0] = 'g';
    is_int(parse_n(b, 1), MEMPROTO_BAD_MAGIC, "text on the binary port: bad magic at the first byte");
    is_int(used, 0, "bad magic consumes nothing");
    n = pkt(b, MEMPROTO_NOOP, NULL, 0, NULL, NULL, 0, 0, 0);
    b[0] = MEMPROTO_RES_MAGIC;
    is_int(parse_n(b, n), MEMPROTO_BAD_MAGIC, "a response packet: bad magic");

    hdr(b, MEMPROTO_GET, 10, 0, 5);
    is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_BAD_LENGTHS, "key longer than the body: bad lengths");
    is_int(used, 0, "bad lengths consumes nothing (the connection closes)");
    is_int(req.opcode, MEMPROTO_GET, "bad lengths: header fields still set for the answer");
    hdr(b, MEMPROTO_SET, 3, 8, 10);
    is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_BAD_LENGTHS, "key + extras longer than the body: bad lengths");
    hdr(b, 0x77, 300, 0, 10);
    is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_BAD_LENGTHS, "bad lengths comes before key length and opcode");

    char key[300];
    memset(key, 'k', sizeof(key));
    key[251] = '\0';
    n = pkt(b, MEMPROTO_GET, NULL, 0, key, NULL, 0, 0, 0);
    is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_INVALID, "251-byte key: invalid, decided on the header");
    is_int(parse_n(b, n), MEMPROTO_INVALID, "251-byte key, whole packet: invalid");
    key[250] = '\0';
    n = pkt(b, MEMPROTO_GET, NULL, 0, key, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_OK, "250-byte key: OK");
    memset(key, 'k', sizeof(key));
    key[260] = '\0';
    n = pkt(b, 0x77, NULL, 0, key, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "long key beats unknown opcode, as in memcached");

    /* the SASL opcodes are known (the gateway answers them, with or without -Y) */
    n = pkt(b, MEMPROTO_SASL_LIST_MECHS, NULL, 0, NULL, NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_OK, "SASL_LIST_MECHS: OK");
    n = pkt(b, MEMPROTO_SASL_LIST_MECHS, NULL, 0, "k", NULL, 0, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "SASL_LIST_MECHS with a key: invalid, as memcached");
    n = pkt(b, MEMPROTO_SASL_AUTH, NULL, 0, "PLAIN", "\0u\0p", 5, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_OK, "SASL_AUTH PLAIN: OK");
    ok(req.vlen == 5 && req.keylen == 5, "SASL_AUTH: mechanism as key, the exchange as value");
    n = pkt(b, MEMPROTO_SASL_STEP, NULL, 0, NULL, "x", 1, 0, 0);
    is_int(parse_n(b, n), MEMPROTO_INVALID, "SASL_STEP without a mechanism: invalid, as memcached");

    static const uint8_t unknown[] = {0x1f, 0x25, 0x30, 0x3d, 0x80, 0xff};
    for (size_t i = 0; i < sizeof(unknown); i++) {
        hdr(b, unknown[i], 3, 4, 1000);
        is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_UNKNOWN, "opcode 0x%02x: unknown, on the header alone",
               unknown[i]);
        ok(used == MEMPROTO_HEADER && req.swallow == 1000, "opcode 0x%02x: header consumed, body to skip",
           unknown[i]);
    }
    hdr(b, 0x42, 0, 0, 0);
    ok(parse_n(b, MEMPROTO_HEADER) == MEMPROTO_UNKNOWN && req.swallow == 0, "unknown opcode, no body");

    /* Shape errors come before size: a GET with a huge body is invalid. */
    hdr(b, MEMPROTO_GET, 3, 0, 0x7fffffff);
    is_int(parse_n(b, MEMPROTO_HEADER), MEMPROTO_INVALID, "GET with a 2 GiB body: invalid, not buffered");
}

static void test_sizes(void)
{
    uint8_t b[64];
    size_t limit = 1000;

    hdr(b, MEMPROTO_SET, 3, 8, 3 + 8 + 1000);
    ok(memproto_parse(b, MEMPROTO_HEADER, limit, &req, &used) == MEMPROTO_NEED_MORE &&
           req.need == MEMPROTO_HEADER + 1011,
       "value at the limit: waits for the packet");
    hdr(b, MEMPROTO_SET, 3, 8, 3 + 8 + 1001);
    is_int(memproto_parse(b, MEMPROTO_HEADER, limit, &req, &used), MEMPROTO_TOO_LARGE,
           "value one byte over the limit: too large, on the header alone");
    ok(used == MEMPROTO_HEADER && req.swallow == 1012, "too large: header consumed, whole body to skip");
    is_int(req.opcode, MEMPROTO_SET, "too large: opcode set for the answer");
    hdr(b, MEMPROTO_APPENDQ, 3, 0, 3 + 1001);
    ok(memproto_parse(b, MEMPROTO_HEADER, limit, &req, &used) == MEMPROTO_TOO_LARGE && req.quiet,
       "APPENDQ over the limit: too large");

    hdr(b, MEMPROTO_SET, 3, 8, 0xffffffffu);
    ok(memproto_parse(b, MEMPROTO_HEADER, SIZE_MAX, &req, &used) == MEMPROTO_TOO_LARGE &&
           req.swallow == 0xffffffffu,
       "4 GiB body with no caller limit: MEMPROTO_VALUE_MAX still applies");
    hdr(b, MEMPROTO_SET, 3, 8, 3 + 8 + MEMPROTO_VALUE_MAX);
    ok(memproto_parse(b, MEMPROTO_HEADER, SIZE_MAX, &req, &used) == MEMPROTO_NEED_MORE &&
           req.need <= MEMPROTO_PACKET_MAX,
       "a value of MEMPROTO_VALUE_MAX is waited for, within MEMPROTO_PACKET_MAX");
    hdr(b, MEMPROTO_SET, 3, 8, 3 + 8 + MEMPROTO_VALUE_MAX + 1);
    is_int(memproto_parse(b, MEMPROTO_HEADER, SIZE_MAX, &req, &used), MEMPROTO_TOO_LARGE,
           "one byte more is too large");
}

static void test_pipeline(void)
{
    uint8_t b[1024];
    size_t n = 0, lens[4];
    lens[0] = pkt(b + n, MEMPROTO_SETQ, ext8, 8, "a", "1", 1, 1, 0), n += lens[0];
    lens[1] = pkt(b + n, MEMPROTO_GETKQ, NULL, 0, "a", NULL, 0, 2, 0), n += lens[1];
    lens[2] = pkt(b + n, MEMPROTO_INCREMENT, ext20, 20, "c", NULL, 0, 3, 0), n += lens[2];
    lens[3] = pkt(b + n, MEMPROTO_NOOP, NULL, 0, NULL, NULL, 0, 4, 0), n += lens[3];
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        ok(parse_n(b + off, n - off) == MEMPROTO_OK && used == lens[i] && req.opaque == (uint32_t)(i + 1),
           "pipelined packet %d parses alone, in order", i + 1);
        off += used;
    }
    is_int(off, n, "pipeline consumed exactly");
    /* The second packet cut short: the first still parses, then need more. */
    ok(parse_n(b, lens[0] + 10) == MEMPROTO_OK && used == lens[0], "first of a cut pipeline: OK");
    ok(parse_n(b + lens[0], 10) == MEMPROTO_NEED_MORE && used == 0, "the cut one: need more");
    /* An unknown opcode in the middle: answer, skip its body, go on. */
    uint8_t c[256];
    size_t m = pkt(c, MEMPROTO_GET, NULL, 0, "x", NULL, 0, 0, 0);
    size_t u = pkt(c + m, 0x50, ext4, 4, "zz", "body", 4, 0, 0);
    pkt(c + m + u, MEMPROTO_NOOP, NULL, 0, NULL, NULL, 0, 9, 0);
    ok(parse_n(c, sizeof(c)) == MEMPROTO_OK && used == m, "GET before an unknown opcode");
    ok(parse_n(c + m, sizeof(c) - m) == MEMPROTO_UNKNOWN && used + req.swallow == u,
       "unknown opcode: header + swallow = exactly its packet");
    ok(parse_n(c + m + u, sizeof(c) - m - u) == MEMPROTO_OK && req.cmd == MEMPROTO_NOOP && req.opaque == 9,
       "the NOOP after it parses");
}

static void test_header_fields(void)
{
    uint8_t b[64];
    size_t n = pkt(b, MEMPROTO_GET, NULL, 0, "k", NULL, 0, 0xcafebabe, 0x0102030405060708ull);
    b[5] = 0x01;
    b[6] = 0x12;
    b[7] = 0x34;
    ok(parse_n(b, n) == MEMPROTO_OK && req.datatype == 1 && req.vbucket == 0x1234,
       "datatype and vbucket read (and otherwise ignored)");
    ok(req.opaque == 0xcafebabe && req.cas == 0x0102030405060708ull && req.bodylen == 1 && req.extlen == 0,
       "opaque, cas, lengths");
}

static void test_response(void)
{
    uint8_t h[MEMPROTO_HEADER];
    memproto_response_header(h, MEMPROTO_GETK, MEMPROTO_STATUS_KEY_ENOENT, 4, 0x0102, 0x0a0b0c0d, 0xdeadbeef,
                             0x1122334455667788ull);
    static const uint8_t want[MEMPROTO_HEADER] = {0x81, 0x0c, 0x01, 0x02, 4, 0, 0x00, 0x01,
                                                  0x0a, 0x0b, 0x0c, 0x0d, 0xde, 0xad, 0xbe, 0xef,
                                                  0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
    ok(memcmp(h, want, sizeof(want)) == 0, "response header bytes");
    is_str(memproto_status_text(MEMPROTO_STATUS_KEY_ENOENT), "Not found", "text of 0x0001");
    is_str(memproto_status_text(MEMPROTO_STATUS_KEY_EEXISTS), "Data exists for key.", "text of 0x0002");
    is_str(memproto_status_text(MEMPROTO_STATUS_E2BIG), "Too large.", "text of 0x0003");
    is_str(memproto_status_text(MEMPROTO_STATUS_EINVAL), "Invalid arguments", "text of 0x0004");
    is_str(memproto_status_text(MEMPROTO_STATUS_NOT_STORED), "Not stored.", "text of 0x0005");
    is_str(memproto_status_text(MEMPROTO_STATUS_DELTA_BADVAL), "Non-numeric server-side value for incr or decr",
           "text of 0x0006");
    is_str(memproto_status_text(MEMPROTO_STATUS_UNKNOWN_COMMAND), "Unknown command", "text of 0x0081");
    is_str(memproto_status_text(MEMPROTO_STATUS_ENOMEM), "Out of memory", "text of 0x0082");
}

int main(void)
{
    test_get_family();
    test_storage();
    test_keyed_others();
    test_keyless();
    test_errors();
    test_sizes();
    test_pipeline();
    test_header_fields();
    test_response();
    return done_testing();
}

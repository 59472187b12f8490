/*
 * memproto — the memcached binary protocol request parser (see memproto.h).
 */
#include "memproto.h"

#include <string.h>

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* What an opcode takes. memcached 1.6's dispatch_bin_command checks, with
 * "no value" added where memcached would read the value as a next command. */
enum { KEY_NONE,
       KEY_ONE,
       KEY_ANY };

typedef struct shape {
    uint8_t cmd; /* the non-quiet opcode */
    bool known;
    bool quiet;
    uint8_t ext1; /* allowed extras lengths: ext1, or ext2 if different */
    uint8_t ext2;
    uint8_t key; /* KEY_NONE: keylen 0; KEY_ONE: 1..250; KEY_ANY: 0..250 */
    bool value;  /* a value may follow the key (storage commands) */
} shape;

#define S(c, q, e1, e2, k, v)    \
    {                            \
        c, true, q, e1, e2, k, v \
    }
static const shape shapes[256] = {
    [MEMPROTO_GET] = S(MEMPROTO_GET, false, 0, 0, KEY_ONE, false),
    [MEMPROTO_GETQ] = S(MEMPROTO_GET, true, 0, 0, KEY_ONE, false),
    [MEMPROTO_GETK] = S(MEMPROTO_GETK, false, 0, 0, KEY_ONE, false),
    [MEMPROTO_GETKQ] = S(MEMPROTO_GETK, true, 0, 0, KEY_ONE, false),
    [MEMPROTO_SET] = S(MEMPROTO_SET, false, 8, 8, KEY_ONE, true),
    [MEMPROTO_SETQ] = S(MEMPROTO_SET, true, 8, 8, KEY_ONE, true),
    [MEMPROTO_ADD] = S(MEMPROTO_ADD, false, 8, 8, KEY_ONE, true),
    [MEMPROTO_ADDQ] = S(MEMPROTO_ADD, true, 8, 8, KEY_ONE, true),
    [MEMPROTO_REPLACE] = S(MEMPROTO_REPLACE, false, 8, 8, KEY_ONE, true),
    [MEMPROTO_REPLACEQ] = S(MEMPROTO_REPLACE, true, 8, 8, KEY_ONE, true),
    [MEMPROTO_APPEND] = S(MEMPROTO_APPEND, false, 0, 0, KEY_ONE, true),
    [MEMPROTO_APPENDQ] = S(MEMPROTO_APPEND, true, 0, 0, KEY_ONE, true),
    [MEMPROTO_PREPEND] = S(MEMPROTO_PREPEND, false, 0, 0, KEY_ONE, true),
    [MEMPROTO_PREPENDQ] = S(MEMPROTO_PREPEND, true, 0, 0, KEY_ONE, true),
    [MEMPROTO_DELETE] = S(MEMPROTO_DELETE, false, 0, 0, KEY_ONE, false),
    [MEMPROTO_DELETEQ] = S(MEMPROTO_DELETE, true, 0, 0, KEY_ONE, false),
    [MEMPROTO_INCREMENT] = S(MEMPROTO_INCREMENT, false, 20, 20, KEY_ONE, false),
    [MEMPROTO_INCREMENTQ] = S(MEMPROTO_INCREMENT, true, 20, 20, KEY_ONE, false),
    [MEMPROTO_DECREMENT] = S(MEMPROTO_DECREMENT, false, 20, 20, KEY_ONE, false),
    [MEMPROTO_DECREMENTQ] = S(MEMPROTO_DECREMENT, true, 20, 20, KEY_ONE, false),
    [MEMPROTO_QUIT] = S(MEMPROTO_QUIT, false, 0, 0, KEY_NONE, false),
    [MEMPROTO_QUITQ] = S(MEMPROTO_QUIT, true, 0, 0, KEY_NONE, false),
    [MEMPROTO_FLUSH] = S(MEMPROTO_FLUSH, false, 0, 4, KEY_NONE, false),
    [MEMPROTO_FLUSHQ] = S(MEMPROTO_FLUSH, true, 0, 4, KEY_NONE, false),
    [MEMPROTO_NOOP] = S(MEMPROTO_NOOP, false, 0, 0, KEY_NONE, false),
    [MEMPROTO_VERSION] = S(MEMPROTO_VERSION, false, 0, 0, KEY_NONE, false),
    [MEMPROTO_STAT] = S(MEMPROTO_STAT, false, 0, 0, KEY_ANY, false),
    [MEMPROTO_VERBOSITY] = S(MEMPROTO_VERBOSITY, false, 4, 4, KEY_NONE, false),
    [MEMPROTO_TOUCH] = S(MEMPROTO_TOUCH, false, 4, 4, KEY_ONE, false),
    [MEMPROTO_GAT] = S(MEMPROTO_GAT, false, 4, 4, KEY_ONE, false),
    [MEMPROTO_GATQ] = S(MEMPROTO_GAT, true, 4, 4, KEY_ONE, false),
    [MEMPROTO_GATK] = S(MEMPROTO_GATK, false, 4, 4, KEY_ONE, false),
    [MEMPROTO_GATKQ] = S(MEMPROTO_GATK, true, 4, 4, KEY_ONE, false),
    [MEMPROTO_SASL_LIST_MECHS] = S(MEMPROTO_SASL_LIST_MECHS, false, 0, 0, KEY_NONE, false),
    [MEMPROTO_SASL_AUTH] = S(MEMPROTO_SASL_AUTH, false, 0, 0, KEY_ONE, true),
    [MEMPROTO_SASL_STEP] = S(MEMPROTO_SASL_STEP, false, 0, 0, KEY_ONE, true),
};
#undef S

static bool shape_ok(const shape *s, const memproto_request *req)
{
    if (req->extlen != s->ext1 && req->extlen != s->ext2) return false;
    if (s->key == KEY_NONE && req->keylen != 0) return false;
    if (s->key == KEY_ONE && req->keylen == 0) return false;
    if (!s->value && req->bodylen != (uint32_t)req->extlen + req->keylen) return false;
    return true;
}

static void decode_extras(memproto_request *req)
{
    const uint8_t *e = req->extras;
    switch (req->cmd) {
    case MEMPROTO_SET:
    case MEMPROTO_ADD:
    case MEMPROTO_REPLACE:
        req->flags = get32(e);
        req->exptime = get32(e + 4);
        break;
    case MEMPROTO_INCREMENT:
    case MEMPROTO_DECREMENT:
        req->delta = get64(e);
        req->initial = get64(e + 8);
        req->exptime = get32(e + 16);
        break;
    case MEMPROTO_FLUSH:
    case MEMPROTO_TOUCH:
    case MEMPROTO_GAT:
    case MEMPROTO_GATK:
        if (req->extlen == 4) req->exptime = get32(e);
        break;
    case MEMPROTO_VERBOSITY: req->level = get32(e); break;
    default: break;
    }
}

memproto_result memproto_parse(const void *buf, size_t len, size_t value_max, memproto_request *req,
                               size_t *consumed)
{
    const uint8_t *p = buf;
    memset(req, 0, sizeof(*req));
    *consumed = 0;
    if (len == 0) return MEMPROTO_NEED_MORE;
    /* Decided on the first byte: waiting for 23 more would only delay the close. */
    if (p[0] != MEMPROTO_REQ_MAGIC) return MEMPROTO_BAD_MAGIC;
    if (len < MEMPROTO_HEADER) return MEMPROTO_NEED_MORE;

    req->opcode = p[1];
    req->keylen = get16(p + 2);
    req->extlen = p[4];
    req->datatype = p[5];
    req->vbucket = get16(p + 6);
    req->bodylen = get32(p + 8);
    req->opaque = get32(p + 12);
    req->cas = get64(p + 16);
    const shape *s = &shapes[req->opcode];
    req->cmd = s->known ? s->cmd : req->opcode;
    req->quiet = s->quiet;

    /* The order of memcached's checks, so that a packet wrong in two ways
     * gets memcached's answer. */
    if ((uint32_t)req->keylen + req->extlen > req->bodylen) return MEMPROTO_BAD_LENGTHS;
    if (req->keylen > MEMPROTO_KEY_MAX) return MEMPROTO_INVALID;
    if (!s->known) {
        req->swallow = req->bodylen;
        *consumed = MEMPROTO_HEADER;
        return MEMPROTO_UNKNOWN;
    }
    if (!shape_ok(s, req)) return MEMPROTO_INVALID;

    /* Only storage and SASL commands get here with a value, so the body of
     * any other is at most extras + key: small. */
    size_t vlen = req->bodylen - req->extlen - req->keylen;
    if (value_max > MEMPROTO_VALUE_MAX) value_max = MEMPROTO_VALUE_MAX;
    if (vlen > value_max) {
        req->swallow = req->bodylen;
        *consumed = MEMPROTO_HEADER;
        return MEMPROTO_TOO_LARGE;
    }
    size_t total = MEMPROTO_HEADER + (size_t)req->bodylen;
    if (len < total) {
        req->need = total;
        return MEMPROTO_NEED_MORE;
    }

    req->extras = p + MEMPROTO_HEADER;
    req->key = req->keylen ? (const char *)req->extras + req->extlen : NULL;
    req->value = (const char *)req->extras + req->extlen + req->keylen;
    req->vlen = vlen;
    decode_extras(req);
    *consumed = total;
    return MEMPROTO_OK;
}

void memproto_response_header(uint8_t out[MEMPROTO_HEADER], uint8_t opcode, uint16_t status, uint8_t extlen,
                              uint16_t keylen, uint32_t bodylen, uint32_t opaque, uint64_t cas)
{
    out[0] = MEMPROTO_RES_MAGIC;
    out[1] = opcode;
    put16(out + 2, keylen);
    out[4] = extlen;
    out[5] = 0; /* raw bytes */
    put16(out + 6, status);
    put32(out + 8, bodylen);
    put32(out + 12, opaque);
    put64(out + 16, cas);
}

const char *memproto_status_text(uint16_t status)
{
    switch (status) {
    case MEMPROTO_STATUS_KEY_ENOENT: return "Not found";
    case MEMPROTO_STATUS_KEY_EEXISTS: return "Data exists for key.";
    case MEMPROTO_STATUS_E2BIG: return "Too large.";
    case MEMPROTO_STATUS_EINVAL: return "Invalid arguments";
    case MEMPROTO_STATUS_NOT_STORED: return "Not stored.";
    case MEMPROTO_STATUS_DELTA_BADVAL: return "Non-numeric server-side value for incr or decr";
    case MEMPROTO_STATUS_AUTH_ERROR: return "Auth failure.";
    case MEMPROTO_STATUS_UNKNOWN_COMMAND: return "Unknown command";
    case MEMPROTO_STATUS_ENOMEM: return "Out of memory";
    default: return "Unknown error";
    }
}

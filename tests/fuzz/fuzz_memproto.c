/*
 * fuzz_memproto — libFuzzer target for the memcached binary protocol parser.
 *
 * Feeds the input as one connection's byte stream, doing what binary.c
 * does: parse, drop what was consumed and what must be skipped, repeat
 * until the parser needs more bytes or the connection would close. The
 * first byte of the input is the caller's value limit (0..255 -> 0..~16 MB
 * in steps), so both sides of it are reached. Besides the sanitizers'
 * checks, it asserts the contract of memproto.h:
 *  - NEED_MORE, BAD_MAGIC, BAD_LENGTHS and INVALID consume nothing; OK
 *    consumes 24 + body; UNKNOWN and TOO_LARGE consume the header and ask
 *    for the body to be skipped; nothing else leaves a swallow;
 *  - NEED_MORE's `need` is 0 before the header and else exceeds what was
 *    given, and never exceeds MEMPROTO_PACKET_MAX;
 *  - an OK request's key, extras and value lie inside the packet, the key is
 *    1..250 bytes where the opcode takes one, the value within the limit,
 *    cmd is the non-quiet opcode;
 *  - the parser is incremental: given exactly the consumed bytes it answers
 *    the same, given one byte fewer it asks for more; and the answer for
 *    the header alone is never a different error.
 */
#include "fuzz.h"
#include "memproto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void check_ok(const memproto_request *q, const uint8_t *p, size_t used, size_t value_max)
{
    const uint8_t *end = p + used;
    CHECK(used == MEMPROTO_HEADER + (size_t)q->bodylen);
    CHECK(q->extras == p + MEMPROTO_HEADER);
    CHECK(q->extras + q->extlen <= end);
    CHECK(q->keylen <= MEMPROTO_KEY_MAX);
    CHECK((q->key == NULL) == (q->keylen == 0));
    if (q->key) CHECK((const uint8_t *)q->key == q->extras + q->extlen);
    CHECK((const uint8_t *)q->value == q->extras + q->extlen + q->keylen);
    CHECK((const uint8_t *)q->value + q->vlen == end);
    CHECK(q->vlen <= value_max && q->vlen <= MEMPROTO_VALUE_MAX);
    CHECK(q->swallow == 0 && q->need == 0);
    switch (q->cmd) {
    case MEMPROTO_SET:
    case MEMPROTO_ADD:
    case MEMPROTO_REPLACE: CHECK(q->extlen == 8 && q->keylen > 0); break;
    case MEMPROTO_APPEND:
    case MEMPROTO_PREPEND: CHECK(q->extlen == 0 && q->keylen > 0); break;
    case MEMPROTO_GET:
    case MEMPROTO_GETK:
    case MEMPROTO_DELETE: CHECK(q->extlen == 0 && q->keylen > 0 && q->vlen == 0); break;
    case MEMPROTO_INCREMENT:
    case MEMPROTO_DECREMENT: CHECK(q->extlen == 20 && q->keylen > 0 && q->vlen == 0); break;
    case MEMPROTO_TOUCH:
    case MEMPROTO_GAT:
    case MEMPROTO_GATK: CHECK(q->extlen == 4 && q->keylen > 0 && q->vlen == 0); break;
    case MEMPROTO_FLUSH: CHECK((q->extlen == 0 || q->extlen == 4) && q->keylen == 0 && q->vlen == 0); break;
    case MEMPROTO_VERBOSITY: CHECK(q->extlen == 4 && q->keylen == 0 && q->vlen == 0); break;
    case MEMPROTO_STAT: CHECK(q->extlen == 0 && q->vlen == 0); break;
    case MEMPROTO_NOOP:
    case MEMPROTO_VERSION:
    case MEMPROTO_QUIT:
    case MEMPROTO_SASL_LIST_MECHS: CHECK(q->extlen == 0 && q->keylen == 0 && q->vlen == 0); break;
    case MEMPROTO_SASL_AUTH:
    case MEMPROTO_SASL_STEP: CHECK(q->extlen == 0 && q->keylen > 0); break;
    default: CHECK(!"OK for an opcode the parser does not know");
    }
    CHECK(q->quiet == (q->opcode != q->cmd));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t value_max = (size_t)data[0] * 65536 + data[0];
    const uint8_t *buf = data + 1;
    size = size - 1;
    size_t off = 0;
    memproto_request q, q2;

    for (;;) {
        size_t len = size - off, used = (size_t)-1, used2 = (size_t)-1;
        memproto_result st = memproto_parse(buf + off, len, value_max, &q, &used);
        CHECK(st >= MEMPROTO_OK && st <= MEMPROTO_TOO_LARGE);
        switch (st) {
        case MEMPROTO_NEED_MORE:
            CHECK(used == 0 && q.swallow == 0);
            if (len < MEMPROTO_HEADER) CHECK(q.need == 0);
            else CHECK(q.need > len && q.need <= MEMPROTO_PACKET_MAX);
            return 0;
        case MEMPROTO_BAD_MAGIC:
            CHECK(used == 0 && len >= 1 && buf[off] != MEMPROTO_REQ_MAGIC);
            return 0;
        case MEMPROTO_BAD_LENGTHS:
            CHECK(used == 0 && len >= MEMPROTO_HEADER && (uint32_t)q.keylen + q.extlen > q.bodylen);
            break;
        case MEMPROTO_INVALID:
            CHECK(used == 0 && len >= MEMPROTO_HEADER && q.swallow == 0);
            break;
        case MEMPROTO_UNKNOWN:
        case MEMPROTO_TOO_LARGE:
            CHECK(used == MEMPROTO_HEADER && q.swallow == q.bodylen);
            break;
        case MEMPROTO_OK: check_ok(&q, buf + off, used, value_max); break;
        }

        /* Whatever was decided on the header is decided on the header alone. */
        if (st != MEMPROTO_OK) {
            memproto_result st2 = memproto_parse(buf + off, MEMPROTO_HEADER, value_max, &q2, &used2);
            CHECK(st2 == st && used2 == used && q2.swallow == q.swallow && q2.opcode == q.opcode);
        } else {
            memproto_result st2 = memproto_parse(buf + off, used, value_max, &q2, &used2);
            CHECK(st2 == MEMPROTO_OK && used2 == used && q2.key == q.key && q2.vlen == q.vlen);
            CHECK(q2.cas == q.cas && q2.flags == q.flags && q2.exptime == q.exptime && q2.delta == q.delta);
            st2 = memproto_parse(buf + off, used - 1, value_max, &q2, &used2);
            CHECK(st2 == MEMPROTO_NEED_MORE && used2 == 0);
        }

        if (st == MEMPROTO_BAD_LENGTHS || st == MEMPROTO_INVALID) return 0; /* the connection closes */
        /* Skip what the caller would discard. */
        size_t skip = used + q.swallow;
        if (skip >= len) return 0;
        off += skip;
    }
}

/*
 * fuzz_binlog — libFuzzer target for the binary log decoder (src/lib/binlog.c).
 *
 * Reads the input the way kumolog reads a file: decode at the current
 * offset, move past a record, move one byte on after damage. Besides the
 * sanitizers' checks (and libFuzzer's malloc limit: a container header
 * that claims billions of elements must not make the decoder allocate for
 * them), it asserts the contract of binlog.h:
 *  - OK consumes the 4-byte header plus the length it gives, within the
 *    input, and the record has the documented shape (fields keyed by str);
 *  - the decoder is incremental: every proper prefix of a decoded record
 *    answers MORE, and the record alone decodes the same;
 *  - a record re-encoded from its decoded parts (when its fields are of the
 *    types the writer produces) decodes to the same bytes.
 */
#include "fuzz.h"
#include "binlog.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_reencode(const binlog_record *r, const uint8_t *rec, size_t used)
{
    binlog_field f[BINLOG_MAX_FIELDS];
    char keys[BINLOG_MAX_FIELDS][BINLOG_MAX_NAME + 1];
    char node[BINLOG_MAX_NAME + 1], event[BINLOG_MAX_NAME + 1];
    if (r->fields->size > BINLOG_MAX_FIELDS || r->node_len > BINLOG_MAX_NAME || r->event_len > BINLOG_MAX_NAME ||
        memchr(r->node, 0, r->node_len) || memchr(r->event, 0, r->event_len) || r->level > 255)
        return;
    /* Only records the writer could have made: array of exactly 5, minimal
     * integer encodings are not checked, so compare by decoding again. */
    if (r->unpacked.data.via.array.size != 5) return;
    memcpy(node, r->node, r->node_len);
    node[r->node_len] = '\0';
    memcpy(event, r->event, r->event_len);
    event[r->event_len] = '\0';
    for (uint32_t i = 0; i < r->fields->size; i++) {
        const msgpack_object *k = &r->fields->ptr[i].key, *v = &r->fields->ptr[i].val;
        if (k->via.str.size > BINLOG_MAX_NAME || memchr(k->via.str.ptr, 0, k->via.str.size)) return;
        memcpy(keys[i], k->via.str.ptr, k->via.str.size);
        keys[i][k->via.str.size] = '\0';
        switch (v->type) {
        case MSGPACK_OBJECT_BIN:
            if (v->via.bin.size > BINLOG_MAX_VALUE) return;
            f[i] = BL_BYTES(keys[i], v->via.bin.ptr, v->via.bin.size);
            break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER: f[i] = BL_UINT(keys[i], v->via.u64); break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER: f[i] = BL_INT(keys[i], v->via.i64); break;
        case MSGPACK_OBJECT_BOOLEAN: f[i] = BL_BOOL(keys[i], v->via.boolean); break;
        default: return; /* str values would need a NUL-free copy; nil, floats, containers: not written */
        }
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    CHECK(binlog_encode(&sb, r->time_us, r->level, node, event, f, r->fields->size) == 0);
    binlog_record r2;
    size_t used2 = 0;
    char err[KUMO_ERRLEN];
    binlog_record_init(&r2);
    CHECK(binlog_decode(sb.data, sb.size, &r2, &used2, err) == BINLOG_OK);
    CHECK(used2 == sb.size);
    CHECK(r2.time_us == r->time_us && r2.level == r->level && r2.fields->size == r->fields->size);
    CHECK(r2.node_len == r->node_len && memcmp(r2.node, r->node, r->node_len) == 0);
    CHECK(r2.event_len == r->event_len && memcmp(r2.event, r->event, r->event_len) == 0);
    for (uint32_t i = 0; i < r->fields->size; i++) {
        const msgpack_object *a = &r->fields->ptr[i].val, *b = &r2.fields->ptr[i].val;
        CHECK(a->type == b->type);
        if (a->type == MSGPACK_OBJECT_BIN)
            CHECK(a->via.bin.size == b->via.bin.size &&
                  (a->via.bin.size == 0 || memcmp(a->via.bin.ptr, b->via.bin.ptr, a->via.bin.size) == 0));
        else if (a->type == MSGPACK_OBJECT_BOOLEAN)
            CHECK(a->via.boolean == b->via.boolean);
        else
            CHECK(a->via.u64 == b->via.u64);
    }
    binlog_record_free(&r2);
    msgpack_sbuffer_destroy(&sb);
    (void)rec;
    (void)used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    binlog_record r, r2;
    char err[KUMO_ERRLEN];
    size_t pos = 0;
    binlog_record_init(&r);
    binlog_record_init(&r2);
    while (pos < size) {
        size_t used = 0;
        binlog_status st = binlog_decode(data + pos, size - pos, &r, &used, err);
        CHECK(st == BINLOG_OK || st == BINLOG_MORE || st == BINLOG_CORRUPT);
        if (st == BINLOG_MORE) {
            pos++; /* at the end of a file kumolog searches on byte by byte */
            continue;
        }
        if (st == BINLOG_CORRUPT) {
            pos++;
            continue;
        }
        CHECK(used > BINLOG_HEADER && used <= size - pos && used - BINLOG_HEADER <= BINLOG_MAX_RECORD);
        const uint8_t *p = data + pos;
        CHECK(((size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]) + BINLOG_HEADER == used);
        CHECK(r.fields != NULL && r.level <= 255);
        for (uint32_t i = 0; i < r.fields->size; i++) CHECK(r.fields->ptr[i].key.type == MSGPACK_OBJECT_STR);
        CHECK((const uint8_t *)r.node >= p && (const uint8_t *)r.node + r.node_len <= p + used);
        /* Incremental: the exact record decodes the same; every prefix is MORE. */
        size_t used2 = 0;
        CHECK(binlog_decode(p, used, &r2, &used2, err) == BINLOG_OK && used2 == used);
        for (size_t cut = 0; cut < used; cut += 1 + used / 64)
            CHECK(binlog_decode(p, cut, &r2, &used2, err) == BINLOG_MORE);
        check_reencode(&r, p, used);
        pos += used;
    }
    binlog_record_free(&r);
    binlog_record_free(&r2);
    return 0;
}

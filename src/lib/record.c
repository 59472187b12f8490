/*
 * record — encode and parse the stored key and value bytes (see record.h,
 * docs/protocol.md §7).
 *
 * Owns: nothing; every function works on caller-owned buffers.
 * Calls: nothing.
 * Thread rule: pure functions, safe from any thread.
 *
 * Every integer is big-endian and assembled byte by byte, so the bytes are
 * the same on any host and no buffer needs to be aligned.
 */
#include "record.h"

#include <stdlib.h>
#include <string.h>

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

void record_key_write(uint8_t *out, uint64_t hash, const void *key, size_t klen)
{
    put_be64(out, hash);
    if (klen)
        memcpy(out + RECORD_KEY_HEADER, key, klen);
}

uint64_t record_key_hash(const void *dbkey, size_t klen)
{
    if (klen < RECORD_KEY_HEADER)
        return 0;
    return get_be64(dbkey);
}

int record_value_parse(const void *buf, size_t len, record_value *out)
{
    const uint8_t *p = buf;
    if (len < RECORD_TOMBSTONE || (len > RECORD_TOMBSTONE && len < RECORD_VALUE_HEADER))
        return -1;

    out->clocktime = get_be64(p);
    out->meta = 0;
    out->flags = 0;
    out->exptime = 0;
    if (len == RECORD_TOMBSTONE) {
        out->tombstone = true;
        out->payload = p + len;
        out->payload_len = 0;
        return 0;
    }

    uint16_t meta = get_be16(p + 8);
    if ((meta & ~(RECORD_META_MC | RECORD_META_STALE | RECORD_META_WON)) ||
        ((meta & (RECORD_META_STALE | RECORD_META_WON)) && !(meta & RECORD_META_MC)))
        return -1;
    const uint8_t *data = p + RECORD_VALUE_HEADER;
    size_t dlen = len - RECORD_VALUE_HEADER;
    if (meta & RECORD_META_MC) {
        if (dlen < RECORD_MC_HEADER)
            return -1;
        out->flags = get_be32(data);
        out->exptime = get_be32(data + 4);
        data += RECORD_MC_HEADER;
        dlen -= RECORD_MC_HEADER;
    }
    out->tombstone = false;
    out->meta = meta;
    out->payload = data;
    out->payload_len = dlen;
    return 0;
}

uint64_t record_clocktime(const void *buf, size_t len)
{
    if (len < RECORD_TOMBSTONE)
        return 0;
    return get_be64(buf);
}

void record_set_clocktime(void *buf, uint64_t ct)
{
    put_be64(buf, ct);
}

void record_mc_header(uint8_t *out, uint64_t ct, uint32_t flags, uint32_t exptime)
{
    put_be64(out, ct);
    put_be16(out + 8, RECORD_META_MC);
    put_be32(out + RECORD_VALUE_HEADER, flags);
    put_be32(out + RECORD_VALUE_HEADER + 4, exptime);
}

void record_mc_state(uint8_t *out, uint16_t bits)
{
    put_be16(out + 8, (uint16_t)(RECORD_META_MC | (bits & (RECORD_META_STALE | RECORD_META_WON))));
}

void record_tombstone(uint8_t out[RECORD_TOMBSTONE], uint64_t ct)
{
    put_be64(out, ct);
}

uint32_t record_exptime(int64_t exptime, uint32_t now)
{
    if (exptime == 0)
        return 0;
    if (exptime < 0)
        return 1; /* already expired: 1 is in the past of any real clock */
    if (exptime <= RECORD_RELATIVE_MAX) {
        uint64_t abs = (uint64_t)now + (uint64_t)exptime;
        return abs > UINT32_MAX ? UINT32_MAX : (uint32_t)abs;
    }
    return exptime > UINT32_MAX ? UINT32_MAX : (uint32_t)exptime;
}

uint32_t record_exptime_wire(int64_t exptime)
{
    if (exptime < 0) return RECORD_EXPTIME_PAST;
    return exptime > UINT32_MAX ? UINT32_MAX : (uint32_t)exptime;
}

void record_resolve_exptime(uint8_t *val, size_t vlen, uint32_t now)
{
    record_value v;
    if (record_value_parse(val, vlen, &v) < 0 || v.tombstone || v.exptime == 0 || v.exptime > RECORD_RELATIVE_MAX)
        return;
    put_be32(val + RECORD_VALUE_HEADER + 4, record_exptime(v.exptime, now));
}

uint8_t *record_mc_value(uint32_t flags, int64_t exptime, const void *data, size_t len, size_t *vlen)
{
    uint8_t *v = malloc(record_mc_size(len));
    if (!v) return NULL;
    record_mc_header(v, 0, flags, record_exptime_wire(exptime));
    if (len) memcpy(v + record_mc_size(0), data, len);
    *vlen = record_mc_size(len);
    return v;
}

/*
 * record — the bytes of a stored key and value, on disk (Tokyo Cabinet)
 * and on the wire alike, compatible with kumofs 0.4 (docs/protocol.md §7):
 *
 *   key   = be64(hash) | user key bytes
 *   value = be64(clocktime) | be16(meta) | data
 *   tombstone = be64(clocktime)            (exactly 8 bytes: a delete)
 *
 * meta = 0: an original-format value: data is the payload, flags 0, no
 *           expiry (kumofs 0.4 always wrote 0).
 * meta & RECORD_META_MC: data = be32(flags) | be32(exptime) | payload,
 *           exptime absolute unix seconds, 0 = never.
 * meta & RECORD_META_STALE, RECORD_META_WON (with RECORD_META_MC): the
 *           state memcached's meta protocol keeps per item for
 *           stale-while-revalidate: invalidated by `md I` (still served,
 *           marked X), and a win token handed out to one reader (the others
 *           see Z). Any new write of the key clears them.
 * Other meta bits are reserved; a value with unknown bits is rejected.
 *
 * Thread rule: pure functions. Calls: nothing.
 */
#ifndef KUMO_RECORD_H
#define KUMO_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECORD_KEY_HEADER 8
#define RECORD_VALUE_HEADER 10
#define RECORD_TOMBSTONE 8
#define RECORD_META_MC 0x0001u
#define RECORD_META_STALE 0x0002u
#define RECORD_META_WON 0x0004u
#define RECORD_MC_HEADER 8 /* flags + exptime */

typedef struct record_value {
    uint64_t clocktime;
    bool tombstone;
    uint16_t meta;
    uint32_t flags;
    uint32_t exptime;
    const uint8_t *payload; /* points into the parsed buffer */
    size_t payload_len;
} record_value;

/* Write be64(hash)|key into out (RECORD_KEY_HEADER + klen bytes). */
void record_key_write(uint8_t *out, uint64_t hash, const void *key, size_t klen);
/* Hash of a stored key; 0 if klen < RECORD_KEY_HEADER. */
uint64_t record_key_hash(const void *dbkey, size_t klen);

/* Parse a stored value or tombstone; -1 if shorter than 8 bytes, between 9
 * and 9 bytes, too short for its meta, or with unknown meta bits. */
int record_value_parse(const void *buf, size_t len, record_value *out);
/* Clocktime of any value or tombstone; 0 if len < 8. */
uint64_t record_clocktime(const void *buf, size_t len);
/* Overwrite the clocktime of a value or tombstone in place (len >= 8). */
void record_set_clocktime(void *buf, uint64_t ct);

/* Size of a value with the memcached header and `payload_len` bytes. */
static inline size_t record_mc_size(size_t payload_len)
{
    return RECORD_VALUE_HEADER + RECORD_MC_HEADER + payload_len;
}
/* Write the 18-byte header of a memcached value; the payload follows. */
void record_mc_header(uint8_t *out, uint64_t ct, uint32_t flags, uint32_t exptime);
/* Set the STALE and WON bits of a memcached value's header (out from
 * record_mc_header); other bits are kept. */
void record_mc_state(uint8_t *out, uint16_t bits);
/* Write an 8-byte tombstone. */
void record_tombstone(uint8_t out[RECORD_TOMBSTONE], uint64_t ct);

/* Expiry rule of memcached: 0 = never, 1..30 days = relative to now,
 * larger = absolute unix time, negative = already expired. Returns the
 * absolute time to store (1 for "already expired"). */
/* memcached: an exptime up to 30 days is relative to now. */
#define RECORD_RELATIVE_MAX 2592000
uint32_t record_exptime(int64_t exptime, uint32_t now);
/* A client's exptime as a gateway sends it: 0, a relative time of up to 30
 * days (the coordinator makes it absolute by the cluster's clock), an
 * absolute unix time, or for a negative one RECORD_EXPTIME_PAST. */
#define RECORD_EXPTIME_PAST (RECORD_RELATIVE_MAX + 1) /* a unix time long past */
uint32_t record_exptime_wire(int64_t exptime);
/* A new memcached value (header with ClockTime 0, flags, the exptime as the
 * gateway sends it, then the payload), malloc'd; NULL without memory. */
uint8_t *record_mc_value(uint32_t flags, int64_t exptime, const void *data, size_t len, size_t *vlen);
/* At the coordinator: a value's relative exptime becomes now + exptime. */
void record_resolve_exptime(uint8_t *val, size_t vlen, uint32_t now);
static inline bool record_expired(const record_value *v, uint32_t now)
{
    return v->exptime != 0 && v->exptime <= now;
}

#endif

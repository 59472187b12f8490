/*
 * streamdec — the receiving end of a replace stream as a pure parser:
 * compressed bytes in, [key, value] records out (stream.c does the I/O and
 * applies each record to the store).
 *
 * The stream is zlib (deflate) of msgpack pairs [key:bin, value:bin]. Every
 * inflated byte passes an mpguard before msgpack-c sees it, so a record that
 * declares more than `limit` bytes fails the stream before anything is
 * allocated for it. A record must be a 2-array of bin (or str) with a key
 * longer than RECORD_KEY_HEADER and a value of at least RECORD_TOMBSTONE
 * bytes. Bytes after the end of the zlib stream are ignored.
 *
 * Thread rule: one decoder per stream, used by one thread.
 * Calls: zlib, msgpack-c, mpguard.
 */
#ifndef KUMO_STREAMDEC_H
#define KUMO_STREAMDEC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "kumo.h"
#include "mpguard.h"

typedef struct stream_decoder {
    z_stream zs;
    bool z_end; /* the zlib stream is complete */
    msgpack_unpacker up;
    mpguard guard;
    uint64_t limit;
} stream_decoder;

/* One record; key and value point into the decoder, valid during the call.
 * Return 0 to go on, -1 (with err filled) to fail the stream. */
typedef int (*streamdec_record_fn)(void *arg, const char *key, size_t klen, const char *val, size_t vlen,
                                   char *err);

/* 0, or -1 + err (out of memory). `limit`: bytes one record may take. */
int streamdec_init(stream_decoder *d, uint64_t limit, char *err);
void streamdec_free(stream_decoder *d);
/* Inflate and parse the next len compressed bytes, calling fn for each
 * whole record. 0, or -1 + err: corrupt zlib data, a record over the limit,
 * bad msgpack, a malformed record, or fn's failure. After -1 the decoder
 * may only be freed. */
int streamdec_feed(stream_decoder *d, const void *buf, size_t len, streamdec_record_fn fn, void *arg, char *err);
/* At the end of the input: 0 if the stream ended cleanly after a whole
 * record, -1 + err otherwise. */
int streamdec_finish(const stream_decoder *d, char *err);

#endif

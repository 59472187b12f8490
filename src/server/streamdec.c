/*
 * streamdec — parsing a replace stream (see streamdec.h).
 *
 * Owns: the decoder's zlib state and msgpack buffer.
 * Calls: zlib, msgpack-c, mpguard, kumo (errors).
 * Thread rule: one decoder per stream.
 */
#include "streamdec.h"

#include <string.h>

#include "record.h"

#define CHUNK (64 * 1024) /* inflated bytes per step */

int streamdec_init(stream_decoder *d, uint64_t limit, char *err)
{
    memset(d, 0, sizeof(*d));
    if (inflateInit(&d->zs) != Z_OK) return kumo_err(err, "out of memory");
    if (!msgpack_unpacker_init(&d->up, CHUNK)) {
        inflateEnd(&d->zs);
        return kumo_err(err, "out of memory");
    }
    mpguard_init(&d->guard, limit);
    d->limit = limit;
    return 0;
}

void streamdec_free(stream_decoder *d)
{
    inflateEnd(&d->zs);
    msgpack_unpacker_destroy(&d->up);
}

/* rpc_arg_bytes's rule (bin, or str from older encoders), repeated so that
 * this parser and its fuzz target link without rpc.c and libevent. */
static bool obj_bytes(const msgpack_object *o, const char **p, size_t *len)
{
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *len = o->via.bin.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *len = o->via.str.size;
        return true;
    }
    return false;
}

/* Hand every whole record buffered so far to fn. */
static int drain(stream_decoder *d, streamdec_record_fn fn, void *arg, char *err)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = 0;
    msgpack_unpack_return r;
    while ((r = msgpack_unpacker_next(&d->up, &u)) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *o = &u.data;
        const char *k, *v;
        size_t kl, vl;
        if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 || !obj_bytes(&o->via.array.ptr[0], &k, &kl) ||
            !obj_bytes(&o->via.array.ptr[1], &v, &vl) || kl <= RECORD_KEY_HEADER || vl < RECORD_TOMBSTONE) {
            rc = kumo_err(err, "malformed record");
            break;
        }
        if (fn(arg, k, kl, v, vl, err) < 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0 && r != MSGPACK_UNPACK_CONTINUE) rc = kumo_err(err, "malformed stream");
    if (rc == 0 && msgpack_unpacker_message_size(&d->up) > d->limit) rc = kumo_err(err, "record too large");
    msgpack_unpacked_destroy(&u);
    return rc;
}

int streamdec_feed(stream_decoder *d, const void *buf, size_t len, streamdec_record_fn fn, void *arg, char *err)
{
    d->zs.next_in = (Bytef *)(uintptr_t)buf;
    d->zs.avail_in = (uInt)len;
    /* Go on while input is left, and also while the last step filled its
     * whole output: zlib may hold more output for input already taken. */
    while (!d->z_end) {
        if (!msgpack_unpacker_reserve_buffer(&d->up, CHUNK)) return kumo_err(err, "out of memory");
        d->zs.next_out = (Bytef *)msgpack_unpacker_buffer(&d->up);
        d->zs.avail_out = CHUNK;
        int rc = inflate(&d->zs, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
            return kumo_err(err, "corrupt stream (zlib %d)", rc);
        size_t got = CHUNK - d->zs.avail_out;
        if (!mpguard_feed(&d->guard, msgpack_unpacker_buffer(&d->up), got))
            return kumo_err(err, "a record declares more than %llu bytes", (unsigned long long)d->limit);
        msgpack_unpacker_buffer_consumed(&d->up, got);
        if (rc == Z_STREAM_END) d->z_end = true;
        if (drain(d, fn, arg, err) < 0) return -1;
        if (rc == Z_BUF_ERROR || (d->zs.avail_in == 0 && d->zs.avail_out > 0)) break;
    }
    return 0;
}

int streamdec_finish(const stream_decoder *d, char *err)
{
    if (!d->z_end || msgpack_unpacker_message_size(&d->up) != 0) return kumo_err(err, "stream ended early");
    return 0;
}

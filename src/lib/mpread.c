/*
 * mpread — one msgpack object decoded in place (see mpread.h). The formats
 * are the msgpack spec's: the first byte is the type, with a fixed count or
 * value in it, or followed by 1, 2, 4 or 8 big-endian bytes of length,
 * count or value.
 */
#include "mpread.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_MIN 256   /* objects in the first block: a frame of 128 keys fits */
#define BLOCK_KEEP 1024 /* the largest first block kept across frames (24 KiB) */

struct mpread_block {
    mpread_block *next;
    size_t cap, used;
    msgpack_object objs[];
};

static mpread_block *block_new(size_t cap)
{
    mpread_block *b = malloc(sizeof(*b) + cap * sizeof(msgpack_object));
    if (b) *b = (mpread_block){.cap = cap};
    return b;
}

/* n contiguous objects, from the current block or a new one behind it.
 * NULL with a->short_input set: more elements than the input has bytes,
 * so the object cannot be whole yet; NULL otherwise: over max_objects, or
 * out of memory. */
static mpread_block *grow(mpread_arena *a, size_t n)
{
    mpread_block *b = a->cur;
    size_t cap = b && b->cap * 2 > n ? b->cap * 2 : n;
    if (cap < BLOCK_MIN) cap = BLOCK_MIN;
    mpread_block *nb = block_new(cap);
    if (!nb) return NULL;
    if (b) b->next = nb;
    else a->head = nb;
    return a->cur = nb;
}

static inline __attribute__((always_inline)) msgpack_object *take(mpread_arena *a, size_t n)
{
    if (n > a->input - a->objects) { /* each element takes a byte at least */
        a->short_input = true;
        return NULL;
    }
    if (a->max_objects && n > a->max_objects - a->objects) return NULL;
    a->objects += n;
    mpread_block *b = a->cur;
    if ((!b || b->cap - b->used < n) && !(b = grow(a, n))) return NULL;
    msgpack_object *o = b->objs + b->used;
    b->used += n;
    return o;
}

void mpread_reset(mpread_arena *a)
{
    mpread_block *h = a->head;
    a->objects = 0;
    if (!h) return;
    if (h->next || h->cap > BLOCK_KEEP) { /* the last frame needed more: one block of its size, if not large */
        size_t total = 0;
        for (mpread_block *b = h; b;) {
            mpread_block *next = b->next;
            total += b->cap;
            free(b);
            b = next;
        }
        a->head = a->cur = block_new(total <= BLOCK_KEEP ? total : BLOCK_MIN);
        return;
    }
    h->used = 0;
    a->cur = h;
}

void mpread_free(mpread_arena *a)
{
    for (mpread_block *b = a->head; b;) {
        mpread_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = a->cur = NULL;
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* The formats most of a frame is made of, decoded without a call:
 * unsigned integers (a ClockTime is 64-bit), small negative ones, nil,
 * booleans, strings and bins up to 64 KiB. 1: done (*pp moved);
 * 0: the bytes end first; 2: another format, for dec. */
static inline __attribute__((always_inline)) int simple(const uint8_t **pp, const uint8_t *end, msgpack_object *o)
{
    const uint8_t *p = *pp;
    if (p >= end) return 0;
    uint8_t b = *p;
    size_t left = (size_t)(end - p) - 1, n;
    if (b <= 0x7f) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = b;
        *pp = p + 1;
        return 1;
    }
    if (b >= 0xe0) {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = (int8_t)b;
        *pp = p + 1;
        return 1;
    }
    if ((b & 0xe0) == 0xa0) { /* fixstr */
        n = b & 0x1f;
        if (left < n) return 0;
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)n;
        o->via.str.ptr = (const char *)p + 1;
        *pp = p + 1 + n;
        return 1;
    }
    switch (b) {
    case 0xc0:
        o->type = MSGPACK_OBJECT_NIL;
        *pp = p + 1;
        return 1;
    case 0xc2:
    case 0xc3:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = b == 0xc3;
        *pp = p + 1;
        return 1;
    case 0xc4: /* bin 8: a key */
        if (left < 1 || left - 1 < p[1]) return 0;
        n = p[1];
        o->type = MSGPACK_OBJECT_BIN;
        o->via.bin.size = (uint32_t)n;
        o->via.bin.ptr = (const char *)p + 2;
        *pp = p + 2 + n;
        return 1;
    case 0xc5: /* bin 16: a value */
        if (left < 2) return 0;
        n = (size_t)p[1] << 8 | p[2];
        if (left - 2 < n) return 0;
        o->type = MSGPACK_OBJECT_BIN;
        o->via.bin.size = (uint32_t)n;
        o->via.bin.ptr = (const char *)p + 3;
        *pp = p + 3 + n;
        return 1;
    case 0xd9: /* str 8: a message */
        if (left < 1 || left - 1 < p[1]) return 0;
        n = p[1];
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)n;
        o->via.str.ptr = (const char *)p + 2;
        *pp = p + 2 + n;
        return 1;
    case 0xcc:
        if (left < 1) return 0;
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = p[1];
        *pp = p + 2;
        return 1;
    case 0xcd:
        if (left < 2) return 0;
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = (uint64_t)p[1] << 8 | p[2];
        *pp = p + 3;
        return 1;
    case 0xce:
        if (left < 4) return 0;
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = (uint64_t)p[1] << 24 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 8 | p[4];
        *pp = p + 5;
        return 1;
    case 0xcf:
        if (left < 8) return 0;
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = be(p + 1, 8);
        *pp = p + 9;
        return 1;
    default: return 2;
    }
}

static int dec(mpread_arena *a, const uint8_t **pp, const uint8_t *end, msgpack_object *o, int depth);

/* Decode one object at *pp into o and move *pp past it. 1: done; 0: the
 * bytes end first; -1: not msgpack, too deep, or out of memory. */
static inline __attribute__((always_inline)) int one(mpread_arena *a, const uint8_t **pp, const uint8_t *end,
                                                     msgpack_object *o, int depth)
{
    int r = simple(pp, end, o);
    return r == 2 ? dec(a, pp, end, o, depth) : r;
}

/* The formats simple() leaves: tables, floats, signed integers, ext, and
 * the longer strings and bins. As one(). */
static int dec(mpread_arena *a, const uint8_t **pp, const uint8_t *end, msgpack_object *o, int depth)
{
    const uint8_t *p = *pp;
    if (p >= end) return 0;
    uint8_t b = *p++;
    size_t left = (size_t)(end - p);
    uint64_t n = 0; /* a length or a count */
    int w;          /* width of what follows the type byte */
    if (b >= 0x90 && b <= 0x9f) {
        n = b & 0x0f;
        goto array;
    }
    if (b >= 0x80 && b <= 0x8f) {
        n = b & 0x0f;
        goto map;
    }
    switch (b) {
    case 0xc6: /* bin 32 */
        w = 4;
        if (left < (size_t)w) return 0;
        n = be(p, w);
        p += w;
        goto bin;
    case 0xc7:
    case 0xc8:
    case 0xc9:
        w = 1 << (b - 0xc7);
        if (left < (size_t)w + 1) return 0;
        n = be(p, w);
        o->via.ext.type = (int8_t)p[w];
        p += w + 1;
        goto ext;
    case 0xca: {
        if (left < 4) return 0;
        uint32_t u = (uint32_t)be(p, 4);
        float f;
        memcpy(&f, &u, 4);
        p += 4;
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        goto done;
    }
    case 0xcb: {
        if (left < 8) return 0;
        uint64_t u = be(p, 8);
        double d;
        memcpy(&d, &u, 8);
        p += 8;
        o->type = MSGPACK_OBJECT_FLOAT64;
        o->via.f64 = d;
        goto done;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        w = 1 << (b - 0xd0);
        if (left < (size_t)w) return 0;
        uint64_t u = be(p, w);
        int64_t v = w == 1 ? (int8_t)u : w == 2 ? (int16_t)u
                                     : w == 4   ? (int32_t)u
                                                : (int64_t)u;
        p += w;
        if (v < 0) {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = v;
        } else {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = (uint64_t)v;
        }
        goto done;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        if (left < 1) return 0;
        n = (uint64_t)1 << (b - 0xd4);
        o->via.ext.type = (int8_t)p[0];
        p++;
        goto ext;
    case 0xda: /* str 16, str 32 */
    case 0xdb:
        w = 2 << (b - 0xda);
        if (left < (size_t)w) return 0;
        n = be(p, w);
        p += w;
        goto str;
    case 0xdc:
    case 0xdd:
        w = 2 << (b - 0xdc);
        if (left < (size_t)w) return 0;
        n = be(p, w);
        p += w;
        goto array;
    case 0xde:
    case 0xdf:
        w = 2 << (b - 0xde);
        if (left < (size_t)w) return 0;
        n = be(p, w);
        p += w;
        goto map;
    default: return -1; /* 0xc1 (the formats simple() takes never come here) */
    }

str:
    if ((uint64_t)(end - p) < n) return 0;
    o->type = MSGPACK_OBJECT_STR;
    o->via.str.size = (uint32_t)n;
    o->via.str.ptr = (const char *)p;
    p += n;
    goto done;
bin:
    if ((uint64_t)(end - p) < n) return 0;
    o->type = MSGPACK_OBJECT_BIN;
    o->via.bin.size = (uint32_t)n;
    o->via.bin.ptr = (const char *)p;
    p += n;
    goto done;
ext:
    if ((uint64_t)(end - p) < n) return 0;
    o->type = MSGPACK_OBJECT_EXT;
    o->via.ext.size = (uint32_t)n;
    o->via.ext.ptr = (const char *)p;
    p += n;
    goto done;
array:
    if (depth >= MPREAD_MAX_DEPTH) return -1;
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.size = (uint32_t)n;
    o->via.array.ptr = NULL;
    if (n == 0) goto done;
    if (n > (uint64_t)(end - p)) return 0; /* every element takes a byte: not all here */
    {
        msgpack_object *e = take(a, (size_t)n);
        if (!e) return a->short_input ? 0 : -1;
        o->via.array.ptr = e;
        for (uint64_t i = 0; i < n; i++) {
            int r = one(a, &p, end, &e[i], depth + 1);
            if (r <= 0) return r;
        }
    }
    goto done;
map:
    if (depth >= MPREAD_MAX_DEPTH) return -1;
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)n;
    o->via.map.ptr = NULL;
    if (n == 0) goto done;
    if (2 * n > (uint64_t)(end - p)) return 0;
    {
        /* A pair is two objects side by side, as msgpack_object_kv lays them out. */
        msgpack_object *e = take(a, (size_t)(2 * n));
        if (!e) return a->short_input ? 0 : -1;
        o->via.map.ptr = (msgpack_object_kv *)(void *)e;
        for (uint64_t i = 0; i < 2 * n; i++) {
            int r = one(a, &p, end, &e[i], depth + 1);
            if (r <= 0) return r;
        }
    }
    goto done;

done:
    *pp = p;
    return 1;
}

_Static_assert(sizeof(msgpack_object_kv) == 2 * sizeof(msgpack_object), "a pair is two objects");

ptrdiff_t mpread_object(mpread_arena *a, const char *buf, size_t len, msgpack_object *out)
{
    const uint8_t *p = (const uint8_t *)buf;
    a->input = len;
    a->short_input = false;
    int r = one(a, &p, p + len, out, 0);
    return r > 0 ? (const char *)p - buf : r;
}

/*
 * mpread — decode one msgpack object in place, into msgpack-c's
 * msgpack_object.
 *
 * Why not msgpack-c's unpacker: it is a streaming state machine that
 * re-enters per byte range and builds every object through callbacks, and
 * allocates an array's table from its header alone, so every byte had to
 * pass the guard first; on a node's hot path (a frame of five objects and
 * a key) the two cost about 1,000 instructions per frame, more than the
 * handler. mpread decodes a frame in one recursive pass over its headers,
 * and on a prefix says "need more" (rpc then guards the rest, see rpc.c):
 *  - strings, bins and exts point into the frame's bytes (no copy): they
 *    live as long as the caller keeps those bytes;
 *  - arrays and maps take their element tables from an arena that the
 *    caller reuses frame after frame (blocks kept, rewound by
 *    mpread_reset), so a frame allocates nothing once the arena has grown
 *    to the largest one seen;
 *  - integers and types come out exactly as msgpack-c's unpacker makes them
 *    (a signed format with a non-negative value is POSITIVE_INTEGER, a
 *    float 32 is FLOAT32), which tests/unit/test_mpread.c checks against it.
 * Nesting deeper than MPREAD_MAX_DEPTH is refused, as msgpack-c refuses
 * more than its stack of 32.
 *
 * Thread rule: one arena per reader. Calls: msgpack-c (types only).
 */
#ifndef KUMO_MPREAD_H
#define KUMO_MPREAD_H

#include <msgpack.h>
#include <stddef.h>

#define MPREAD_MAX_DEPTH 32

typedef struct mpread_block mpread_block;

/* Where element tables come from. Zero-initialise it; set max_objects
 * to bound what one object may take (0: no bound). */
typedef struct mpread_arena {
    mpread_block *head; /* blocks, the first one kept across frames */
    mpread_block *cur;  /* the block being filled */
    size_t objects;     /* taken since the last reset */
    size_t max_objects; /* elements one object may hold in all */
    size_t input;       /* bytes of the object being read: a bound on its elements */
    bool short_input;
} mpread_arena;

/* Decode the object at buf[0, len) into *out. Returns the bytes it took
 * (> 0), 0 if buf ends before the object does, -1 if the bytes are not
 * msgpack (0xc1), nest too deep, hold more than max_objects elements, or
 * the arena cannot grow. The arena never holds more elements than len
 * (a whole object has a byte per element at least; tables that would pass
 * that answer "need more"), so a bound on len bounds it too. *out and
 * everything it points to stay valid until the next mpread_reset or
 * mpread_free, and while buf is unchanged. */
ptrdiff_t mpread_object(mpread_arena *a, const char *buf, size_t len, msgpack_object *out);
/* Forget the last frame's objects; keeps the first block. */
void mpread_reset(mpread_arena *a);
void mpread_free(mpread_arena *a);

#endif

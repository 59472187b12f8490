/*
 * mpguard — a bound on what a msgpack stream may make its parser allocate.
 *
 * msgpack-c's unpacker allocates an array's or map's element table as soon
 * as it reads the header, before any element has arrived: nine bytes that
 * declare 2^32 elements make it reserve 96 GiB. The guard reads the same
 * bytes first, incrementally, and refuses a stream in which one top-level
 * object would make the parser allocate more than `limit` bytes: each
 * declared element counts as the MPGUARD_ELEM_COST bytes of its
 * msgpack_object, each string, bin or ext as its length. (Counting an
 * element as its one byte on the wire let a 64 MiB frame declare 64 M
 * elements: 1.5 GiB of element tables, found by tests/fuzz/fuzz_rpcframe.) Feed it
 * every byte before handing it to a decoder (msgpack_unpacker in the
 * replace stream, mpread in rpc, which also relies on it to find where a
 * frame ends); it keeps only a few bytes of state and never allocates.
 *
 * Thread rule: one guard per stream. Calls: nothing.
 */
#ifndef KUMO_MPGUARD_H
#define KUMO_MPGUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MPGUARD_ELEM_COST 24 /* sizeof(msgpack_object) on LP64; checked in mpguard.c */

typedef struct mpguard {
    uint64_t limit;    /* bytes one top-level object may take */
    uint64_t expected; /* objects still to come in the current top-level object */
    uint64_t declared; /* elements + payload bytes declared so far in it */
    uint64_t skip;     /* payload bytes (str, bin, ext) still to pass over */
    uint8_t hdr[9];    /* a header split across feeds */
    uint8_t have, need;
} mpguard;

void mpguard_init(mpguard *g, uint64_t limit);
/* Check the next len bytes of the stream. false: the stream declares more
 * than the limit (or uses a reserved type byte) — drop the connection. */
bool mpguard_feed(mpguard *g, const void *buf, size_t len);
/* The same, but it stops right after the end of a top-level object, so a
 * reader can take one object at a time (rpc.c reads a peer's hello so, under
 * a smaller limit than the requests behind it). Returns how many of the len
 * bytes were checked: len, or fewer when an object ended there; -1 as false
 * above. g->limit may be changed between two objects. */
ptrdiff_t mpguard_feed_object(mpguard *g, const void *buf, size_t len);
/* True between two top-level objects: the bytes fed so far end where an
 * object ended (or nothing was fed). */
bool mpguard_between(const mpguard *g);

#endif

/*
 * apply — what a write does to a key's stored record: the decision the
 * coordinator takes under the key's lock (store_modify), as a pure function
 * of the old record and the request. set, add, replace, append, prepend,
 * cas, incr/decr (with vivify and touch), touch, gat, the meta protocol's
 * win and invalidate, and delete; each sets memcached's result code and,
 * when something is written, the bytes that go to disk and to the replicas.
 *
 * Owns: nothing but write_ctx.buf (a built value), freed by the caller.
 * Calls: record, store (its verdicts only). Thread rule: any thread; no state.
 * Tested by tests/unit/test_apply.c.
 */
#ifndef KUMO_APPLY_H
#define KUMO_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "record.h"
#include "store.h"

#define OP_DELETE_INTERNAL (-1) /* write_ctx.op of a delete */

typedef struct write_ctx {
    int op;
    uint32_t wflags;
    uint64_t cas;
    uint64_t delta;
    uint64_t initial;
    uint64_t ct;
    uint64_t floor;     /* flush_all: records older than this are gone */
    uint32_t now;       /* the write's time (its ClockTime's seconds): when `floor` takes effect */
    uint32_t exp_now;   /* what exptimes are judged by: `now` on the debug clock (clock_shift) */
    const uint8_t *val; /* incoming value (ct already set), or NULL for delete */
    size_t vlen;
    uint8_t *buf; /* built value (append, incr, touch…), freed by the caller */
    int code;
    uint64_t number; /* incr/decr result */
    bool written;
    bool resend; /* nothing written, but w->out goes to the replicas again */
    const void *out;
    size_t outlen;
    uint8_t tomb[RECORD_TOMBSTONE];
} write_ctx;

/* A stored record that is a live value (not a tombstone, not expired by
 * `exp_now`, not flushed by `floor` once `now` reached it); fills *v. The
 * two times differ only by the debug clock's offset (clock.h): a flush is
 * judged on the real timeline, as the ClockTimes it compares are. */
bool apply_live(const void *old, size_t oldlen, uint32_t now, uint32_t exp_now, uint64_t floor, record_value *v);
/* store_modify callbacks; arg is the write_ctx. apply_set runs every SRV_SET
 * operation (w->op, proto.h's OP_*), apply_delete a delete. */
store_verdict apply_set(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen);
store_verdict apply_delete(void *arg, const void *old, size_t oldlen, const void **out, size_t *outlen);
/* Whether apply_set's verdict and bytes for w are the same whatever the
 * stored record (a plain set: no cas), so the store need not read it
 * (store_modify_blind). */
bool apply_blind(const write_ctx *w);

#endif

/*
 * store — the Tokyo Cabinet hash database of a kumo-server.
 *
 * Keys and values are record.h bytes. Every conditional write is a
 * read-compare-write (store_modify), atomic because one thread owns the
 * handle (see the thread rule; store.c says why TC's mutex is not used).
 *
 * Spec string (kumo-server(8) -s): "path.tch[#xmsiz=SIZE][#rcnum=N]" with k/m/g
 * suffixes; other "#name=value" parts are rejected with an error naming them.
 *
 * Thread rule: one thread at a time per handle.
 * Calls: record, Tokyo Cabinet.
 */
#ifndef KUMO_STORE_H
#define KUMO_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo.h"

typedef struct store store;

/* Open (creating if missing) for writing. NULL + err naming the file and
 * TC's reason on failure (missing directory, corrupt file, bad spec). */
store *store_open(const char *spec, char *err);
/* Open an existing file for reading only (kumomergedb's sources): it is
 * never created, repaired or otherwise written. Writes fail. */
store *store_open_readonly(const char *path, char *err);
/* Sync and close; the handle is freed. NULL is a no-op. */
void store_close(store *s);
const char *store_path(const store *s);

/* The stored bytes (value or tombstone) as a malloc'd buffer the caller
 * frees, or NULL if absent (*vlen = 0) or on error. */
void *store_get(store *s, const void *key, size_t klen, size_t *vlen);

/* Unconditional write. 0 / -1 + err. */
int store_put(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err);

/* The general read-modify-write. fn sees the current bytes (NULL, 0 when
 * absent) and decides; it must not call back into the store. */
typedef enum store_verdict {
    STORE_KEEP = 0, /* leave the record as it is */
    STORE_WRITE,    /* write out/outlen (fn-owned buffer, valid until return) */
    STORE_REMOVE,   /* remove the record */
} store_verdict;
typedef store_verdict (*store_modify_fn)(void *arg, const void *old, size_t oldlen,
                                         const void **out, size_t *outlen);
/* Returns the verdict applied (>= 0) or -1 + err on a database error. */
int store_modify(store *s, const void *key, size_t klen, store_modify_fn fn, void *arg, char *err);
/* store_modify for a callback whose verdict and bytes do not depend on the
 * stored record (a plain set): it is asked as if there were none, and what
 * it decides is applied over whatever is there, in one lookup. */
int store_modify_blind(store *s, const void *key, size_t klen, store_modify_fn fn, void *arg, char *err);

/* Replica/rebalance rule: write val (a value or a tombstone) only if there is
 * no record or the stored clocktime is strictly older.
 * Returns 1 written, 0 ignored (stored one is as new or newer), -1 + err. */
int store_update(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err);

/* store_update, and also over a stored record of the same clocktime whose
 * bytes differ (anti-entropy mending a damaged copy with the owners'
 * majority's). Returns 1 written, 0 ignored, -1 + err. */
int store_mend(store *s, const void *key, size_t klen, const void *val, size_t vlen, char *err);

/* Remove only if the stored clocktime is <= ct (tombstone collection).
 * Returns 1 removed, 0 kept, -1 + err. */
int store_remove_if_older(store *s, const void *key, size_t klen, uint64_t ct, char *err);

/* Visit every record (values and tombstones). fn returns 0 to go on, 1 to
 * stop. Records added during the walk may or may not be seen. The walk
 * copies each record, so fn may call any other store function.
 * Returns 0, or -1 + err. */
typedef int (*store_iter_fn)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);
int store_iterate(store *s, store_iter_fn fn, void *arg, char *err);

/* The same walk in steps, so an event loop can serve requests between
 * them: begin (0, 1 when another walk holds the database's one iterator —
 * try later —, or -1 + err), then step (each step visits at most `max`
 * records and stops after the one that reaches `max_bytes` of keys and
 * values) until it returns 0 (the walk is
 * over: fn said stop, or no record is left) or -1 + err (also over); 1
 * means more records remain. Records written between steps may be visited
 * or not, and a record rewritten may be visited twice: walkers must be
 * idempotent. abort ends a walk early. store_iterate refuses to run while a
 * stepped walk is open. */
int store_walk_begin(store *s, char *err);
int store_walk_step(store *s, store_iter_fn fn, void *arg, size_t max, size_t max_bytes, char *err);
void store_walk_abort(store *s);

/* Walks step over damaged parts of the file instead of failing on them
 * (each logged with the file and offsets): how many spots, and how many
 * bytes, since the store was opened. The records there are missing from
 * this copy until something brings them back. */
void store_damage(const store *s, uint64_t *spots, uint64_t *bytes);

/* store_open, then one walk over the whole file. If it stepped over
 * damage, the file is rebuilt from every record that could be read (a
 * damaged file's index also leads writes into the damage, and TC refuses
 * them) and the damaged file is kept as <path>.damaged (.damaged.1, ... if
 * that exists). A file shorter than its header says (its last record torn
 * by a crash), which TC refuses to open, first gets its header's size
 * set to what is there, so the torn record is damage. *out says what was
 * found; when the rebuild failed (out->rebuild_error), the store is the
 * damaged file. NULL + err if it cannot be opened or read at all, or if
 * nothing or next to nothing of it could be read (that file is left as it
 * is: more likely a format this build does not read than a lost disk). */
typedef struct store_check {
    uint64_t records;      /* read by the check */
    uint64_t spots, bytes; /* damage stepped over */
    uint64_t kept_records; /* in the rebuilt file */
    char kept[4096];       /* where the damaged file was kept ("" if not rebuilt) */
    char rebuild_error[256];
} store_check;
store *store_open_checked(const char *spec, store_check *out, char *err);

/* Number of records (tombstones included) and file size in bytes. */
uint64_t store_count(store *s);
uint64_t store_file_size(store *s);

/* Consistent copy of the database to `dst` (TC's tchdbcopy, then fsync and
 * rename from dst.tmp). 0 / -1 + err. */
int store_backup(store *s, const char *dst, char *err);

#endif

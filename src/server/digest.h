/*
 * digest — anti-entropy on kumo-server (docs/anti-entropy.md): what the
 * owners of a range compare to find the records one of them lacks.
 *
 *   SRV_DIGEST      per vnode range of this server's whs, the number of
 *                   records held and order-independent digests of their
 *                   (dbkey, ClockTime) pairs and, asked for, of (dbkey,
 *                   ClockTime, value hash), tombstones included
 *   SRV_RANGE_KEYS  (dbkey, ClockTime, tombstone, value hash if asked for)
 *                   of every record held in the hash intervals asked for
 *   SRV_FETCH       raw records (tombstones included) by dbkey
 *
 * The first two walk the whole database (data_walk, in steps, so requests
 * keep being served). Such a walk is a *job*: the request that starts it is
 * answered at once with the job's id, and the caller polls that id for the
 * progress and, once the walk is over, the result. Polling instead of one
 * long-held call lets a tool start the walks of every server before it
 * waits for any, show progress, and keep its ordinary call timeout.
 *
 * With --verify-interval it also runs a background pass: the ranges this
 * server coordinates are compared with each co-owner's and the records one
 * side lacks are copied across, newer wins, and copies of one ClockTime
 * whose bytes differ get the bytes most owners hold (digest.c says how).
 *
 * Owns: the jobs (server.digest) and their results; the digest function;
 * the background pass and its counters.
 * Calls: data.c (data_walk), store, record, hashspace, ring, rpc,
 * cluster (cluster_peer).
 * Thread rule: main loop, like every server module.
 */
#ifndef KUMO_SERVER_DIGEST_H
#define KUMO_SERVER_DIGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"
#include "server.h"

/* Set up server.digest. 0, or -1 + err (out of memory). */
int digest_start(server *s, char *err);
/* Free every job, walking or not: call after the event loop has ended
 * (a walk's next step never runs then). */
void digest_stop(server *s);
/* SRV_DIGEST, SRV_RANGE_KEYS and SRV_FETCH; false for any other method. */
bool digest_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

/* Run a background pass (docs/anti-entropy.md §5) as soon as possible: now
 * if none runs, else right after the one running. For a server that is in
 * sync when a co-owner rejoins: the pass sends the rejoined server what it
 * lacks of the ranges this one leads. A catching-up server leads nothing
 * and skips the pass. Main loop only. */
void digest_pass_now(server *s);
/* The pass's counters, for --metrics (main.c's collect function). */
void digest_metrics(server *s, metrics_out *o);

/* The 64-bit digest of one record: a hash of its dbkey bytes and its
 * ClockTime. A range's digest is the sum (mod 2^64) of its records'. Not a
 * cryptographic hash: it finds accidents, not an adversary's collisions. */
uint64_t digest_record(const void *dbkey, size_t klen, uint64_t clocktime);
/* The 64-bit hash of a record's bytes after its ClockTime (meta, flags,
 * exptime, payload; nothing for a tombstone), and the digest of a record
 * with it: what SRV_DIGEST's vdigest sums and SRV_RANGE_KEYS lists when
 * asked with values 1, so that two copies of one ClockTime with other bytes
 * (a bit flipped on one disk) differ. */
uint64_t digest_value(const void *val, size_t vlen);
uint64_t digest_record_value(uint64_t record, uint64_t vhash);

#endif

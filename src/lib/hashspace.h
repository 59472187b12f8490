/*
 * hashspace — an immutable, reference-counted snapshot of the ring plus the
 * ClockTime of the membership change that made it.
 *
 * Every daemon holds two: whs (routes writes, decides coordinators) and rhs
 * (routes reads). They differ only during a replace. A daemon swaps its
 * pointer to a new snapshot and unrefs the old one; readers take a ref for
 * as long as they use it, so the request path takes no lock on it.
 *
 * Wire form ("seed", msgpack): [ [node...], clocktime:uint ]
 *   node = bin(1 + identity): byte 0 = 1 active / 0 fault, then the
 *   identity bytes of net.h (6 for IPv4, 18 for IPv6).
 *
 * A seed lists at most HASHSPACE_MAX_NODES nodes: far more servers than a
 * cluster has, and a bound on what a received seed costs (its ring takes
 * 128 SHA-1s per node, its duplicate check compares every pair).
 *
 * Thread rule: snapshots are immutable; refcounts are atomic.
 * Calls: ring, net, msgpack.
 */
#ifndef KUMO_HASHSPACE_H
#define KUMO_HASHSPACE_H

#include <msgpack.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kumo.h"
#include "ring.h"

#define HASHSPACE_MAX_NODES 4096

typedef struct hashspace {
    _Atomic int refs;
    uint64_t clocktime;
    ring ring;
} hashspace;

/* A new snapshot with refcount 1 (nodes copied); NULL on allocation failure. */
hashspace *hashspace_new(const ring_node *nodes, size_t n, uint64_t clocktime);
hashspace *hashspace_ref(hashspace *hs);
void hashspace_unref(hashspace *hs);

/* true when no node is active (nothing can be routed). */
bool hashspace_empty(const hashspace *hs);
/* true when the snapshot lists no node at all: what a freshly started
 * manager holds, which must never replace a real one. (All nodes fault is
 * not blank: it is news that must reach every router.) */
static inline bool hashspace_blank(const hashspace *hs) { return !hs || hs->ring.nnodes == 0; }
/* Same nodes, same order, same active flags (clocktime ignored). */
bool hashspace_same_nodes(const hashspace *a, const hashspace *b);
/* Index of `addr` in hs->ring.nodes, or -1. */
int hashspace_find(const hashspace *hs, const net_addr *addr);

/* Owners of `hash`: the live ones only, in clockwise order (fault nodes
 * skipped, never substituted). Writes node indexes; returns the count
 * (0 when all three are fault or the ring is empty). out[0] is the primary. */
size_t hashspace_live_owners(const hashspace *hs, uint64_t hash, uint32_t out[KUMO_REPLICAS]);
/* true if addr is one of the live owners of hash. */
bool hashspace_is_owner(const hashspace *hs, uint64_t hash, const net_addr *addr);
/* true if addr is the first live owner of hash. */
bool hashspace_is_primary(const hashspace *hs, uint64_t hash, const net_addr *addr);

int hashspace_pack(const hashspace *hs, msgpack_packer *pk);
/* Parse a seed; NULL + err if malformed (wrong types, bad node bytes, a
 * node twice, more than HASHSPACE_MAX_NODES nodes). */
hashspace *hashspace_unpack(const msgpack_object *o, char *err);

#endif

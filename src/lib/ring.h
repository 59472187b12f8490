/*
 * ring — consistent-hash placement, bit-compatible with kumofs 0.4
 * (docs/protocol.md §8; known answers in tests/unit/test_ring.c).
 *
 *   hash(key)   = first 8 bytes of SHA-1(key) read as a little-endian u64
 *   vnode 0     = hash(node's ring key)          (its address's identity
 *                 bytes, net.h: 6 for IPv4, as in 0.4; or the key its
 *                 database carries, server/identity.h)
 *   vnode i     = hash(8 little-endian bytes of vnode i-1), 128 per node
 *   the vnodes of all nodes, fault ones included, stable-sorted by hash
 *   (ties keep node order); a key's owners are the first 3 distinct nodes
 *   met clockwise from the first vnode >= its hash, wrapping.
 *
 * Fault nodes keep their slots; callers skip them (ring_owners reports
 * them; hashspace.h picks the live ones).
 *
 * Thread rule: a built ring is immutable and may be read from any thread.
 * Calls: net (identity bytes), libcrypto SHA1.
 */
#ifndef KUMO_RING_H
#define KUMO_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo.h"
#include "net.h"

#define RING_VNODES 128
#define RING_KEY_MAX 64 /* bytes of a node's own ring key */

typedef struct ring_node {
    net_addr addr; /* where it is reached */
    /* What it is placed by: keylen 0 = its address's identity bytes (0.4's
     * placement, docs/protocol.md §8); else key[0..keylen), which
     * stays when the address changes. */
    uint8_t keylen;
    uint8_t key[RING_KEY_MAX];
    bool active;  /* false = fault */
    bool catchup; /* attached but not yet holding every acknowledged write of
                   * its ranges: receives replications, never coordinates a
                   * write or answers a read (hashspace.h) */
} ring_node;

typedef struct ring_vnode {
    uint64_t hash;
    uint32_t node; /* index into ring.nodes */
} ring_vnode;

typedef struct ring {
    size_t nnodes;
    ring_node *nodes; /* in the order given (whs order) */
    size_t nvnodes;
    ring_vnode *vnodes; /* sorted by hash */
    /* ring_owners' answer for a hash that lands on vnodes[i], computed by
     * ring_build: owners[i * KUMO_REPLICAS ...], nowners of them (the same
     * for every vnode). A lookup is a binary search and a copy. */
    uint32_t *owners;
    size_t nowners;
} ring;

uint64_t ring_hash(const void *data, size_t len);
/* The bytes node n is placed by (its key, or its address's identity). */
size_t ring_node_key(const ring_node *n, const uint8_t **out);
/* Same placement: equal ring keys. */
bool ring_same_key(const ring_node *a, const ring_node *b);

/* Build from nodes[0..n) (copied). Returns 0, or -1 on allocation failure.
 * n == 0 is allowed (an empty ring owns nothing). */
int ring_build(ring *r, const ring_node *nodes, size_t n);
void ring_free(ring *r);

/* The up-to-3 distinct owners of `hash`, in clockwise order, fault ones
 * included. Writes node indexes to out; returns how many (min(3, nnodes)). */
size_t ring_owners(const ring *r, uint64_t hash, uint32_t out[KUMO_REPLICAS]);

#endif

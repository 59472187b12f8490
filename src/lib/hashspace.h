/*
 * hashspace — an immutable, reference-counted snapshot of the ring plus the
 * ClockTime of the membership change that made it.
 *
 * Every daemon holds two: whs (routes writes, decides coordinators) and rhs
 * (routes reads). They differ only during a replace. A daemon swaps its
 * pointer to a new snapshot and unrefs the old one; readers take a ref for
 * as long as they use it, so the request path takes no lock on it.
 *
 * Wire form ("seed", msgpack): [ [node...], clocktime:uint, version:uint ]
 *   (a seed of 2 elements, from a daemon before versions, is version 0).
 *   node = bin(1 + identity): byte 0 = state bits (0x01 active, else fault;
 *   0x02 catching up), then the identity bytes of net.h (6 for IPv4, 18
 *   for IPv6): a node placed by its address, as in 0.4.
 *   A node with a ring key of its own (ring.h) sets 0x04 in byte 0, and
 *   byte 1 is the address's length: bin(2 + address + key).
 *
 * Node states (docs/architecture.md §12): an *in-sync* node (active, not
 * catching up) holds every acknowledged write of its ranges; a *catching-up*
 * node is live and receives every replicated write, but until the manager
 * clears its flag it may lack older ones, so it never coordinates a write
 * and never answers a read; a *fault* node is skipped by everything.
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

#define HS_NODE_ACTIVE 0x01
#define HS_NODE_CATCHUP 0x02
#define HS_NODE_KEYED 0x04

/* The version numbers the membership history (docs/architecture.md §11.1):
 * every change of who is a member, and of whether a member is catching
 * up, makes version + 1, agreed by the managers through the servers; a
 * server found lost is marked fault within the version it is in. whs and
 * rhs of one pair carry one version. */
typedef struct hashspace {
    _Atomic int refs;
    uint64_t clocktime;
    uint64_t version;
    ring ring;
} hashspace;

/* A new snapshot with refcount 1 (nodes copied), version 0 until the
 * caller sets it, before anyone else sees it; NULL on allocation failure. */
hashspace *hashspace_new(const ring_node *nodes, size_t n, uint64_t clocktime);
/* A new snapshot of hs's nodes with another version and ClockTime. */
hashspace *hashspace_derive(const hashspace *hs, uint64_t version, uint64_t clocktime);
hashspace *hashspace_ref(hashspace *hs);
void hashspace_unref(hashspace *hs);

/* true when no node is active (nothing can be routed). */
bool hashspace_empty(const hashspace *hs);
/* true when the snapshot lists no node at all: what a freshly started
 * manager holds, which must never replace a real one. (All nodes fault is
 * not blank: it is news that must reach every router.) */
static inline bool hashspace_blank(const hashspace *hs) { return !hs || hs->ring.nnodes == 0; }
/* Same nodes, same order, same state flags and keys (clocktime ignored). */
bool hashspace_same_nodes(const hashspace *a, const hashspace *b);
/* Same nodes in the same order with the same catching-up flags, fault
 * marks aside: what two snapshots of one version have in common. */
bool hashspace_same_members(const hashspace *a, const hashspace *b);
/* Whether a daemon holding `cur` adopts `n`, pushed by a manager or synced
 * by the partner; the one rule of servers, gateways and managers. Never a
 * blank one (what a manager that knows nothing yet holds); always one when
 * cur is blank, or newer; with `ties`, one of the same ClockTime that lists
 * other nodes or states (a manager repeats a change's ClockTime when it
 * pushes the same change again with new flags). Managers take no ties from
 * each other: two changes of one ClockTime would be swapped back and forth. */
bool hashspace_supersedes(const hashspace *n, const hashspace *cur, bool ties);
/* What a daemon holding `cur` takes when `n` arrives (pushed by a manager,
 * synced by the partner, learned from a server): the one rule of servers,
 * gateways and managers. NULL keeps cur; otherwise a new reference:
 *   - never a blank n; always n when cur is blank;
 *   - n when its version is newer: a later change of the history;
 *   - nothing when it is older;
 *   - at the same version and with the same nodes in the same order (the
 *     only change a version allows is a live member marked fault): cur
 *     with n's fault marks added, so two managers that each saw a server
 *     go merge rather than undo each other; the ClockTime is the newer;
 *     returned only if that differs from cur;
 *   - at the same version with other nodes (version 0: seeds from daemons
 *     before versions): hashspace_supersedes(n, cur, ties). */
hashspace *hashspace_adopt(hashspace *n, hashspace *cur, bool ties);
/* Index of `addr` in hs->ring.nodes, or -1. */
int hashspace_find(const hashspace *hs, const net_addr *addr);

/* Owners of `hash`: the live ones only, in clockwise order (fault nodes
 * skipped, never substituted). Writes node indexes; returns the count
 * (0 when all three are fault or the ring is empty). out[0] is the primary. */
size_t hashspace_live_owners(const hashspace *hs, uint64_t hash, uint32_t out[KUMO_REPLICAS]);
/* true if addr is one of the live owners of hash. */
bool hashspace_is_owner(const hashspace *hs, uint64_t hash, const net_addr *addr);
/* Owners of `hash` that may serve: live and in sync (not catching up), in
 * clockwise order. out[0] is the coordinator of writes (in whs) and the
 * primary read target (in rhs). Returns the count (0: nobody may serve). */
size_t hashspace_serving_owners(const hashspace *hs, uint64_t hash, uint32_t out[KUMO_REPLICAS]);
/* true if addr is the coordinator of hash: its first serving owner. */
bool hashspace_is_primary(const hashspace *hs, uint64_t hash, const net_addr *addr);
/* The coordinator of hash's writes: the first serving owner in whs, or,
 * while it has none (during a replace, when every new owner is still
 * catching up), the first serving owner in rhs, which holds every
 * acknowledged write and replicates to the owners in both. NULL if
 * neither has one. */
const net_addr *hashspace_coordinator(const hashspace *whs, const hashspace *rhs, uint64_t hash);
/* true if addr is listed, live and catching up. */
bool hashspace_catching_up(const hashspace *hs, const net_addr *addr);

/* Who copies the records of `hash` in a replace from rhs (the layout the
 * data is in) to whs (the one it moves to), and whether that can make the
 * catching-up owners complete. The manager and every server compute it from
 * the same two snapshots, so they agree without talking.
 *   holders: the owners in rhs and in whs, in that order, without repeats;
 *            an rhs owner that is fault and gone from whs (detached: the
 *            operator declared its data lost) is left out. A whs owner's
 *            state is its whs entry; an owner in rhs only counts as
 *            catching up if it was fault in rhs (it missed the piece's
 *            writes meanwhile), and is live if its whs entry says so.
 *   sender:  the first rhs owner that is live and in sync; it holds every
 *            acknowledged write and alone sends (-1: none).
 *   exchange: no sender, and no holder is an in-sync node that is down:
 *            every owner was away at some point, so every live holder sends
 *            to every other catching-up owner (newest wins); complete only
 *            if every holder took part.
 *   blocked: no sender and an in-sync holder is down: it alone may hold
 *            the newest writes, so nobody sends and the piece waits. */
typedef struct hashspace_plan {
    size_t n;
    net_addr holder[2 * KUMO_REPLICAS];
    ring_node state[2 * KUMO_REPLICAS];
    int sender;
    bool exchange, blocked;
} hashspace_plan;
void hashspace_copy_plan(const hashspace *whs, const hashspace *rhs, uint64_t hash, hashspace_plan *out);

/* A proposal number of the membership history (docs/architecture.md §11.1):
 * the proposing manager's ClockTime, then its address, so that two
 * managers never use the same one. Wire form: [clocktime, bin address]. */
typedef struct hashspace_ballot {
    uint64_t ct;
    net_addr by;
} hashspace_ballot;
/* <0, 0, >0 as a orders before, with or after b (by ClockTime, then address). */
int hashspace_ballot_cmp(const hashspace_ballot *a, const hashspace_ballot *b);
void hashspace_ballot_pack(const hashspace_ballot *b, msgpack_packer *pk);
/* false if o is not a ballot. */
bool hashspace_ballot_unpack(const msgpack_object *o, hashspace_ballot *out);

int hashspace_pack(const hashspace *hs, msgpack_packer *pk);
/* Parse a seed; NULL + err if malformed (wrong types, bad node bytes, a
 * node twice, by address or by ring key, more than HASHSPACE_MAX_NODES
 * nodes). */
hashspace *hashspace_unpack(const msgpack_object *o, char *err);

#endif

/*
 * hashspace — immutable, reference-counted ring snapshots and their seed
 * wire form (see hashspace.h, docs/protocol.md §2.2).
 *
 * Owns: each snapshot and its ring, freed by the last hashspace_unref.
 * Calls: ring (placement), net (net_equal, net_from_id), msgpack-c.
 * Thread rule: a snapshot is never written after hashspace_new/_unpack
 * returns, so any thread may read one it holds a reference to. Refcounts
 * are atomic: taking a ref is relaxed (the caller already holds one, which
 * keeps the snapshot alive); dropping one is acq_rel so the thread that
 * frees sees every other thread's reads finished.
 *
 * Fault nodes keep their ring slots and are skipped, never replaced by a
 * 4th node, as in kumofs 0.4: with one fault owner a key has two copies.
 */
#include "hashspace.h"

#include <stdlib.h>
#include <string.h>

hashspace *hashspace_new(const ring_node *nodes, size_t n, uint64_t clocktime)
{
    hashspace *hs = malloc(sizeof(*hs));
    if (!hs)
        return NULL;
    if (ring_build(&hs->ring, nodes, n) != 0) {
        free(hs);
        return NULL;
    }
    atomic_init(&hs->refs, 1);
    hs->clocktime = clocktime;
    hs->version = 0;
    return hs;
}

hashspace *hashspace_derive(const hashspace *hs, uint64_t version, uint64_t clocktime)
{
    hashspace *n = hashspace_new(hs->ring.nodes, hs->ring.nnodes, clocktime);
    if (n) n->version = version;
    return n;
}

hashspace *hashspace_ref(hashspace *hs)
{
    if (hs)
        atomic_fetch_add_explicit(&hs->refs, 1, memory_order_relaxed);
    return hs;
}

void hashspace_unref(hashspace *hs)
{
    if (!hs)
        return;
    if (atomic_fetch_sub_explicit(&hs->refs, 1, memory_order_acq_rel) == 1) {
        ring_free(&hs->ring);
        free(hs);
    }
}

bool hashspace_empty(const hashspace *hs)
{
    if (!hs)
        return true;
    for (size_t i = 0; i < hs->ring.nnodes; i++)
        if (hs->ring.nodes[i].active)
            return false;
    return true;
}

bool hashspace_same_nodes(const hashspace *a, const hashspace *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->ring.nnodes != b->ring.nnodes)
        return false;
    for (size_t i = 0; i < a->ring.nnodes; i++) {
        const ring_node *x = &a->ring.nodes[i], *y = &b->ring.nodes[i];
        if (x->active != y->active || x->catchup != y->catchup || !net_equal(&x->addr, &y->addr) ||
            x->keylen != y->keylen || memcmp(x->key, y->key, x->keylen) != 0)
            return false;
    }
    return true;
}

bool hashspace_supersedes(const hashspace *n, const hashspace *cur, bool ties)
{
    if (hashspace_blank(n)) return false;
    if (hashspace_blank(cur) || n->clocktime > cur->clocktime) return true;
    return ties && n->clocktime == cur->clocktime && !hashspace_same_nodes(n, cur);
}

bool hashspace_same_members(const hashspace *a, const hashspace *b)
{
    if (a->ring.nnodes != b->ring.nnodes) return false;
    for (size_t i = 0; i < a->ring.nnodes; i++) {
        const ring_node *x = &a->ring.nodes[i], *y = &b->ring.nodes[i];
        if (!ring_same_key(x, y) || !net_equal(&x->addr, &y->addr) || x->catchup != y->catchup) return false;
    }
    return true;
}

hashspace *hashspace_adopt(hashspace *n, hashspace *cur, bool ties)
{
    if (hashspace_blank(n)) return NULL;
    if (hashspace_blank(cur) || n->version > cur->version) return hashspace_ref(n);
    if (n->version < cur->version) return NULL;
    if (!hashspace_same_members(n, cur)) return hashspace_supersedes(n, cur, ties) ? hashspace_ref(n) : NULL;
    bool added = false;
    for (size_t i = 0; i < n->ring.nnodes; i++) added |= cur->ring.nodes[i].active && !n->ring.nodes[i].active;
    if (!added) return n->clocktime > cur->clocktime && hashspace_same_nodes(n, cur) ? hashspace_ref(n) : NULL;
    ring_node *nodes = malloc(n->ring.nnodes * sizeof(*nodes));
    if (!nodes) return NULL;
    memcpy(nodes, cur->ring.nodes, n->ring.nnodes * sizeof(*nodes));
    for (size_t i = 0; i < n->ring.nnodes; i++) nodes[i].active = nodes[i].active && n->ring.nodes[i].active;
    hashspace *m = hashspace_new(nodes, n->ring.nnodes, n->clocktime > cur->clocktime ? n->clocktime : cur->clocktime);
    free(nodes);
    if (m) m->version = n->version;
    return m;
}

int hashspace_find(const hashspace *hs, const net_addr *addr)
{
    for (size_t i = 0; i < hs->ring.nnodes; i++)
        if (net_equal(&hs->ring.nodes[i].addr, addr))
            return (int)i;
    return -1;
}

size_t hashspace_live_owners(const hashspace *hs, uint64_t hash, uint32_t out[KUMO_REPLICAS])
{
    uint32_t all[KUMO_REPLICAS];
    size_t n = ring_owners(&hs->ring, hash, all), live = 0;
    for (size_t i = 0; i < n; i++)
        if (hs->ring.nodes[all[i]].active)
            out[live++] = all[i];
    return live;
}

size_t hashspace_serving_owners(const hashspace *hs, uint64_t hash, uint32_t out[KUMO_REPLICAS])
{
    uint32_t all[KUMO_REPLICAS];
    size_t n = ring_owners(&hs->ring, hash, all), live = 0;
    for (size_t i = 0; i < n; i++)
        if (hs->ring.nodes[all[i]].active && !hs->ring.nodes[all[i]].catchup)
            out[live++] = all[i];
    return live;
}

const net_addr *hashspace_coordinator(const hashspace *whs, const hashspace *rhs, uint64_t hash)
{
    uint32_t own[KUMO_REPLICAS];
    if (hashspace_serving_owners(whs, hash, own) > 0) return &whs->ring.nodes[own[0]].addr;
    if (rhs && hashspace_serving_owners(rhs, hash, own) > 0) return &rhs->ring.nodes[own[0]].addr;
    return NULL;
}

bool hashspace_catching_up(const hashspace *hs, const net_addr *addr)
{
    int i = hashspace_find(hs, addr);
    return i >= 0 && hs->ring.nodes[i].active && hs->ring.nodes[i].catchup;
}

bool hashspace_is_owner(const hashspace *hs, uint64_t hash, const net_addr *addr)
{
    uint32_t own[KUMO_REPLICAS];
    size_t n = hashspace_live_owners(hs, hash, own);
    for (size_t i = 0; i < n; i++)
        if (net_equal(&hs->ring.nodes[own[i]].addr, addr))
            return true;
    return false;
}

bool hashspace_is_primary(const hashspace *hs, uint64_t hash, const net_addr *addr)
{
    uint32_t own[KUMO_REPLICAS];
    return hashspace_serving_owners(hs, hash, own) > 0 &&
           net_equal(&hs->ring.nodes[own[0]].addr, addr);
}

static bool plan_has(const hashspace_plan *p, const net_addr *a)
{
    for (size_t i = 0; i < p->n; i++)
        if (net_equal(&p->holder[i], a)) return true;
    return false;
}

/* The state of an rhs owner of the piece that does not own it in whs: it
 * kept receiving the piece's writes only while it was live in rhs (a loss
 * marks both spaces fault, and only the switch rhs := whs undoes it), so one
 * that was fault there counts as catching up for this piece, whatever its
 * whs entry says. Its liveness is its whs entry's, if it has one. */
static bool rhs_only_state(const hashspace *whs, const ring_node *r, ring_node *out)
{
    int at = hashspace_find(whs, &r->addr);
    if (at < 0 && !r->active) return false; /* detached */
    *out = *r;
    if (at >= 0) out->active = whs->ring.nodes[at].active;
    out->catchup = r->catchup || !r->active || (at >= 0 && whs->ring.nodes[at].catchup);
    return true;
}

void hashspace_copy_plan(const hashspace *whs, const hashspace *rhs, uint64_t hash, hashspace_plan *out)
{
    uint32_t w[KUMO_REPLICAS], r[KUMO_REPLICAS];
    size_t nw = ring_owners(&whs->ring, hash, w), nr = ring_owners(&rhs->ring, hash, r), from_rhs;
    out->n = 0;
    for (size_t i = 0; i < nr; i++) {
        const ring_node *rn = &rhs->ring.nodes[r[i]];
        ring_node st;
        bool whs_owner = false;
        for (size_t k = 0; k < nw; k++) whs_owner = whs_owner || net_equal(&whs->ring.nodes[w[k]].addr, &rn->addr);
        if (plan_has(out, &rn->addr)) continue;
        if (whs_owner) st = whs->ring.nodes[hashspace_find(whs, &rn->addr)];
        else if (!rhs_only_state(whs, rn, &st)) continue;
        out->holder[out->n] = rn->addr;
        out->state[out->n++] = st;
    }
    from_rhs = out->n;
    for (size_t i = 0; i < nw; i++) {
        const ring_node *wn = &whs->ring.nodes[w[i]];
        if (plan_has(out, &wn->addr)) continue;
        out->holder[out->n] = wn->addr;
        out->state[out->n++] = *wn;
    }
    out->sender = -1;
    out->exchange = out->blocked = false;
    bool insync_down = false;
    for (size_t i = 0; i < out->n; i++) {
        const ring_node *st = &out->state[i];
        if (st->catchup) continue;
        if (st->active && i < from_rhs && out->sender < 0) out->sender = (int)i;
        if (!st->active) insync_down = true;
    }
    if (out->sender < 0) {
        out->blocked = insync_down;
        out->exchange = !insync_down;
    }
}

int hashspace_ballot_cmp(const hashspace_ballot *a, const hashspace_ballot *b)
{
    if (a->ct != b->ct) return a->ct < b->ct ? -1 : 1;
    return net_compare(&a->by, &b->by);
}

void hashspace_ballot_pack(const hashspace_ballot *b, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, b->ct);
    msgpack_pack_bin(pk, b->by.len);
    msgpack_pack_bin_body(pk, b->by.id, b->by.len);
}

bool hashspace_ballot_unpack(const msgpack_object *o, hashspace_ballot *out)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2) return false;
    const msgpack_object *ct = &o->via.array.ptr[0], *by = &o->via.array.ptr[1];
    if (ct->type != MSGPACK_OBJECT_POSITIVE_INTEGER || by->type != MSGPACK_OBJECT_BIN ||
        (by->via.bin.size != NET_ID_V4 && by->via.bin.size != NET_ID_V6))
        return false;
    memset(out, 0, sizeof(*out));
    out->ct = ct->via.u64;
    out->by.len = (uint8_t)by->via.bin.size;
    memcpy(out->by.id, by->via.bin.ptr, by->via.bin.size);
    return true;
}

int hashspace_pack(const hashspace *hs, msgpack_packer *pk)
{
    const ring *r = &hs->ring;
    if (msgpack_pack_array(pk, 3) != 0 || msgpack_pack_array(pk, r->nnodes) != 0)
        return -1;
    for (size_t i = 0; i < r->nnodes; i++) {
        const ring_node *nd = &r->nodes[i];
        uint8_t buf[2 + NET_ID_MAX + RING_KEY_MAX];
        size_t len = nd->addr.len <= NET_ID_MAX ? nd->addr.len : NET_ID_MAX, n = 0;
        buf[n++] = (uint8_t)((nd->active ? HS_NODE_ACTIVE : 0) | (nd->catchup ? HS_NODE_CATCHUP : 0) |
                             (nd->keylen ? HS_NODE_KEYED : 0));
        if (nd->keylen) buf[n++] = (uint8_t)len;
        memcpy(buf + n, nd->addr.id, len);
        n += len;
        if (nd->keylen) {
            size_t kl = nd->keylen <= RING_KEY_MAX ? nd->keylen : RING_KEY_MAX;
            memcpy(buf + n, nd->key, kl);
            n += kl;
        }
        if (msgpack_pack_bin(pk, n) != 0 || msgpack_pack_bin_body(pk, buf, n) != 0)
            return -1;
    }
    if (msgpack_pack_uint64(pk, hs->clocktime) != 0) return -1;
    return msgpack_pack_uint64(pk, hs->version) != 0 ? -1 : 0;
}

/* One node of a seed: bin (or str, from older encoders) of 1 + identity. */
static int unpack_node(const msgpack_object *o, ring_node *out, size_t idx, char *err)
{
    const uint8_t *p;
    size_t len;
    if (o->type == MSGPACK_OBJECT_BIN) {
        p = (const uint8_t *)o->via.bin.ptr;
        len = o->via.bin.size;
    } else if (o->type == MSGPACK_OBJECT_STR) {
        p = (const uint8_t *)o->via.str.ptr;
        len = o->via.str.size;
    } else {
        return kumo_err(err, "hash space seed: node %zu is not raw bytes", idx);
    }
    if (len < 1 || (p[0] & ~(HS_NODE_ACTIVE | HS_NODE_CATCHUP | HS_NODE_KEYED)))
        return kumo_err(err, "hash space seed: node %zu has no valid state byte", idx);
    memset(out, 0, sizeof(*out));
    size_t alen = len - 1, at = 1;
    if (p[0] & HS_NODE_KEYED) {
        if (len < 2 || (size_t)p[1] > len - 2)
            return kumo_err(err, "hash space seed: node %zu has no valid address length", idx);
        alen = p[1];
        at = 2;
        size_t klen = len - 2 - alen;
        if (klen < 1 || klen > RING_KEY_MAX)
            return kumo_err(err, "hash space seed: node %zu has a %zu-byte ring key (1 to %d)", idx, klen, RING_KEY_MAX);
        memcpy(out->key, p + 2 + alen, klen);
        out->keylen = (uint8_t)klen;
    }
    if (net_from_id(&out->addr, p + at, alen) != 0)
        return kumo_err(err, "hash space seed: node %zu has a %zu-byte address", idx, alen);
    out->active = p[0] & HS_NODE_ACTIVE;
    out->catchup = p[0] & HS_NODE_CATCHUP;
    return 0;
}

hashspace *hashspace_unpack(const msgpack_object *o, char *err)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2 || o->via.array.size > 3) {
        kumo_err(err, "hash space seed: not an array of 2 or 3");
        return NULL;
    }
    const msgpack_object *nodes = &o->via.array.ptr[0];
    const msgpack_object *ct = &o->via.array.ptr[1];
    const msgpack_object *ver = o->via.array.size > 2 ? &o->via.array.ptr[2] : NULL;
    if (ver && ver->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        kumo_err(err, "hash space seed: version is not an unsigned integer");
        return NULL;
    }
    if (nodes->type != MSGPACK_OBJECT_ARRAY) {
        kumo_err(err, "hash space seed: node list is not an array");
        return NULL;
    }
    if (ct->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        kumo_err(err, "hash space seed: clocktime is not an unsigned integer");
        return NULL;
    }

    size_t n = nodes->via.array.size;
    if (n > HASHSPACE_MAX_NODES) {
        kumo_err(err, "hash space seed: %zu nodes, more than %d", n, HASHSPACE_MAX_NODES);
        return NULL;
    }
    ring_node *list = NULL;
    if (n > 0) {
        list = calloc(n, sizeof(*list));
        if (!list) {
            kumo_err(err, "hash space seed: out of memory");
            return NULL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (unpack_node(&nodes->via.array.ptr[i], &list[i], i, err) != 0)
            goto fail;
        /* A node listed twice would own two slots of one key's replicas. */
        for (size_t j = 0; j < i; j++) {
            if (net_equal(&list[j].addr, &list[i].addr) || ring_same_key(&list[j], &list[i])) {
                kumo_err(err, "hash space seed: node %zu repeats node %zu", i, j);
                goto fail;
            }
        }
    }

    hashspace *hs = hashspace_new(list, n, ct->via.u64);
    if (!hs)
        kumo_err(err, "hash space seed: out of memory");
    else if (ver)
        hs->version = ver->via.u64;
    free(list);
    return hs;
fail:
    free(list);
    return NULL;
}

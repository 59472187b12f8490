/*
 * ring — consistent-hash placement compatible with kumofs 0.4 (see ring.h,
 * docs/protocol.md §8).
 *
 * Owns: the node and vnode arrays of a ring (allocated by ring_build, freed
 * by ring_free).
 * Calls: libcrypto SHA1; net.h for the node identity bytes (the struct
 * only, no net.c function).
 * Thread rule: ring_build/ring_free touch only the caller's ring; a built
 * ring is immutable and may be read from any thread.
 *
 * Compatibility notes:
 *  - The original read the digest with `*(uint64_t *)digest` on x86; we read
 *    the same 8 bytes as little-endian explicitly so big-endian hosts agree.
 *  - The original stable-sorted the vnodes, which were appended node by
 *    node. Sorting by (hash, node index) gives the same order: two vnodes
 *    with equal hash and equal node index are indistinguishable (same hash,
 *    same node), so their relative order cannot be observed.
 */
#ifndef OPENSSL_API_COMPAT
#define OPENSSL_API_COMPAT 0x10100000L
#endif

#include "ring.h"

#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

/* SHA1_Init/Update/Final, not SHA1(): OpenSSL 3's one-shot SHA1() goes
 * through EVP_Q_digest, which looks the algorithm up (EVP_MD_fetch) and
 * allocates a context on every call. That was a quarter of a gateway's
 * instructions per get; the low-level calls are the bare compression. */
uint64_t ring_hash(const void *data, size_t len)
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA_CTX ctx;
    SHA1_Init(&ctx);
    if (len) SHA1_Update(&ctx, data, len);
    SHA1_Final(d, &ctx);
    return (uint64_t)d[0] | (uint64_t)d[1] << 8 | (uint64_t)d[2] << 16 | (uint64_t)d[3] << 24 |
           (uint64_t)d[4] << 32 | (uint64_t)d[5] << 40 | (uint64_t)d[6] << 48 |
           (uint64_t)d[7] << 56;
}

size_t ring_node_key(const ring_node *n, const uint8_t **out)
{
    if (n->keylen > 0) {
        *out = n->key;
        return n->keylen <= RING_KEY_MAX ? n->keylen : RING_KEY_MAX;
    }
    *out = n->addr.id;
    return n->addr.len <= NET_ID_MAX ? n->addr.len : NET_ID_MAX;
}

bool ring_same_key(const ring_node *a, const ring_node *b)
{
    const uint8_t *ka, *kb;
    size_t la = ring_node_key(a, &ka), lb = ring_node_key(b, &kb);
    return la == lb && memcmp(ka, kb, la) == 0;
}

static int vnode_cmp(const void *pa, const void *pb)
{
    const ring_vnode *a = pa, *b = pb;
    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    if (a->node != b->node)
        return a->node < b->node ? -1 : 1;
    return 0;
}

/* The first nowners distinct nodes clockwise from vnodes[start]. */
static void walk_owners(const ring *r, size_t start, uint32_t out[KUMO_REPLICAS])
{
    size_t got = 0;
    for (size_t step = 0; step < r->nvnodes && got < r->nowners; step++) {
        size_t i = start + step;
        if (i >= r->nvnodes)
            i -= r->nvnodes;
        uint32_t node = r->vnodes[i].node;
        size_t j;
        for (j = 0; j < got; j++)
            if (out[j] == node)
                break;
        if (j == got)
            out[got++] = node;
    }
}

int ring_build(ring *r, const ring_node *nodes, size_t n)
{
    memset(r, 0, sizeof(*r));
    if (n == 0)
        return 0;
    if (n > UINT32_MAX || n > SIZE_MAX / RING_VNODES / sizeof(ring_vnode))
        return -1;

    r->nodes = malloc(n * sizeof(*r->nodes));
    r->vnodes = calloc(n * RING_VNODES, sizeof(*r->vnodes)); /* zeroed padding: rings compare with memcmp */
    if (!r->nodes || !r->vnodes) {
        ring_free(r);
        return -1;
    }
    memcpy(r->nodes, nodes, n * sizeof(*r->nodes));
    r->nnodes = n;

    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *key;
        size_t keylen = ring_node_key(&nodes[i], &key);
        uint64_t h = ring_hash(key, keylen);
        for (int v = 0; v < RING_VNODES; v++) {
            if (v > 0) {
                unsigned char le[8];
                for (int b = 0; b < 8; b++)
                    le[b] = (unsigned char)(h >> (8 * b));
                h = ring_hash(le, sizeof(le));
            }
            r->vnodes[k].hash = h;
            r->vnodes[k].node = (uint32_t)i;
            k++;
        }
    }
    r->nvnodes = k;
    qsort(r->vnodes, r->nvnodes, sizeof(*r->vnodes), vnode_cmp);
    r->nowners = n < KUMO_REPLICAS ? n : KUMO_REPLICAS;
    r->owners = malloc(r->nvnodes * KUMO_REPLICAS * sizeof(*r->owners));
    if (!r->owners) {
        ring_free(r);
        return -1;
    }
    for (size_t i = 0; i < r->nvnodes; i++) walk_owners(r, i, &r->owners[i * KUMO_REPLICAS]);
    return 0;
}

void ring_free(ring *r)
{
    free(r->nodes);
    free(r->vnodes);
    free(r->owners);
    memset(r, 0, sizeof(*r));
}

/* Index of the first vnode with hash >= h, or nvnodes if none. */
static size_t lower_bound(const ring *r, uint64_t h)
{
    size_t lo = 0, hi = r->nvnodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->vnodes[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

size_t ring_owners(const ring *r, uint64_t hash, uint32_t out[KUMO_REPLICAS])
{
    if (r->nowners == 0)
        return 0;
    size_t start = lower_bound(r, hash);
    if (start == r->nvnodes)
        start = 0; /* past the last vnode: wrap to the first */
    memcpy(out, &r->owners[start * KUMO_REPLICAS], r->nowners * sizeof(*out));
    return r->nowners;
}

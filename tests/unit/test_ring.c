/*
 * test_ring — placement known answers (computed by kumofs 0.4.13 itself,
 * kept here and in tests/cluster/kumotest.py) and the ring's structural rules.
 */
#include "ring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (; hex[0] && hex[1] && n < cap; hex += 2) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

static const char *hex64(uint64_t v, char buf[17])
{
    snprintf(buf, 17, "%016" PRIx64, v);
    return buf;
}

/* 192.168.0.<last>:19800 as 6 identity bytes, port big-endian first. */
static ring_node node4(uint8_t last, bool active)
{
    ring_node n;
    memset(&n, 0, sizeof(n));
    n.addr.len = NET_ID_V4;
    n.addr.id[0] = 19800 >> 8;
    n.addr.id[1] = 19800 & 0xff;
    n.addr.id[2] = 192;
    n.addr.id[3] = 168;
    n.addr.id[4] = 0;
    n.addr.id[5] = last;
    n.active = active;
    return n;
}

static uint64_t key_hash(const char *hexkey)
{
    uint8_t k[64];
    size_t n = unhex(hexkey, k, sizeof(k));
    return ring_hash(k, n);
}

static void test_hash(void)
{
    static const struct {
        const char *want, *hex;
    } v[] = {
        {"0d4b6b5eeea339da", ""},
        {"fca7a5fa37e4f786", "61"},
        {"a2e8c5dc1dc6f4aa", "68656c6c6f"},
        {"29a1cad3234df1ad", "757365723a3432"},
        {"3b48ff3bae83bfd5", "e381826b6579"},
    };
    char buf[17];
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t data[64];
        size_t n = unhex(v[i].hex, data, sizeof(data));
        is_str(hex64(ring_hash(data, n), buf), v[i].want, "[hash] '%s'", v[i].hex);
    }
    /* The long vector is 250 x 'x' bytes (0x78), the memcached key limit. */
    uint8_t xs[KUMO_MAX_KEY];
    memset(xs, 'x', sizeof(xs));
    is_str(hex64(ring_hash(xs, sizeof(xs)), buf), "16555c807cf17ec3", "[hash] 250 x 'x'");
    is_str(hex64(ring_hash(NULL, 0), buf), "0d4b6b5eeea339da", "[hash] NULL, 0 = empty");
}

static bool ring_has(const ring *r, uint64_t hash, uint32_t node)
{
    for (size_t i = 0; i < r->nvnodes; i++)
        if (r->vnodes[i].hash == hash && r->vnodes[i].node == node)
            return true;
    return false;
}

static bool ring_sorted(const ring *r)
{
    for (size_t i = 1; i < r->nvnodes; i++)
        if (r->vnodes[i - 1].hash > r->vnodes[i].hash)
            return false;
    return true;
}

static void test_vnodes(void)
{
    static const char *want[4][3] = {
        {"2bdac55e8582516d", "521cb9dee1732014", "cf50cc8b3a8798a2"},
        {"adf29c0fe70f3294", "6e7f5bdc30da2740", "80c8cf6371dd9f16"},
        {"08c10f344c6e3d30", "100a1c86608acd43", "052cbdf8791bad0a"},
        {"1862c1b1931ee8d9", "4096efe84547ed95", "b05097799f0b8078"},
    };
    ring_node nodes[4];
    for (int i = 0; i < 4; i++)
        nodes[i] = node4((uint8_t)(101 + i), true);
    ring r;
    is_int(ring_build(&r, nodes, 4), 0, "build a ring of 4");
    is_int(r.nnodes, 4, "4 nodes");
    is_int(r.nvnodes, 4 * RING_VNODES, "128 vnodes per node");
    ok(ring_sorted(&r), "vnodes sorted by hash");

    char buf[17];
    for (int i = 0; i < 4; i++) {
        uint64_t h = ring_hash(nodes[i].addr.id, nodes[i].addr.len);
        for (int v = 0; v < 3; v++) {
            is_str(hex64(h, buf), want[i][v], "[vnodes] 192.168.0.%d:19800 vnode %d", 101 + i, v);
            ok(ring_has(&r, h, (uint32_t)i), "  ... and it is in the ring for node %d", i);
            uint8_t le[8];
            for (int b = 0; b < 8; b++)
                le[b] = (uint8_t)(h >> (8 * b));
            h = ring_hash(le, 8);
        }
    }
    ring_free(&r);
    ok(r.nodes == NULL && r.vnodes == NULL && r.nnodes == 0, "ring_free clears");
}

struct assign_vec {
    const char *key;
    int owners[3]; /* last octet of each owner */
};

static void check_assign(const char *tag, int nnodes, const struct assign_vec *v, size_t nv)
{
    ring_node nodes[4];
    for (int i = 0; i < nnodes; i++)
        nodes[i] = node4((uint8_t)(101 + i), true);
    ring r;
    is_int(ring_build(&r, nodes, (size_t)nnodes), 0, "%s build a ring of %d", tag, nnodes);
    for (size_t i = 0; i < nv; i++) {
        uint32_t out[KUMO_REPLICAS];
        size_t n = ring_owners(&r, key_hash(v[i].key), out);
        bool same = n == 3;
        for (size_t j = 0; same && j < 3; j++)
            same = r.nodes[out[j]].addr.id[5] == v[i].owners[j];
        ok(same, "%s key %s -> .%d .%d .%d", tag, v[i].key, v[i].owners[0], v[i].owners[1],
           v[i].owners[2]);
        if (!same && n == 3)
            diag("got .%d .%d .%d", r.nodes[out[0]].addr.id[5], r.nodes[out[1]].addr.id[5],
                 r.nodes[out[2]].addr.id[5]);
    }
    ring_free(&r);
}

static void test_assign(void)
{
    static const struct assign_vec a4[] = {
        {"6b65792d30", {102, 103, 101}},
        {"6b65792d31", {103, 102, 101}},
        {"6b65792d32", {104, 101, 102}},
        {"6b65792d33", {103, 104, 102}},
        {"6b65792d34", {103, 102, 104}},
        {"6b65792d35", {102, 103, 104}},
        {"6b65792d36", {104, 103, 102}},
        {"6b65792d37", {102, 103, 101}},
        {"6b65792d38", {101, 102, 104}},
        {"6b65792d39", {103, 102, 104}},
        {"6b65792d3130", {104, 101, 102}},
        {"6b65792d3131", {101, 102, 103}},
    };
    static const struct assign_vec a3[] = {
        {"6b65792d30", {102, 103, 101}},
        {"6b65792d31", {103, 102, 101}},
        {"6b65792d32", {101, 102, 103}},
        {"6b65792d33", {103, 102, 101}},
        {"6b65792d34", {103, 102, 101}},
        {"6b65792d35", {102, 103, 101}},
        {"6b65792d36", {103, 102, 101}},
        {"6b65792d37", {102, 103, 101}},
        {"6b65792d38", {101, 102, 103}},
        {"6b65792d39", {103, 102, 101}},
        {"6b65792d3130", {101, 102, 103}},
        {"6b65792d3131", {101, 102, 103}},
    };
    check_assign("[assign]", 4, a4, sizeof(a4) / sizeof(a4[0]));
    check_assign("[assign3]", 3, a3, sizeof(a3) / sizeof(a3[0]));
}

/* Fault nodes keep their vnodes: the ring and every key's owners are the
 * same as with all nodes active; only the flag differs. */
static void test_fault_keeps_slots(void)
{
    ring_node all[4], some[4];
    for (int i = 0; i < 4; i++) {
        all[i] = node4((uint8_t)(101 + i), true);
        some[i] = node4((uint8_t)(101 + i), i != 1 && i != 3);
    }
    ring a, b;
    ring_build(&a, all, 4);
    ring_build(&b, some, 4);
    is_int(b.nvnodes, a.nvnodes, "fault nodes keep their vnodes");
    ok(memcmp(a.vnodes, b.vnodes, a.nvnodes * sizeof(*a.vnodes)) == 0, "same vnode order");
    ok(!b.nodes[1].active && !b.nodes[3].active && b.nodes[0].active, "active flags copied");
    int same = 0;
    for (int k = 0; k < 1000; k++) {
        char key[32];
        int len = snprintf(key, sizeof(key), "key-%d", k);
        uint64_t h = ring_hash(key, (size_t)len);
        uint32_t oa[3], ob[3];
        size_t na = ring_owners(&a, h, oa), nb = ring_owners(&b, h, ob);
        same += na == 3 && nb == 3 && memcmp(oa, ob, sizeof(oa)) == 0;
    }
    is_int(same, 1000, "owners of 1000 keys unchanged by faults (fault nodes reported)");
    ring_free(&a);
    ring_free(&b);
}

/* Equal hashes keep node order: two nodes with the same identity make every
 * vnode hash a tie. */
static void test_stable_ties(void)
{
    ring_node nodes[3] = {node4(101, true), node4(102, true), node4(101, false)};
    ring r;
    ring_build(&r, nodes, 3);
    ok(ring_sorted(&r), "sorted with ties");
    int ties = 0, in_order = 0;
    for (size_t i = 1; i < r.nvnodes; i++) {
        if (r.vnodes[i - 1].hash == r.vnodes[i].hash) {
            ties++;
            in_order += r.vnodes[i - 1].node < r.vnodes[i].node;
        }
    }
    is_int(ties, RING_VNODES, "node 0 and node 2 tie on every vnode");
    is_int(in_order, RING_VNODES, "ties keep node order (0 before 2)");
    uint32_t out[3];
    size_t n = ring_owners(&r, r.vnodes[0].hash, out);
    is_int(n, 3, "three owners");
    bool first0 = false;
    for (size_t i = 0; i < r.nvnodes; i++) {
        if (r.vnodes[i].node != 1) {
            n = ring_owners(&r, r.vnodes[i].hash, out);
            first0 = out[0] == 0 && (out[1] == 2 || out[2] == 2);
            break;
        }
    }
    ok(first0, "a tied slot is owned by node 0 first, node 2 next");
    ring_free(&r);
}

static void test_wrap(void)
{
    ring_node nodes[4];
    for (int i = 0; i < 4; i++)
        nodes[i] = node4((uint8_t)(101 + i), true);
    ring r;
    ring_build(&r, nodes, 4);
    uint32_t out[3];
    uint64_t last = r.vnodes[r.nvnodes - 1].hash;
    ok(last < UINT64_MAX, "no vnode at UINT64_MAX (the wrap test is meaningful)");
    ring_owners(&r, last + 1, out);
    is_int(out[0], r.vnodes[0].node, "hash past the last vnode wraps to the first");
    ring_owners(&r, UINT64_MAX, out);
    is_int(out[0], r.vnodes[0].node, "UINT64_MAX wraps to the first vnode");
    ring_owners(&r, 0, out);
    is_int(out[0], r.vnodes[0].node, "hash 0 belongs to the first vnode");
    ring_owners(&r, last, out);
    is_int(out[0], r.vnodes[r.nvnodes - 1].node, "hash equal to a vnode belongs to it (>=)");
    /* Walking from the last vnode must continue at index 0. */
    uint32_t want[3];
    size_t got = 0;
    want[got++] = r.vnodes[r.nvnodes - 1].node;
    for (size_t i = 0; got < 3; i++) {
        uint32_t nd = r.vnodes[i].node;
        bool seen = false;
        for (size_t j = 0; j < got; j++)
            seen |= want[j] == nd;
        if (!seen)
            want[got++] = nd;
    }
    ok(memcmp(out, want, sizeof(want)) == 0, "owners continue clockwise across the wrap");
    ring_free(&r);
}

static void test_small(void)
{
    ring r;
    uint32_t out[3];
    is_int(ring_build(&r, NULL, 0), 0, "empty ring builds");
    is_int(ring_owners(&r, 12345, out), 0, "empty ring owns nothing");
    ring_free(&r);

    ring_node one = node4(101, true);
    ring_build(&r, &one, 1);
    is_int(ring_owners(&r, ring_hash("k", 1), out), 1, "ring of 1 node: 1 owner");
    is_int(out[0], 0, "  ... the node");
    ring_free(&r);

    ring_node two[2] = {node4(101, true), node4(102, false)};
    ring_build(&r, two, 2);
    int good = 0;
    for (int k = 0; k < 200; k++) {
        char key[16];
        int len = snprintf(key, sizeof(key), "k%d", k);
        size_t n = ring_owners(&r, ring_hash(key, (size_t)len), out);
        good += n == 2 && out[0] != out[1] && out[0] < 2 && out[1] < 2;
    }
    is_int(good, 200, "ring of 2 nodes: 2 distinct owners for 200 keys");
    ring_free(&r);
}

/* ring_owners answers from the table ring_build precomputed: it must agree
 * with walking the vnodes clockwise from the hash, for any hash, with 1 to
 * 7 nodes. */
static void test_owner_table(void)
{
    int bad = 0, tried = 0;
    uint64_t x = 88172645463325252ULL;
    for (size_t n = 1; n <= 7; n++) {
        ring_node nodes[7];
        for (size_t i = 0; i < n; i++) nodes[i] = node4((uint8_t)(10 + i), true);
        ring r;
        ring_build(&r, nodes, n);
        for (int k = 0; k < 3000; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint64_t h = k == 0 ? 0 : k == 1 ? UINT64_MAX
                                  : k == 2   ? r.vnodes[r.nvnodes - 1].hash
                                             : x;
            uint32_t got[KUMO_REPLICAS], want[KUMO_REPLICAS];
            size_t ng = ring_owners(&r, h, got), nw = 0, at = 0;
            while (at < r.nvnodes && r.vnodes[at].hash < h) at++;
            for (size_t step = 0; step < r.nvnodes && nw < KUMO_REPLICAS; step++) {
                uint32_t node = r.vnodes[(at + step) % r.nvnodes].node;
                size_t j = 0;
                while (j < nw && want[j] != node) j++;
                if (j == nw) want[nw++] = node;
            }
            tried++;
            if (ng != nw || memcmp(got, want, nw * sizeof(*got)) != 0) bad++;
        }
        ring_free(&r);
    }
    ok(bad == 0, "ring_owners' table agrees with a clockwise walk for %d hashes over 1..7 nodes (%d differ)", tried, bad);
}

int main(void)
{
    test_hash();
    test_vnodes();
    test_assign();
    test_fault_keeps_slots();
    test_stable_ties();
    test_wrap();
    test_small();
    test_owner_table();
    return done_testing();
}

/*
 * test_hashspace — seed round trip through real msgpack-c, rejection of
 * malformed seeds, live owners, primary, catching-up nodes and the replace
 * copy plan, refcounting.
 */
#include "hashspace.h"

#include <stdio.h>
#include <string.h>

#include "tap.h"

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

/* Unpack the whole buffer as one object and parse it as a seed. */
static hashspace *parse(const msgpack_sbuffer *sb, char *err)
{
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpacked_init(&u);
    hashspace *hs = NULL;
    if (msgpack_unpack_next(&u, sb->data, sb->size, &off) == MSGPACK_UNPACK_SUCCESS &&
        off == sb->size)
        hs = hashspace_unpack(&u.data, err);
    else
        snprintf(err, KUMO_ERRLEN, "test: msgpack did not unpack");
    msgpack_unpacked_destroy(&u);
    return hs;
}

static void pack_raw_node(msgpack_packer *pk, uint8_t flag, const uint8_t *id, size_t len)
{
    uint8_t buf[32];
    buf[0] = flag;
    memcpy(buf + 1, id, len);
    msgpack_pack_bin(pk, 1 + len);
    msgpack_pack_bin_body(pk, buf, 1 + len);
}

static void test_round_trip(void)
{
    ring_node nodes[4] = {node4(101, true), node4(102, false), node4(103, true),
                          node4(104, true)};
    /* An IPv6 identity too: port then 16 address bytes (::1). */
    ring_node v6;
    memset(&v6, 0, sizeof(v6));
    v6.addr.len = NET_ID_V6;
    v6.addr.id[0] = 19800 >> 8;
    v6.addr.id[1] = 19800 & 0xff;
    v6.addr.id[17] = 1;
    v6.active = true;
    ring_node all[5] = {nodes[0], nodes[1], nodes[2], nodes[3], v6};

    hashspace *hs = hashspace_new(all, 5, 0x1234567800000009ull);
    ok(hs != NULL, "new");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    is_int(hashspace_pack(hs, &pk), 0, "pack");

    /* The exact bytes of the first node: bin8 of 7 = c4 07, flag, id. */
    const uint8_t head[] = {0x93, 0x95, 0xc4, 0x07, 0x01, 0x4d, 0x58, 192, 168, 0, 101};
    ok(sb.size > sizeof(head) && memcmp(sb.data, head, sizeof(head)) == 0,
       "wire form starts [ [ bin(1 active | port BE | ip) ...");
    const uint8_t tail[] = {0xcf, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 9, 0x00};
    ok(memcmp(sb.data + sb.size - sizeof(tail), tail, sizeof(tail)) == 0,
       "... and ends with clocktime as uint64, then the version (0)");

    char err[KUMO_ERRLEN] = "";
    hashspace *back = parse(&sb, err);
    ok(back != NULL, "unpack what we packed (%s)", err);
    if (back) {
        ok(hashspace_same_nodes(hs, back), "same nodes, order, flags");
        is_int(back->clocktime == 0x1234567800000009ull, 1, "same clocktime");
        is_int(back->ring.nnodes, 5, "5 nodes");
        is_int(back->ring.nodes[4].addr.len, NET_ID_V6, "IPv6 identity kept");
        ok(!back->ring.nodes[1].active, "fault flag kept");
        ok(back->ring.nvnodes == hs->ring.nvnodes &&
               memcmp(back->ring.vnodes, hs->ring.vnodes,
                      hs->ring.nvnodes * sizeof(ring_vnode)) == 0,
           "same ring");
        hashspace_unref(back);
    }
    msgpack_sbuffer_destroy(&sb);

    /* Empty seed round trip. */
    hashspace *empty = hashspace_new(NULL, 0, 7);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    hashspace_pack(empty, &pk);
    back = parse(&sb, err);
    ok(back && back->ring.nnodes == 0 && back->clocktime == 7, "empty seed round trip");
    ok(back && hashspace_empty(back), "  ... and it is empty");
    hashspace_unref(back);
    hashspace_unref(empty);
    msgpack_sbuffer_destroy(&sb);

    /* Only fault nodes: empty too. */
    ring_node faults[2] = {node4(101, false), node4(102, false)};
    hashspace *f = hashspace_new(faults, 2, 1);
    ok(hashspace_empty(f), "all-fault hash space is empty");
    ok(!hashspace_empty(hs), "one active node: not empty");
    ok(!hashspace_same_nodes(f, hs), "different node lists differ");
    hashspace_unref(f);

    ring_node flipped[5] = {all[0], all[1], all[2], all[3], all[4]};
    flipped[1].active = true;
    f = hashspace_new(flipped, 5, 0x1234567800000009ull);
    ok(!hashspace_same_nodes(f, hs), "an active flag differs: not the same");
    hashspace_unref(f);
    ring_node reordered[5] = {all[1], all[0], all[2], all[3], all[4]};
    f = hashspace_new(reordered, 5, 0x1234567800000009ull);
    ok(!hashspace_same_nodes(f, hs), "order differs: not the same");
    hashspace_unref(f);
    f = hashspace_new(all, 5, 1);
    ok(hashspace_same_nodes(f, hs), "clocktime is ignored by same_nodes");
    hashspace_unref(f);

    is_int(hashspace_find(hs, &nodes[2].addr), 2, "find node 2");
    ring_node stranger = node4(200, true);
    is_int(hashspace_find(hs, &stranger.addr), -1, "find a stranger: -1");
    hashspace_unref(hs);
}

/* Accepted variants: STR node bytes (older encoders), small positive ints. */
static void test_accept(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char err[KUMO_ERRLEN] = "";
    ring_node n = node4(101, true);
    uint8_t buf[7] = {1};
    memcpy(buf + 1, n.addr.id, 6);

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str(&pk, 7);
    msgpack_pack_str_body(&pk, buf, 7);
    msgpack_pack_uint8(&pk, 5);
    hashspace *hs = parse(&sb, err);
    ok(hs && hs->ring.nnodes == 1 && hs->ring.nodes[0].active && hs->clocktime == 5,
       "STR node bytes and a fixint clocktime are accepted (%s)", hs ? "" : err);
    hashspace_unref(hs);
    msgpack_sbuffer_destroy(&sb);
}

enum bad { BAD_NOT_ARRAY,
           BAD_ARRAY1,
           BAD_ARRAY3,
           BAD_NODES_MAP,
           BAD_NODE_INT,
           BAD_LEN0,
           BAD_LEN5,
           BAD_LEN8,
           BAD_FLAG2,
           BAD_CT_STR,
           BAD_CT_NEG,
           BAD_CT_FLOAT,
           BAD_CT_NIL,
           BAD_DUP,
           BAD_COUNT };

static const char *bad_name[BAD_COUNT] = {
    "not an array",
    "array of 1",
    "array of 3",
    "node list is a map",
    "node is an int",
    "node bytes of length 0",
    "node bytes of length 5",
    "node bytes of length 8",
    "state byte 8",
    "clocktime is a string",
    "clocktime negative",
    "clocktime is a float",
    "clocktime is nil",
    "a node listed twice",
};

static void pack_bad(msgpack_packer *pk, enum bad b)
{
    ring_node n = node4(101, true), m = node4(102, true);
    const uint8_t zeros[8] = {0};
    if (b == BAD_NOT_ARRAY) {
        msgpack_pack_map(pk, 0);
        return;
    }
    msgpack_pack_array(pk, b == BAD_ARRAY1 ? 1 : b == BAD_ARRAY3 ? 3
                                                                 : 2);
    if (b == BAD_NODES_MAP) {
        msgpack_pack_map(pk, 0);
    } else {
        msgpack_pack_array(pk, 2);
        pack_raw_node(pk, 1, m.addr.id, 6);
        switch (b) {
        case BAD_NODE_INT: msgpack_pack_int(pk, 7); break;
        case BAD_LEN0:
            msgpack_pack_bin(pk, 0);
            msgpack_pack_bin_body(pk, zeros, 0);
            break;
        case BAD_LEN5: pack_raw_node(pk, 1, zeros, 4); break;
        case BAD_LEN8: pack_raw_node(pk, 1, zeros, 7); break;
        case BAD_FLAG2: pack_raw_node(pk, 8, n.addr.id, 6); break;
        case BAD_DUP: pack_raw_node(pk, 0, m.addr.id, 6); break;
        default: pack_raw_node(pk, 1, n.addr.id, 6); break;
        }
    }
    if (b == BAD_ARRAY1)
        return;
    switch (b) {
    case BAD_CT_STR:
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "1", 1);
        break;
    case BAD_CT_NEG: msgpack_pack_int64(pk, -1); break;
    case BAD_CT_FLOAT: msgpack_pack_double(pk, 1.0); break;
    case BAD_CT_NIL: msgpack_pack_nil(pk); break;
    default: msgpack_pack_uint64(pk, 42); break;
    }
    if (b == BAD_ARRAY3)
        msgpack_pack_nil(pk);
}

static void test_reject(void)
{
    for (int b = 0; b < BAD_COUNT; b++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char err[KUMO_ERRLEN] = "";
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_bad(&pk, (enum bad)b);
        hashspace *hs = parse(&sb, err);
        ok(hs == NULL && err[0] && strncmp(err, "test:", 5) != 0, "rejects %s: %s",
           bad_name[b], err);
        hashspace_unref(hs);
        msgpack_sbuffer_destroy(&sb);
    }
    /* NULL err is allowed. */
    msgpack_object nil;
    nil.type = MSGPACK_OBJECT_NIL;
    ok(hashspace_unpack(&nil, NULL) == NULL, "rejects with err == NULL");
}

/* A seed of n distinct IPv4 nodes, all active. */
static hashspace *parse_many(size_t n, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        uint8_t id[6] = {0x4d, 0x58, 10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
        pack_raw_node(&pk, 1, id, sizeof(id));
    }
    msgpack_pack_uint64(&pk, 9);
    hashspace *hs = parse(&sb, err);
    msgpack_sbuffer_destroy(&sb);
    return hs;
}

/* A received seed costs a ring of 128 vnodes per node: bounded. */
static void test_max_nodes(void)
{
    char err[KUMO_ERRLEN] = "";
    hashspace *hs = parse_many(HASHSPACE_MAX_NODES, err);
    ok(hs && hs->ring.nnodes == HASHSPACE_MAX_NODES, "a seed of HASHSPACE_MAX_NODES nodes is taken (%s)", err);
    hashspace_unref(hs);
    hs = parse_many(HASHSPACE_MAX_NODES + 1, err);
    ok(hs == NULL && strstr(err, "more than"), "a seed of one node more is refused: %s", err);
    hashspace_unref(hs);
}

static void test_owners(void)
{
    ring_node all[4], some[4];
    for (int i = 0; i < 4; i++) {
        all[i] = node4((uint8_t)(101 + i), true);
        some[i] = node4((uint8_t)(101 + i), i != 1);
    }
    hashspace *a = hashspace_new(all, 4, 1), *s = hashspace_new(some, 4, 2);
    int skipped = 0, primary = 0, owner = 0, twos = 0, keys = 500;
    for (int k = 0; k < keys; k++) {
        char key[16];
        int len = snprintf(key, sizeof(key), "key-%d", k);
        uint64_t h = ring_hash(key, (size_t)len);
        uint32_t full[3], live[3], exp[3];
        size_t nf = hashspace_live_owners(a, h, full);
        size_t nl = hashspace_live_owners(s, h, live);
        /* Expected: the full owners minus node 1, order kept, no substitute. */
        size_t ne = 0;
        for (size_t i = 0; i < nf; i++)
            if (full[i] != 1)
                exp[ne++] = full[i];
        skipped += nf == 3 && nl == ne && memcmp(live, exp, ne * sizeof(uint32_t)) == 0;
        twos += nl == 2;
        primary += hashspace_is_primary(s, h, &s->ring.nodes[live[0]].addr) &&
                   (nl < 2 || !hashspace_is_primary(s, h, &s->ring.nodes[live[1]].addr));
        bool ok1 = !hashspace_is_owner(s, h, &s->ring.nodes[1].addr);
        for (size_t i = 0; i < nl; i++)
            ok1 = ok1 && hashspace_is_owner(s, h, &s->ring.nodes[live[i]].addr);
        owner += ok1;
    }
    is_int(skipped, keys, "live owners = all owners minus the fault node, in order");
    ok(twos > 0, "a fault owner is not substituted (%d keys have 2 live owners)", twos);
    is_int(primary, keys, "primary = first live owner only");
    is_int(owner, keys, "is_owner: live owners yes, fault node never");

    ring_node stranger = node4(200, true);
    ok(!hashspace_is_owner(s, 1, &stranger.addr) && !hashspace_is_primary(s, 1, &stranger.addr),
       "a node outside the ring owns nothing");

    ring_node dead[3] = {node4(101, false), node4(102, false), node4(103, false)};
    hashspace *d = hashspace_new(dead, 3, 3);
    uint32_t out[3];
    is_int(hashspace_live_owners(d, 99, out), 0, "all three owners fault: 0 live owners");
    ok(!hashspace_is_primary(d, 99, &dead[0].addr), "  ... and no primary");
    hashspace *e = hashspace_new(NULL, 0, 0);
    is_int(hashspace_live_owners(e, 99, out), 0, "empty ring: 0 live owners");
    ok(!hashspace_is_primary(e, 99, &dead[0].addr), "  ... and no primary");
    hashspace_unref(d);
    hashspace_unref(e);
    hashspace_unref(a);
    hashspace_unref(s);
}

/* The first key whose owners in hs are exactly nodes a, b, c in that order. */
static uint64_t key_owned_by(const hashspace *hs, uint32_t a, uint32_t b, uint32_t c)
{
    for (int k = 0; k < 100000; k++) {
        char key[16];
        int len = snprintf(key, sizeof(key), "key-%d", k);
        uint64_t h = ring_hash(key, (size_t)len);
        uint32_t o[3];
        if (ring_owners(&hs->ring, h, o) == 3 && o[0] == a && o[1] == b && o[2] == c) return h;
    }
    return 0;
}

static void test_catchup(void)
{
    /* Wire form: the state byte carries the catching-up bit. */
    ring_node nodes[3] = {node4(101, true), node4(102, true), node4(103, false)};
    nodes[1].catchup = true;
    nodes[2].catchup = true;
    hashspace *hs = hashspace_new(nodes, 3, 9);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char err[KUMO_ERRLEN] = "";
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    hashspace_pack(hs, &pk);
    hashspace *back = parse(&sb, err);
    ok(back && back->ring.nodes[1].active && back->ring.nodes[1].catchup && !back->ring.nodes[0].catchup &&
           !back->ring.nodes[2].active && back->ring.nodes[2].catchup,
       "catching-up flag survives the wire, alone and with fault (%s)", err);
    ok(back && hashspace_same_nodes(back, hs), "  ... same nodes");
    ring_node flipped[3] = {nodes[0], nodes[1], nodes[2]};
    flipped[1].catchup = false;
    hashspace *f = hashspace_new(flipped, 3, 9);
    ok(!hashspace_same_nodes(f, hs), "a catching-up flag differs: not the same");
    ok(hashspace_catching_up(hs, &nodes[1].addr) && !hashspace_catching_up(hs, &nodes[0].addr) &&
           !hashspace_catching_up(hs, &nodes[2].addr),
       "catching_up: live and flagged only (a fault node is not)");

    /* Serving owners skip catching-up nodes; the coordinator is the first
     * serving one; live owners (replication targets) keep them. */
    uint64_t h = key_owned_by(hs, 1, 0, 2);
    uint32_t out[3];
    ok(h != 0, "a key owned by 102, 101, 103 in that order");
    is_int(hashspace_serving_owners(hs, h, out), 1, "serving owners: the in-sync one only");
    ok(out[0] == 0, "  ... 101");
    ok(hashspace_is_primary(hs, h, &nodes[0].addr) && !hashspace_is_primary(hs, h, &nodes[1].addr),
       "coordinator: 101, never the catching-up 102 that comes first");
    is_int(hashspace_live_owners(hs, h, out), 2, "live owners still list the catching-up node");
    ok(hashspace_is_owner(hs, h, &nodes[1].addr), "  ... so it receives replicated writes");
    hashspace_unref(back);
    hashspace_unref(f);
    msgpack_sbuffer_destroy(&sb);

    /* Copy plans. A: 101 restarted (catching up), 102 and 103 in sync; rhs
     * is the layout from before the attach, 101 fault. */
    ring_node w_a[3] = {node4(101, true), node4(102, true), node4(103, true)};
    ring_node r_a[3] = {node4(101, false), node4(102, true), node4(103, true)};
    w_a[0].catchup = true;
    hashspace *wa = hashspace_new(w_a, 3, 20), *ra = hashspace_new(r_a, 3, 10);
    hashspace_plan p;
    uint64_t ha = key_owned_by(wa, 0, 1, 2);
    hashspace_copy_plan(wa, ra, ha, &p);
    ok(p.n == 3 && p.sender >= 0 && net_equal(&p.holder[p.sender], &w_a[1].addr) && !p.exchange && !p.blocked,
       "restart: the first in-sync old owner (102) alone sends");

    /* B: every owner catching up (the whole cluster restarted). */
    ring_node w_b[3] = {node4(101, true), node4(102, true), node4(103, true)};
    for (int i = 0; i < 3; i++) w_b[i].catchup = true;
    hashspace *wb = hashspace_new(w_b, 3, 30), *rb = hashspace_new(NULL, 0, 0);
    hashspace_copy_plan(wb, rb, ha, &p);
    ok(p.n == 3 && p.sender < 0 && p.exchange && !p.blocked, "all catching up: every holder exchanges");

    /* C: 101 and 102 catching up, 103 in sync but down: blocked. */
    ring_node w_c[3] = {node4(101, true), node4(102, true), node4(103, false)};
    w_c[0].catchup = w_c[1].catchup = true;
    hashspace *wc = hashspace_new(w_c, 3, 40);
    hashspace_copy_plan(wc, wc, ha, &p);
    ok(p.sender < 0 && !p.exchange && p.blocked, "the only in-sync copy is down: blocked, nobody sends");

    /* D: the in-sync copy that is down was detached: gone from whs, fault
     * in rhs. The operator said its data is lost, so the rest exchange. */
    ring_node w_d[3] = {node4(101, true), node4(102, true), node4(104, true)};
    w_d[0].catchup = w_d[1].catchup = w_d[2].catchup = true;
    hashspace *wd = hashspace_new(w_d, 3, 50);
    hashspace_copy_plan(wd, wc, ha, &p);
    bool has103 = false;
    for (size_t i = 0; i < p.n; i++) has103 = has103 || net_equal(&p.holder[i], &w_c[2].addr);
    ok(!has103 && !p.blocked && p.exchange, "a detached fault owner is no holder: the others exchange");

    /* Coordinator: whs's first serving owner; with none (every new owner
     * catching up), rhs's, which holds every acknowledged write. */
    const net_addr *co = hashspace_coordinator(wa, ra, ha);
    ok(co && net_equal(co, &w_a[1].addr), "coordinator: the first in-sync whs owner (102), not the catching-up 101");
    co = hashspace_coordinator(wb, ra, ha);
    ok(co && net_equal(co, &r_a[1].addr), "every whs owner catching up: rhs's first serving owner coordinates");
    ok(hashspace_coordinator(wb, rb, ha) == NULL, "  ... and nobody when rhs has none");

    /* An owner in rhs only, fault there, is no sender even if whs says it
     * is in sync now: it missed the piece's writes while it was away. */
    ring_node w_e[3] = {node4(104, true), node4(105, true), node4(106, true)};
    w_e[0].catchup = true;
    ring_node r_e[3] = {node4(101, false), node4(102, true), node4(103, true)};
    ring_node w_e2[6] = {w_e[0], w_e[1], w_e[2], node4(101, true), node4(102, false), node4(103, false)};
    hashspace *we = hashspace_new(w_e2, 6, 60), *re = hashspace_new(r_e, 3, 55);
    uint64_t he = key_owned_by(re, 0, 1, 2);
    hashspace_copy_plan(we, re, he, &p);
    bool sender101 = p.sender >= 0 && net_equal(&p.holder[p.sender], &r_e[0].addr);
    ok(!sender101, "a server fault in rhs is not the sender of an rhs-only piece, though in sync in whs");
    hashspace_unref(we);
    hashspace_unref(re);
    hashspace_unref(hs);
    hashspace_unref(wa);
    hashspace_unref(ra);
    hashspace_unref(wb);
    hashspace_unref(rb);
    hashspace_unref(wc);
    hashspace_unref(wd);
}

static void test_refs(void)
{
    ring_node n = node4(101, true);
    hashspace *hs = hashspace_new(&n, 1, 1);
    is_int(atomic_load(&hs->refs), 1, "new: refcount 1");
    ok(hashspace_ref(hs) == hs, "ref returns the same snapshot");
    hashspace_ref(hs);
    is_int(atomic_load(&hs->refs), 3, "two refs: 3");
    hashspace_unref(hs);
    hashspace_unref(hs);
    is_int(atomic_load(&hs->refs), 1, "two unrefs: 1");
    ok(hashspace_ref(NULL) == NULL, "ref(NULL) is NULL");
    hashspace_unref(NULL);
    ok(1, "unref(NULL) is a no-op");
    hashspace_unref(hs); /* freed here; ASan/valgrind would catch a leak or double free */
}

/* Nodes with ring keys of their own (ring.h): placement follows the key,
 * not the address; the seed carries both. */
static void test_keyed(void)
{
    char err[KUMO_ERRLEN] = "";
    ring_node a[3] = {node4(101, true), node4(102, true), node4(103, true)};
    ring_node k[3];
    memcpy(k, a, sizeof(a));
    /* A key equal to the address's bytes places exactly as the address. */
    for (int i = 0; i < 3; i++) {
        k[i].keylen = NET_ID_V4;
        memcpy(k[i].key, a[i].addr.id, NET_ID_V4);
    }
    hashspace *ha = hashspace_new(a, 3, 1), *hk = hashspace_new(k, 3, 1);
    bool same = ha && hk && ha->ring.nvnodes == hk->ring.nvnodes;
    for (size_t v = 0; same && v < ha->ring.nvnodes; v++)
        same = ha->ring.vnodes[v].hash == hk->ring.vnodes[v].hash && ha->ring.vnodes[v].node == hk->ring.vnodes[v].node;
    ok(same, "a ring key equal to the address's identity bytes gives the address's placement");
    hashspace_unref(hk);

    /* Named nodes: moving every node to another address changes nothing
     * of the placement; the same addresses with other keys do. */
    static const char *names[3] = {"alpha", "bravo", "charlie"};
    for (int i = 0; i < 3; i++) {
        k[i].keylen = (uint8_t)strlen(names[i]);
        memcpy(k[i].key, names[i], k[i].keylen);
    }
    ring_node moved[3];
    memcpy(moved, k, sizeof(k));
    moved[0].addr = a[1].addr; /* a shuffle: alpha at .102, bravo at .103, charlie at .101 */
    moved[1].addr = a[2].addr;
    moved[2].addr = a[0].addr;
    hk = hashspace_new(k, 3, 1);
    hashspace *hm = hashspace_new(moved, 3, 1);
    int differ_addr = 0, differ_key = 0;
    for (uint64_t h = 0; h < 2000; h++) {
        uint64_t x = ring_hash(&h, sizeof(h));
        uint32_t ok_[KUMO_REPLICAS], om[KUMO_REPLICAS], oa[KUMO_REPLICAS];
        size_t n1 = hashspace_live_owners(hk, x, ok_), n2 = hashspace_live_owners(hm, x, om);
        hashspace_live_owners(ha, x, oa);
        differ_addr += n1 != n2 || ok_[0] != om[0] || ok_[1] != om[1] || ok_[2] != om[2];
        differ_key += ok_[0] != oa[0] || ok_[1] != oa[1] || ok_[2] != oa[2];
    }
    ok(differ_addr == 0, "keyed nodes that change addresses keep every key's owners (%d of 2000 differ)", differ_addr);
    ok(differ_key > 0, "... and the keys, not the addresses, decide (%d of 2000 differ from address placement)",
       differ_key);

    /* The seed round trip keeps keys, addresses and state; a mixed seed
     * (keyed and address-placed nodes) too. */
    moved[1].keylen = 0;
    moved[2].active = false;
    moved[0].catchup = true;
    hashspace *mixed = hashspace_new(moved, 3, 77);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    ok(mixed && hashspace_pack(mixed, &pk) == 0, "pack a mixed seed");
    hashspace *back = parse(&sb, err);
    ok(back && hashspace_same_nodes(mixed, back) && back->clocktime == 77, "mixed seed round trip (%s)", err);
    ok(back && back->ring.nodes[0].keylen == 5 && memcmp(back->ring.nodes[0].key, "alpha", 5) == 0 &&
           net_equal(&back->ring.nodes[0].addr, &a[1].addr) && back->ring.nodes[1].keylen == 0,
       "  ... key and address of each node kept");
    msgpack_sbuffer_destroy(&sb);
    hashspace_unref(back);

    /* Two nodes with one key would share their vnodes: refused. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    ring_node twins[2] = {k[0], k[1]};
    twins[1].keylen = k[0].keylen;
    memcpy(twins[1].key, k[0].key, k[0].keylen);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_array(&pk, 2);
    for (int i = 0; i < 2; i++) {
        uint8_t buf[2 + NET_ID_V4 + 5];
        buf[0] = HS_NODE_ACTIVE | HS_NODE_KEYED;
        buf[1] = NET_ID_V4;
        memcpy(buf + 2, twins[i].addr.id, NET_ID_V4);
        memcpy(buf + 2 + NET_ID_V4, twins[i].key, 5);
        msgpack_pack_bin(&pk, sizeof(buf));
        msgpack_pack_bin_body(&pk, buf, sizeof(buf));
    }
    msgpack_pack_uint64(&pk, 3);
    back = parse(&sb, err);
    ok(!back && strstr(err, "repeats"), "two nodes with one ring key are refused: %s", err);
    msgpack_sbuffer_destroy(&sb);

    /* A keyed node whose address length runs past its bytes, or with no key. */
    const uint8_t runs_past[] = {HS_NODE_KEYED, 9, 1, 2, 3, 4, 5, 6};
    const uint8_t no_key[] = {HS_NODE_KEYED, 6, 1, 2, 3, 4, 5, 6};
    const uint8_t *bad[2] = {runs_past, no_key};
    for (int i = 0; i < 2; i++) {
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_array(&pk, 1);
        msgpack_pack_bin(&pk, 8);
        msgpack_pack_bin_body(&pk, bad[i], 8);
        msgpack_pack_uint64(&pk, 3);
        back = parse(&sb, err);
        ok(!back && err[0], "a keyed node %s is refused: %s", i ? "without key bytes" : "whose address runs past it",
           err);
        msgpack_sbuffer_destroy(&sb);
    }
    hashspace_unref(mixed);
    hashspace_unref(hm);
    hashspace_unref(hk);
    hashspace_unref(ha);
}

/* The adoption rule of servers, gateways (ties) and managers (no ties). */
static void test_supersedes(void)
{
    ring_node a[2] = {node4(101, true), node4(102, true)}, b[2] = {node4(101, true), node4(102, false)};
    hashspace *blank = hashspace_new(NULL, 0, 9), *h5 = hashspace_new(a, 2, 5), *h6 = hashspace_new(a, 2, 6);
    hashspace *h5b = hashspace_new(b, 2, 5), *h5same = hashspace_new(a, 2, 5);
    ok(!hashspace_supersedes(blank, h5, true) && !hashspace_supersedes(blank, NULL, true),
       "a blank one is never adopted, whatever its ClockTime");
    ok(hashspace_supersedes(h5, blank, false) && hashspace_supersedes(h5, NULL, false), "anything over blank");
    ok(hashspace_supersedes(h6, h5, false) && !hashspace_supersedes(h5, h6, true), "newer yes, older no");
    ok(hashspace_supersedes(h5b, h5, true) && !hashspace_supersedes(h5b, h5, false),
       "same ClockTime, other states: with ties only");
    ok(!hashspace_supersedes(h5same, h5, true), "same ClockTime, same nodes: nothing to adopt");
    hashspace_unref(blank);
    hashspace_unref(h5);
    hashspace_unref(h6);
    hashspace_unref(h5b);
    hashspace_unref(h5same);
}

static hashspace *versioned(const ring_node *nodes, size_t n, uint64_t ct, uint64_t version)
{
    hashspace *hs = hashspace_new(nodes, n, ct);
    hs->version = version;
    return hs;
}

/* The membership history's rule: versions first, fault marks merged
 * within one version. */
static void test_adopt(void)
{
    char err[KUMO_ERRLEN];
    ring_node abc[3] = {node4(101, true), node4(102, true), node4(103, true)};
    ring_node a_c[3] = {node4(101, true), node4(102, false), node4(103, true)};
    ring_node ab_[3] = {node4(101, true), node4(102, true), node4(103, false)};
    ring_node two[2] = {node4(101, true), node4(102, true)};
    hashspace *v4 = versioned(abc, 3, 100, 4), *v5 = versioned(two, 2, 50, 5);
    hashspace *v4b = versioned(a_c, 3, 110, 4), *v4c = versioned(ab_, 3, 120, 4), *blank = hashspace_new(NULL, 0, 999);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    hashspace_pack(v4c, &pk);
    hashspace *back = parse(&sb, err);
    ok(back && back->version == 4 && back->clocktime == 120 && hashspace_same_nodes(back, v4c),
       "the version travels in the seed");
    hashspace_unref(back);
    msgpack_sbuffer_destroy(&sb);

    hashspace *t = hashspace_adopt(v5, v4, false);
    ok(t == v5, "a newer version is taken though its ClockTime is older");
    hashspace_unref(t);
    ok(hashspace_adopt(v4, v5, true) == NULL, "an older version never, whatever its ClockTime");
    ok(hashspace_adopt(blank, v4, true) == NULL, "a blank one never");
    t = hashspace_adopt(v4, blank, false);
    ok(t == v4, "anything over blank");
    hashspace_unref(t);

    hashspace *m = hashspace_adopt(v4b, v4c, false);
    ok(m && m->version == 4 && m->clocktime == 120 && m->ring.nnodes == 3 && m->ring.nodes[0].active &&
           !m->ring.nodes[1].active && !m->ring.nodes[2].active,
       "same version: fault marks merged (both fault), the newer ClockTime kept");
    ok(hashspace_adopt(v4c, m, false) == NULL && hashspace_adopt(v4b, m, false) == NULL,
       "a merged one takes neither input back: no flip-flop between two managers");
    ok(hashspace_adopt(v4, v4b, true) == NULL, "same version: a fault mark is never undone");
    hashspace *v4d = versioned(a_c, 3, 130, 4);
    t = hashspace_adopt(v4d, v4b, false);
    ok(t == v4d, "same version, same states, newer ClockTime: taken");
    hashspace_unref(t);
    hashspace_unref(v4d);
    hashspace_unref(m);
    hashspace_unref(v4);
    hashspace_unref(v5);
    hashspace_unref(v4b);
    hashspace_unref(v4c);
    hashspace_unref(blank);
}

int main(void)
{
    test_round_trip();
    test_supersedes();
    test_adopt();
    test_keyed();
    test_accept();
    test_reject();
    test_max_nodes();
    test_owners();
    test_catchup();
    test_refs();
    return done_testing();
}

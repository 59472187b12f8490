/*
 * fuzz_hashspace — libFuzzer target for the hash-space seed decoder
 * (hashspace_unpack in src/lib/hashspace.c): what a server, a gateway and a
 * manager parse out of GW_HS_PUSH, SRV_HS_SYNC, SRV_REPLACE_COPY,
 * SRV_HS_PREPARE/SRV_HS_ACCEPT (with their ballots) and MGR_HS_SYNC, after
 * rpc.c's mpguard and msgpack-c.
 *
 * The input goes through the guard and the unpacker as rpc.c feeds them;
 * each whole object is offered to hashspace_unpack, as are its first four
 * elements when it is an array (seeds travel inside params). A seed it accepts must keep the
 * promises of hashspace.h and protocol.md §2.2: every node 6 or 18 bytes,
 * no node twice, no more than HASHSPACE_MAX_NODES; packing it and
 * unpacking the result gives the same snapshot; owners are distinct live
 * nodes, at most three.
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hashspace.h"
#include "mpguard.h"

#define LIMIT (1u << 20)

static void check_seed(const msgpack_object *o, const uint8_t *data, size_t size)
{
    char err[KUMO_ERRLEN] = "";
    hashspace *hs = hashspace_unpack(o, err);
    if (!hs) {
        CHECK(err[0] != '\0');
        return;
    }
    const ring *r = &hs->ring;
    CHECK(r->nnodes == o->via.array.ptr[0].via.array.size && r->nnodes <= HASHSPACE_MAX_NODES);
    CHECK(r->nvnodes == r->nnodes * RING_VNODES);
    for (size_t i = 0; i < r->nnodes; i++) {
        CHECK(r->nodes[i].addr.len == 6 || r->nodes[i].addr.len == 18);
        CHECK(hashspace_find(hs, &r->nodes[i].addr) == (int)i);
    }

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    CHECK(hashspace_pack(hs, &pk) == 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    CHECK(msgpack_unpack_next(&u, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
    hashspace *again = hashspace_unpack(&u.data, err);
    CHECK(again && hashspace_same_nodes(hs, again) && again->clocktime == hs->clocktime &&
          again->version == hs->version);
    /* The adoption rule: nothing new from the same snapshot; anything but
     * a blank one over a blank one; never a blank one. */
    CHECK(hashspace_adopt(again, hs, true) == NULL && hashspace_adopt(again, hs, false) == NULL);
    hashspace *blank = hashspace_new(NULL, 0, 0), *took = hashspace_adopt(hs, blank, false);
    CHECK(hashspace_blank(hs) ? took == NULL : took == hs);
    CHECK(hashspace_adopt(blank, hs, true) == NULL);
    hashspace_unref(took);
    hashspace_unref(blank);
    hashspace_unref(again);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);

    for (size_t i = 0; i + 8 <= size && i < 64; i += 8) {
        uint64_t h;
        memcpy(&h, data + i, 8);
        uint32_t own[KUMO_REPLICAS];
        size_t n = hashspace_live_owners(hs, h, own);
        CHECK(n <= KUMO_REPLICAS);
        if (hashspace_empty(hs)) CHECK(n == 0);
        for (size_t a = 0; a < n; a++) {
            CHECK(own[a] < r->nnodes && r->nodes[own[a]].active);
            for (size_t b = 0; b < a; b++) CHECK(own[a] != own[b]);
        }
        /* The coordinator is the first serving (live, in-sync) owner, and
         * every serving owner is a live one, in the same order. */
        uint32_t srv[KUMO_REPLICAS];
        size_t ns = hashspace_serving_owners(hs, h, srv);
        CHECK(ns <= n);
        for (size_t a = 0, b = 0; a < ns; a++, b++) {
            while (b < n && own[b] != srv[a]) b++;
            CHECK(b < n && !r->nodes[srv[a]].catchup);
        }
        if (ns > 0) CHECK(hashspace_is_primary(hs, h, &r->nodes[srv[0]].addr));
        for (size_t a = 0; a < n; a++)
            if (ns == 0 || own[a] != srv[0]) CHECK(!hashspace_is_primary(hs, h, &r->nodes[own[a]].addr));
        const net_addr *co = hashspace_coordinator(hs, hs, h);
        CHECK(ns > 0 ? co && net_equal(co, &r->nodes[srv[0]].addr) : co == NULL);
        hashspace_plan plan;
        hashspace_copy_plan(hs, hs, h, &plan);
        CHECK(plan.n <= 2 * KUMO_REPLICAS && plan.sender < (int)plan.n);
        CHECK(!(plan.exchange && plan.blocked) && (plan.sender < 0 || (!plan.exchange && !plan.blocked)));
    }
    hashspace_unref(hs);
}

/* A ballot of SRV_HS_PREPARE/SRV_HS_ACCEPT (src/server/witness.c): one it
 * accepts packs to what unpacks to the same ballot. */
static void check_ballot(const msgpack_object *o)
{
    hashspace_ballot b, again;
    if (!hashspace_ballot_unpack(o, &b)) return;
    CHECK(b.by.len == 6 || b.by.len == 18);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    hashspace_ballot_pack(&b, &pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    CHECK(msgpack_unpack_next(&u, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
    CHECK(hashspace_ballot_unpack(&u.data, &again) && hashspace_ballot_cmp(&b, &again) == 0);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpguard g;
    mpguard_init(&g, LIMIT);
    if (!mpguard_feed(&g, data, size)) return 0; /* rpc.c closes the connection */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    while (msgpack_unpack_next(&u, (const char *)data, size, &off) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *o = &u.data;
        check_seed(o, data, size);
        check_ballot(o);
        for (uint32_t i = 0; o->type == MSGPACK_OBJECT_ARRAY && i < o->via.array.size && i < 4; i++) {
            check_seed(&o->via.array.ptr[i], data, size);
            check_ballot(&o->via.array.ptr[i]);
        }
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

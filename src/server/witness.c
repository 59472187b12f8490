/*
 * witness — this server's vote on the next change of the membership
 * history (docs/architecture.md §11.1).
 *
 * Two managers may each want to change the hash spaces at once (a network
 * partition between them, two operators). A change becomes version v + 1
 * of the history only once a majority of the servers listed in version v
 * have accepted it, so two different versions v + 1 can never both be
 * taken: any two majorities of one list share a server. Each version is
 * one round of single-decree Paxos with these servers as acceptors:
 *
 *   SRV_HS_PREPARE [v + 1, ballot]: promise to accept nothing with a lower
 *     ballot for v + 1, and answer the pair already accepted for it, if any
 *     (a manager that finds one must propose that pair, not its own: a
 *     majority may have taken it already);
 *   SRV_HS_ACCEPT [v + 1, ballot, whs, rhs]: accept it unless a higher
 *     ballot was promised.
 *
 * The manager then pushes the chosen pair (SRV_HS_SYNC) to everyone, and
 * holding it ends this server's vote for that version. A server that holds
 * v + 1 or newer answers HS_STALE with its pair, so the proposing manager
 * learns the change it missed; one that holds less than v answers
 * HS_BEHIND, and is sent version v first.
 *
 * Owns: the vote (server.witness_*). Calls: rpc, hashspace.
 * Thread rule: main loop.
 */
#include "log.h"
#include "proto.h"
#include "server.h"
#include "witness.h"

static void answer(server *s, rpc_conn *c, uint32_t msgid, int code, const hashspace_ballot *b, bool pair)
{
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_array(pk, 5);
    msgpack_pack_int(pk, code);
    msgpack_pack_uint64(pk, s->whs->version);
    if (b) hashspace_ballot_pack(b, pk);
    else msgpack_pack_nil(pk);
    hashspace *w = code == HS_STALE ? s->whs : s->witness_whs, *r = code == HS_STALE ? s->rhs : s->witness_rhs;
    if (pair && w && r) {
        hashspace_pack(w, pk);
        hashspace_pack(r, pk);
    } else {
        msgpack_pack_nil(pk);
        msgpack_pack_nil(pk);
    }
    rpc_call_end(c);
}

/* The vote is for `version` from now on (a newer version clears it). */
static void vote_for(server *s, uint64_t version)
{
    if (s->witness_version == version) return;
    hashspace_unref(s->witness_whs);
    hashspace_unref(s->witness_rhs);
    s->witness_whs = s->witness_rhs = NULL;
    s->witness_version = version;
    s->witness_promised = s->witness_accepted = (hashspace_ballot){0};
}

/* HS_STALE or HS_BEHIND when `version` is not the one after ours; 0 otherwise. */
static int placed(const server *s, uint64_t version)
{
    if (version <= s->whs->version) return HS_STALE;
    if (version > s->whs->version + 1) return HS_BEHIND;
    return HS_OK;
}

static void prepare(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    uint64_t v;
    hashspace_ballot b;
    const msgpack_object *ob = rpc_arg(params, 1);
    if (!rpc_arg_uint(params, 0, &v) || !ob || !hashspace_ballot_unpack(ob, &b)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    int where = placed(s, v);
    if (where != HS_OK) {
        answer(s, c, msgid, where, NULL, where == HS_STALE);
        return;
    }
    vote_for(s, v);
    if (hashspace_ballot_cmp(&b, &s->witness_promised) <= 0) {
        answer(s, c, msgid, HS_REFUSED, &s->witness_promised, false);
        return;
    }
    s->witness_promised = b;
    bool took = s->witness_whs != NULL;
    answer(s, c, msgid, HS_OK, took ? &s->witness_accepted : NULL, took);
}

static void accept_pair(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    char err[KUMO_ERRLEN] = "";
    uint64_t v;
    hashspace_ballot b;
    const msgpack_object *ob = rpc_arg(params, 1), *ow = rpc_arg(params, 2), *orh = rpc_arg(params, 3);
    hashspace *w = ow ? hashspace_unpack(ow, err) : NULL, *r = orh ? hashspace_unpack(orh, err) : NULL;
    if (!rpc_arg_uint(params, 0, &v) || !ob || !hashspace_ballot_unpack(ob, &b) || !w || !r ||
        w->version != v || r->version != v || hashspace_blank(w)) {
        rpc_reply_error(c, msgid, "bad params%s%s", err[0] ? ": " : "", err);
        hashspace_unref(w);
        hashspace_unref(r);
        return;
    }
    int where = placed(s, v);
    if (where != HS_OK) {
        answer(s, c, msgid, where, NULL, where == HS_STALE);
    } else {
        vote_for(s, v);
        if (hashspace_ballot_cmp(&b, &s->witness_promised) < 0) {
            answer(s, c, msgid, HS_REFUSED, &s->witness_promised, false);
        } else {
            s->witness_promised = s->witness_accepted = b;
            hashspace_unref(s->witness_whs);
            hashspace_unref(s->witness_rhs);
            s->witness_whs = hashspace_ref(w);
            s->witness_rhs = hashspace_ref(r);
            answer(s, c, msgid, HS_OK, NULL, false);
        }
    }
    hashspace_unref(w);
    hashspace_unref(r);
}

bool witness_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_HS_PREPARE: prepare(s, c, msgid, params); return true;
    case SRV_HS_ACCEPT: accept_pair(s, c, msgid, params); return true;
    default: return false;
    }
}

void witness_stop(server *s)
{
    vote_for(s, 0);
}

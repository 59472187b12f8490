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
 * A vote is kept in <db>.vote, written durably before it is answered: a
 * server restarted between its promise and the outcome must not promise
 * again as if it never had (Paxos needs its acceptors to remember). A file
 * that cannot be read is logged and ignored; a vote that cannot be written
 * is not given.
 *
 * Owns: the vote (server.witness_*) and <db>.vote. Calls: rpc, hashspace,
 * store (the path), log. Thread rule: main loop.
 */
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "proto.h"
#include "server.h"
#include "witness.h"
#include "xalloc.h"

#define VOTE_FILE_MAX (64u << 20) /* two seeds of HASHSPACE_MAX_NODES nodes fit many times */

static char *vote_path(const server *s)
{
    char *p = NULL;
    if (asprintf(&p, "%s.vote", store_path(s->db)) < 0) xcheck(NULL);
    return p;
}

static void pack_ballot_or_nil(const hashspace_ballot *b, msgpack_packer *pk)
{
    if (b->by.len) hashspace_ballot_pack(b, pk);
    else msgpack_pack_nil(pk);
}

/* Writes the vote [version, promised, accepted, whs, rhs] durably. */
static int save_vote(server *s, uint64_t version, const hashspace_ballot *promised, const hashspace_ballot *accepted,
                     const hashspace *w, const hashspace *r, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_uint64(&pk, version);
    pack_ballot_or_nil(promised, &pk);
    pack_ballot_or_nil(accepted, &pk);
    if (w && r) {
        hashspace_pack(w, &pk);
        hashspace_pack(r, &pk);
    } else {
        msgpack_pack_nil(&pk);
        msgpack_pack_nil(&pk);
    }
    char *path = vote_path(s);
    int rc = kumo_save_file(path, sb.data, sb.size, err);
    free(path);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

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

/* HS_STALE or HS_BEHIND when `version` is not the one after ours; 0
 * otherwise. (A vote kept from before a restart counts only for its own
 * version: a cluster restarted as a whole starts its history again at 1,
 * and a floor at the kept version would refuse every change after it.) */
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
        answer(s, c, msgid, where, where == HS_REFUSED ? &s->witness_promised : NULL, where == HS_STALE);
        return;
    }
    vote_for(s, v);
    if (hashspace_ballot_cmp(&b, &s->witness_promised) <= 0) {
        answer(s, c, msgid, HS_REFUSED, &s->witness_promised, false);
        return;
    }
    char err[KUMO_ERRLEN];
    if (save_vote(s, v, &b, &s->witness_accepted, s->witness_whs, s->witness_rhs, err) < 0) {
        log_warn("vote not given: %s", err);
        rpc_reply_error(c, msgid, "vote not saved: %s", err);
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
        answer(s, c, msgid, where, where == HS_REFUSED ? &s->witness_promised : NULL, where == HS_STALE);
    } else {
        vote_for(s, v);
        if (hashspace_ballot_cmp(&b, &s->witness_promised) < 0) {
            answer(s, c, msgid, HS_REFUSED, &s->witness_promised, false);
        } else if (save_vote(s, v, &b, &b, w, r, err) < 0) {
            log_warn("vote not given: %s", err);
            rpc_reply_error(c, msgid, "vote not saved: %s", err);
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

/* The vote of <db>.vote, or none if there is none or it is not one. */
void witness_start(server *s)
{
    char *path = vote_path(s), err[KUMO_ERRLEN] = "";
    FILE *f = fopen(path, "rb");
    if (!f) {
        free(path);
        return;
    }
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    size_t cap = size >= 0 && (unsigned long)size < VOTE_FILE_MAX ? (size_t)size + 1 : VOTE_FILE_MAX;
    char *buf = xmalloc(cap);
    rewind(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    hashspace_ballot promised = {0}, accepted = {0};
    hashspace *w = NULL, *r = NULL;
    uint64_t version = 0;
    const msgpack_object *o = &u.data, *ow, *orh;
    bool good = n < cap && msgpack_unpack_next(&u, buf, n, NULL) == MSGPACK_UNPACK_SUCCESS &&
                o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 5 && rpc_arg_uint(o, 0, &version);
    if (good && o->via.array.ptr[1].type != MSGPACK_OBJECT_NIL)
        good = hashspace_ballot_unpack(&o->via.array.ptr[1], &promised);
    if (good && o->via.array.ptr[2].type != MSGPACK_OBJECT_NIL)
        good = hashspace_ballot_unpack(&o->via.array.ptr[2], &accepted);
    ow = good ? rpc_arg(o, 3) : NULL;
    orh = good ? rpc_arg(o, 4) : NULL;
    if (good && (ow->type != MSGPACK_OBJECT_NIL || orh->type != MSGPACK_OBJECT_NIL)) {
        w = hashspace_unpack(ow, err);
        r = w ? hashspace_unpack(orh, err) : NULL;
        good = w && r && w->version == version && r->version == version && accepted.by.len;
    }
    if (good) {
        vote_for(s, version);
        s->witness_promised = promised;
        s->witness_accepted = accepted;
        s->witness_whs = w;
        s->witness_rhs = r;
        log_info("%s: the vote on membership version %llu is kept", path, (unsigned long long)version);
    } else {
        log_warn("%s is not a vote%s%s: ignored", path, err[0] ? ": " : "", err);
        hashspace_unref(w);
        hashspace_unref(r);
    }
    msgpack_unpacked_destroy(&u);
    free(buf);
    free(path);
}

void witness_stop(server *s)
{
    vote_for(s, 0);
}

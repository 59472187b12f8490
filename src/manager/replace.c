/*
 * replace — moving data after the membership changed (user guide ch. 9).
 *
 * whs already names the new owners and rhs the old ones, so writes reach
 * both and reads stay where the data is. The manager asks every connected
 * server to copy: each key's first surviving old owner sends it (tombstones
 * included, so deletes are not undone) to the new owners that lacked it;
 * receivers keep the newer ClockTime. When every server has reported the
 * end of its copy, rhs := whs everywhere, and each server deletes what it no
 * longer owns. A replace is named by the whs ClockTime it moves towards; a
 * newer one supersedes it, and reports for an old one are ignored. A server
 * lost during a phase no longer holds the phase up.
 *
 * Calls: membership.c, rpc, hashspace, log. Thread rule: main loop.
 */
#include "log.h"
#include "manager.h"
#include "proto.h"

#define PHASE_CALL_TIMEOUT 10.0

static void ignore_reply(void *arg, rpc_status st, const msgpack_object *r) {}

static void send_phase(manager *m, mserver *ms, uint32_t method, bool full)
{
    msgpack_packer *pk = rpc_call_begin(ms->conn, method, PHASE_CALL_TIMEOUT, ignore_reply, NULL);
    msgpack_pack_array(pk, 3);
    hashspace_pack(m->whs, pk);
    msgpack_pack_uint64(pk, m->replace_ct);
    if (full) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    rpc_call_end(ms->conn);
}

static void finish(manager *m)
{
    char buf[64];
    m->replacing = false;
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)m->replace_ct);
    log_info("replace finished time(%s)", buf);
}

static void start_delete(manager *m)
{
    /* Every copy is done: reads may now go to the new owners. */
    membership_set_hashspaces(m, hashspace_ref(m->whs), hashspace_ref(m->whs));
    m->delete_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = ms->conn != NULL;
        if (!ms->deleting) continue;
        m->delete_pending++;
        send_phase(m, ms, SRV_REPLACE_DELETE, false);
    }
    log_info("replace copy finished, deleting");
    if (m->delete_pending == 0) finish(m);
}

void replace_start(manager *m, bool full)
{
    m->replacing = true;
    m->replace_ct = m->whs->clocktime;
    m->copy_pending = 0;
    m->delete_pending = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        ms->deleting = false;
        ms->copying = ms->conn != NULL;
        if (!ms->copying) continue;
        m->copy_pending++;
        send_phase(m, ms, SRV_REPLACE_COPY, full);
    }
    log_info("start replace%s: %zu servers copying", full ? " (full)" : "", m->copy_pending);
    if (m->copy_pending == 0) start_delete(m);
}

void replace_phase_end(manager *m, rpc_conn *c, uint32_t method, uint64_t replace_ct)
{
    mserver *ms = rpc_get_data(c);
    if (!m->replacing || replace_ct != m->replace_ct || !ms) return;
    if (method == MGR_REPLACE_COPY_END && ms->copying) {
        ms->copying = false;
        if (--m->copy_pending == 0) start_delete(m);
    } else if (method == MGR_REPLACE_DELETE_END && ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

void replace_server_lost(manager *m, mserver *ms)
{
    if (!m->replacing) return;
    if (ms->copying) {
        ms->copying = false;
        if (--m->copy_pending == 0) start_delete(m);
    } else if (ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

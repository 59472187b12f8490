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
#include "binlog.h"
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
    binlog_event(LOG_LVL_INFO, "replace_finished", BL_UINT("clocktime", m->replace_ct));
}

#define REPLACE_RETRY_DELAY 3

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    manager *m = arg;
    log_info("replace: retrying the copy");
    replace_start(m, false);
}

static void copy_done(manager *m);

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

/* Every copy has ended: switch reads over, or, if a copy fell short, keep
 * rhs where the data surely is and try again shortly. */
static void copy_done(manager *m)
{
    if (!m->copy_failed) {
        start_delete(m);
        return;
    }
    log_warn("replace: some copies failed; reads stay on the old owners, retrying in %d s", REPLACE_RETRY_DELAY);
    if (!m->retry_timer) m->retry_timer = evtimer_new(m->base, retry_cb, m);
    struct timeval tv = {REPLACE_RETRY_DELAY, 0};
    evtimer_add(m->retry_timer, &tv);
}

void replace_stop(manager *m)
{
    if (m->retry_timer) event_free(m->retry_timer);
    m->retry_timer = NULL;
}

void replace_start(manager *m, bool full)
{
    if (m->retry_timer) evtimer_del(m->retry_timer);
    m->copy_failed = false;
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
    if (m->copy_pending == 0) copy_done(m);
}

void replace_phase_end(manager *m, rpc_conn *c, uint32_t method, uint64_t replace_ct, bool ok)
{
    mserver *ms = rpc_get_data(c);
    if (!m->replacing || replace_ct != m->replace_ct || !ms) return;
    if (method == MGR_REPLACE_COPY_END && ms->copying) {
        ms->copying = false;
        if (!ok) m->copy_failed = true;
        if (--m->copy_pending == 0) copy_done(m);
    } else if (method == MGR_REPLACE_DELETE_END && ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

void replace_resend(manager *m, mserver *ms)
{
    if (!m->replacing || !ms->conn) return;
    if (ms->copying) send_phase(m, ms, SRV_REPLACE_COPY, false);
    else if (ms->deleting) send_phase(m, ms, SRV_REPLACE_DELETE, false);
}

void replace_server_lost(manager *m, mserver *ms)
{
    if (!m->replacing) return;
    if (ms->copying) {
        /* What it was to send never arrived: the copy must be redone
         * without it once the others are done. */
        ms->copying = false;
        m->copy_failed = true;
        if (--m->copy_pending == 0) copy_done(m);
    } else if (ms->deleting) {
        ms->deleting = false;
        if (--m->delete_pending == 0) finish(m);
    }
}

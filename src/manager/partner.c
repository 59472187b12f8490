/*
 * partner — the second manager (-p; docs/architecture.md §9).
 *
 * Each manager keeps a link to the other (-p), reconnected every tick while
 * down. The partner's name is resolved at start and again every few seconds
 * while the link is down (a partner may come back under a new address); of
 * the addresses it stands for, the first that is not this manager's own is
 * the partner, so both managers may be given one name. It sends the partner
 * its hash spaces whenever they change and when the link
 * comes up. A pushed pair is adopted piece by piece when it is not empty and
 * not older than what is held (a restarted manager starts empty and must not
 * wipe the cluster's routing), then passed on to this manager's servers and
 * gateways. Only a hello from the configured partner is accepted.
 *
 * Exactly one manager drives a replace: the one an operator asked, or, for
 * automatic replaces, the one with the smaller address while both are up.
 * When the partner is lost in the middle of a replace, this manager finishes
 * it (restarting the copy, which is idempotent).
 *
 * Calls: membership.c, replace.c, rpc, hashspace, log. Thread rule: main loop.
 */
#include <string.h>
#include <time.h>

#include "links.h"
#include "log.h"
#include "manager.h"
#include "proto.h"

#define SYNC_TIMEOUT 10.0
#define PARTNER_SILENCE 4.0 /* s without an answer: the partner is lost (as a server, membership.c) */

static void ignore_reply(void *arg, rpc_status st, const msgpack_object *r) {}

void partner_sync(manager *m)
{
    rpc_conn *c = m->partner_conn;
    if (!c || !rpc_hello_done(c)) return;
    msgpack_packer *pk = rpc_call_begin(c, MGR_HS_SYNC, SYNC_TIMEOUT, ignore_reply, NULL);
    msgpack_pack_array(pk, 2);
    hashspace_pack(m->whs, pk);
    hashspace_pack(m->rhs, pk);
    rpc_call_end(c);
}

static bool resolve_partner(manager *m);

static bool is_partner(manager *m, rpc_conn *c)
{
    if (!m->has_partner || !rpc_hello_done(c)) return false;
    if (!net_equal(rpc_peer_addr(c), &m->partner) && resolve_partner(m)) m->partner_resolved = 0;
    return net_equal(rpc_peer_addr(c), &m->partner);
}

bool partner_up(const manager *m) { return m->partner_conn && rpc_hello_done(m->partner_conn); }

bool partner_drives_auto(const manager *m)
{
    return !partner_up(m) || net_compare(&m->self, &m->partner) < 0;
}

/* Adopt the partner's pair (params [whs, rhs]); true if anything changed. */
static bool adopt(manager *m, const msgpack_object *params)
{
    char err[KUMO_ERRLEN];
    const msgpack_object *ow = rpc_arg(params, 0), *orh = rpc_arg(params, 1);
    hashspace *w = ow ? hashspace_unpack(ow, err) : NULL, *r = orh ? hashspace_unpack(orh, err) : NULL;
    bool changed = false;
    if (w && r) {
        hashspace *nw = hashspace_ref(m->whs), *nr = hashspace_ref(m->rhs);
        clock_update(&m->clock, w->clocktime > r->clocktime ? w->clocktime : r->clocktime);
        hashspace *aw = hashspace_adopt(w, nw, false), *ar = hashspace_adopt(r, nr, false);
        if (aw) {
            hashspace_unref(nw);
            nw = aw;
            changed = true;
        }
        if (ar) {
            hashspace_unref(nr);
            nr = ar;
            changed = true;
        }
        if (changed) {
            log_info("hash spaces from partner adopted");
            membership_adopted(m, nw, nr);
        } else {
            hashspace_unref(nw);
            hashspace_unref(nr);
        }
    } else {
        log_warn("bad hash space from partner: %s", err);
    }
    hashspace_unref(w);
    hashspace_unref(r);
    return changed;
}

bool partner_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (method != MGR_HS_SYNC) return false;
    if (!is_partner(m, c)) {
        char buf[NET_ADDRSTRLEN];
        log_warn("hash spaces from %s, which is not the partner (-p)", net_format(rpc_peer_addr(c), buf, sizeof(buf)));
        rpc_reply_error(c, msgid, "unknown partner node");
        return true;
    }
    rpc_reply_bool(c, msgid, adopt(m, params));
    return true;
}

/* ---- the link ---- */

static void link_gone(manager *m, rpc_conn *c);

static void ping_done(void *arg, rpc_status st, const msgpack_object *r)
{
    manager *m = arg;
    (void)r;
    m->partner_ping_out = false;
    if (st == RPC_OK) m->partner_answer = clock_mono();
}

void partner_tick(manager *m, double lag)
{
    rpc_conn *c = m->partner_conn;
    if (!c || !rpc_hello_done(c)) return;
    double now = clock_mono();
    if (lag > 0) m->partner_answer += lag; /* our own stall is not its silence */
    if (now - m->partner_answer > PARTNER_SILENCE) {
        char buf[NET_ADDRSTRLEN];
        log_warn("partner %s does not answer for %.0f s (hung, or cut off): closing the link", net_format(&m->partner, buf, sizeof(buf)),
                 now - m->partner_answer);
        link_gone(m, c); /* "lost partner", takes over its replace, dials again */
        rpc_close(c);    /* no on_close from our own close */
        return;
    }
    if (m->partner_ping_out) return;
    m->partner_ping_out = true;
    msgpack_packer *pk = rpc_call_begin(c, MGR_KEEPALIVE, PARTNER_SILENCE, ping_done, m);
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint64(pk, clock_now(&m->clock));
    rpc_call_end(c);
}

static void partner_connect(manager *m);

/* c, one of our links to the partner, is gone: closed by either side. */
static void link_gone(manager *m, rpc_conn *c)
{
    char buf[NET_ADDRSTRLEN];
    if (c == m->partner_dialed) m->partner_dialed = NULL;
    if (m->partner_conn != c) {
        if (!m->partner_conn && !m->partner_dialed && !m->stopping) {
            struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
            evtimer_add(m->partner_retry, &tv);
        }
        return;
    }
    m->partner_conn = NULL;
    if (rpc_hello_done(c)) {
        log_warn("lost partner %s", net_format(&m->partner, buf, sizeof(buf)));
        /* A replace the partner was driving must not stay half done. */
        if (!m->replacing && m->whs->clocktime != m->rhs->clocktime && !hashspace_empty(m->whs)) {
            log_info("taking over the partner's replace");
            replace_start(m, false);
        }
    }
    if (!m->stopping) {
        struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
        evtimer_add(m->partner_retry, &tv);
    }
}

static void on_close(void *arg, rpc_conn *c) { link_gone(arg, c); }

void partner_hello(manager *m, rpc_conn *c)
{
    char buf[NET_ADDRSTRLEN];
    if (!is_partner(m, c)) {
        log_warn("manager %s is not the partner (-p): closing", net_format(rpc_peer_addr(c), buf, sizeof(buf)));
        rpc_close(c);
        return;
    }
    if (m->partner_conn && m->partner_conn != c) {
        /* Both sides dialled at once: both keep the link dialled by the
         * smaller address, so they agree without talking. */
        bool self_smaller = net_compare(&m->self, &m->partner) < 0;
        bool c_ours = c == m->partner_dialed;
        if (c_ours != self_smaller) {
            rpc_close(c);
            if (c_ours) m->partner_dialed = NULL;
            return;
        }
        rpc_conn *old = m->partner_conn;
        if (old == m->partner_dialed) m->partner_dialed = NULL;
        m->partner_conn = NULL;
        rpc_close(old);
    }
    m->partner_conn = c;
    m->partner_answer = clock_mono();
    m->partner_ping_out = false;
    log_info("partner connected %s", net_format(&m->partner, buf, sizeof(buf)));
    partner_sync(m);
}

static void on_hello(void *arg, rpc_conn *c) { partner_hello(arg, c); }

#define RESOLVE_EVERY 5.0

/* Look the partner's name up; true if it names some other manager. */
static bool resolve_partner(manager *m)
{
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN];
    net_addr found[LINKS_MAX];
    int n = links_resolve(m->cfg->partner, KUMO_MANAGER_PORT, found, LINKS_MAX, err);
    if (n < 0) {
        log_warn("partner: %s (will retry)", err);
        return m->partner.len != 0;
    }
    for (int i = 0; i < n; i++) {
        if (net_equal(&found[i], &m->self)) continue;
        if (!net_equal(&found[i], &m->partner))
            log_info("partner %s is %s", m->cfg->partner, net_format(&found[i], buf, sizeof(buf)));
        m->partner = found[i];
        return true;
    }
    log_warn("partner: '%s' names only this manager (will retry)", m->cfg->partner);
    return m->partner.len != 0;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    manager *m = arg;
    if (m->partner_conn || m->partner_dialed) return;
    double now = clock_mono();
    if (m->partner.len == 0 || now - m->partner_resolved > RESOLVE_EVERY) {
        m->partner_resolved = now;
        if (!resolve_partner(m)) {
            struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
            evtimer_add(m->partner_retry, &tv);
            return;
        }
    }
    partner_connect(m);
}

static void partner_connect(manager *m)
{
    rpc_handlers h = membership_handlers(m);
    h.on_hello = on_hello;
    h.on_close = on_close;
    m->partner_dialed = rpc_connect(m->base, &m->partner, m->cfg->common.connect_timeout, &h, &m->rpc_self);
}

void partner_closed(manager *m, rpc_conn *c)
{
    on_close(m, c);
}

void partner_start(manager *m)
{
    if (!m->has_partner) return;
    m->partner_retry = evtimer_new(m->base, retry_cb, m);
    retry_cb(-1, 0, m);
}

void partner_stop(manager *m)
{
    if (!m->has_partner) return;
    if (m->partner_dialed != m->partner_conn) rpc_close(m->partner_dialed);
    rpc_close(m->partner_conn);
    m->partner_conn = m->partner_dialed = NULL;
    if (m->partner_retry) event_free(m->partner_retry);
    m->partner_retry = NULL;
}

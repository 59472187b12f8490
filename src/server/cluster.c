/*
 * cluster — kumo-server's side of the cluster: the links to its managers
 * (reconnected every tick while down), the hash spaces they push, and the
 * connections to peer servers used for replication.
 *
 * A hash space is adopted when it is not empty and not older than the one
 * held (a restarted manager starts with an empty one and must not wipe the
 * routing of a running cluster).
 *
 * Calls: rpc, hashspace, log, daemon. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "proto.h"
#include "server.h"

static double tick(const server *s) { return s->cfg->common.clock_interval; }

static void notify_state(server *s)
{
    size_t active = 0;
    for (size_t i = 0; i < s->whs->ring.nnodes; i++) active += s->whs->ring.nodes[i].active;
    bool attached = hashspace_find(s->whs, &s->self) >= 0;
    bool known = false;
    for (int i = 0; i < s->nmanagers; i++) known = known || (s->managers[i].conn && rpc_hello_done(s->managers[i].conn));
    if (known && !s->ready_notified) {
        daemon_notify("READY=1");
        s->ready_notified = true;
    }
    daemon_notify("STATUS=%s, %s, %zu active servers", known ? "manager connected" : "no manager",
                  attached ? "attached" : "not attached", active);
}

void cluster_set_hashspaces(server *s, hashspace *whs, hashspace *rhs)
{
    if (whs) {
        hashspace_unref(s->whs);
        s->whs = whs;
    }
    if (rhs) {
        hashspace_unref(s->rhs);
        s->rhs = rhs;
    }
}

/* Adopt a pushed [whs, rhs] pair. Returns true if anything changed. */
static bool adopt(server *s, const msgpack_object *params)
{
    char err[KUMO_ERRLEN];
    const msgpack_object *ow = rpc_arg(params, 0), *orh = rpc_arg(params, 1);
    if (!ow || !orh) return false;
    hashspace *w = hashspace_unpack(ow, err), *r = hashspace_unpack(orh, err);
    if (!w || !r) {
        log_warn("bad hash space from manager: %s", err);
        hashspace_unref(w);
        hashspace_unref(r);
        return false;
    }
    bool changed = false;
    if (!hashspace_empty(w) && w->clocktime >= s->whs->clocktime && !hashspace_same_nodes(w, s->whs)) {
        cluster_set_hashspaces(s, hashspace_ref(w), NULL);
        changed = true;
    } else if (!hashspace_empty(w) && w->clocktime > s->whs->clocktime) {
        cluster_set_hashspaces(s, hashspace_ref(w), NULL);
    }
    if (!hashspace_empty(r) && r->clocktime >= s->rhs->clocktime && !hashspace_same_nodes(r, s->rhs)) {
        cluster_set_hashspaces(s, NULL, hashspace_ref(r));
        changed = true;
    } else if (!hashspace_empty(r) && r->clocktime > s->rhs->clocktime) {
        cluster_set_hashspaces(s, NULL, hashspace_ref(r));
    }
    clock_update(&s->clock, w->clocktime);
    hashspace_unref(w);
    hashspace_unref(r);
    if (changed) {
        log_info("new hash space: whs %zu nodes, rhs %zu nodes", s->whs->ring.nnodes, s->rhs->ring.nnodes);
        notify_state(s);
    }
    return changed;
}

bool cluster_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_KEEPALIVE: {
        uint64_t ct;
        if (rpc_arg_uint(params, 0, &ct)) clock_update(&s->clock, ct);
        rpc_reply_nil(c, msgid);
        return true;
    }
    case SRV_HS_SYNC:
        rpc_reply_bool(c, msgid, adopt(s, params));
        return true;
    default: return false;
    }
}

/* ---- manager links ---- */

static void manager_connect(server *s, manager_link *m);

static void manager_on_close(void *arg, rpc_conn *c)
{
    server *s = rpc_get_data(c);
    manager_link *m = arg;
    char buf[NET_ADDRSTRLEN];
    if (m->conn == c) {
        if (rpc_hello_done(c)) log_warn("lost manager %s", net_format(&m->addr, buf, sizeof(buf)));
        m->conn = NULL;
    }
    if (!s->stopping) {
        struct timeval tv = {(time_t)tick(s), (suseconds_t)((tick(s) - (double)(time_t)tick(s)) * 1e6)};
        if (tv.tv_sec == 0 && tv.tv_usec < 100000) tv.tv_usec = 100000;
        evtimer_add(m->retry, &tv);
    }
    notify_state(s);
}

static void manager_on_hello(void *arg, rpc_conn *c)
{
    server *s = rpc_get_data(c);
    manager_link *m = arg;
    char buf[NET_ADDRSTRLEN];
    log_info("manager connected %s", net_format(&m->addr, buf, sizeof(buf)));
    notify_state(s);
}

static void server_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);

static void manager_connect(server *s, manager_link *m)
{
    rpc_handlers h = {.on_request = server_on_request, .on_hello = manager_on_hello,
                      .on_close = manager_on_close, .arg = m};
    m->conn = rpc_connect(s->base, &m->addr, s->cfg->common.connect_timeout, &h, &s->rpc_self);
    if (m->conn) rpc_set_data(m->conn, s);
}

/* The retry timer needs both the server and the link; keep a small context. */
typedef struct retry_ctx {
    server *s;
    manager_link *m;
} retry_ctx;

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    retry_ctx *r = arg;
    if (!r->m->conn && !r->s->stopping) manager_connect(r->s, r->m);
}

void cluster_dispatch(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (data_handle(s, c, msgid, method, params)) return;
    if (cluster_handle(s, c, msgid, method, params)) return;
    if (replace_handle(s, c, msgid, method, params)) return;
    if (stream_handle(s, c, msgid, method, params)) return;
    rpc_reply_error(c, msgid, "unknown method %u", method);
}

/* Requests on the manager links: a link is an ordinary connection. */
static void server_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    cluster_dispatch(rpc_get_data(c), c, msgid, method, params);
}

int cluster_start(server *s, char *err)
{
    const char *names[2] = {s->cfg->manager1, s->cfg->manager2};
    for (int i = 0; i < 2; i++) {
        if (!names[i]) continue;
        manager_link *m = &s->managers[s->nmanagers];
        if (net_parse(names[i], KUMO_MANAGER_PORT, &m->addr, err) < 0) return -1;
        retry_ctx *r = malloc(sizeof(*r));
        if (!r) return kumo_err(err, "out of memory");
        r->s = s;
        r->m = m;
        m->retry = evtimer_new(s->base, retry_cb, r);
        s->nmanagers++;
    }
    for (int i = 0; i < s->nmanagers; i++) manager_connect(s, &s->managers[i]);
    return 0;
}

void cluster_stop(server *s)
{
    s->stopping = true;
    for (int i = 0; i < s->nmanagers; i++) {
        manager_link *m = &s->managers[i];
        rpc_close(m->conn);
        m->conn = NULL;
        if (m->retry) {
            retry_ctx *r = event_get_callback_arg(m->retry);
            event_free(m->retry);
            free(r);
            m->retry = NULL;
        }
    }
    for (size_t i = 0; i < s->npeers; i++) {
        rpc_close(s->peers[i].conn);
        s->peers[i].conn = NULL;
    }
}

/* ---- peers ---- */

static void peer_on_close(void *arg, rpc_conn *c)
{
    server *s = arg;
    for (size_t i = 0; i < s->npeers; i++)
        if (s->peers[i].conn == c) s->peers[i].conn = NULL;
}

static void peer_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    cluster_dispatch(arg, c, msgid, method, params);
}

rpc_conn *cluster_peer(server *s, const net_addr *addr)
{
    peer *p = NULL;
    for (size_t i = 0; i < s->npeers; i++)
        if (net_equal(&s->peers[i].addr, addr)) p = &s->peers[i];
    if (!p) {
        if (s->npeers == s->peers_cap) {
            size_t ncap = s->peers_cap ? s->peers_cap * 2 : 8;
            peer *np = realloc(s->peers, ncap * sizeof(*np));
            if (!np) return NULL;
            s->peers = np;
            s->peers_cap = ncap;
        }
        p = &s->peers[s->npeers++];
        p->addr = *addr;
        p->conn = NULL;
    }
    if (!p->conn) {
        rpc_handlers h = {.on_request = peer_on_request, .on_close = peer_on_close, .arg = s};
        p->conn = rpc_connect(s->base, addr, s->cfg->common.connect_timeout, &h, &s->rpc_self);
    }
    return p->conn;
}

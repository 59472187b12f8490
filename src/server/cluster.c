/*
 * cluster — kumo-server's side of the cluster: the links to its managers
 * (reconnected every tick while down), the hash spaces they push, and the
 * connections to peer servers used for replication.
 *
 * A hash space is adopted by hashspace_adopt's rule: a newer version of
 * the membership history, or fault marks within the one held; never a
 * blank one (a restarted manager starts with one and must not wipe the
 * routing of a running cluster).
 *
 * Requests on these links go to s->dispatch, and a co-owner that caught up
 * to s->on_rejoin (main.c sets both): the modules they reach call this one.
 *
 * Calls: rpc, links, hashspace, log, daemon, s->dispatch, s->on_rejoin.
 * Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "links.h"
#include "binlog.h"
#include "log.h"
#include "proto.h"
#include "server.h"

#define HS_REQUEST_TIMEOUT 5.0
#define VIEW_LEASE 2.0 /* seconds a manager's confirmation of our view lasts */

static double tick(const server *s) { return s->cfg->common.clock_interval; }

static void notify_state(server *s)
{
    size_t active = 0;
    for (size_t i = 0; i < s->whs->ring.nnodes; i++)
        active += s->whs->ring.nodes[i].active && !s->whs->ring.nodes[i].catchup; /* in sync */
    bool attached = hashspace_find(s->whs, &s->self) >= 0;
    bool known = s->managers && links_up(s->managers) > 0;
    if (known && !s->ready_notified) {
        daemon_notify("READY=1");
        s->ready_notified = true;
    }
    daemon_notify("STATUS=%s, %s, %zu active servers",
                  known                                           ? "manager connected"
                  : s->managers && links_unreachable(s->managers) ? "no manager reachable (check -m/-p)"
                                                                  : "no manager",
                  attached ? "attached" : "not attached", active);
}

/* Whether a server that was catching up in `old` is in sync in `nw`. */
static bool someone_rejoined(const hashspace *old, const hashspace *nw)
{
    for (size_t i = 0; i < nw->ring.nnodes; i++) {
        const ring_node *n = &nw->ring.nodes[i];
        if (n->active && !n->catchup && hashspace_catching_up(old, &n->addr)) return true;
    }
    return false;
}

void cluster_set_hashspaces(server *s, hashspace *whs, hashspace *rhs)
{
    if (whs) {
        /* A co-owner just caught up: compare digests with it now, so what
         * a copy cannot bring (a tombstone collected meanwhile) shows. */
        if (s->whs && !s->stopping && someone_rejoined(s->whs, whs) && s->on_rejoin) s->on_rejoin(s);
        hashspace_unref(s->whs);
        s->whs = whs;
        s->catching_up = hashspace_catching_up(whs, &s->self); /* once, not per read */
        /* What the refusal told us a manager now tells us (we are fault,
         * or attached again): serve by it. */
        if (s->stale_view) {
            s->stale_view = false;
            log_info("new hash spaces from a manager: no longer serving by the stale ones");
        }
    }
    if (rhs) {
        hashspace_unref(s->rhs);
        s->rhs = rhs;
    }
    if (whs || rhs) {
        /* Writes in flight chose their replicas by the old layout: new
         * owners from whs, and the old ones of rhs as well. */
        s->write_epoch++;
        s->writes_old = s->writes_inflight;
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
    hashspace *nw = hashspace_adopt(w, s->whs, true), *nr = hashspace_adopt(r, s->rhs, true);
    if (nw) {
        changed |= !hashspace_same_nodes(nw, s->whs);
        cluster_set_hashspaces(s, nw, NULL);
    }
    if (nr) {
        changed |= !hashspace_same_nodes(nr, s->rhs);
        cluster_set_hashspaces(s, NULL, nr);
    }
    clock_update(&s->clock, w->clocktime);
    hashspace_unref(w);
    hashspace_unref(r);
    if (changed) {
        log_info("new hash space: whs %zu nodes, rhs %zu nodes", s->whs->ring.nnodes, s->rhs->ring.nnodes);
        binlog_event(LOG_LVL_INFO, "hash_space", BL_UINT("whs_ct", s->whs->clocktime), BL_UINT("rhs_ct", s->rhs->clocktime), BL_UINT("whs_servers", s->whs->ring.nnodes), BL_UINT("rhs_servers", s->rhs->ring.nnodes));
        notify_state(s);
    }
    return changed;
}

/* ---- the view's lease ----
 *
 * A server that was stopped or cut off long enough to be marked fault runs
 * on with the hash space it had: it takes itself for the coordinator of keys
 * another owner has coordinated since, and requests that waited in its
 * sockets, or come from a gateway that has not heard of the fault, would run
 * on its stale copy. Two things keep that copy from winning:
 *   - Every tick the server asks each of its managers MGR_KEEPALIVE, which
 *     answers its whs ClockTime and whether it holds us fault. An answer
 *     that finds our whs current and us not fault confirms our view from
 *     the moment the question left (our monotonic clock: an answer that
 *     waited in a socket confirms nothing late). The view is leased while
 *     every manager address that ever accepted our hello (lease_recompute says
 *     why those) confirmed it less than VIEW_LEASE seconds ago. A manager marks a server fault only after 4 s without its
 *     answers, so every write of a stale coordinator is made outside the
 *     lease, and a write made outside it keeps the record it replaces
 *     (data.c apply_write), to be put back.
 *   - Its replicas know better (their whs marks it fault) and refuse its
 *     writes (data.c handle_replicate). The first refusal sets stale_view:
 *     it serves nothing until the lease is held again or a manager sends
 *     new hash spaces; with the current ones it is fault, back only by
 *     attach and a catch-up. A failed write made outside the lease is
 *     undone (data.c undo), refused or not answered.
 * With a manager down that once accepted our hello, no write is inside the lease:
 * each keeps what it replaces, which costs a read and a copy. */

#define LEASE_SLOTS 8     /* managers: -m and -p, each name one or a few addresses */
#define LEASE_ASK 0.5     /* seconds between questions at most, whatever -Ci */
#define LEASE_LAPSED 1e-9 /* a confirmed that is long over, but says "waited for" */

typedef struct lease_slot {
    net_addr addr;
    double confirmed;      /* clock_mono when the confirming question left; 0 never */
    bool asking, fetching; /* a MGR_KEEPALIVE, a MGR_HS_REQUEST in flight */
} lease_slot;

typedef struct lease_q {
    server *s;
    int slot;
    double sent;
} lease_q;

static lease_slot *lease_slot_of(server *s, const net_addr *a)
{
    lease_slot *free_slot = NULL;
    for (int i = 0; i < LEASE_SLOTS; i++) {
        lease_slot *l = &s->lease[i];
        if (l->confirmed != 0 || l->asking || l->fetching) {
            if (net_equal(&l->addr, a)) return l;
        } else if (!free_slot) {
            free_slot = l;
        }
    }
    if (free_slot) free_slot->addr = *a;
    return free_slot;
}

/* Leased until the oldest confirmation of the managers we link to ends.
 * An address whose manager never accepted our hello is not waited for: a
 * name may stand for addresses no manager listens on (localhost: ::1 and
 * 127.0.0.1), and a manager we never reached never held us. One that did
 * (manager_on_hello) is waited for as long as its name stands for it, from
 * its hello on, not from its first confirmation: it may attach us before
 * it ever confirmed our view (our question went out before the hash space
 * had us), and cut off from us, it may be the one that marks us fault. */
static void lease_recompute(server *s)
{
    size_t n = s->managers ? links_count(s->managers) : 0;
    double until = 1e300;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        const net_addr *a = links_addr(s->managers, i);
        for (int j = 0; j < LEASE_SLOTS; j++) {
            const lease_slot *l = &s->lease[j];
            if (l->confirmed == 0 || !net_equal(&l->addr, a)) continue;
            any = true;
            if (l->confirmed + VIEW_LEASE < until) until = l->confirmed + VIEW_LEASE;
        }
    }
    s->lease_until = any ? until : 0;
}

/* Slots of addresses the links no longer stand for, with nothing in flight,
 * are free again (a manager moved). */
static void lease_forget_gone(server *s)
{
    size_t n = links_count(s->managers);
    for (int j = 0; j < LEASE_SLOTS; j++) {
        lease_slot *l = &s->lease[j];
        bool linked = false;
        for (size_t i = 0; i < n && !linked; i++) linked = net_equal(&l->addr, links_addr(s->managers, i));
        if (!linked && !l->asking && !l->fetching) *l = (lease_slot){0};
    }
}

bool cluster_view_leased(server *s) { return clock_mono() < s->lease_until; }

/* Every manager confirmed the hash spaces we hold. */
static void view_current(server *s)
{
    if (!s->stale_view) return;
    s->stale_view = false;
    log_info("every manager confirmed the hash spaces this server holds: serving by them again");
}

static void hs_answer(void *arg, rpc_status st, const msgpack_object *result)
{
    lease_q *q = arg;
    server *s = q->s;
    if (!s->stopping) { /* else s->lease is gone (cluster_stop) */
        s->lease[q->slot].fetching = false;
        if (st == RPC_OK) adopt(s, result);
    }
    free(q);
}

static void lease_answer(void *arg, rpc_status st, const msgpack_object *result)
{
    lease_q *q = arg;
    server *s = q->s;
    if (s->stopping) { /* s->lease is gone (cluster_stop) */
        free(q);
        return;
    }
    lease_slot *l = &s->lease[q->slot];
    l->asking = false;
    uint64_t whs_ct;
    const msgpack_object *fault = st == RPC_OK && result ? rpc_arg(result, 1) : NULL;
    if (fault && rpc_arg_uint(result, 0, &whs_ct) && whs_ct != 0 &&
        fault->type == MSGPACK_OBJECT_BOOLEAN) {
        int at = hashspace_find(s->whs, &s->self);
        bool we_fault = at >= 0 && !s->whs->ring.nodes[at].active;
        if (s->whs->clocktime >= whs_ct && fault->via.boolean == we_fault) {
            if (q->sent > l->confirmed) l->confirmed = q->sent;
            lease_recompute(s);
            if (cluster_view_leased(s)) view_current(s); /* every manager agrees, not just this one */
        } else if (!l->fetching) {                       /* the manager knows more: ask for it */
            rpc_conn *c = NULL;                          /* that manager: no other one was asked */
            for (size_t i = 0; i < links_count(s->managers) && !c; i++)
                if (net_equal(links_addr(s->managers, i), &l->addr)) c = links_conn(s->managers, i);
            lease_q *h = malloc(sizeof(*h));
            if (c && h) {
                *h = (lease_q){.s = s, .slot = q->slot};
                l->fetching = true;
                msgpack_pack_array(rpc_call_begin(c, MGR_HS_REQUEST, HS_REQUEST_TIMEOUT, hs_answer, h), 0);
                rpc_call_end(c);
            } else {
                free(h);
            }
        }
    }
    free(q);
}

static void lease_tick(evutil_socket_t fd, short what, void *arg)
{
    server *s = arg;
    (void)fd;
    (void)what;
    lease_forget_gone(s);
    for (size_t i = 0; s->managers && i < links_count(s->managers); i++) {
        rpc_conn *c = links_conn(s->managers, i);
        lease_slot *l = lease_slot_of(s, links_addr(s->managers, i));
        if (!c || !l || l->asking) continue;
        lease_q *q = malloc(sizeof(*q));
        if (!q) continue;
        *q = (lease_q){.s = s, .slot = (int)(l - s->lease), .sent = clock_mono()};
        l->asking = true;
        msgpack_packer *pk = rpc_call_begin(c, MGR_KEEPALIVE, HS_REQUEST_TIMEOUT, lease_answer, q);
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint64(pk, clock_now(&s->clock));
        rpc_call_end(c);
    }
    lease_recompute(s);
}

void cluster_stale_view(server *s, const net_addr *by)
{
    if (s->stale_view) return;
    s->stale_view = true;
    char buf[NET_ADDRSTRLEN];
    log_warn("%s holds this server fault: its hash space is stale; serving nothing until a manager confirms one",
             net_format(by, buf, sizeof(buf)));
    binlog_event(LOG_LVL_WARN, "stale_view", BL_ADDR("peer", by));
}

bool cluster_peer_is_fault(const server *s, const rpc_conn *c)
{
    if (rpc_peer_role(c) != RPC_ROLE_SERVER) return false; /* kumoctl repair, a gateway: not coordinators */
    int at = hashspace_find(s->whs, rpc_peer_addr(c));
    return at >= 0 && !s->whs->ring.nodes[at].active;
}

/* The answer to a pushed [whs, rhs] waits until every write this server
 * coordinated under an older whs or rhs has finished replicating: a manager
 * that has every server's answer knows that no write routed by the old
 * layout is still on its way. So a replace copy that starts then misses
 * none (a catching-up owner gets the rest by replication), and a delete
 * that starts then is not followed by a late copy of a key to a server
 * that no longer owns it, which would stay there, stale. Bounded, so a stuck
 * replica cannot hold the manager up for longer than a replication does. */
#define BARRIER_POLL_USEC 5000
#define BARRIER_MAX_POLLS 1600 /* 8 s: a replication's retries end sooner, and the
                                  * manager's call waits 10 s */

typedef struct barrier {
    server *s;
    rpc_conn *c; /* held */
    uint32_t msgid;
    bool changed;
    int polls;
} barrier;

static void barrier_cb(evutil_socket_t fd, short what, void *arg)
{
    barrier *b = arg;
    server *s = b->s;
    if (s->writes_old > 0 && !s->stopping && ++b->polls < BARRIER_MAX_POLLS) {
        struct timeval tv = {0, BARRIER_POLL_USEC};
        event_base_once(s->base, -1, EV_TIMEOUT, barrier_cb, b, &tv);
        return;
    }
    rpc_reply_bool(b->c, b->msgid, b->changed);
    rpc_release(b->c);
    free(b);
}

static void hs_sync(server *s, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    bool changed = adopt(s, params);
    barrier *b = s->writes_old > 0 ? malloc(sizeof(*b)) : NULL;
    if (!b) {
        rpc_reply_bool(c, msgid, changed);
        return;
    }
    *b = (barrier){.s = s, .c = c, .msgid = msgid, .changed = changed};
    rpc_hold(c);
    barrier_cb(-1, 0, b);
}

bool cluster_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case SRV_KEEPALIVE: {
        uint64_t ct;
        if (rpc_arg_uint(params, 0, &ct)) clock_update(&s->clock, ct);
        rpc_reply_uint(c, msgid, clock_now(&s->clock)); /* the manager passes the newest on */
        return true;
    }
    case SRV_HS_SYNC:
        hs_sync(s, c, msgid, params);
        return true;
    default: return false;
    }
}

/* ---- manager links (links.h) ---- */

/* A manager that accepted our hello may attach us: the lease waits for its
 * confirmations from now on (lease_recompute). */
static void manager_on_hello(void *arg, rpc_conn *c)
{
    server *s = arg;
    for (size_t i = 0; s->lease && i < links_count(s->managers); i++) {
        if (links_conn(s->managers, i) != c) continue;
        lease_slot *l = lease_slot_of(s, links_addr(s->managers, i));
        if (l && l->confirmed == 0) l->confirmed = LEASE_LAPSED;
    }
    if (s->lease) lease_recompute(s);
    notify_state(s);
}

/* A manager that loses its link to us may mark us fault at once (-Yn 0):
 * its confirmation ends with the link, as any manager's, until the next
 * answer. */
static void manager_on_close(void *arg, rpc_conn *c)
{
    server *s = arg;
    (void)c;
    for (int i = 0; s->lease && i < LEASE_SLOTS; i++)
        if (s->lease[i].confirmed != 0) s->lease[i].confirmed = LEASE_LAPSED;
    if (s->lease) lease_recompute(s);
    notify_state(s);
}

static void manager_unreachable(void *arg) { notify_state(arg); }

/* Requests on the links this module opens go to s->dispatch (dispatch.c,
 * set by main.c): calling it by name would make a circle of modules. */
static void manager_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    server *s = arg;
    s->dispatch(s, c, msgid, method, params);
}

int cluster_start(server *s, char *err)
{
    const char *names[3] = {s->cfg->manager1, s->cfg->manager2, NULL};
    links_config lc = {.names = names, .default_port = KUMO_MANAGER_PORT, .retry = tick(s), .connect_timeout = s->cfg->common.connect_timeout, .on_unreachable = manager_unreachable};
    rpc_handlers h = {.on_request = manager_on_request, .on_hello = manager_on_hello, .on_close = manager_on_close, .arg = s};
    s->managers = links_new(s->base, &lc, &h, &s->rpc_self);
    if (!s->managers) return kumo_err(err, "out of memory");
    s->lease = calloc(LEASE_SLOTS, sizeof(*s->lease));
    s->lease_timer = s->lease ? event_new(s->base, -1, EV_PERSIST, lease_tick, s) : NULL;
    struct timeval tv = clock_timeval(tick(s) < LEASE_ASK ? tick(s) : LEASE_ASK);
    if (!s->lease_timer || event_add(s->lease_timer, &tv) < 0) return kumo_err(err, "out of memory");
    return 0;
}

void cluster_stop(server *s)
{
    s->stopping = true;
    if (s->lease_timer) event_free(s->lease_timer);
    s->lease_timer = NULL;
    links_free(s->managers);
    s->managers = NULL;
    free(s->lease);
    s->lease = NULL;
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
    server *s = arg;
    s->dispatch(s, c, msgid, method, params);
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

/*
 * membership — who is in the cluster, and the hash spaces that say so.
 *
 * Servers connect to the manager and say hello with their -l address. One
 * that is not an active member of whs is a newcomer ("not attached node")
 * until an operator attaches it. Liveness: every tick the manager sends a
 * keepalive down each server's link; when the link closes, the manager
 * itself tries to reach the server -Yn times (each attempt must complete a
 * hello within -Ys); if none succeeds the server is lost: marked fault in whs and rhs — keeping its
 * ring slots, so no key moves — and the new hash spaces are pushed to every
 * server and gateway. Keepalives unanswered for KEEPALIVE_LIMIT seconds mean
 * the server is lost at once (a stopped process still completes TCP
 * handshakes, so probing it proves nothing). A server that comes back is a
 * newcomer again.
 *
 * What happens here that other modules act on (a request, a tick, a server
 * lost or back, the partner's link, the auto-replace timer, a change of the
 * hash spaces) goes to them through m->hooks, which main.c fills: they call
 * this module, so it does not call them by name.
 *
 * Calls: rpc, hashspace, clock, log, m->hooks. Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "binlog.h"
#include "log.h"
#include "manager.h"
#include "proto.h"
#include "xalloc.h"

#define KEEPALIVE_LIMIT 4.0 /* seconds without an answer: the server is lost */
/* One keepalive is in flight at a time, and it waits as long as the limit:
 * with a shorter timeout, a busy server answering every keepalive 2.5 s late
 * had each answer dropped as "late" and was declared lost while answering. */
#define KEEPALIVE_TIMEOUT KEEPALIVE_LIMIT
#define PUSH_TIMEOUT 10.0

static void mgr_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
static void mgr_on_hello(void *arg, rpc_conn *c);
static void mgr_on_close(void *arg, rpc_conn *c);

rpc_handlers membership_handlers(manager *m)
{
    rpc_handlers h = {.on_request = mgr_on_request, .on_hello = mgr_on_hello, .on_close = mgr_on_close, .arg = m};
    return h;
}

static const char *fmt(const net_addr *a, char buf[NET_ADDRSTRLEN])
{
    return net_format(a, buf, NET_ADDRSTRLEN);
}

/* ---- hash spaces ---- */

static void ignore_reply(void *arg, rpc_status st, const msgpack_object *r) {}

static void pack_pair(manager *m, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    hashspace_pack(m->whs, pk);
    hashspace_pack(m->rhs, pk);
}

static bool learn_from(manager *m, mserver *ms, bool always);

/* A server that did not adopt what we pushed may hold a newer version,
 * made by the other manager while we could not hear from it: ask it. */
static void push_reply(void *arg, rpc_status st, const msgpack_object *r)
{
    mserver *ms = arg;
    if (st != RPC_OK || r->type != MSGPACK_OBJECT_BOOLEAN || r->via.boolean || ms->m->stopping) return;
    if (ms->conn) learn_from(ms->m, ms, true);
}

static void push_to_server(manager *m, mserver *ms)
{
    if (!ms->conn) return;
    /* ms outlives its links: it is freed only when the manager stops, after
     * they are closed, and a closed link answers its calls first. */
    pack_pair(m, rpc_call_begin(ms->conn, SRV_HS_SYNC, PUSH_TIMEOUT, push_reply, ms));
    rpc_call_end(ms->conn);
}

void membership_push(manager *m, mserver *ms) { push_to_server(m, ms); }

static void push_to_gateway(manager *m, rpc_conn *c)
{
    pack_pair(m, rpc_call_begin(c, GW_HS_PUSH, PUSH_TIMEOUT, ignore_reply, NULL));
    rpc_call_end(c);
}

static void notify_status(manager *m)
{
    size_t active = 0;
    for (size_t i = 0; i < m->whs->ring.nnodes; i++)
        active += m->whs->ring.nodes[i].active && !m->whs->ring.nodes[i].catchup; /* in sync */
    daemon_notify("STATUS=serving, %zu servers attached (%zu active), %zu gateway connections", m->whs->ring.nnodes, active,
                  m->ngateways);
}

/* Replace both hash spaces (taking ownership) and tell everyone. */
static bool is_active_member(manager *m, const net_addr *a);

/* A linked server that is no active member: listed as "not attached". */
static void mark_newcomer(manager *m, mserver *ms)
{
    char buf[NET_ADDRSTRLEN];
    ms->newcomer = true;
    log_info("new node server %s", fmt(&ms->addr, buf));
    binlog_event(LOG_LVL_INFO, "server_new", BL_ADDR("addr", &ms->addr));
    membership_schedule_auto_replace(m);
}

mserver *membership_linked_node(manager *m, const ring_node *n)
{
    mserver *ms = membership_find_server(m, &n->addr);
    if (ms && ms->conn) return ms;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *o = m->servers[i];
        if (!o->conn) continue;
        ring_node on = membership_node_of(o, false, false);
        if (ring_same_key(&on, n)) return o; /* its database, at a new address */
    }
    return NULL;
}

bool membership_sees_majority(manager *m)
{
    size_t listed = m->whs->ring.nnodes, linked = 0;
    if (!m->has_partner) return true;
    /* Against every listed server, fault ones too: counted against those
     * in service only, a manager cut off with a minority would mark them
     * one by one as each tick shrank the count. */
    for (size_t i = 0; i < listed; i++) linked += membership_linked_node(m, &m->whs->ring.nodes[i]) != NULL;
    return 2 * linked > listed;
}

/* hs with every server this manager found lost marked fault (a change
 * agreed or learned may list it active: it was live where that change was
 * made); takes hs. Not while this manager reaches fewer than a majority
 * of the listed servers (membership_sees_majority). */
static hashspace *without_lost(manager *m, hashspace *hs)
{
    if (hs->ring.nnodes == 0 || !membership_sees_majority(m)) return hs;
    ring_node *nodes = xmalloc(hs->ring.nnodes * sizeof(*nodes));
    bool changed = false;
    memcpy(nodes, hs->ring.nodes, hs->ring.nnodes * sizeof(*nodes));
    for (size_t i = 0; i < hs->ring.nnodes; i++) {
        mserver *ms = membership_find_server(m, &nodes[i].addr);
        if (ms && ms->lost && !ms->conn && nodes[i].active) nodes[i].active = false, changed = true;
    }
    hashspace *out = changed ? xcheck(hashspace_new(nodes, hs->ring.nnodes, hs->clocktime)) : NULL;
    free(nodes);
    if (!out) return hs;
    out->version = hs->version;
    hashspace_unref(hs);
    return out;
}

static void install(manager *m, hashspace *whs, hashspace *rhs)
{
    hashspace *old_w = m->whs, *old_r = m->rhs;
    m->whs = whs; /* without_lost counts the servers the new whs lists */
    m->rhs = rhs;
    m->whs = without_lost(m, whs);
    m->rhs = without_lost(m, rhs);
    hashspace_unref(old_w);
    hashspace_unref(old_r);
    /* Who is listed as a newcomer follows the layout, whoever changed it:
     * a server attached by the partner is one no more, one it detached is
     * one again, so none is missing from both lists. */
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (is_active_member(m, &ms->addr)) ms->newcomer = false;
        else if (ms->conn && !ms->newcomer) mark_newcomer(m, ms);
    }
    whs = m->whs;
    rhs = m->rhs;
    binlog_event(LOG_LVL_INFO, "hash_space", BL_UINT("whs_ct", whs->clocktime), BL_UINT("rhs_ct", rhs->clocktime), BL_UINT("servers", whs->ring.nnodes));
    for (size_t i = 0; i < m->nservers; i++) push_to_server(m, m->servers[i]);
    for (size_t i = 0; i < m->ngateways; i++) push_to_gateway(m, m->gateways[i]);
    notify_status(m);
}

void membership_set_hashspaces(manager *m, hashspace *whs, hashspace *rhs)
{
    m->learning = false; /* a change of our own: the servers follow us now */
    install(m, whs, rhs);
    m->hooks.changed(m);
}

void membership_adopted(manager *m, hashspace *whs, hashspace *rhs)
{
    m->learning = false; /* the partner's layout is the cluster's */
    install(m, whs, rhs);
}

void membership_take(manager *m, hashspace *whs, hashspace *rhs)
{
    clock_update(&m->clock, whs->clocktime > rhs->clocktime ? whs->clocktime : rhs->clocktime);
    hashspace *w = hashspace_adopt(whs, m->whs, false), *r = hashspace_adopt(rhs, m->rhs, false);
    if (!w && !r) return;
    log_info("hash spaces of version %llu taken from a server (made by the other manager)",
             (unsigned long long)(w ? w : m->whs)->version);
    m->learning = false;
    install(m, w ? w : hashspace_ref(m->whs), r ? r : hashspace_ref(m->rhs));
}

/* A copy of hs with `addr` fault; NULL if it is not listed active. A fault
 * mark is no new version, and keeps the ClockTime too: two managers that
 * mark servers of one version hold one replace_ct, so neither's copy
 * supersedes the other's at the servers (src/server/replace.c). */
static hashspace *with_fault(hashspace *hs, const net_addr *addr)
{
    int i = hashspace_find(hs, addr);
    if (i < 0 || !hs->ring.nodes[i].active) return NULL;
    ring_node *nodes = xmalloc(hs->ring.nnodes * sizeof(*nodes));
    memcpy(nodes, hs->ring.nodes, hs->ring.nnodes * sizeof(*nodes));
    nodes[i].active = false;
    hashspace *n = xcheck(hashspace_new(nodes, hs->ring.nnodes, hs->clocktime));
    free(nodes);
    n->version = hs->version;
    return n;
}

/* ---- servers ---- */

mserver *membership_find_server(manager *m, const net_addr *a)
{
    for (size_t i = 0; i < m->nservers; i++)
        if (net_equal(&m->servers[i]->addr, a)) return m->servers[i];
    return NULL;
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg);

static mserver *add_server(manager *m, const net_addr *a)
{
    if (m->nservers == m->servers_cap) {
        size_t ncap = m->servers_cap ? m->servers_cap * 2 : 8;
        mserver **ns = realloc(m->servers, ncap * sizeof(*ns));
        if (!ns) return NULL;
        m->servers = ns;
        m->servers_cap = ncap;
    }
    mserver *ms = calloc(1, sizeof(*ms));
    if (!ms) return NULL;
    ms->addr = *a;
    ms->m = m;
    ms->probe_timer = evtimer_new(m->base, probe_timer_cb, ms);
    m->servers[m->nservers++] = ms;
    return ms;
}

ring_node membership_node_of(const mserver *ms, bool active, bool catchup)
{
    ring_node n = {.addr = ms->addr, .active = active, .catchup = catchup, .keylen = ms->keylen};
    memcpy(n.key, ms->key, ms->keylen);
    return n;
}

/* "name cache-a", "id 5f0c…" or the address: what a node's key is, for the log. */
static const char *key_text(const ring_node *n, char *buf, size_t len)
{
    const uint8_t *k;
    size_t kl = ring_node_key(n, &k);
    if (n->keylen == 0) return net_format(&n->addr, buf, len);
    bool printable = true;
    for (size_t i = 0; i < kl; i++) printable = printable && k[i] > 0x20 && k[i] < 0x7f;
    if (printable) {
        snprintf(buf, len, "name %.*s", (int)kl, (const char *)k);
        return buf;
    }
    size_t at = (size_t)snprintf(buf, len, "key ");
    for (size_t i = 0; i < kl && at + 3 <= len; i++) at += (size_t)snprintf(buf + at, len - at, "%02x", k[i]);
    return buf;
}

/* n, now reached at a: its key stays what it was (its old address's bytes,
 * if it had none of its own), written out only when it is not a's. */
static void place_at(ring_node *n, const net_addr *a)
{
    if (n->keylen == 0) {
        n->keylen = n->addr.len;
        memcpy(n->key, n->addr.id, n->addr.len);
    }
    n->addr = *a;
    if (n->keylen == a->len && memcmp(n->key, a->id, a->len) == 0) n->keylen = 0;
}

/* Where the entry of a node goes when another node's database answers at
 * its address, until its own says hello from somewhere: an address nothing
 * answers at (the discard-only prefix 100::/64, port 0), made unique by its
 * key's hash. It is fault there; detach it if it never returns. */
static net_addr nowhere(const ring_node *n)
{
    const uint8_t *k;
    size_t kl = ring_node_key(n, &k);
    uint64_t h = ring_hash(k, kl);
    net_addr a = {.len = NET_ID_V6};
    a.id[2] = 0x01; /* port 0, then 0100:0000:0000:0000: the discard prefix */
    for (int i = 0; i < 8; i++) a.id[10 + i] = (uint8_t)(h >> (8 * i));
    return a;
}

/* hs with the server ms (a new process saying hello at ms->addr) at the
 * entry of its own key: the entry of its key elsewhere moves here, fault
 * until it is attached again; another node's entry at this address goes
 * nowhere(). NULL if nothing moves. */
static hashspace *with_moves(hashspace *hs, const mserver *ms, uint64_t ct)
{
    ring_node me = membership_node_of(ms, false, false);
    int at_addr = hashspace_find(hs, &ms->addr), at_key = -1;
    for (size_t i = 0; i < hs->ring.nnodes; i++)
        if (ring_same_key(&hs->ring.nodes[i], &me)) at_key = (int)i;
    if (at_addr == at_key) return NULL; /* itself, or a stranger to this layout */
    ring_node *nodes = malloc((hs->ring.nnodes + 1) * sizeof(*nodes));
    if (!nodes) return NULL;
    memcpy(nodes, hs->ring.nodes, hs->ring.nnodes * sizeof(*nodes));
    if (at_addr >= 0) {
        place_at(&nodes[at_addr], &(net_addr){0});
        nodes[at_addr].addr = nowhere(&nodes[at_addr]);
        nodes[at_addr].active = false;
    }
    if (at_key >= 0) {
        place_at(&nodes[at_key], &ms->addr);
        nodes[at_key].active = false;
    }
    hashspace *n = hashspace_new(nodes, hs->ring.nnodes, ct);
    free(nodes);
    return n;
}

/* A server's database is placed by its key, not its address: when one
 * says hello at another address than its layout entry's (a container
 * recreated with its volume, a moved VM), its entry follows it, with every
 * key where it was. It is a new process, so it is fault until attached
 * again, and catches up then like any returning server. */
static void follow_moves(manager *m, mserver *ms)
{
    char a[NET_ADDRSTRLEN], k[2 * RING_KEY_MAX + 8];
    if (m->proposal) return; /* one change at a time: the tick tries again */
    uint64_t ct = clock_next(&m->clock);
    hashspace *w = with_moves(m->whs, ms, ct), *r = with_moves(m->rhs, ms, ct);
    if (!w && !r) return;
    ring_node me = membership_node_of(ms, false, false);
    log_warn("server %s holds the database of node %s: its layout entry moves here, fault until it is attached "
             "again; a node whose entry was at this address waits for its own database",
             fmt(&ms->addr, a), key_text(&me, k, sizeof(k)));
    binlog_event(LOG_LVL_WARN, "server_moved", BL_ADDR("addr", &ms->addr));
    /* Entries change addresses: a new version of the membership. Not
     * agreed now (the other manager's change came first, or no majority
     * answered): the next tick tries again. */
    m->hooks.propose(m, w ? w : hashspace_ref(m->whs), r ? r : hashspace_ref(m->rhs));
}

/* Another live server is placed by the same key: two copies of one
 * database (a copied volume) must not both hold its place. */
static mserver *key_holder(manager *m, const mserver *ms, const ring_node *me)
{
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *o = m->servers[i];
        if (o == ms || !o->conn) continue;
        ring_node on = membership_node_of(o, false, false);
        if (ring_same_key(&on, me)) return o;
    }
    return NULL;
}

static bool is_active_member(manager *m, const net_addr *a)
{
    int i = hashspace_find(m->whs, a);
    return i >= 0 && m->whs->ring.nodes[i].active;
}

/* force: the server is known to be a new process (it said hello as one),
 * whatever this manager reaches: marked fault always. */
static void server_lost(manager *m, mserver *ms, bool force)
{
    char buf[NET_ADDRSTRLEN];
    log_warn("lost node server %s", fmt(&ms->addr, buf));
    binlog_event(LOG_LVL_WARN, "server_lost", BL_ADDR("addr", &ms->addr));
    ms->newcomer = false;
    membership_schedule_auto_replace(m);
    /* A manager cut off with a minority of the servers cannot tell them
     * dead from out of its reach: its marks would take the majority's
     * servers out of service everywhere once the partition heals (marks
     * of one version merge). The other manager, or this one when it
     * reaches a majority again (tick_cb), marks the servers that are gone. */
    bool majority = force || membership_sees_majority(m);
    ms->lost = majority;     /* marked fault, and again in any layout installed while it is away */
    ms->suspect = !majority; /* probed again once this manager reaches a majority */
    if (!majority)
        log_warn("server %s is not marked fault: this manager reaches no majority of the attached servers",
                 fmt(&ms->addr, buf));
    hashspace *w = majority ? with_fault(m->whs, &ms->addr) : NULL;
    hashspace *r = majority ? with_fault(m->rhs, &ms->addr) : NULL;
    if (!w && !r) {
        m->hooks.server_lost(m, ms);
        notify_status(m);
        return;
    }
    membership_set_hashspaces(m, w ? w : hashspace_ref(m->whs), r ? r : hashspace_ref(m->rhs));
    m->hooks.server_lost(m, ms);
}

static void probe_next(mserver *ms)
{
    manager *m = ms->m;
    if (ms->conn) return;
    if (ms->probes_left <= 0) {
        server_lost(m, ms, false);
        return;
    }
    ms->probes_left--;
    rpc_handlers h = membership_handlers(m);
    ms->probe = rpc_connect(m->base, &ms->addr, m->cfg->common.connect_timeout, &h, &m->rpc_self);
    if (ms->probe) rpc_set_data(ms->probe, ms);
    struct timeval tv = clock_timeval(m->cfg->common.connect_timeout);
    evtimer_add(ms->probe_timer, &tv); /* the hello must arrive by then */
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    mserver *ms = arg;
    if (ms->probe) { /* connected (perhaps) but no hello: a hung process */
        rpc_conn *p = ms->probe;
        ms->probe = NULL;
        rpc_close(p);
    }
    probe_next(ms);
}

static void start_probing(manager *m, mserver *ms)
{
    char buf[NET_ADDRSTRLEN];
    if (ms->probe || evtimer_pending(ms->probe_timer, NULL)) return;
    log_info("link to %s lost, checking it", fmt(&ms->addr, buf));
    ms->probes_left = m->cfg->common.connect_retries;
    ms->keepalive_out = false;
    probe_next(ms);
}

static void keepalive_done(void *arg, rpc_status st, const msgpack_object *r)
{
    mserver *ms = arg;
    ms->keepalive_out = false;
    if (st != RPC_OK) return;
    ms->last_answer = clock_mono();
    /* The server's clock: the next keepalives carry the newest one to every
     * server, so the cluster's time follows its fastest clock (clock.h). */
    if (r->type == MSGPACK_OBJECT_POSITIVE_INTEGER) clock_update(&ms->m->clock, r->via.u64);
}

static void start_probing(manager *m, mserver *ms);

/* Servers found lost while this manager reached only a minority, and not
 * linked again now that it reaches a majority, are probed once more: one
 * alive that has not yet dialled back says hello; one gone is lost again,
 * and marked fault this time. */
static void recheck_lost(manager *m)
{
    if (!m->has_partner || !membership_sees_majority(m)) return;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (!ms->suspect || ms->conn || ms->probe || evtimer_pending(ms->probe_timer, NULL)) continue;
        ms->suspect = false; /* probed once more; server_lost judges it again */
        start_probing(m, ms);
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    manager *m = arg;
    double now = clock_mono();
    /* Time the manager itself did not run (starved on a loaded machine, a
     * paused VM, SIGSTOP) is not the servers' silence: answers that came
     * meanwhile are still unread. Without this, a manager that wakes from
     * a 4 s stall would declare every server lost at once. */
    double lag = m->last_tick > 0 ? now - m->last_tick - m->cfg->common.clock_interval : 0;
    m->last_tick = now;
    if (lag > 0.5) {
        log_info("the manager's loop was stalled for %.1f s; keepalive silence resets", lag);
        for (size_t i = 0; i < m->nservers; i++) m->servers[i]->last_answer += lag;
    }
    m->hooks.tick(m, lag > 0.5 ? lag : 0);
    recheck_lost(m);
    /* Moves not agreed yet (another change was being agreed, or no
     * majority answered) are tried again. */
    for (size_t i = 0; i < m->nservers && !m->proposal; i++)
        if (m->servers[i]->conn) follow_moves(m, m->servers[i]);
    /* Every silent link is closed before any of them is judged, so that a
     * partition that silences most servers at once is seen as one: no
     * server is marked fault while the others still count as linked. */
    size_t nsilent = 0;
    mserver **silent = xmalloc((m->nservers + 1) * sizeof(*silent));
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (!ms->conn) continue;
        if (now - ms->last_answer > KEEPALIVE_LIMIT) {
            char buf[NET_ADDRSTRLEN];
            /* Alive enough to keep its sockets open but not answering (hung,
             * stopped, cut off): probing would only find the same, so it is
             * lost now and reads stop waiting for it. */
            log_warn("server %s does not answer keepalives", fmt(&ms->addr, buf));
            rpc_conn *c = ms->conn;
            ms->conn = NULL;
            rpc_close(c);
            silent[nsilent++] = ms;
            continue;
        }
        if (ms->keepalive_out) continue;
        ms->keepalive_out = true;
        msgpack_packer *pk = rpc_call_begin(ms->conn, SRV_KEEPALIVE, KEEPALIVE_TIMEOUT, keepalive_done, ms);
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint64(pk, clock_now(&m->clock));
        rpc_call_end(ms->conn);
    }
    for (size_t i = 0; i < nsilent; i++) server_lost(m, silent[i], false);
    free(silent);
}

/* ---- learning the layout from the servers ----
 * A manager that starts with nothing (restarted, its partner down or
 * absent) would otherwise treat every server as a newcomer, and attaching
 * them would start every one catching up from the others: a full exchange
 * with the cluster unavailable meanwhile, for a layout the servers still
 * hold. So until it makes a change of its own, it asks each server that
 * says hello for its [whs, rhs] and adopts the newest, catching-up flags
 * included; the servers it lists are watched like any others (those that
 * never come back are probed and lost).
 *
 * A server keeps no hash space on disk, so one that answers a blank whs is
 * a new process: its database may be empty or an old backup, and it must
 * not serve as the member the layout says it is. It is marked fault in the
 * layout (learned before or after its answer), and gets no layout pushed
 * before its answer is judged; `attach` makes it catch up. */

typedef struct learn_ctx {
    manager *m;
    mserver *ms;
    hashspace *hs[2]; /* whs, rhs */
    int pending;
    bool push; /* asked while learning: push ours once its answer is judged */
} learn_ctx;

/* hs with every server known to be a new process marked fault (a fresh
 * ClockTime if any was listed active); takes hs. */
static hashspace *without_fresh(manager *m, hashspace *hs)
{
    ring_node *nodes = malloc((hs->ring.nnodes + 1) * sizeof(*nodes));
    if (!nodes) return hs;
    bool changed = false;
    memcpy(nodes, hs->ring.nodes, hs->ring.nnodes * sizeof(*nodes));
    for (size_t i = 0; i < hs->ring.nnodes; i++) {
        mserver *ms = membership_find_server(m, &nodes[i].addr);
        if (ms && ms->fresh && nodes[i].active) {
            char buf[NET_ADDRSTRLEN];
            log_warn("server %s is a new process: fault, attach it again", fmt(&nodes[i].addr, buf));
            nodes[i].active = false;
            changed = true;
        }
    }
    hashspace *out = changed ? hashspace_new(nodes, hs->ring.nnodes, hs->clocktime) : NULL;
    free(nodes);
    if (!out) return hs;
    out->version = hs->version;
    hashspace_unref(hs);
    return out;
}

static void learn_done(learn_ctx *x)
{
    manager *m = x->m;
    mserver *ms = x->ms;
    hashspace *w = x->hs[0], *r = x->hs[1];
    if (m->stopping) {
        /* the links are closing: answers to nothing */
    } else if (!m->learning) {
        if (w && r) membership_take(m, w, r); /* a push it did not adopt: it may know a newer version */
    } else if (w && hashspace_blank(w)) {
        ms->fresh = true;
        if (is_active_member(m, &ms->addr)) server_lost(m, ms, true); /* ends learning: an own change */
    } else if (w && r && !hashspace_blank(r) && (hashspace_blank(m->whs) || w->version > m->whs->version || (w->version == m->whs->version && w->clocktime > m->whs->clocktime))) {
        char buf[NET_ADDRSTRLEN];
        clock_update(&m->clock, w->clocktime > r->clocktime ? w->clocktime : r->clocktime);
        log_info("hash spaces learned from the servers: %zu servers", w->ring.nnodes);
        hashspace *nw = without_fresh(m, hashspace_ref(w)), *nr = without_fresh(m, hashspace_ref(r));
        install(m, nw, nr); /* nw and nr may be freed: what was installed is m's */
        m->hooks.changed(m);
        hashspace *lw = hashspace_ref(m->whs), *lr = hashspace_ref(m->rhs);
        for (size_t i = 0; i < lw->ring.nnodes; i++) {
            const net_addr *a = &lw->ring.nodes[i].addr;
            mserver *o = membership_find_server(m, a);
            if (!o && !(o = add_server(m, a))) continue;
            if (o->conn) o->newcomer = !lw->ring.nodes[i].active;
            else if (lw->ring.nodes[i].active) {
                log_info("learned server %s is not connected, checking it", fmt(a, buf));
                start_probing(m, o);
            }
        }
        /* A replace the old manager left unfinished (catching-up servers
         * included) resumes with auto-replace, else with `kumoctl replace`. */
        if (lw->clocktime != lr->clocktime) membership_schedule_auto_replace(m);
        hashspace_unref(lw);
        hashspace_unref(lr);
        /* Last: a move installs new spaces. */
        for (size_t i = 0; i < m->nservers; i++) /* said hello before the layout was known */
            if (m->servers[i]->conn) follow_moves(m, m->servers[i]);
    }
    if (ms->conn && x->push && !m->stopping) push_to_server(m, ms); /* held back until its answer was judged */
    hashspace_unref(w);
    hashspace_unref(r);
    free(x);
}

static void learn_reply(learn_ctx *x, int k, rpc_status st, const msgpack_object *r)
{
    char err[KUMO_ERRLEN];
    if (st == RPC_OK) x->hs[k] = hashspace_unpack(r, err);
    if (--x->pending == 0) learn_done(x);
}

static void learn_whs(void *arg, rpc_status st, const msgpack_object *r) { learn_reply(arg, 0, st, r); }
static void learn_rhs(void *arg, rpc_status st, const msgpack_object *r) { learn_reply(arg, 1, st, r); }

/* Ask a server for its layout: one that said hello while we learn (false
 * if not learning: push it ours as usual), or, always, one that did not
 * adopt a push. */
static bool learn_from(manager *m, mserver *ms, bool always)
{
    if (!m->learning && !always) return false;
    learn_ctx *x = xcalloc(1, sizeof(*x));
    x->m = m;
    x->ms = ms;
    x->pending = 2;
    x->push = m->learning;
    for (int k = 0; k < 2; k++) {
        msgpack_packer *pk = rpc_call_begin(ms->conn, SRV_STATUS, PUSH_TIMEOUT, k ? learn_rhs : learn_whs, x);
        msgpack_pack_array(pk, 1);
        msgpack_pack_uint32(pk, k ? ST_RHS : ST_WHS);
        rpc_call_end(ms->conn);
    }
    return true;
}

static void server_hello(manager *m, rpc_conn *c)
{
    char buf[NET_ADDRSTRLEN];
    const net_addr *a = rpc_peer_addr(c);
    if (a->len == 0) {
        log_warn("%s: server without an address, closing", rpc_peer_name(c));
        rpc_close(c);
        return;
    }
    const uint8_t *key;
    size_t keylen = rpc_peer_ring_key(c, &key);
    ring_node me = {.addr = *a, .keylen = (uint8_t)keylen};
    memcpy(me.key, key, keylen);
    place_at(&me, a); /* a key that is its address's bytes is no key of its own */
    mserver *ms = membership_find_server(m, a);
    mserver *holder = key_holder(m, ms, &me);
    if (holder) {
        char k[2 * RING_KEY_MAX + 8], h[NET_ADDRSTRLEN];
        log_warn("server %s presents the database of node %s, which %s serves: refused (a copied volume?)",
                 fmt(a, buf), key_text(&me, k, sizeof(k)), fmt(&holder->addr, h));
        if (ms && ms->probe == c) { /* our probe found the copy: probe again later, as after a failed one */
            ms->probe = NULL;
            evtimer_del(ms->probe_timer);
            struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
            evtimer_add(ms->probe_timer, &tv);
        }
        rpc_close(c); /* no on_close: nothing may keep c */
        return;
    }
    if (!ms && !(ms = add_server(m, a))) {
        rpc_close(c);
        return;
    }
    rpc_set_data(c, ms);
    ms->keylen = me.keylen;
    memcpy(ms->key, me.key, me.keylen);
    if (ms->probe == c) {
        ms->probe = NULL;
        evtimer_del(ms->probe_timer);
    }
    /* A new process behind an active member's address was restarted before
     * it was found lost (kill -9 and restart within the probes): its
     * database may be stale, so it must not serve as the member it was.
     * Lose it now; it is a newcomer, and the attach copies it what it missed. */
    uint64_t inc = rpc_peer_incarnation(c);
    if (inc && ms->incarnation && inc != ms->incarnation && is_active_member(m, a)) {
        log_warn("server %s is a new process: lost, attach it again", fmt(a, buf));
        server_lost(m, ms, true);
    }
    if (inc) ms->incarnation = inc;
    ms->lost = ms->suspect = false;
    /* The newest link wins; an older one (our probe and its own dial
     * crossed) is closed, so that nothing keeps it past membership_stop. */
    rpc_conn *older = ms->conn != c ? ms->conn : NULL;
    ms->conn = c;
    rpc_close(older);
    follow_moves(m, ms);
    bool learning = learn_from(m, ms, false);
    ms->last_answer = clock_mono();
    ms->keepalive_out = false;
    m->hooks.server_back(m, ms); /* a server that came back mid-replace lost its task */
    if (!is_active_member(m, a) && !ms->newcomer) mark_newcomer(m, ms);
    if (!learning) push_to_server(m, ms);
}

/* ---- gateways ---- */

static void gateway_hello(manager *m, rpc_conn *c)
{
    if (m->ngateways == m->gateways_cap) {
        size_t ncap = m->gateways_cap ? m->gateways_cap * 2 : 8;
        rpc_conn **ng = realloc(m->gateways, ncap * sizeof(*ng));
        if (!ng) {
            rpc_close(c);
            return;
        }
        m->gateways = ng;
        m->gateways_cap = ncap;
    }
    m->gateways[m->ngateways++] = c;
    push_to_gateway(m, c);
    notify_status(m);
}

/* ---- connection events ---- */

static void mgr_on_hello(void *arg, rpc_conn *c)
{
    manager *m = arg;
    switch (rpc_peer_role(c)) {
    case RPC_ROLE_SERVER: server_hello(m, c); break;
    case RPC_ROLE_GATEWAY: gateway_hello(m, c); break;
    case RPC_ROLE_MANAGER: m->hooks.manager_hello(m, c); break;
    default: break; /* tools need no bookkeeping */
    }
}

static void mgr_on_close(void *arg, rpc_conn *c)
{
    manager *m = arg;
    if (rpc_hello_done(c) && rpc_peer_role(c) == RPC_ROLE_MANAGER) {
        m->hooks.manager_closed(m, c);
        return;
    }
    if (!rpc_hello_done(c) || rpc_peer_role(c) != RPC_ROLE_SERVER) {
        for (size_t i = 0; i < m->ngateways; i++) {
            if (m->gateways[i] != c) continue;
            m->gateways[i] = m->gateways[--m->ngateways];
            break;
        }
        mserver *ms = rpc_get_data(c);
        if (ms && ms->probe == c) { /* a probe that failed before its hello */
            ms->probe = NULL;
            evtimer_del(ms->probe_timer);
            struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
            evtimer_add(ms->probe_timer, &tv);
        }
        return;
    }
    mserver *ms = rpc_get_data(c);
    if (!ms) return;
    if (ms->conn == c) {
        ms->conn = NULL;
        start_probing(m, ms);
    } else if (ms->probe == c) {
        ms->probe = NULL;
        evtimer_del(ms->probe_timer);
        struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
        evtimer_add(ms->probe_timer, &tv);
    }
}

static void mgr_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    manager *m = arg;
    m->hooks.request(m, c, msgid, method, params);
}

bool membership_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    switch (method) {
    case MGR_KEEPALIVE: {
        uint64_t ct;
        if (rpc_arg_uint(params, 0, &ct)) clock_update(&m->clock, ct);
        if (rpc_peer_role(c) != RPC_ROLE_SERVER) {
            rpc_reply_nil(c, msgid);
            return true;
        }
        /* A server's lease on its view (src/server/cluster.c): our whs
         * ClockTime, and whether we hold it fault. */
        int at = hashspace_find(m->whs, rpc_peer_addr(c));
        msgpack_packer *pk = rpc_reply_begin(c, msgid);
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint64(pk, m->whs->clocktime);
        if (at >= 0 && !m->whs->ring.nodes[at].active) msgpack_pack_true(pk);
        else msgpack_pack_false(pk);
        rpc_call_end(c);
        return true;
    }
    case MGR_HS_REQUEST:
        pack_pair(m, rpc_reply_begin(c, msgid));
        rpc_call_end(c);
        return true;
    default: return false;
    }
}

void membership_accept(manager *m, int fd)
{
    rpc_handlers h = membership_handlers(m);
    rpc_accept(m->base, fd, &h, &m->rpc_self); /* closes fd when it refuses */
}

static void auto_cb(evutil_socket_t fd, short what, void *arg)
{
    manager *m = arg;
    m->hooks.auto_replace_due(m);
}

void membership_schedule_auto_replace(manager *m)
{
    if (!m->auto_replace) return;
    struct timeval tv = clock_timeval(m->cfg->replace_delay);
    evtimer_add(m->auto_timer, &tv); /* re-arming restarts the wait: the last change counts */
}

void membership_start(manager *m)
{
    m->learning = true;
    m->auto_replace = m->cfg->auto_replace;
    m->auto_timer = evtimer_new(m->base, auto_cb, m);
    m->tick = event_new(m->base, -1, EV_PERSIST, tick_cb, m);
    struct timeval tv = clock_timeval(m->cfg->common.clock_interval);
    event_add(m->tick, &tv);
    notify_status(m);
}

void membership_stop(manager *m)
{
    if (m->tick) event_free(m->tick);
    if (m->auto_timer) event_free(m->auto_timer);
    m->hooks.stopping(m);
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        rpc_close(ms->conn);
        rpc_close(ms->probe);
        event_free(ms->probe_timer);
        free(ms);
    }
    for (size_t i = 0; i < m->ngateways; i++) rpc_close(m->gateways[i]);
    free(m->servers);
    free(m->gateways);
}

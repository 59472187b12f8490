/*
 * kumo-manager — main: flags, start-up, the cluster and control listeners,
 * the control commands of kumoctl, signals. See manager.h.
 */
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "binlog.h"
#include "config.h"
#include "daemon.h"
#include "turn.h"
#include "links.h"
#include "log.h"
#include "manager.h"
#include "metrics.h"
#include "proto.h"

static const opt_def manager_opts[] = {
    {"-l", "--listen", OPT_STRING, offsetof(manager_config, listen), "<addr[:port]>", NULL, 0, 0, true,
     "address other nodes reach this manager at (port 19700 if omitted)"},
    {"-p", "--partner", OPT_STRING, offsetof(manager_config, partner), "<addr[:port]>", NULL, 0, 0, false,
     "the other manager, if there are two"},
    {"-c", "--control-port", OPT_STRING, offsetof(manager_config, control), "<[addr:]port>", "19799", 0, 0, false,
     "where kumoctl connects: a bare port listens on every interface, addr:port on that address only"},
    {"-a", "--auto-replace", OPT_FLAG, offsetof(manager_config, auto_replace), NULL, NULL, 0, 0, false,
     "attach new servers and detach lost ones without an operator"},
    {"-Rs", "--replace-delay", OPT_DOUBLE, offsetof(manager_config, replace_delay), "<sec>", "4", 0, 3600, false,
     "with -a, wait this long after a change before replacing"},
    DAEMON_COMMON_OPTS(manager_config, common),
};

static const opts_spec manager_spec = {
    .prog = "kumo-manager",
    .synopsis = "-l <addr[:port]> [-p <partner>] [options]",
    .defs = manager_opts,
    .ndefs = sizeof(manager_opts) / sizeof(manager_opts[0]),
};

static void ctl_on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (!control_handle(arg, c, msgid, method, params)) rpc_reply_error(c, msgid, "unknown command %u", method);
}

static void on_cluster_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    membership_accept(arg, fd);
}

static void on_control_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    manager *m = arg;
    rpc_handlers h = {.on_request = ctl_on_request, .arg = m};
    rpc_accept(m->base, fd, &h, &m->rpc_self); /* closes fd when it refuses */
}

static void stop(void *arg)
{
    manager *m = arg;
    event_base_loopexit(m->base, NULL);
}

/* --metrics: what a scrape shows (metrics.h). */
static void collect_metrics(void *arg, metrics_out *o)
{
    manager *m = arg;
    size_t connected = 0, newcomers = 0;
    for (size_t i = 0; i < m->nservers; i++) {
        connected += m->servers[i]->conn != NULL;
        newcomers += m->servers[i]->conn && m->servers[i]->newcomer;
    }
    metrics_hash_spaces(o, "kumo_manager", m->whs, m->rhs);
    metrics_gauge(o, "kumo_manager_server_connections", "servers with a live link to this manager", (double)connected);
    metrics_gauge(o, "kumo_manager_newcomers", "connected servers not attached (kumoctl: not attached node)",
                  (double)newcomers);
    metrics_gauge(o, "kumo_manager_gateway_connections", "gateway connections (one per gateway worker, -TR)", (double)m->ngateways);
    size_t skewed;
    int64_t skew;
    rpc_clock_stats(&skewed, &skew);
    metrics_gauge(o, "kumo_manager_peers_clock_skewed",
                  "connected nodes whose wall clock is more than 2 s off ours (logged at their hello)", (double)skewed);
    metrics_gauge(o, "kumo_manager_peer_clock_skew_seconds", "the latest such node's clock minus ours, s (0: none seen)",
                  (double)skew);
    metrics_gauge(o, "kumo_manager_partner_connected", "1 when the other manager (-p) is connected",
                  m->partner_conn != NULL);
    metrics_gauge(o, "kumo_manager_partner_configured", "1 when this manager was given another (-p)", m->has_partner);
    metrics_gauge(o, "kumo_manager_catchup_blocked_servers",
                  "servers whose catch-up waits for an in-sync copy on a fault server (kumoctl: catch-up blocked)",
                  (double)(m->replacing ? 0 : m->catchup_blocked));
    metrics_gauge(o, "kumo_manager_replace_retrying", "1 while a replace redoes a copy that failed",
                  m->replacing && m->copy_failed && !m->copy_pending);
    metrics_gauge(o, "kumo_manager_replace_running", "1 while a replace runs", m->replacing);
    metrics_gauge(o, "kumo_manager_replace_copy_pending", "servers still copying in the running replace",
                  (double)m->copy_pending);
    metrics_gauge(o, "kumo_manager_replace_delete_pending", "servers still deleting in the running replace",
                  (double)m->delete_pending);
    metrics_gauge(o, "kumo_manager_auto_replace", "1 when auto-replace is on", m->auto_replace);
    /* Out of descriptors, and strangers (admit.h): as kumo-server shows them. */
    const daemon_listener *ls[2] = {m->cluster_listener, m->control_listener};
    static const char *const ports[2] = {"cluster", "control"};
    uint64_t failures[2];
    bool paused[2];
    for (int i = 0; i < 2; i++) daemon_listener_stats(ls[i], &failures[i], &paused[i]);
    metrics_family(o, "kumo_manager_accept_paused", METRICS_GAUGE,
                   "1 while accepting is paused after accept() failed (out of descriptors)");
    for (int i = 0; i < 2; i++) metrics_sample(o, paused[i], "port", ports[i], NULL);
    metrics_family(o, "kumo_manager_accept_failures", METRICS_COUNTER,
                   "accept() failures, each pausing the listener for 100 ms (out of descriptors)");
    for (int i = 0; i < 2; i++) metrics_sample(o, (double)failures[i], "port", ports[i], NULL);
    admit_stats st;
    admit_get_stats(m->rpc_self.admit, &st);
    metrics_gauge(o, "kumo_manager_unauthenticated_connections", "connections held before their hello or proof (both ports)",
                  (double)st.held);
    metrics_counter(o, "kumo_manager_unauthenticated_refused",
                    "unauthenticated connections closed at accept: over the per-address or total bound", st.refused);
    metrics_counter(o, "kumo_manager_unauthenticated_evicted", "unauthenticated connections closed to make room for newer ones",
                    st.evicted);
    metrics_counter(o, "kumo_manager_unauthenticated_failed",
                    "connections closed before authenticating: timeout, a bad hello or proof, the peer left", st.failed);
}

/* fd < 0: listen on a first. */
static daemon_listener *listen_on(manager *m, int fd, const net_addr *a, evconnlistener_cb cb, char *err)
{
    if (fd < 0 && (fd = net_listen(a, err)) < 0) return NULL;
    daemon_listener *dl = daemon_listen(m->base, fd, cb, m);
    if (!dl) kumo_err(err, "out of memory");
    return dl;
}

/* The -a timer fired: the manager that drives automatic replaces acts. */
static void auto_replace_due(manager *m)
{
    if (partner_drives_auto(m)) control_auto_replace(m);
}

/* A change membership.c makes (a moved database): nobody waits for it. */
static bool propose(manager *m, hashspace *whs, hashspace *rhs) { return history_change(m, whs, rhs, NULL, NULL); }

int main(int argc, char **argv)
{
    manager_config cfg;
    manager m;
    char err[KUMO_ERRLEN];
    memset(&cfg, 0, sizeof(cfg));
    memset(&m, 0, sizeof(m));
    daemon_init();
    opts_parse(&manager_spec, &cfg, argc, argv, NULL, 0, NULL);
    net_addr control_addr;
    if (net_parse(cfg.listen, KUMO_MANAGER_PORT, &m.self, err) < 0) opts_die(&manager_spec, "-l: %s", err);
    if (net_parse_listen(cfg.control, KUMO_CONTROL_PORT, &control_addr, err) < 0)
        opts_die(&manager_spec, "-c: %s", err);
    if (cfg.partner) {
        if (links_check_name(cfg.partner, KUMO_MANAGER_PORT, err) < 0) opts_die(&manager_spec, "-p: %s", err);
        m.has_partner = true; /* resolved by partner.c, again whenever the link is down */
    }
    binlog_set_node_addr("manager", &m.self);
    const auth_key *key = daemon_cluster_key(&manager_spec, &cfg.common);
    if (daemon_start("kumo-manager", &cfg.common) < 0) return 1;
    m.cfg = &cfg;
    m.hooks = (manager_hooks){.request = dispatch_request, .changed = partner_sync, .tick = partner_tick, .server_lost = replace_server_lost, .server_back = replace_resend, .manager_hello = partner_hello, .manager_closed = partner_closed, .auto_replace_due = auto_replace_due, .stopping = replace_stop, .propose = propose};
    time_t started = time(NULL);
    clock_init(&m.clock);
    /* Phases are named round_base + a counter: random, so that the two
     * managers' names differ (replace.c) */
    if (getrandom(&m.round_base, sizeof(m.round_base), 0) != sizeof(m.round_base))
        m.round_base = (uint64_t)time(NULL) << 32 ^ (uint64_t)getpid();
    m.whs = hashspace_new(NULL, 0, 0);
    m.rhs = hashspace_ref(m.whs);
    m.base = event_base_new();
    m.rpc_self = (rpc_self){.role = RPC_ROLE_MANAGER, .addr = m.self, .clock = &m.clock, .key = key, .admit = admit_new("rpc", 0, 0)}; /* -l and -c together */
    if (!m.rpc_self.admit) {
        log_fatal("out of memory");
        return 1;
    }

    net_addr cluster_addr = m.self;
    memset(cluster_addr.id + 2, 0, cluster_addr.len - 2); /* every interface: a bare -c port's */
    if (cfg.control[strspn(cfg.control, "0123456789")] == '\0') {
        /* A bare port: every interface of -l's family, as the cluster port
         * (an IPv6 manager's kumoctl port must answer on IPv6). */
        uint16_t port = net_port(&control_addr);
        control_addr = cluster_addr;
        net_set_port(&control_addr, port);
    }
    /* -l: on its address when it is this host's (two managers on one host
     * at 127.0.0.1 and 127.0.0.2 with one port), else every interface. */
    bool everywhere;
    char lbuf[NET_ADDRSTRLEN];
    int cfd = net_listen_at(&m.self, net_port(&m.self), &everywhere, err);
    if (cfd >= 0 && everywhere)
        log_info("-l %s is not an address of this host (NAT, a published port?): listening on every interface",
                 net_format(&m.self, lbuf, sizeof(lbuf)));
    m.cluster_listener = cfd < 0 ? NULL : listen_on(&m, cfd, &cluster_addr, on_cluster_accept, err);
    if (m.cluster_listener) m.control_listener = listen_on(&m, -1, &control_addr, on_control_accept, err);
    if (!m.cluster_listener || !m.control_listener) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-manager: %s\n", err);
        return 1;
    }
    metrics_server *metrics = NULL;
    if (cfg.common.metrics &&
        !(metrics = metrics_start(m.base, cfg.common.metrics, "manager", started, collect_metrics, &m, err))) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-manager: %s\n", err);
        return 1;
    }
    daemon_signals sigs;
    daemon_signals_init(&sigs, m.base, stop, &m);
    membership_start(&m);
    partner_start(&m);
    char buf[NET_ADDRSTRLEN], cbuf[NET_ADDRSTRLEN];
    log_info("start manager %s control %s%s", net_format(&m.self, buf, sizeof(buf)),
             net_format(&control_addr, cbuf, sizeof(cbuf)), key ? ", cluster key required" : "");
    binlog_event(LOG_LVL_INFO, "start", BL_STR("role", "manager"), BL_ADDR("addr", &m.self),
                 BL_UINT("control_port", net_port(&control_addr)), BL_STR("partner", cfg.partner), BL_UINT("pid", getpid()),
                 BL_STR("version", PACKAGE_VERSION));
    daemon_notify("READY=1");

    turn_loop(m.base); /* event_base_dispatch, with end-of-iteration jobs (turn.h) */

    m.stopping = true;
    metrics_stop(metrics);
    partner_stop(&m);
    membership_stop(&m);
    daemon_listener_free(m.cluster_listener);
    daemon_listener_free(m.control_listener);
    admit_free(m.rpc_self.admit);
    daemon_signals_free(&sigs);
    hashspace_unref(m.whs);
    hashspace_unref(m.rhs);
    event_base_free(m.base);
    return daemon_finish(0);
}

/*
 * kumo-gateway — main: flags, start-up, the memcached listener, signals.
 * See gateway.h for the modules.
 */
#include <event2/event.h>
#include <event2/listener.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binlog.h"
#include "config.h"
#include "daemon.h"
#include "turn.h"
#include "client.h"
#include "gateway.h"
#include "links.h"
#include "log.h"
#include "metrics.h"

static const opt_def gateway_opts[] = {
    {"-m", "--manager1", OPT_STRING, offsetof(gateway_config, manager1), "<addr[:port]>", NULL, 0, 0, true,
     "the manager (port 19700 if omitted)"},
    {"-p", "--manager2", OPT_STRING, offsetof(gateway_config, manager2), "<addr[:port]>", NULL, 0, 0, false,
     "the second manager, if there is one"},
    {"-t", "--memproto-text", OPT_STRING, offsetof(gateway_config, text), "<[addr:]port>", NULL, 0, 0, false,
     "serve the memcached text protocol here"},
    {"-b", "--memproto-binary", OPT_STRING, offsetof(gateway_config, binary), "<[addr:]port>", NULL, 0, 0, false,
     "another client port (kumofs 0.4's binary port; every port serves both protocols)"},
    {"-G", "--get-retry", OPT_INT, offsetof(gateway_config, get_retries), "<num>", "5", 1, 1000, false,
     "rounds over a key's three servers before a get fails"},
    {"-S", "--set-retry", OPT_INT, offsetof(gateway_config, set_retries), "<num>", "20", 0, 1000, false,
     "retries of a set at the key's coordinator"},
    {"-D", "--delete-retry", OPT_INT, offsetof(gateway_config, delete_retries), "<num>", "20", 0, 1000, false,
     "retries of a delete at the key's coordinator"},
    {"-As", "--async-replicate-set", OPT_FLAG, offsetof(gateway_config, async_set), NULL, NULL, 0, 0, false,
     "answer a set once the coordinator has it, before the replicas do"},
    {"-Ad", "--async-replicate-delete", OPT_FLAG, offsetof(gateway_config, async_delete), NULL, NULL, 0, 0, false,
     "answer a delete once the coordinator has it, before the replicas do"},
    {"-F", "--save-flag", OPT_FLAG, offsetof(gateway_config, keep_flags), NULL, NULL, 0, 0, false,
     "store memcached flags (always done; accepted for compatibility)"},
    {"-E", "--save-expire", OPT_FLAG, offsetof(gateway_config, keep_exptime), NULL, NULL, 0, 0, false,
     "store expiration times (always done; accepted for compatibility)"},
    {"--max-conn-buffer", NULL, OPT_INT, offsetof(gateway_config, max_conn_buffer_kib), "<KiB>", "4096", 64,
     1 << 21, false, "one connection's unsent answers plus its gets in flight: reading it pauses beyond this"},
    {"--max-inflight", NULL, OPT_INT, offsetof(gateway_config, max_inflight_kib), "<KiB>", "65536", 64, 1 << 21,
     false, "each worker's gets in flight, by their estimated answers: connections wait in line beyond this"},
    {"-I", "--max-item-size", OPT_STRING, offsetof(gateway_config, item_size), "<bytes[k|m]>", "1m", 0, 0, false,
     "largest value accepted, from 1k to 32m (a value travels in one node message)"},
    {"-Y", "--auth-file", OPT_STRING, offsetof(gateway_config, auth_file), "<file>", NULL, 0, 0, false,
     "clients must authenticate as a user:password line of this file: text as memcached -Y (a set whose "
     "data is \"user password\"), binary with SASL PLAIN"},
    {"-A", "--enable-shutdown", OPT_FLAG, offsetof(gateway_config, shutdown_command), NULL, NULL, 0, 0, false,
     "serve the text command shutdown (stops the gateway as SIGTERM does)"},
    {"--debug-time", NULL, OPT_FLAG, offsetof(gateway_config, debug_time), NULL, NULL, 0, 0, false,
     "for tests only: serve the text command debugtime, which moves the clock exptimes are judged by on every "
     "server (they need --debug-time too)"},
    DAEMON_COMMON_OPTS_TR(gateway_config, common, NULL,
                          "event loops (threads) serving clients; each connection stays on one (default: 4, "
                          "or the number of CPUs this process may run on if that is fewer)"),
};

static const opts_spec gateway_spec = {
    .prog = "kumo-gateway",
    .synopsis = "-m <addr[:port]> [-p <addr[:port]>] -t <[addr:]port> | -b <[addr:]port> [options]",
    .defs = gateway_opts,
    .ndefs = sizeof(gateway_opts) / sizeof(gateway_opts[0]),
};

/* -I as memcached reads it: a number of bytes, or of KiB or MiB with a
 * k or m suffix (either case). -1 when it does not parse or is out of
 * 1 KiB..32 MiB. */
static int item_size(const char *s)
{
    long long v = 0;
    size_t i = 0;
    if (!s || !s[0]) return -1;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        v = v * 10 + (s[i] - '0');
        if (v > 32LL * 1024 * 1024) return -1;
    }
    if (i == 0) return -1;
    if ((s[i] == 'k' || s[i] == 'K') && !s[i + 1]) v *= 1024;
    else if ((s[i] == 'm' || s[i] == 'M') && !s[i + 1]) v *= 1024 * 1024;
    else if (s[i]) return -1;
    return v < 1024 || v > 32LL * 1024 * 1024 ? -1 : (int)v;
}

static void on_text_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    workers_accept(arg, fd, false);
}

static void on_binary_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    workers_accept(arg, fd, true);
}

/* The state main() keeps on top of the workers. */
typedef struct gateway_main {
    gateway_group *grp;
    daemon_listener *text_listener, *binary_listener;
} gateway_main;

/* --metrics: what a scrape shows (metrics.h); the counters are the ones
 * memcached's `stats` shows, named and labelled as memcached_exporter does
 * (kumo_gateway_commands_total{command,status}, _read_bytes_total,
 * _connections_total, _current_connections), summed over the workers and
 * never reset (`stats reset` resets what `stats` shows). The connection
 * gauges are worker 0's: each worker keeps links of its own. */
static void collect_metrics(void *arg, metrics_out *o)
{
    gateway_group *grp = arg;
    gateway *g = grp->w[0];
    gateway_totals tot;
    workers_totals(grp, false, &tot);
    const gateway_totals *st = &tot;
#define F(f) offsetof(gateway_totals, f)
    static const struct {
        const char *command, *status;
        size_t off;
    } commands[] = {
        {"get", "hit", F(get_hits)},
        {"get", "miss", F(get_misses)},
        {"get", "expired", F(get_expired)},
        {"set", "hit", F(cmd_set)},
        {"delete", "hit", F(delete_hits)},
        {"delete", "miss", F(delete_misses)},
        {"incr", "hit", F(incr_hits)},
        {"incr", "miss", F(incr_misses)},
        {"decr", "hit", F(decr_hits)},
        {"decr", "miss", F(decr_misses)},
        {"cas", "hit", F(cas_hits)},
        {"cas", "miss", F(cas_misses)},
        {"cas", "badval", F(cas_badval)},
        {"touch", "hit", F(touch_hits)},
        {"touch", "miss", F(touch_misses)},
        {"flush", "hit", F(cmd_flush)},
    };
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"kumo_gateway_get_keys", "keys asked for by get, gets, gat, gats and mg (memcached's cmd_get)", F(cmd_get)},
        {"kumo_gateway_touch_keys", "keys touched by touch, gat and gats (memcached's cmd_touch)", F(cmd_touch)},
        {"kumo_gateway_meta_commands", "meta commands (mg, ms, md, ma, mn)", F(cmd_meta)},
        {"kumo_gateway_store_too_large", "values refused as larger than -I", F(store_too_large)},
        {"kumo_gateway_read_bytes", "bytes read from clients", F(bytes_read)},
        {"kumo_gateway_written_bytes", "bytes written to clients", F(bytes_written)},
        {"kumo_gateway_errors", "operations that failed after every retry", F(errors)},
        {"kumo_gateway_retries", "attempts repeated at another owner or after a pause", F(retries)},
        {"kumo_gateway_connections", "client connections accepted", F(total_connections)},
    };
#undef F
#define AT(off) (*(const uint64_t *)(const void *)((const char *)st + (off)))
    metrics_family(o, "kumo_gateway_commands", METRICS_COUNTER,
                   "commands by kind and outcome (hit, miss, expired, badval), as memcached_exporter counts them");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        metrics_sample(o, (double)AT(commands[i].off), "command", commands[i].command, "status", commands[i].status,
                       NULL);
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
        metrics_counter(o, counters[i].name, counters[i].help, AT(counters[i].off));
#undef AT
    metrics_gauge(o, "kumo_gateway_current_connections", "client connections open", (double)st->curr_connections);
    size_t servers = 0, managers = 0;
    for (size_t i = 0; i < g->nservers; i++) servers += g->servers[i]->conn != NULL;
    if (g->managers) managers = links_up(g->managers);
    metrics_gauge(o, "kumo_gateway_server_connections", "open connections to servers", (double)servers);
    metrics_gauge(o, "kumo_gateway_manager_connections", "managers connected", (double)managers);
    uint64_t parts, bytes, paused, pauses;
    workers_flow(grp, &parts, &bytes, &paused, &pauses);
    metrics_gauge(o, "kumo_gateway_gets_in_flight", "gets sent to servers and not yet answered", (double)parts);
    metrics_gauge(o, "kumo_gateway_in_flight_bytes", "their answers' estimated size (--max-inflight)", (double)bytes);
    metrics_gauge(o, "kumo_gateway_paused_connections", "client connections not being read now", (double)paused);
    metrics_counter(o, "kumo_gateway_connection_pauses",
                    "times a client connection stopped being read (order, --max-conn-buffer, queue)", pauses);
    static const char *const kinds[GW_LAT_KINDS] = {"get", "write", "delete"};
    metrics_hist latency[GW_LAT_KINDS];
    workers_latency(grp, latency);
    metrics_histogram(o, "kumo_gateway_request_duration_seconds",
                      "time from a request's routing to its answer, retries included, by kind", "kind", kinds,
                      latency, GW_LAT_KINDS);
    metrics_hash_spaces(o, "kumo_gateway", g->whs, g->rhs);
}

/* SIGTERM: take no new connections, let every worker finish what is in
 * flight (bounded) and leave its loop; main() closes everything. */
static void stop(void *arg)
{
    gateway_main *gm = arg;
    daemon_listener_stop(gm->text_listener);
    daemon_listener_stop(gm->binary_listener);
    workers_stop(gm->grp);
}

/* -TR, or by default kumofs 0.4's 4, but no more loops than the CPUs
 * this process may run on: a loop more than there are CPUs only adds
 * context switches (docs/architecture.md §3). */
static size_t worker_count(int given)
{
    if (given > 0) return (size_t)given;
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 4;
    return cpus >= 1 && cpus < 4 ? (size_t)cpus : 4;
}

static int fail(const char *err)
{
    log_fatal("%s", err);
    fprintf(stderr, "kumo-gateway: %s\n", err);
    return 1;
}

int main(int argc, char **argv)
{
    gateway_config cfg;
    gateway_main gm;
    char err[KUMO_ERRLEN];
    memset(&cfg, 0, sizeof(cfg));
    memset(&gm, 0, sizeof(gm));
    daemon_init();
    opts_parse(&gateway_spec, &cfg, argc, argv, NULL, 0, NULL);
    net_addr text_addr, binary_addr;
    if (!cfg.text && !cfg.binary) opts_die(&gateway_spec, "-t or -b is required");
    if ((cfg.item_size_max = item_size(cfg.item_size)) < 0)
        opts_die(&gateway_spec, "invalid value '%s' for -I (bytes, or with a k or m suffix, from 1k to 32m)",
                 cfg.item_size);
    if (cfg.text && net_parse_listen(cfg.text, 11211, &text_addr, err) < 0) opts_die(&gateway_spec, "-t: %s", err);
    if (cfg.binary && net_parse_listen(cfg.binary, 11211, &binary_addr, err) < 0)
        opts_die(&gateway_spec, "-b: %s", err);
    binlog_set_node_addr("gateway", cfg.text ? &text_addr : &binary_addr);
    if (cfg.auth_file && !(cfg.users = users_load(cfg.auth_file, err))) opts_die(&gateway_spec, "%s", err);
    if (links_check_name(cfg.manager1, KUMO_MANAGER_PORT, err) < 0) opts_die(&gateway_spec, "-m: %s", err);
    if (cfg.manager2 && links_check_name(cfg.manager2, KUMO_MANAGER_PORT, err) < 0)
        opts_die(&gateway_spec, "-p: %s", err);
    const auth_key *key = daemon_cluster_key(&gateway_spec, &cfg.common);
    if (daemon_start("kumo-gateway", &cfg.common) < 0) return 1;
    int tfd = cfg.text ? net_listen(&text_addr, err) : -2;
    int bfd = tfd != -1 && cfg.binary ? net_listen(&binary_addr, err) : -2;
    if (tfd == -1 || bfd == -1) return fail(err);
    rpc_self self = {.role = RPC_ROLE_GATEWAY, .key = key};
    gateway_group *grp = workers_new(&cfg, &self, worker_count(cfg.common.read_threads), err);
    if (!grp) return fail(err);
    gm.grp = grp;
    gateway *g0 = grp->w[0];
    struct rlimit rl;
    long max_connections = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (long)rl.rlim_cur : 1024;
    for (size_t i = 0; i < grp->n; i++) {
        grp->w[i]->max_connections = max_connections;
        grp->w[i]->text_port = cfg.text ? net_port(&text_addr) : 0;
    }
    if (tfd >= 0) gm.text_listener = daemon_listen(g0->base, tfd, on_text_accept, grp);
    if (bfd >= 0) gm.binary_listener = daemon_listen(g0->base, bfd, on_binary_accept, grp);
    for (size_t i = 0; i < grp->n; i++) { /* for stats: accepting_conns */
        grp->w[i]->text_listener = gm.text_listener;
        grp->w[i]->binary_listener = gm.binary_listener;
    }
    metrics_server *metrics = NULL;
    if (cfg.common.metrics &&
        !(metrics = metrics_start(g0->base, cfg.common.metrics, "gateway", g0->started, collect_metrics, grp, err)))
        return fail(err);
    daemon_signals sigs;
    daemon_signals_init(&sigs, g0->base, stop, &gm);
    /* "start" before the workers run: their loops log the hash spaces they
     * receive, and the binary log starts with "start" (kumolog). */
    char buf[NET_ADDRSTRLEN];
    if (cfg.text) log_info("start gateway, memcached text protocol on %s", net_format(&text_addr, buf, sizeof(buf)));
    if (cfg.binary) log_info("start gateway, memcached binary protocol on %s", net_format(&binary_addr, buf, sizeof(buf)));
    log_info("%zu worker threads (-TR)", grp->n);
    binlog_event(LOG_LVL_INFO, "start", BL_STR("role", "gateway"),
                 BL_ADDR("listen", cfg.text ? &text_addr : &binary_addr), BL_STR("manager1", cfg.manager1),
                 BL_STR("manager2", cfg.manager2), BL_UINT("pid", getpid()), BL_STR("version", PACKAGE_VERSION));
    int status = 0;
    if (workers_run(grp, err) < 0) {
        log_error("%s", err);
        stop(&gm);
        status = 1;
    }

    turn_loop(g0->base); /* event_base_dispatch, with end-of-iteration jobs (turn.h) */

    metrics_stop(metrics);
    daemon_listener_free(gm.text_listener);
    daemon_listener_free(gm.binary_listener);
    workers_join(grp); /* worker 0's drain waited for their loops to end */
    daemon_signals_free(&sigs);
    workers_free(grp);
    client_pool_drain(); /* this thread's, and what the workers freed here */
    router_pool_drain();
    users_free(cfg.users);
    return daemon_finish(status);
}

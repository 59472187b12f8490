/*
 * kumo-server — main: flags, start-up, the RPC listener, signals.
 * See server.h for the modules and docs/architecture.md for the design.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "binlog.h"
#include "config.h"
#include "daemon.h"
#include "turn.h"
#include "digest.h"
#include "witness.h"
#include "links.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "server.h"

static const opt_def server_opts[] = {
    {"-l", "--listen", OPT_STRING, offsetof(server_config, listen), "<addr[:port]>", NULL, 0, 0, false,
     "address other nodes reach this server at (port 19800 if omitted); default: the address this host reaches "
     "its manager from"},
    {"--node-name", NULL, OPT_STRING, offsetof(server_config, node_name), "<name>", NULL, 0, 0, false,
     "place this server's database on the ring by this name, whatever its address (written beside the database "
     "on first start; default: its -l address, else a random id)"},
    {"-L", "--stream-port", OPT_INT, offsetof(server_config, stream_port), "<port>", "19900", 1, 65535, false,
     "port of the bulk stream used by replace"},
    {"-m", "--manager1", OPT_STRING, offsetof(server_config, manager1), "<addr[:port]>", NULL, 0, 0, true,
     "the manager (port 19700 if omitted)"},
    {"-p", "--manager2", OPT_STRING, offsetof(server_config, manager2), "<addr[:port]>", NULL, 0, 0, false,
     "the second manager, if there is one"},
    {"-s", "--store", OPT_STRING, offsetof(server_config, db_spec), "<path.tch[#xmsiz=SIZE][#rcnum=N]>", NULL, 0,
     0, true, "Tokyo Cabinet hash database file, with optional tuning"},
    {"-f", "--offer-tmp", OPT_STRING, offsetof(server_config, tmpdir), "<dir>", "/tmp", 0, 0, false,
     "directory for the temporary files of replace"},
    {"-S", "--replicate-set-retry", OPT_INT, offsetof(server_config, set_retries), "<num>", "20", 0, 1000, false,
     "retries of a replicated set"},
    {"-D", "--replicate-delete-retry", OPT_INT, offsetof(server_config, delete_retries), "<num>", "20", 0, 1000,
     false, "retries of a replicated delete"},
    {"-Rr", "--replace-rate", OPT_DOUBLE, offsetof(server_config, replace_rate), "<MiB/s>", "0", 0, 100000, false,
     "limit the bulk copy of a replace to this rate (0 = no limit)"},
    {"-gS", "--garbage-mem-limit", OPT_INT, offsetof(server_config, gc_mem_kib), "<kb>", "2048", 1, 1 << 30, false,
     "memory for remembered deletes (tombstones), KiB"},
    {"-gN", "--garbage-min-time", OPT_INT, offsetof(server_config, gc_min_sec), "<sec>", "60", 0, 1 << 30, false,
     "keep a tombstone at least this long"},
    {"-gX", "--garbage-max-time", OPT_INT, offsetof(server_config, gc_max_sec), "<sec>", "3600", 0, 1 << 30, false,
     "keep a tombstone at most this long"},
    {"--verify-interval", NULL, OPT_INT, offsetof(server_config, verify_interval), "<sec>", "0", 0, 1 << 30, false,
     "compare the ranges this server coordinates with their other owners every <sec> seconds and copy what one "
     "side lacks, newer wins (0 = never)"},
    {"--max-peer-output", NULL, OPT_INT, offsetof(server_config, max_peer_output_kib), "<KiB>", "16384", 64,
     1 << 21, false,
     "stop reading a gateway's or peer's requests while this much of our answers waits for it to read"},
    {"--debug-time", NULL, OPT_FLAG, offsetof(server_config, debug_time), NULL, NULL, 0, 0, false,
     "for tests only: accept a gateway's debugtime, which moves the clock exptimes are judged by (never the "
     "ClockTimes)"},
    DAEMON_COMMON_OPTS(server_config, common),
};

static const opts_spec server_spec = {
    .prog = "kumo-server",
    .synopsis = "-l <addr[:port]> -m <addr[:port]> -s <path.tch> [options]",
    .defs = server_opts,
    .ndefs = sizeof(server_opts) / sizeof(server_opts[0]),
};

/* SRV_SET_CONFIG ["tcp_nodelay", bool] (kumostat set_delay/unset_delay):
 * set TCP_NODELAY on every TCP connection this process has open now and
 * answer how many. Connections made later take the default (no delay). */
static void set_config(rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const char *name;
    size_t n;
    bool on;
    if (!rpc_arg_bytes(params, 0, &name, &n) || n != 11 || memcmp(name, "tcp_nodelay", 11) != 0 ||
        !rpc_arg_bool(params, 1, &on)) {
        rpc_reply_error(c, msgid, "bad params");
        return;
    }
    struct rlimit rl;
    int maxfd = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
    uint64_t count = 0;
    for (int fd = 0; fd < maxfd; fd++) {
        int type = 0, listening = 1, v = on;
        socklen_t sl = sizeof(type);
        struct sockaddr_storage ss;
        socklen_t al = sizeof(ss);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &sl) < 0 || type != SOCK_STREAM) continue;
        sl = sizeof(listening);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &sl) < 0 || listening) continue;
        if (getsockname(fd, (struct sockaddr *)&ss, &al) < 0 || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
            continue;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) == 0) count++;
    }
    log_info("TCP_NODELAY %s on %llu connections", on ? "set" : "cleared", (unsigned long long)count);
    rpc_reply_uint(c, msgid, count);
}

/* --metrics: the time each request spends in its handler on this server
 * (a write's replication is answered later and not included). */
enum { REQ_GET,
       REQ_SET,
       REQ_DELETE,
       REQ_REPLICATE,
       REQ_STATUS,
       REQ_OTHER,
       REQ_KINDS };
static const char *const req_names[REQ_KINDS] = {"get", "set", "delete", "replicate", "status", "other"};
struct server_metrics {
    metrics_hist req[REQ_KINDS];
};

/* The two listeners and their strangers (admit.h), for ST_ACCEPT and
 * --metrics: per port, the values named by port_fields. */
enum { PF_PAUSED,
       PF_FAILURES,
       PF_HELD,
       PF_REFUSED,
       PF_EVICTED,
       PF_FAILED,
       PF_N };
static const struct {
    const char *key; /* in ST_ACCEPT, after "rpc_"/"stream_" from PF_HELD on */
    const char *metric;
    metrics_type type;
    const char *help;
} port_fields[PF_N] = {
    {"accept_paused", "kumo_server_accept_paused", METRICS_GAUGE,
     "1 while accepting is paused after accept() failed (out of descriptors)"},
    {"accept_failures", "kumo_server_accept_failures", METRICS_COUNTER,
     "accept() failures, each pausing the listener for 100 ms (out of descriptors)"},
    {"unauthenticated", "kumo_server_unauthenticated_connections", METRICS_GAUGE,
     "connections held before their hello, proof or token"},
    {"refused", "kumo_server_unauthenticated_refused", METRICS_COUNTER,
     "unauthenticated connections closed at accept: over the per-address or total bound"},
    {"evicted", "kumo_server_unauthenticated_evicted", METRICS_COUNTER,
     "unauthenticated connections closed to make room for newer ones"},
    {"failed", "kumo_server_unauthenticated_failed", METRICS_COUNTER,
     "connections closed before authenticating: timeout, a bad hello or token, the peer left"},
};
static const char *const port_names[2] = {"rpc", "stream"};

static void get_port_stats(const server *s, uint64_t v[2][PF_N])
{
    const daemon_listener *l[2] = {s->listener, s->stream_listener};
    const admit *a[2] = {s->rpc_self.admit, s->stream_admit};
    for (int i = 0; i < 2; i++) {
        bool paused;
        admit_stats st;
        daemon_listener_stats(l[i], &v[i][PF_FAILURES], &paused);
        admit_get_stats(a[i], &st);
        v[i][PF_PAUSED] = paused;
        v[i][PF_HELD] = st.held;
        v[i][PF_REFUSED] = st.refused;
        v[i][PF_EVICTED] = st.evicted;
        v[i][PF_FAILED] = st.failed;
    }
}

static void pack_kv(msgpack_packer *pk, const char *prefix, const char *name, uint64_t v)
{
    char key[64];
    snprintf(key, sizeof(key), "%s%s", prefix, name);
    rpc_pack_str(pk, key);
    msgpack_pack_uint64(pk, v);
}

/* SRV_STATUS ST_ACCEPT (kumostat accept): answered here, where the
 * listeners are, and not in data.c with the other ids. */
static void status_accept(server *s, rpc_conn *c, uint32_t msgid)
{
    uint64_t v[2][PF_N];
    get_port_stats(s, v);
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_map(pk, 4 + 2 * (PF_N - PF_HELD));
    pack_kv(pk, "", port_fields[PF_PAUSED].key, v[0][PF_PAUSED] || v[1][PF_PAUSED]);
    pack_kv(pk, "", port_fields[PF_FAILURES].key, v[0][PF_FAILURES] + v[1][PF_FAILURES]);
    pack_kv(pk, "", "unauthenticated_per_address_limit", admit_limit_per_addr(s->rpc_self.admit));
    pack_kv(pk, "", "unauthenticated_limit", admit_limit(s->rpc_self.admit));
    for (int i = 0; i < 2; i++) {
        char prefix[16];
        snprintf(prefix, sizeof(prefix), "%s_", port_names[i]);
        for (int f = PF_HELD; f < PF_N; f++) pack_kv(pk, prefix, port_fields[f].key, v[i][f]);
    }
    rpc_call_end(c);
}

static void on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    server *s = arg;
    uint64_t what;
    if (method == SRV_SET_CONFIG) {
        set_config(c, msgid, params);
        return;
    }
    if (method == SRV_STATUS && rpc_arg_uint(params, 0, &what) && what == ST_ACCEPT) {
        status_accept(s, c, msgid);
        return;
    }
    if (method == SRV_STATUS && rpc_arg_uint(params, 0, &what) && what == ST_REPLACE_PROGRESS) {
        replace_pack_progress(s, rpc_reply_begin(c, msgid));
        rpc_call_end(c);
        return;
    }
    if (!s->metrics) {
        dispatch_request(s, c, msgid, method, params);
        return;
    }
    double t0 = clock_mono();
    dispatch_request(s, c, msgid, method, params);
    int k = method == SRV_GET || method == SRV_GET_MANY ? REQ_GET : method == SRV_SET     ? REQ_SET
                                                                : method == SRV_DELETE    ? REQ_DELETE
                                                                : method == SRV_REPLICATE ? REQ_REPLICATE
                                                                : method == SRV_STATUS    ? REQ_STATUS
                                                                                          : REQ_OTHER;
    metrics_hist_observe(&s->metrics->req[k], clock_mono() - t0);
}

/* --metrics: what a scrape shows (metrics.h). */
static void collect_metrics(void *arg, metrics_out *o)
{
    server *s = arg;
    gc_stats g;
    size_t peers = 0, managers = 0;
    gc_get_stats(s, &g);
    for (size_t i = 0; i < s->npeers; i++) peers += s->peers[i].conn != NULL;
    if (s->managers) managers = links_up(s->managers);
    metrics_counter(o, "kumo_server_cmd_get", "gets served (kumostat cmd_get)", s->cmd_get);
    metrics_counter(o, "kumo_server_cmd_set", "writes coordinated (kumostat cmd_set)", s->cmd_set);
    metrics_counter(o, "kumo_server_cmd_delete", "deletes coordinated (kumostat cmd_delete)", s->cmd_delete);
    metrics_counter(o, "kumo_server_replication_retries", "replica sends repeated (-S/-D)", s->repl_retries);
    metrics_counter(o, "kumo_server_replication_failures", "replica sends given up on while still an owner",
                    s->repl_failures);
    metrics_gauge(o, "kumo_server_items", "records in the database, tombstones included", (double)store_count(s->db));
    metrics_gauge(o, "kumo_server_db_bytes", "size of the database file", (double)store_file_size(s->db));
    metrics_hash_spaces(o, "kumo_server", s->whs, s->rhs);
    metrics_gauge(o, "kumo_server_replace_copying", "1 while a replace copy is in flight", s->replace_copying);
    metrics_gauge(o, "kumo_server_catching_up", "1 while this server is catching up: it serves no read and coordinates no write",
                  s->catching_up);
    metrics_gauge(o, "kumo_server_stale_view",
                  "1 while a replica holds this server fault and no manager has answered it since: it serves nothing",
                  s->stale_view);
    metrics_gauge(o, "kumo_server_view_leased",
                  "1 while every manager confirmed this server's hash spaces less than 2 s ago (writes keep nothing to undo)",
                  cluster_view_leased(s));
    metrics_counter(o, "kumo_server_replace_received_records", "records applied from replace streams, since start",
                    s->moved_recv);
    /* The last copy phase: walked of total tells how far the walk is,
     * sent of queued how far the transfers are (kumostat progress). */
    const replace_progress *p = &s->progress;
    metrics_gauge(o, "kumo_server_replace_walk_total_records", "records to walk in the last replace copy (the database)",
                  (double)p->total);
    metrics_gauge(o, "kumo_server_replace_walked_records", "records the last replace copy has walked", (double)p->walked);
    metrics_gauge(o, "kumo_server_replace_queued_records", "records the last replace copy queued to send",
                  (double)p->queued);
    metrics_gauge(o, "kumo_server_replace_sent_records", "records of the last replace copy acknowledged by their receiver",
                  (double)(s->moved_sent - p->sent_base));
    metrics_gauge(o, "kumo_server_replace_sent_bytes", "compressed bytes of the last replace copy acknowledged",
                  (double)(s->moved_sent_bytes - p->sent_bytes_base));
    metrics_gauge(o, "kumo_server_replace_started_timestamp_seconds", "when the last replace copy began (0: none)",
                  p->started);
    metrics_gauge(o, "kumo_server_backup_walk_total_records", "records to copy in the last backup (the database)",
                  (double)s->backup.total);
    metrics_gauge(o, "kumo_server_backup_walked_records", "records the last backup has copied", (double)s->backup.walked);
    metrics_gauge(o, "kumo_server_tombstones_remembered", "tombstones waiting for collection (-gX/-gN)",
                  (double)g.entries);
    metrics_gauge(o, "kumo_server_tombstones_memory_bytes", "memory they take, as -gS counts it", (double)g.bytes);
    metrics_counter(o, "kumo_server_tombstones_collected", "tombstones removed from the database", g.collected);
    metrics_counter(o, "kumo_server_tombstones_forgotten",
                    "tombstones dropped from memory under -gS before -gN (left in the database)", g.forgotten);
    metrics_gauge(o, "kumo_server_peer_connections", "open connections to other servers", (double)peers);
    metrics_gauge(o, "kumo_server_manager_connections", "managers connected", (double)managers);
    rpc_flow fl;
    rpc_flow_stats(&fl);
    metrics_gauge(o, "kumo_server_connections_paused",
                  "connections not read now: their peer has not read --max-peer-output of our answers", (double)fl.paused);
    metrics_counter(o, "kumo_server_connection_pauses", "times a connection stopped being read (--max-peer-output)",
                    fl.pauses);
    size_t skewed;
    int64_t skew;
    rpc_clock_stats(&skewed, &skew);
    metrics_gauge(o, "kumo_server_peers_clock_skewed",
                  "connected nodes whose wall clock is more than 2 s off ours (logged at their hello)", (double)skewed);
    metrics_gauge(o, "kumo_server_peer_clock_skew_seconds",
                  "the latest such node's clock minus ours, s (0: none seen)", (double)skew);
    uint64_t v[2][PF_N];
    get_port_stats(s, v);
    for (int f = 0; f < PF_N; f++) {
        metrics_family(o, port_fields[f].metric, port_fields[f].type, port_fields[f].help);
        for (int i = 0; i < 2; i++) metrics_sample(o, (double)v[i][f], "port", port_names[i], NULL);
    }
    digest_metrics(s, o);
    damage_metrics(s, o);
    if (s->metrics)
        metrics_histogram(o, "kumo_server_request_duration_seconds",
                          "time in the request handler by method (replication not included)", "method", req_names,
                          s->metrics->req, REQ_KINDS);
}

/* Accepted connections live until the peer closes them; the list lets
 * main() close the rest at exit. */
static void on_accepted_close(void *arg, rpc_conn *c)
{
    server *s = arg;
    for (size_t i = 0; i < s->naccepted; i++)
        if (s->accepted[i] == c) {
            s->accepted[i] = s->accepted[--s->naccepted];
            break;
        }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    server *s = arg;
    if (s->naccepted == s->accepted_cap) {
        size_t ncap = s->accepted_cap ? s->accepted_cap * 2 : 16;
        rpc_conn **na = realloc(s->accepted, ncap * sizeof(*na));
        if (!na) {
            evutil_closesocket(fd);
            return;
        }
        s->accepted = na;
        s->accepted_cap = ncap;
    }
    rpc_handlers h = {.on_request = on_request, .on_close = on_accepted_close, .arg = s};
    rpc_conn *c = rpc_accept(s->base, fd, &h, &s->rpc_self); /* closes fd when it refuses */
    if (c) s->accepted[s->naccepted++] = c;
}

#define DRAIN_SECONDS 5.0

static int pending(void *arg)
{
    return ((server *)arg)->writes_inflight;
}

/* SIGTERM: take no new connections, let what is in flight finish
 * (bounded), then leave the loop; main() closes everything. */
static void stop(void *arg)
{
    server *s = arg;
    daemon_listener_stop(s->listener);
    daemon_drain(s->base, pending, s, DRAIN_SECONDS);
}

static void shutdown_with(server *s, int status)
{
    s->exit_status = status;
    stop(s);
}

/* No -l: announce the address this host reaches its manager from, so one
 * container image needs no per-container flags. Waits (with back-off) until
 * a manager name resolves. */
static volatile sig_atomic_t stop_waiting;

static void on_stop_signal(int sig) { stop_waiting = sig; }

static void find_self(server *s)
{
    const char *names[3] = {s->cfg->manager1, s->cfg->manager2, NULL};
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN];
    /* The event loop's signal handling does not exist yet: a SIGTERM while
     * waiting must still be a clean exit. */
    struct sigaction sa, old_term, old_int;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    for (unsigned wait = 1;; wait = wait < 8 ? wait * 2 : 10) {
        if (links_local_address(names, KUMO_MANAGER_PORT, &s->self, err) == 0) break;
        log_warn("cannot find this server's address yet: %s (retrying in %u s)", err, wait);
        for (unsigned left = wait; left > 0 && !stop_waiting;) left = sleep(left);
        if (stop_waiting) {
            log_info("signal %d while waiting for a manager: exiting", (int)stop_waiting);
            daemon_notify("STOPPING=1");
            daemon_remove_pidfile();
            exit(0);
        }
    }
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGINT, &old_int, NULL);
    net_set_port(&s->self, KUMO_SERVER_PORT);
    log_info("no -l given: this server is %s", net_format(&s->self, buf, sizeof(buf)));
}

int main(int argc, char **argv)
{
    server_config cfg;
    server s;
    char err[KUMO_ERRLEN];
    memset(&cfg, 0, sizeof(cfg));
    memset(&s, 0, sizeof(s));
    daemon_init();
    opts_parse(&server_spec, &cfg, argc, argv, NULL, 0, NULL);
    if (cfg.gc_min_sec > cfg.gc_max_sec) cfg.gc_min_sec = cfg.gc_max_sec;
    if (cfg.listen && net_parse(cfg.listen, KUMO_SERVER_PORT, &s.self, err) < 0) opts_die(&server_spec, "-l: %s", err);
    if (cfg.node_name && identity_check_name(cfg.node_name, err) < 0) opts_die(&server_spec, "--node-name: %s", err);
    if (cfg.manager2 && strcmp(cfg.manager1, cfg.manager2) == 0)
        opts_die(&server_spec, "-p must name a different manager than -m");

    if (links_check_name(cfg.manager1, KUMO_MANAGER_PORT, err) < 0) opts_die(&server_spec, "-m: %s", err);
    if (cfg.manager2 && links_check_name(cfg.manager2, KUMO_MANAGER_PORT, err) < 0)
        opts_die(&server_spec, "-p: %s", err);
    const auth_key *key = daemon_cluster_key(&server_spec, &cfg.common);
    if (daemon_start("kumo-server", &cfg.common) < 0) return 1;
    s.cfg = &cfg;
    s.dispatch = dispatch_request;
    s.on_rejoin = digest_pass_now;
    s.shutdown = shutdown_with;
    if (!cfg.listen) find_self(&s);
    binlog_set_node_addr("server", &s.self); /* before the first record; -l may have been found just now */
    s.started = time(NULL);
    clock_init(&s.clock);
    s.whs = hashspace_new(NULL, 0, 0);
    s.rhs = hashspace_new(NULL, 0, 0);
    store_check check;
    s.db = store_open_checked(cfg.db_spec, &check, err);
    if (!s.db) {
        log_fatal("cannot open database: %s", err);
        fprintf(stderr, "kumo-server: cannot open database: %s\n", err);
        return 1;
    }
    s.open_damage_spots = check.spots;
    s.open_damage_bytes = check.bytes;
    if (check.spots == 0) {
        log_info("database check: %s: %llu records read, no damage", store_path(s.db), (unsigned long long)check.records);
    } else if (check.kept[0]) {
        log_error("database check: %s: %llu records read, %llu damaged spots (%llu bytes) stepped over; rebuilt from "
                  "the %llu readable records, the damaged file kept as %s; attach catches this server up from the other owners",
                  store_path(s.db), (unsigned long long)check.records, (unsigned long long)check.spots,
                  (unsigned long long)check.bytes, (unsigned long long)check.kept_records, check.kept);
    } else {
        log_fatal("database check: %s: %llu damaged spots (%llu bytes) stepped over, and it could not be rebuilt: %s",
                  store_path(s.db), (unsigned long long)check.spots, (unsigned long long)check.bytes,
                  check.rebuild_error);
        fprintf(stderr, "kumo-server: %s: damaged, and it could not be rebuilt: %s\n", store_path(s.db),
                check.rebuild_error);
        store_close(s.db);
        return 1;
    }
    if (identity_load(store_path(s.db), cfg.node_name, cfg.listen != NULL, &s.self, store_count(s.db) > 0, &s.identity,
                      err) < 0) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-server: %s\n", err);
        store_close(s.db);
        return 1;
    }
    identity_ring_key(&s.identity, &s.self, &s.ring_keylen, s.ring_key);
    char buf[NET_ADDRSTRLEN];
    data_load_flush(&s);
    witness_start(&s);
    s.base = event_base_new();
    /* The incarnation tells the managers this is a new process (membership.c). */
    uint64_t incarnation = 0;
    while (incarnation == 0)
        if (getrandom(&incarnation, sizeof(incarnation), 0) != sizeof(incarnation)) incarnation = (uint64_t)time(NULL);
    s.rpc_self = (rpc_self){.role = RPC_ROLE_SERVER, .addr = s.self, .clock = &s.clock, .incarnation = incarnation, .key = key, .admit = admit_new("rpc", 0, 0), .max_output = (size_t)cfg.max_peer_output_kib * 1024, .ring_keylen = s.ring_keylen, .ring_key = s.ring_key};
    if (!s.rpc_self.admit) {
        log_fatal("out of memory");
        store_close(s.db);
        return 1;
    }

    /* Where -l says, if it is this host's; without -l (an address found,
     * often a container's), every interface. */
    bool everywhere = true;
    int fd;
    if (cfg.listen) {
        fd = net_listen_at(&s.self, net_port(&s.self), &everywhere, err);
        if (fd >= 0 && everywhere)
            log_info("-l %s is not an address of this host (NAT, a published port?): listening on every interface",
                     net_format(&s.self, buf, sizeof(buf)));
    } else {
        net_addr bind_addr = s.self;
        memset(bind_addr.id + 2, 0, bind_addr.len - 2);
        fd = net_listen(&bind_addr, err);
    }
    s.listen_everywhere = everywhere;
    if (fd < 0) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-server: %s\n", err);
        store_close(s.db);
        return 1;
    }
    s.listener = daemon_listen(s.base, fd, on_accept, &s);
    if (gc_start(&s, err) < 0 || stream_start(&s, err) < 0 || digest_start(&s, err) < 0 ||
        cluster_start(&s, err) < 0) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-server: %s\n", err);
        store_close(s.db);
        return 1;
    }
    metrics_server *metrics = NULL;
    struct server_metrics sm;
    memset(&sm, 0, sizeof(sm));
    if (cfg.common.metrics) s.metrics = &sm;
    if (cfg.common.metrics &&
        !(metrics = metrics_start(s.base, cfg.common.metrics, "server", s.started, collect_metrics, &s, err))) {
        log_fatal("%s", err);
        fprintf(stderr, "kumo-server: %s\n", err);
        store_close(s.db);
        return 1;
    }
    daemon_signals sigs;
    daemon_signals_init(&sigs, s.base, stop, &s);
    log_info("start server %s db %s node %s", net_format(&s.self, buf, sizeof(buf)), store_path(s.db), s.identity.text);
    binlog_event(LOG_LVL_INFO, "start", BL_STR("role", "server"), BL_ADDR("addr", &s.self),
                 BL_STR("db", store_path(s.db)), BL_STR("manager1", cfg.manager1), BL_STR("manager2", cfg.manager2),
                 BL_UINT("pid", getpid()), BL_STR("version", PACKAGE_VERSION));

    turn_loop(s.base); /* event_base_dispatch, with end-of-iteration jobs (turn.h) */

    metrics_stop(metrics);
    while (s.naccepted > 0) rpc_close(s.accepted[--s.naccepted]);
    free(s.accepted);
    admit_free(s.rpc_self.admit);
    daemon_listener_free(s.listener);
    cluster_stop(&s);
    stream_stop(&s);
    data_stop(&s);
    digest_stop(&s);
    witness_stop(&s);
    gc_stop(&s);
    store_close(s.db);
    daemon_signals_free(&sigs);
    hashspace_unref(s.whs);
    hashspace_unref(s.rhs);
    free(s.peers);
    event_base_free(s.base);
    return daemon_finish(s.exit_status);
}

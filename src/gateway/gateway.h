/*
 * kumo-gateway — the state of one gateway, shared by its modules:
 *   main.c    flags, start-up, listeners, signals, metrics
 *   workers.c the -TR event loops: threads, connection hand-off, stop
 *   router.c  hash spaces from the managers, connections to the servers,
 *             routing of each get/set/delete with its retries
 *   stats.c   memcached's statistics, for both protocols
 *   client.c  a memcached client connection and its in-order reply queue
 *   text.c    the text protocol, classic and meta commands (parser: memtext.rl)
 *   binary.c  the binary protocol (parser: memproto.c)
 *
 * Thread rule: a gateway struct is one worker, and everything in it belongs
 * to that worker's thread and event loop, except what gateway_group and the
 * counters say (docs/architecture.md §3).
 */
#ifndef KUMO_GATEWAY_H
#define KUMO_GATEWAY_H

#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cmdline.h"
#include "daemon.h"
#include "config.h"
#include "hashspace.h"
#include "metrics.h"
#include "net.h"
#include "rpc.h"
#include "turn.h"

/* What `version` answers: the memcached release whose protocol the gateway
 * speaks (clients such as libmemcached pick features by it), then ours. */
#define GATEWAY_VERSION "1.6.21-kumofs-" PACKAGE_VERSION

typedef struct gateway_config {
    daemon_common common;
    const char *manager1;    /* -m */
    const char *manager2;    /* -p */
    const char *text;        /* -t [addr:]port */
    const char *binary;      /* -b [addr:]port */
    int get_retries;         /* -G: rounds over the three owners */
    int set_retries;         /* -S */
    int delete_retries;      /* -D */
    bool async_set;          /* -As */
    bool async_delete;       /* -Ad */
    bool keep_flags;         /* -F (always on; accepted for compatibility) */
    bool keep_exptime;       /* -E (always on; accepted for compatibility) */
    const char *item_size;   /* -I as given: bytes, or with a k/m suffix */
    int item_size_max;       /* -I, bytes */
    int max_conn_buffer_kib; /* --max-conn-buffer: one connection's unsent answers and gets in flight */
    int max_inflight_kib;    /* --max-inflight: one worker's gets in flight, estimated */
    bool shutdown_command;   /* -A: the shutdown command is served */
    bool debug_time;         /* --debug-time: the debugtime command is served (tests only) */
    const char *auth_file;   /* -Y: clients authenticate against this file */
    struct gw_users *users;  /* -Y's contents (users.c), NULL without -Y */
} gateway_config;

/* The gets one loop turn sends a server in one SRV_GET_MANY (router.c). */
#define ROUTER_BATCH_MAX 64

typedef struct gw_server {
    struct gateway *g;
    net_addr addr;
    rpc_conn *conn;
    struct turn *turn;   /* the worker base's end-of-iteration jobs */
    turn_job send_batch; /* queued while `batch` waits for the iteration's end */
    size_t nbatch;
    struct rop *batch[ROUTER_BATCH_MAX];
} gw_server;

/* memcached's counters, under memcached's names (stats, metrics). */
/* clang-format off */
#define GATEWAY_COUNTERS(X)                                                                                  \
    X(cmd_get) X(cmd_set) X(cmd_flush) X(cmd_touch) X(cmd_meta) X(get_hits) X(get_misses) X(get_expired)    \
    X(delete_hits) X(delete_misses) X(incr_hits) X(incr_misses) X(decr_hits) X(decr_misses) X(cas_hits)      \
    X(cas_misses) X(cas_badval) X(touch_hits) X(touch_misses) X(store_too_large) X(bytes_read)              \
    X(bytes_written) X(curr_connections) X(total_connections) X(errors) X(auth_cmds) X(auth_errors)         \
    X(retries) /* attempts after the first, every operation */
/* clang-format on */

/* One worker's counters. Only the worker's thread changes them; they are
 * atomics so that `stats` on another worker can sum them. Uncontended: each
 * worker's struct is its own allocation. */
typedef struct gateway_stats {
#define GW_STATS_FIELD(f) _Atomic uint64_t f;
    GATEWAY_COUNTERS(GW_STATS_FIELD)
#undef GW_STATS_FIELD
} gateway_stats;

/* The counters summed over the workers (workers.c), as stats and metrics
 * show them. */
typedef struct gateway_totals {
#define GW_TOTALS_FIELD(f) uint64_t f;
    GATEWAY_COUNTERS(GW_TOTALS_FIELD)
#undef GW_TOTALS_FIELD
} gateway_totals;

/* Flow control of one worker (client.c). Atomics only so that worker 0's
 * metrics can read them; the worker's thread alone changes them. */
typedef struct gw_flow {
    _Atomic uint64_t parts;               /* gets in flight */
    _Atomic uint64_t estimate;            /* bytes: running estimate of one get's answer */
    _Atomic uint64_t paused;              /* client connections not being read now */
    _Atomic uint64_t pauses;              /* times one stopped being read */
    struct client *wait_head, *wait_tail; /* connections waiting for room in the budget */
} gw_flow;

/* Latency of the operations the router runs, by kind (metrics). */
enum { GW_LAT_GET,
       GW_LAT_WRITE,
       GW_LAT_DELETE,
       GW_LAT_KINDS };

struct gateway_group;

typedef struct gateway {
    struct gateway_group *group; /* the process's workers (workers.c) */
    size_t index;                /* in group->w; 0 runs on the main thread */
    struct event_base *base;
    const gateway_config *cfg;
    rpc_self rpc_self;
    struct links *managers; /* links.h: -m and -p, found by name */
    hashspace *whs, *rhs;   /* never NULL */
    gw_server **servers;    /* each allocated once: events point at them */
    size_t nservers, servers_cap;
    gw_server *open_batch;                            /* the server whose get batch this turn opened last, or NULL */
    daemon_listener *text_listener, *binary_listener; /* main.c's, for stats (read-only here) */
    struct client *clients;                           /* open memcached connections (client.c) */
    double last_refresh;
    bool stopping;    /* router_stop ran: fail, do not retry */
    int ops_inflight; /* router operations not yet answered */
    bool ready_notified;
    time_t started;
    long max_connections; /* RLIMIT_NOFILE, shown by stats */
    unsigned text_port;
    gateway_stats stats;
    gw_flow flow;
    pthread_mutex_t latency_lock; /* a scrape on worker 0 reads `latency` */
    metrics_hist latency[GW_LAT_KINDS];
    /* workers.c */
    int inbox[2]; /* pipe: accepted fds and stop, from the main thread */
    struct event *inbox_ev;
    pthread_t thread; /* index > 0, when thread_started */
    bool thread_started;
    atomic_bool loop_done; /* its thread left its loop (read by worker 0's drain) */
    bool draining;
} gateway;

/* workers.c — the -TR event loops of one process. Each worker is a whole
 * gateway: its own event base, manager links, hash spaces, server
 * connections and clients. The main thread (worker 0) accepts and hands
 * each connection to the next worker in turn. */
typedef struct gateway_group {
    size_t n;
    gateway **w;
    size_t next;                /* the acceptor's round robin; main thread only */
    atomic_size_t ready;        /* workers that have seen an active server */
    pthread_mutex_t reset_lock; /* guards reset_base */
    gateway_totals reset_base;  /* the totals at the last `stats reset` */
    /* workers_ready, workers_totals, workers_reset_base: router.c and
     * stats.c call them through here, as workers.c calls those modules */
    bool (*ready_one)(struct gateway *g);
    void (*totals)(struct gateway_group *grp, bool since_reset, gateway_totals *t);
    void (*reset_totals)(struct gateway_group *grp);
    /* debugtime (--debug-time): seconds added to the time exptimes are
     * judged by (clock.h, the debug clock), the offset this process last
     * sent the servers; 0 otherwise */
    _Atomic int64_t debug_offset;
} gateway_group;

/* Build n workers sharing cfg and rpc_self (router_start each); -1 + err. */
gateway_group *workers_new(const gateway_config *cfg, const rpc_self *self, size_t n, char *err);
/* Start the threads of workers 1..n-1; -1 + err. */
int workers_run(gateway_group *grp, char *err);
/* Hand an accepted client fd to the next worker (main thread). */
void workers_accept(gateway_group *grp, int fd, bool binary);
/* Ask every worker to drain and leave its loop (main thread; idempotent). */
void workers_stop(gateway_group *grp);
/* Wait for the threads of workers 1..n-1 to leave their loops (after
 * worker 0's loop ended). */
void workers_join(gateway_group *grp);
/* workers_join, then fail what is left, close every connection and free
 * every worker. */
void workers_free(gateway_group *grp);
/* A worker saw an active server for the first time: true when it was the
 * last of them, so the process is ready. */
bool workers_ready(gateway *g);
/* The counters summed over the workers; since_reset subtracts the totals
 * at the last workers_reset_base (not from curr_connections). */
void workers_totals(gateway_group *grp, bool since_reset, gateway_totals *t);
/* The totals now become the base that since_reset subtracts. */
void workers_reset_base(gateway_group *grp);
/* Flow control summed over the workers: gets in flight, their estimated
 * bytes, connections not being read, and pauses since start. */
void workers_flow(gateway_group *grp, uint64_t *parts, uint64_t *bytes, uint64_t *paused, uint64_t *pauses);
/* The latency histograms summed over the workers. */
void workers_latency(gateway_group *grp, metrics_hist out[GW_LAT_KINDS]);

/* router.c — every callback runs later from the event loop, exactly once. */
int router_start(gateway *g, char *err);
void router_stop(gateway *g);
/* Free the operations this thread keeps for reuse (as client_pool_drain). */
void router_pool_drain(void);

/* A get's outcome: found (value = the stored record bytes, valid during the
 * callback), a miss, or an error after every retry. any_owner: the caller
 * has no write of its own still unanswered, so any live owner may serve the
 * read (every acknowledged synchronous write is on all of them); otherwise
 * it starts at the coordinator, which applied the caller's earlier writes
 * first. */
typedef void (*router_get_fn)(void *arg, bool ok, const void *value, size_t vlen);
void router_get(gateway *g, const char *key, size_t klen, bool any_owner, router_get_fn fn, void *arg);

/* A write: one of proto.h's OP_* (or OP_DELETE here) with its arguments. */
#define OP_DELETE 100
typedef struct router_write {
    int op;
    uint32_t flags;   /* WF_ASYNC, WF_VIVIFY */
    uint64_t cas;     /* 0 = unconditional (except OP_CAS) */
    uint64_t delta;   /* incr/decr */
    uint64_t initial; /* incr/decr with WF_VIVIFY */
} router_write;

/* A write's outcome: ok + the server's code (proto.h CODE_*), the new
 * ClockTime, the incr/decr result, and for OP_GAT the record (valid during
 * the callback); or !ok after every retry. */
typedef struct router_result {
    bool ok;
    int code;
    uint64_t ct;
    uint64_t number;
    const void *value;
    size_t vlen;
} router_result;
typedef void (*router_write_fn)(void *arg, const router_result *res);

/* val: a record value (record.h) the router takes ownership of; NULL for
 * OP_DELETE. */
void router_write_op(gateway *g, const router_write *w, const char *key, size_t klen, uint8_t *val, size_t vlen,
                     router_write_fn fn, void *arg);
/* flush_all on every server, now or at `when` (memcached's exptime rule:
 * up to 30 days from now, else a unix time); fn gets ok = all of them did
 * it. */
void router_flush(gateway *g, int64_t when, router_write_fn fn, void *arg);
/* debugtime: SRV_DEBUG_TIME [offset] to the same servers as router_flush;
 * ok only if every one of them took it. */
void router_debug_time(gateway *g, int64_t offset, router_write_fn fn, void *arg);

/* The cluster's size as memcached's stats report it: records and database
 * bytes summed over the live servers, divided by the copies kept of each
 * key (so approximate: tombstones count as records). */
typedef struct router_sizes {
    bool ok;
    uint64_t items, bytes;
} router_sizes;
typedef void (*router_sizes_fn)(void *arg, const router_sizes *sizes);
void router_sizes_get(gateway *g, router_sizes_fn fn, void *arg);

/* stats.c: memcached's statistics, one name/value pair per emit call, in
 * memcached's order; each protocol formats them its own way. */
typedef void (*stats_emit_fn)(void *arg, const char *name, const char *value);
void stats_general(const gateway *g, const router_sizes *sz, stats_emit_fn emit, void *arg);
void stats_settings(const gateway *g, stats_emit_fn emit, void *arg);
/* `stats reset`: every counter to 0 but the open connections, for every
 * worker. */
void stats_reset(gateway *g);

/* accept.c: a new client connection (either listener): the first byte
 * picks text or binary, as memcached does. */
void gateway_accept(gateway *g, int fd);
/* users.c: -Y. Load `user:password` lines, as memcached's authfile.c reads
 * them; NULL + err when the file cannot be read or a line has no ':'.
 * Start-up. */
struct gw_users *users_load(const char *path, char *err);
void users_free(struct gw_users *u);
/* True when user/pass is one of u's entries (compared in constant time for
 * entries of the same length). Any thread. */
bool users_check(const struct gw_users *u, const char *user, size_t ulen, const char *pass, size_t plen);
/* text.c: the text protocol, classic and meta commands. Both are
 * client_parse_fn (client.h); text_auth_parse serves a connection that has
 * not authenticated (-Y) and switches it to text_parse. */
struct client;
size_t text_parse(struct client *c, const char *buf, size_t len);
size_t text_auth_parse(struct client *c, const char *buf, size_t len);
/* binary.c: the binary protocol. binary_parse is a client_parse_fn
 * (client.h). */
size_t binary_parse(struct client *c, const char *buf, size_t len);
/* binary_parse for a connection that has not authenticated (-Y): only
 * SASL (PLAIN, against -Y's file) and VERSION are served; it switches the
 * connection to binary_parse when the client authenticates. */
size_t binary_auth_parse(struct client *c, const char *buf, size_t len);

#endif

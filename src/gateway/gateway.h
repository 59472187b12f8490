/*
 * kumo-gateway — the state of one gateway, shared by its modules:
 *   main.c    flags, start-up, listeners, signals
 *   router.c  hash spaces from the managers, connections to the servers,
 *             routing of each get/set/delete with its retries
 *   stats.c   memcached's statistics, for both protocols
 *   client.c  a memcached client connection and its in-order reply queue
 *   text.c    the text protocol, classic and meta commands (parser: memtext.rl)
 *   binary.c  the binary protocol (parser: memproto.c)
 *
 * Thread rule: one event loop (see docs/architecture.md).
 */
#ifndef KUMO_GATEWAY_H
#define KUMO_GATEWAY_H

#include <event2/event.h>
#include <event2/listener.h>
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

/* What `version` answers: the memcached release whose protocol the gateway
 * speaks (clients such as libmemcached pick features by it), then ours. */
#define GATEWAY_VERSION "1.6.21-kumofs-" PACKAGE_VERSION

typedef struct gateway_config {
    daemon_common common;
    const char *manager1;  /* -m */
    const char *manager2;  /* -p */
    const char *text;      /* -t [addr:]port */
    const char *binary;    /* -b [addr:]port */
    int get_retries;       /* -G: rounds over the three owners */
    int set_retries;       /* -S */
    int delete_retries;    /* -D */
    bool async_set;        /* -As */
    bool async_delete;     /* -Ad */
    bool keep_flags;       /* -F (always on; accepted for compatibility) */
    bool keep_exptime;     /* -E (always on; accepted for compatibility) */
    int item_size_max;     /* -I, bytes */
} gateway_config;

/* The gets one loop turn sends a server in one SRV_GET_MANY (router.c). */
#define ROUTER_BATCH_MAX 64

typedef struct gw_server {
    struct gateway *g;
    net_addr addr;
    rpc_conn *conn;
    struct event *send_batch; /* active while `batch` waits for the turn's end */
    size_t nbatch;
    struct rop *batch[ROUTER_BATCH_MAX];
} gw_server;

/* memcached's counters, under memcached's names (stats, metrics). */
typedef struct gateway_stats {
    uint64_t cmd_get, cmd_set, cmd_flush, cmd_touch, cmd_meta;
    uint64_t get_hits, get_misses, get_expired;
    uint64_t delete_hits, delete_misses, incr_hits, incr_misses, decr_hits, decr_misses;
    uint64_t cas_hits, cas_misses, cas_badval, touch_hits, touch_misses;
    uint64_t store_too_large;
    uint64_t bytes_read, bytes_written;
    uint64_t curr_connections, total_connections;
    uint64_t errors;
    uint64_t retries; /* attempts after the first, every operation */
} gateway_stats;

/* Latency of the operations the router runs, by kind (metrics). */
enum { GW_LAT_GET, GW_LAT_WRITE, GW_LAT_DELETE, GW_LAT_KINDS };

typedef struct gateway {
    struct event_base *base;
    const gateway_config *cfg;
    rpc_self rpc_self;
    struct links *managers; /* links.h: -m and -p, found by name */
    hashspace *whs, *rhs; /* never NULL */
    gw_server **servers; /* each allocated once: events point at them */
    size_t nservers, servers_cap;
    gw_server *open_batch; /* the server whose get batch this turn opened last, or NULL */
    daemon_listener *text_listener, *binary_listener;
    struct client *clients; /* open memcached connections (client.c) */
    double last_refresh;
    bool stopping;       /* router_stop ran: fail, do not retry */
    int ops_inflight;    /* router operations not yet answered */
    bool ready_notified;
    time_t started;
    long max_connections; /* RLIMIT_NOFILE, shown by stats */
    unsigned text_port;
    gateway_stats stats;
    metrics_hist latency[GW_LAT_KINDS];
} gateway;

/* router.c — every callback runs later from the event loop, exactly once. */
int router_start(gateway *g, char *err);
void router_stop(gateway *g);

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
/* flush_all on every server; fn gets ok = all of them did it. */
void router_flush(gateway *g, uint64_t delay, router_write_fn fn, void *arg);

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
/* `stats reset`: every counter to 0 but the open connections. */
void stats_reset(gateway *g);

/* text.c: the text protocol, classic and meta commands */
void text_accept(gateway *g, int fd);
/* binary.c: the binary protocol */
void binary_accept(gateway *g, int fd);

#endif

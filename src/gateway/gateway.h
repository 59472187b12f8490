/*
 * kumo-gateway — the state of one gateway, shared by its modules:
 *   main.c    flags, start-up, listeners, signals
 *   router.c  hash spaces from the managers, connections to the servers,
 *             routing of each get/set/delete with its retries
 *   text.c    memcached text-protocol connections (parser: memtext.rl)
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
#include "hashspace.h"
#include "net.h"
#include "rpc.h"

typedef struct gateway_config {
    daemon_common common;
    const char *manager1;  /* -m */
    const char *manager2;  /* -p */
    const char *text;      /* -t [addr:]port */
    int get_retries;       /* -G: rounds over the three owners */
    int set_retries;       /* -S */
    int delete_retries;    /* -D */
    bool async_set;        /* -As */
    bool async_delete;     /* -Ad */
    bool keep_flags;       /* -F (always on; accepted for compatibility) */
    bool keep_exptime;     /* -E (always on; accepted for compatibility) */
    int item_size_max;     /* -I, bytes */
} gateway_config;

typedef struct gw_manager {
    net_addr addr;
    rpc_conn *conn;
    struct event *retry;
    struct gateway *g;
} gw_manager;

typedef struct gw_server {
    net_addr addr;
    rpc_conn *conn;
} gw_server;

typedef struct gateway_stats {
    uint64_t cmd_get, get_hits, get_misses, cmd_set, cmd_delete, cmd_touch;
    uint64_t curr_connections, total_connections;
    uint64_t errors;
} gateway_stats;

typedef struct gateway {
    struct event_base *base;
    const gateway_config *cfg;
    rpc_self rpc_self;
    gw_manager managers[2];
    int nmanagers;
    hashspace *whs, *rhs; /* never NULL */
    gw_server *servers;
    size_t nservers, servers_cap;
    struct evconnlistener *text_listener;
    double last_refresh;
    bool ready_notified;
    time_t started;
    gateway_stats stats;
} gateway;

/* router.c — every callback runs later from the event loop, exactly once. */
int router_start(gateway *g, char *err);
void router_stop(gateway *g);

/* A get's outcome: found (value = the stored record bytes, valid during the
 * callback), a miss, or an error after every retry. */
typedef void (*router_get_fn)(void *arg, bool ok, const void *value, size_t vlen);
void router_get(gateway *g, const char *key, size_t klen, router_get_fn fn, void *arg);

/* A write's outcome: ok + the server's result code (proto.h CODE_*) and the
 * new ClockTime, or !ok after every retry. */
typedef void (*router_write_fn)(void *arg, bool ok, int code, uint64_t ct);
/* val: a record value (record.h) the router takes ownership of. */
void router_set(gateway *g, int op, const char *key, size_t klen, uint8_t *val, size_t vlen, uint64_t cas,
                bool async, router_write_fn fn, void *arg);
void router_delete(gateway *g, const char *key, size_t klen, bool async, router_write_fn fn, void *arg);

/* text.c */
void text_accept(gateway *g, int fd);

#endif

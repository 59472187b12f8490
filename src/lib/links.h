/*
 * links — a daemon's links to its managers, found by name.
 *
 * A manager is named by -m/-p (and the tools' targets) as "host[:port]",
 * "[v6]:port", or "dnssrv+_service._proto.domain" (SRV records: each target
 * and port). A host name with several A/AAAA records names several
 * managers. Names are resolved at start, again whenever a link has been
 * down for a while, and every REFRESH seconds, because container
 * addresses change: a manager that comes back under a new address is found.
 * A name that does not resolve is logged and retried with back-off; the
 * daemon keeps serving with the links it has. An address equal to `ignore`
 * (a manager's own) is skipped, so a manager may be given a partner name
 * that also resolves to itself.
 *
 * Each link is an rpc connection, redialled every tick while down; the
 * caller's handlers see every request, hello and close on them.
 *
 * When no link has been up for LINKS_UNREACHABLE_WARN seconds (from the
 * start, or since the last one closed) a WARN names the managers and says
 * what to check, again every LINKS_UNREACHABLE_REPEAT seconds while it
 * lasts, and a WARN says when one is reached again: a wrong -m is seen
 * without -v. on_unreachable (if set) is called when the first WARN of an
 * outage is written, so the daemon can say it in its sd_notify STATUS.
 *
 * Resolution that needs DNS runs on a thread of its own (one at a time),
 * so a name server that never answers stalls no loop: the links go on with
 * the addresses they have. SRV names follow the resolver's search list, as
 * A names do.
 *
 * Thread rule: main loop. Calls: net, rpc, log, pthread.
 */
#ifndef KUMO_LINKS_H
#define KUMO_LINKS_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

#include "net.h"
#include "rpc.h"

#define LINKS_MAX 16

typedef struct links links;

typedef struct links_config {
    const char *const *names; /* NULL-terminated */
    uint16_t default_port;
    double retry;                      /* seconds between redials of a down link */
    double connect_timeout;            /* -Ys */
    const net_addr *ignore;            /* our own address, or NULL */
    void (*on_unreachable)(void *arg); /* handlers->arg; may be NULL */
    bool quiet;                        /* no WARN of its own (another link set of the process says it) */
} links_config;

#define LINKS_UNREACHABLE_WARN 5.0
#define LINKS_UNREACHABLE_REPEAT 60.0

/* handlers->arg is passed through; rpc_get_data(c) is yours to use.
 * The names are copied. */
links *links_new(struct event_base *base, const links_config *cfg, const rpc_handlers *handlers, const rpc_self *self);
void links_free(links *l);

/* Every address a name stands for (as the links resolve it): count, or
 * -1 + err. Blocks while the resolver works (tools, start-up). */
int links_resolve(const char *name, uint16_t default_port, net_addr *out, size_t max, char *err);

/* Check a name's form without resolving it (for start-up: a malformed
 * address is a usage error; an unresolvable one is retried). */
int links_check_name(const char *name, uint16_t default_port, char *err);

/* The local address this host reaches the first reachable named manager
 * from (a server started without -l announces it). Port left 0.
 * -1 + err when no name resolves yet. */
int links_local_address(const char *const *names, uint16_t default_port, net_addr *out, char *err);

size_t links_count(const links *l);
/* The i-th link's connection when its hello is done, else NULL. */
rpc_conn *links_conn(const links *l, size_t i);
const net_addr *links_addr(const links *l, size_t i);
/* How many links have completed their hello. */
size_t links_up(const links *l);
/* Whether no link has been up for LINKS_UNREACHABLE_WARN seconds. */
bool links_unreachable(const links *l);
/* Any live link (for a one-off request), or NULL. */
rpc_conn *links_any(const links *l);

#endif

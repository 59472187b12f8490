/*
 * tool — what the admin tools share: a blocking, time-bounded RPC call to
 * a manager or server (the same framing as rpc.h, role "tool"), and the
 * printing of hash spaces in kumofs 0.4's format (kumoctl(1)).
 *
 * With a cluster key (tool_cluster_key) every connection first runs the
 * key handshake of rpc.h and checks the daemon's proof too, so a tool that
 * reaches a daemon with another key says so instead of "connection closed".
 *
 * Thread rule: single-threaded tools; the key is set once at start-up.
 * Calls: net, hashspace, auth, msgpack.
 */
#ifndef KUMO_TOOL_H
#define KUMO_TOOL_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "auth.h"
#include "hashspace.h"
#include "kumo.h"
#include "net.h"
#include "rpc.h"

#define TOOL_TIMEOUT 10.0
#define TOOL_EX_USAGE 64

typedef struct tool_conn {
    int fd;
    net_addr addr;
    char name[NET_ADDRSTRLEN];
    msgpack_unpacker up;
    bool up_ready;
    uint32_t next_msgid;
    double timeout;
    int want_role; /* RPC_ROLE_* the caller meant to reach, -1 any */
    int peer_role; /* from the peer's hello, -1 until it came */
} tool_conn;

/* --cluster-key-file FILE (or --cluster-key-file=FILE) anywhere among the
 * arguments before a "--", else $KUMO_CLUSTER_KEY_FILE: load the cluster
 * key every later connection proves, and take the option out of argv
 * (*argc shrinks). 0, or TOOL_EX_USAGE after "prog: why" and the usage on
 * stderr (a missing value, a file auth_key_load refuses). */
int tool_cluster_key(const char *prog, void (*usage)(FILE *out), int *argc, char **argv);

/* -p NAME (or -p=NAME; repeatable) anywhere before a "--": more managers,
 * tried in order after the one the command names when it reaches a
 * manager; taken out of argv (*argc shrinks), their number in *count.
 * 0, or TOOL_EX_USAGE after
 * "prog: why" and the usage on stderr (a missing value, too many). */
#define TOOL_MAX_MANAGERS 8
int tool_more_managers(const char *prog, void (*usage)(FILE *out), int *argc, char **argv, size_t *count);

/* Resolve and connect (timeout seconds for connect and for each call).
 * For a manager (any default port but a server's), `addr` may list several
 * names separated by commas, each of which may stand for several addresses
 * (A/AAAA records, "dnssrv+" SRV records), and the -p managers follow: the
 * first that answers is used; err then gives every failure.
 * The default port says what kind of daemon is meant (a manager's control
 * or cluster port, a server's): a call to another kind fails with "ADDR is
 * a kumo-server, not a kumo-manager" rather than the daemon's refusal. */
int tool_connect(tool_conn *t, const char *addr, uint16_t default_port, double timeout, char *err);
/* Connect to one address; want_role = RPC_ROLE_* meant, or -1 for any. */
int tool_connect_addr(tool_conn *t, const net_addr *addr, int want_role, double timeout, char *err);
void tool_close(tool_conn *t);
/* Call `method` with the params array packed in `params`; on success the
 * result is out->data (valid until the next call or msgpack_unpacked_destroy).
 * -1 + err for transport errors, timeouts and remote errors. */
int tool_call(tool_conn *t, uint32_t method, const msgpack_sbuffer *params, msgpack_unpacked *out, char *err);

/* SRV_STATUS `what` (proto.h ST_*) on a server: the answer in out. */
int tool_status(tool_conn *t, int what, msgpack_unpacked *out, char *err);
/* The same, for answers that must be an unsigned integer. */
int tool_status_uint(tool_conn *t, int what, uint64_t *out, char *err);
/* A manager's whs (or rhs), from CTL_STATUS on an open connection;
 * NULL + err. */
hashspace *tool_manager_hs(tool_conn *t, bool rhs, char *err);
/* A server's last replace copy (ST_REPLACE_PROGRESS, protocol.md §5.3). */
typedef struct tool_progress {
    char phase[8]; /* "idle", "walk", "send", "done" */
    bool full;
    uint64_t total, walked, queued, sent, sent_bytes;
    double elapsed, walk_seconds;
    char backup_phase[8]; /* the last backup: "idle", "walk", "done" */
    uint64_t backup_total, backup_walked;
    double backup_elapsed;
} tool_progress;
/* 0, or -1 + err (an older server that does not know the id included). */
int tool_replace_progress(tool_conn *t, tool_progress *out, char *err);
/* One line for people, with totals, rate and ETA:
 *   "walk: 120000 of 1000000 records (12.0%), 40000 records/s, ETA 22 s; 3400 queued to send"
 *   "send: 2000 of 3400 records sent (58.8%, 1.5 MiB), walked 1000000 in 25.0 s, ETA 3 s"
 *   "done: walked 1000000 records in 25.0 s, sent 3400 records (1.5 MiB) in 30.2 s"
 *   "idle: no replace copy since the server started" */
void tool_format_progress(const tool_progress *p, char *buf, size_t len);
/* The last backup, or "" when there was none since the server started:
 *   "backup walk: 12000 of 30000 records (40.0%), 50000 records/s, ETA 0 s"
 *   "backup done: 30000 of 30000 records in 0.6 s" */
void tool_format_backup_progress(const tool_progress *p, char *buf, size_t len);
/* Seconds until the copy ends at its present rate; < 0 when unknown or done. */
double tool_progress_eta(const tool_progress *p);

/* kumofs 0.4's word for ST_REPLACE flags: inactive, Copying, Deleting,
 * WAIT or ready (kumofs 0.4's replstat). */
const char *tool_replace_word(uint64_t flags);
/* "prog: <fmt with arg>", the usage on stderr; returns TOOL_EX_USAGE. */
int tool_usage_error(const char *prog, void (*usage)(FILE *out), const char *fmt, const char *arg);

/* What a manager answers to CTL_STATUS (protocol.md §4). */
typedef struct tool_cluster {
    hashspace *whs, *rhs; /* owned; never NULL after tool_cluster_get */
    net_addr *newcomers;  /* connected, not attached (owned) */
    size_t nnewcomers;
    char phase[32];         /* "copy", "retry", "delete", "catch-up blocked"; "" when idle */
    uint64_t phase_servers; /* servers still working on it (or still catching up) */
    int auto_replace;       /* 1 on, 0 off, -1 the manager does not say */
    bool has_partner;       /* started with -p */
    net_addr partner;       /* len 0 while its name does not resolve */
    bool partner_linked;
} tool_cluster;

/* CTL_STATUS on an open connection to a manager; 0, or -1 + err (out
 * untouched). Free with tool_cluster_free. */
int tool_cluster_get(tool_conn *t, tool_cluster *out, char *err);
void tool_cluster_free(tool_cluster *c);

/* The verdict of `kumoctl health` (and of `status`, `kumostat hsccheck`). */
enum { TOOL_HEALTH_OK = 0,
       TOOL_HEALTH_DEGRADED = 1,
       TOOL_HEALTH_DOWN = 2 };
#define TOOL_HEALTH_MAXWHY 16
#define TOOL_HEALTH_LINE 512
typedef struct tool_health {
    int verdict;
    size_t n;
    char why[TOOL_HEALTH_MAXWHY][TOOL_HEALTH_LINE]; /* one line per problem, without indent */
} tool_health;
/* Judge the cluster the manager on `t` described in *c:
 *   down:     nothing attached, or some range has no live in-sync owner
 *             (its keys can be neither written nor read);
 *   degraded: an attached server is fault, a catch-up is blocked or a
 *             copy is being retried, the partner manager (-p) is not
 *             linked or unreachable, or the two managers hold different
 *             hash spaces (asked again after a second, as a change may be
 *             on its way between them).
 * May refresh *c from `t` while it waits for the managers to agree. */
void tool_cluster_health(tool_conn *t, tool_cluster *c, tool_health *out);
/* The word for a verdict: "ok", "degraded", "down". */
const char *tool_health_word(int verdict);

/* "  Wed Dec 03 22:15:45 +0900 2008 clock 58" (no newline): kumofs 0.4's
 * form, kept where 0.4 printed it; "  none" for a blank hash space
 * (ClockTime 0). */
void tool_print_clocktime(FILE *out, uint64_t ct);
/* kumofs 0.4's block: "hash space timestamp:" … node list with (active)/(fault). */
void tool_print_hashspace(FILE *out, const hashspace *hs, const char *nodes_title);

#endif

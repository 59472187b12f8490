/*
 * tool — what the admin tools share: a blocking, time-bounded RPC call to
 * a manager or server (the same framing as rpc.h, role "tool"), and the
 * printing of hash spaces in the user guide's format.
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
} tool_conn;

/* --cluster-key-file FILE (or --cluster-key-file=FILE) anywhere among the
 * arguments before a "--", else $KUMO_CLUSTER_KEY_FILE: load the cluster
 * key every later connection proves, and take the option out of argv
 * (*argc shrinks). 0, or TOOL_EX_USAGE after "prog: why" and the usage on
 * stderr (a missing value, a file auth_key_load refuses). */
int tool_cluster_key(const char *prog, void (*usage)(FILE *out), int *argc, char **argv);

/* Resolve and connect (timeout seconds for connect and for each call). */
int tool_connect(tool_conn *t, const char *addr, uint16_t default_port, double timeout, char *err);
int tool_connect_addr(tool_conn *t, const net_addr *addr, double timeout, char *err);
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
/* The guide's word for ST_REPLACE flags: inactive, Copying, Deleting,
 * WAIT or ready (kumofs 0.4's replstat). */
const char *tool_replace_word(uint64_t flags);
/* "prog: <fmt with arg>", the usage on stderr; returns TOOL_EX_USAGE. */
int tool_usage_error(const char *prog, void (*usage)(FILE *out), const char *fmt, const char *arg);

/* "  Wed Dec 03 22:15:45 +0900 2008 clock 58" (no newline). */
void tool_print_clocktime(FILE *out, uint64_t ct);
/* The guide's block: "hash space timestamp:" … node list with (active)/(fault). */
void tool_print_hashspace(FILE *out, const hashspace *hs, const char *nodes_title);

#endif

/*
 * kumostat — statistics of one server, or of every active server a
 * manager knows (user guide 6.10).
 *
 *   kumostat server-address[:port=19800] command
 *   kumostat -m manager-address[:port=19700] command
 *
 * Exit status: 0, 1 when a node could not be reached, 64 usage error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "tool.h"

static const struct {
    const char *name;
    int what; /* ST_*, or -1 for hsccheck */
    const char *help;
} commands[] = {
    {"pid", ST_PID, "get pid of server process"},
    {"uptime", ST_UPTIME, "get uptime"},
    {"time", ST_TIME, "get UNIX time"},
    {"version", ST_VERSION, "get version"},
    {"cmd_get", ST_CMD_GET, "get number of get requests"},
    {"cmd_set", ST_CMD_SET, "get number of set requests"},
    {"cmd_delete", ST_CMD_DELETE, "get number of delete requests"},
    {"items", ST_ITEMS, "get number of stored items"},
    {"rhs", ST_RHS, "get rhs (routing table for Get)"},
    {"whs", ST_WHS, "get whs (routing table for Set/Delete)"},
    {"hsccheck", -1, "check if rhs == whs"},
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumostat server-address[:port=%d] command\n"
            "       kumostat -m manager-address[:port=%d] command\ncommand:\n",
            KUMO_SERVER_PORT, KUMO_MANAGER_PORT);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].help);
}

static int status_call(tool_conn *t, int what, msgpack_unpacked *res, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint32(&pk, (uint32_t)what);
    int rc = tool_call(t, SRV_STATUS, &sb, res, err);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* Print one server's answer; returns 0 or 1. */
static int query(const net_addr *addr, int what, const char *prefix)
{
    char err[KUMO_ERRLEN];
    tool_conn t;
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = 1;
    if (tool_connect_addr(&t, addr, TOOL_TIMEOUT, err) < 0) goto fail;
    if (what == -1) {
        uint64_t wct = 0, rct = 0;
        hashspace *w = NULL, *r = NULL;
        if (status_call(&t, ST_WHS, &res, err) < 0 || !(w = hashspace_unpack(&res.data, err))) goto fail;
        wct = w->clocktime;
        if (status_call(&t, ST_RHS, &res, err) < 0 || !(r = hashspace_unpack(&res.data, err))) {
            hashspace_unref(w);
            goto fail;
        }
        rct = r->clocktime;
        printf("%s%s\n", prefix, (wct == rct && hashspace_same_nodes(w, r)) ? "true" : "false");
        hashspace_unref(w);
        hashspace_unref(r);
    } else {
        if (status_call(&t, what, &res, err) < 0) goto fail;
        const msgpack_object *o = &res.data;
        if (what == ST_RHS || what == ST_WHS) {
            hashspace *hs = hashspace_unpack(o, err);
            if (!hs) goto fail;
            if (*prefix) printf("%s\n", prefix);
            tool_print_hashspace(stdout, hs, "node");
            hashspace_unref(hs);
        } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            printf("%s%" PRIu64 "\n", prefix, o->via.u64);
        } else if (o->type == MSGPACK_OBJECT_STR) {
            printf("%s%.*s\n", prefix, (int)o->via.str.size, o->via.str.ptr);
        } else {
            snprintf(err, KUMO_ERRLEN, "unexpected answer");
            goto fail;
        }
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "kumostat: %s\n", err);
    tool_close(&t);
    msgpack_unpacked_destroy(&res);
    return rc;
}

int main(int argc, char **argv)
{
    char err[KUMO_ERRLEN];
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    bool via_manager = argc >= 2 && strcmp(argv[1], "-m") == 0;
    int base = via_manager ? 2 : 1;
    if (argc != base + 2) {
        fprintf(stderr, "kumostat: %s\n", argc <= base ? "missing address" : argc == base + 1 ? "missing command" : "too many arguments");
        usage(stderr);
        return TOOL_EX_USAGE;
    }
    const char *cmd = argv[base + 1];
    int what = -2;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0) what = commands[i].what;
    if (what == -2) {
        fprintf(stderr, "kumostat: unknown command '%s'\n", cmd);
        usage(stderr);
        return TOOL_EX_USAGE;
    }
    if (!via_manager) {
        net_addr a;
        if (net_parse(argv[1], KUMO_SERVER_PORT, &a, err) < 0) {
            fprintf(stderr, "kumostat: %s\n", err);
            return 1;
        }
        return query(&a, what, "");
    }
    /* Every attached, active server in the manager's whs. */
    tool_conn t;
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 0);
    hashspace *whs = NULL;
    int rc = 1;
    if (tool_connect(&t, argv[2], KUMO_MANAGER_PORT, TOOL_TIMEOUT, err) < 0 ||
        tool_call(&t, CTL_STATUS, &sb, &res, err) < 0 || res.data.type != MSGPACK_OBJECT_ARRAY ||
        res.data.via.array.size < 1 || !(whs = hashspace_unpack(&res.data.via.array.ptr[0], err))) {
        fprintf(stderr, "kumostat: %s\n", err);
    } else {
        rc = 0;
        for (size_t i = 0; i < whs->ring.nnodes; i++) {
            if (!whs->ring.nodes[i].active) continue;
            char buf[NET_ADDRSTRLEN], prefix[NET_ADDRSTRLEN + 4];
            snprintf(prefix, sizeof(prefix), "%s:  ", net_format(&whs->ring.nodes[i].addr, buf, sizeof(buf)));
            rc |= query(&whs->ring.nodes[i].addr, what, prefix);
        }
        hashspace_unref(whs);
    }
    tool_close(&t);
    msgpack_unpacked_destroy(&res);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

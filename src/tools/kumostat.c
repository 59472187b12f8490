/*
 * kumostat — statistics of one server, or of every active server a
 * manager knows (kumostat(1)).
 *
 *   kumostat server-address[:port=19800] command
 *   kumostat -m manager-address[:port=19700] command
 *
 * Each command is one or a few SRV_STATUS calls (protocol.md §5.3); the
 * answer is printed raw, as kumofs 0.4 printed it: a number, the version string,
 * a hash space block, true/false. With -m the command runs on every server
 * that is attached and active in the manager's whs, each answer preceded by
 * "host:port:  " (block answers get the prefix on a line of their own).
 *
 * Every connect and call has a timeout (TOOL_TIMEOUT); an unreachable node,
 * a refusal or a garbage answer is reported on stderr as "kumostat: why".
 *
 * Exit status: 0, 1 when a node could not be reached or answered wrongly
 * (with -m: when any of them did), 64 usage error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "tool.h"

/* Commands that are not one plain SRV_STATUS. */
enum {
    CMD_HSCCHECK = -1,
    CMD_SET_DELAY = -2,
    CMD_UNSET_DELAY = -3,
    CMD_STATS = -4,
    CMD_UNKNOWN = -100,
};

static const struct {
    const char *name;
    int what; /* ST_*, or one of the CMD_* above */
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
    {"hsccheck", CMD_HSCCHECK, "check if rhs == whs"},
    {"set_delay", CMD_SET_DELAY, "maximize throughput at the expense of latency"},
    {"unset_delay", CMD_UNSET_DELAY, "minimize latency at the expense of throughput"},
    {"replace", ST_REPLACE, "get replace state: ready, WAIT, Copying, Deleting or inactive"},
    {"moved", ST_REPLACE_MOVED, "records and bytes replaces sent and received since the server started"},
    {"progress", ST_REPLACE_PROGRESS, "the last replace copy and backup: records done of total, rate, ETA"},
    {"clocktime", ST_CLOCKTIME, "get the server's clock: time, logical counter, (ClockTime: seconds << 32 | counter)"},
    {"bytes", ST_DB_BYTES, "get size of the database file in bytes"},
    {"stats", CMD_STATS, "get memcached-style STAT lines"},
    {"accept", ST_ACCEPT, "get accept failures and unauthenticated connections, one \"name value\" line each"},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Aliases of kumofs 0.4's Ruby tool. */
static const struct {
    const char *alias, *name;
} aliases[] = {{"hscheck", "hsccheck"}, {"replstat", "replace"}};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumostat server-address[:port=%d] command\n"
            "       kumostat -m manager-address[:port=%d][,address...] [-p address] command\ncommand:\n",
            KUMO_SERVER_PORT, KUMO_MANAGER_PORT);
    for (size_t i = 0; i < NCOMMANDS; i++) fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(out,
            "options:\n"
            "  -m <addr[:port]>  run the command on every attached, active server of this manager,\n"
            "                    each answer prefixed with \"host:port:  \"\n"
            "  -p <addr[:port]>  with -m: another manager, asked when the first does not answer\n"
            "  --cluster-key-file <file>\n"
            "                    the cluster key, the daemons' file (default: $KUMO_CLUSTER_KEY_FILE)\n"
            "  --help            show this help\n"
            "  --version         print the version and exit\n"
            "Each connect and call times out after %.0f s.\n"
            "Exit status: 0 ok, 1 a node could not be reached or answered wrongly, 64 usage.\n",
            TOOL_TIMEOUT);
}

static int lookup(const char *cmd)
{
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcmp(cmd, aliases[i].alias) == 0) cmd = aliases[i].name;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(cmd, commands[i].name) == 0) return commands[i].what;
    return CMD_UNKNOWN;
}

static int status_hs(tool_conn *t, int what, hashspace **out, char *err)
{
    msgpack_unpacked res;
    char why[KUMO_ERRLEN];
    msgpack_unpacked_init(&res);
    int rc = tool_status(t, what, &res, err);
    if (rc == 0 && !(*out = hashspace_unpack(&res.data, why)))
        rc = kumo_err(err, "%s: unexpected answer: %s", t->name, why);
    msgpack_unpacked_destroy(&res);
    return rc;
}

/* SRV_SET_CONFIG ["tcp_nodelay", bool] -> number of sockets changed. */
static int set_nodelay(tool_conn *t, bool nodelay, uint64_t *count, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked res;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&res);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str(&pk, 11);
    msgpack_pack_str_body(&pk, "tcp_nodelay", 11);
    if (nodelay) msgpack_pack_true(&pk);
    else msgpack_pack_false(&pk);
    int rc = tool_call(t, SRV_SET_CONFIG, &sb, &res, err);
    if (rc == 0 && res.data.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        rc = kumo_err(err, "%s: unexpected answer (not a number)", t->name);
    if (rc == 0) *count = res.data.via.u64;
    msgpack_unpacked_destroy(&res);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* With -m, a block answer (hash space, stats) gets "host:port:" on its own line. */
static void print_block_head(const char *prefix)
{
    size_t n = strlen(prefix);
    while (n > 0 && prefix[n - 1] == ' ') n--;
    if (n > 0) printf("%.*s\n", (int)n, prefix);
}

static int print_stats(tool_conn *t, const char *prefix, char *err)
{
    static const struct {
        const char *name;
        int what;
    } rows[] = {{"pid", ST_PID}, {"uptime", ST_UPTIME}, {"time", ST_TIME}, {"cmd_get", ST_CMD_GET}, {"cmd_set", ST_CMD_SET}, {"cmd_delete", ST_CMD_DELETE}, {"curr_items", ST_ITEMS}};
    uint64_t v[sizeof(rows) / sizeof(rows[0])];
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (tool_status_uint(t, rows[i].what, &v[i], err) < 0) return -1;
    print_block_head(prefix);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) printf("STAT %s %" PRIu64 "\n", rows[i].name, v[i]);
    printf("END\n");
    return 0;
}

/* Run one command on one server and print its answer; returns 0 or 1. */
static int query(const net_addr *addr, int what, const char *prefix)
{
    char err[KUMO_ERRLEN];
    tool_conn t;
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = 1;
    uint64_t u = 0;
    if (tool_connect_addr(&t, addr, RPC_ROLE_SERVER, TOOL_TIMEOUT, err) < 0) goto fail;
    switch (what) {
    case CMD_HSCCHECK: {
        hashspace *w = NULL, *r = NULL;
        if (status_hs(&t, ST_WHS, &w, err) < 0) goto fail;
        if (status_hs(&t, ST_RHS, &r, err) < 0) {
            hashspace_unref(w);
            goto fail;
        }
        bool same = w->clocktime == r->clocktime && hashspace_same_nodes(w, r);
        printf("%s%s\n", prefix, same ? "true" : "false");
        hashspace_unref(w);
        hashspace_unref(r);
        if (!same) { /* a check that says false fails, for shells and health checks */
            tool_close(&t);
            return 1;
        }
        break;
    }
    case CMD_SET_DELAY:
    case CMD_UNSET_DELAY:
        if (set_nodelay(&t, what == CMD_UNSET_DELAY, &u, err) < 0) goto fail;
        printf("%s%" PRIu64 "\n", prefix, u);
        break;
    case CMD_STATS:
        if (print_stats(&t, prefix, err) < 0) goto fail;
        break;
    case ST_RHS:
    case ST_WHS: {
        hashspace *hs = NULL;
        if (status_hs(&t, what, &hs, err) < 0) goto fail;
        print_block_head(prefix);
        tool_print_hashspace(stdout, hs, "node");
        hashspace_unref(hs);
        break;
    }
    case ST_CLOCKTIME: {
        char when[CLOCK_FORMAT_LEN];
        if (tool_status_uint(&t, what, &u, err) < 0) goto fail;
        printf("%s%s (%" PRIu64 ")\n", prefix, clock_format(u, when), u);
        break;
    }
    case ST_REPLACE:
        if (tool_status_uint(&t, what, &u, err) < 0) goto fail;
        printf("%s%s\n", prefix, tool_replace_word(u));
        break;
    case ST_REPLACE_MOVED: {
        if (tool_status(&t, what, &res, err) < 0) goto fail;
        const msgpack_object *o = &res.data;
        uint64_t v[4];
        for (uint32_t i = 0; i < 4; i++) {
            if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4 ||
                o->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                kumo_err(err, "%s: unexpected answer", t.name);
                goto fail;
            }
            v[i] = o->via.array.ptr[i].via.u64;
        }
        printf("%ssent %" PRIu64 " records (%" PRIu64 " bytes compressed), applied %" PRIu64
               " received records (%" PRIu64 " bytes compressed)\n",
               prefix, v[0], v[1], v[2], v[3]);
        break;
    }
    case ST_REPLACE_PROGRESS: {
        tool_progress p;
        char line[512];
        if (tool_replace_progress(&t, &p, err) < 0) goto fail;
        tool_format_progress(&p, line, sizeof(line));
        printf("%s%s\n", prefix, line);
        tool_format_backup_progress(&p, line, sizeof(line));
        if (line[0]) printf("%s%s\n", prefix, line);
        break;
    }
    case ST_ACCEPT: {
        if (tool_status(&t, what, &res, err) < 0) goto fail;
        const msgpack_object *o = &res.data;
        bool good = o->type == MSGPACK_OBJECT_MAP;
        for (uint32_t i = 0; good && i < o->via.map.size; i++)
            good = o->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
                   o->via.map.ptr[i].val.type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        if (!good) {
            kumo_err(err, "%s: unexpected answer", t.name);
            goto fail;
        }
        print_block_head(prefix);
        for (uint32_t i = 0; i < o->via.map.size; i++)
            printf("%.*s %" PRIu64 "\n", (int)o->via.map.ptr[i].key.via.str.size, o->via.map.ptr[i].key.via.str.ptr,
                   o->via.map.ptr[i].val.via.u64);
        break;
    }
    default:
        if (tool_status(&t, what, &res, err) < 0) goto fail;
        if (res.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            printf("%s%" PRIu64 "\n", prefix, res.data.via.u64);
        } else if (res.data.type == MSGPACK_OBJECT_STR) {
            printf("%s%.*s\n", prefix, (int)res.data.via.str.size, res.data.via.str.ptr);
        } else {
            kumo_err(err, "%s: unexpected answer", t.name);
            goto fail;
        }
        break;
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "kumostat: %s\n", err);
    tool_close(&t);
    msgpack_unpacked_destroy(&res);
    return rc;
}

/* Every attached, active server in the manager's whs. hsccheck also lists
 * the fault ones ("host:port:  fault") and fails, as it does on whatever
 * else makes the cluster unhealthy (tool_cluster_health, on stderr). */
static int via_manager(const char *manager, int what)
{
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN];
    tool_conn t;
    tool_cluster c;
    tool_health h = {0};
    if (tool_connect(&t, manager, KUMO_MANAGER_PORT, TOOL_TIMEOUT, err) < 0 || tool_cluster_get(&t, &c, err) < 0) {
        fprintf(stderr, "kumostat: %s\n", err);
        tool_close(&t);
        return 1;
    }
    if (what == CMD_HSCCHECK) tool_cluster_health(&t, &c, &h);
    tool_close(&t);
    hashspace *whs = c.whs;
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < whs->ring.nnodes; i++) {
        if (!whs->ring.nodes[i].active) continue;
        char prefix[NET_ADDRSTRLEN + 4];
        snprintf(prefix, sizeof(prefix), "%s:  ", net_format(&whs->ring.nodes[i].addr, buf, sizeof(buf)));
        rc |= query(&whs->ring.nodes[i].addr, what, prefix);
        n++;
    }
    for (size_t i = 0; what == CMD_HSCCHECK && i < whs->ring.nnodes; i++)
        if (!whs->ring.nodes[i].active) printf("%s:  fault\n", net_format(&whs->ring.nodes[i].addr, buf, sizeof(buf)));
    for (size_t i = 0; i < h.n; i++) fprintf(stderr, "kumostat: %s\n", h.why[i]);
    if (h.verdict != TOOL_HEALTH_OK) rc = 1;
    if (n == 0) {
        fprintf(stderr, "kumostat: %s has no attached, active server\n", manager);
        rc = 1;
    }
    tool_cluster_free(&c);
    return rc;
}

int main(int argc, char **argv)
{
    char err[KUMO_ERRLEN];
    if (kumo_version_asked("kumostat", argc, argv)) return 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    size_t more = 0;
    if (tool_cluster_key("kumostat", usage, &argc, argv) || tool_more_managers("kumostat", usage, &argc, argv, &more))
        return TOOL_EX_USAGE;
    bool manager = argc >= 2 && strcmp(argv[1], "-m") == 0;
    if (more && !manager) return tool_usage_error("kumostat", usage, "%s", "-p names another manager: it needs -m");
    int base = manager ? 2 : 1;
    if (argc >= 2 && argv[1][0] == '-' && !manager) {
        fprintf(stderr, "kumostat: unknown option '%s'\n", argv[1]);
        usage(stderr);
        return TOOL_EX_USAGE;
    }
    if (argc != base + 2) {
        fprintf(stderr, "kumostat: %s\n",
                argc <= base ? "missing address" : argc == base + 1 ? "missing command"
                                                                    : "too many arguments");
        usage(stderr);
        return TOOL_EX_USAGE;
    }
    const char *cmd = argv[base + 1];
    int what = lookup(cmd);
    if (what == CMD_UNKNOWN) {
        fprintf(stderr, "kumostat: unknown command '%s'\n", cmd);
        usage(stderr);
        return TOOL_EX_USAGE;
    }
    int rc;
    if (manager) {
        rc = via_manager(argv[2], what);
    } else {
        net_addr a;
        if (net_parse(argv[1], KUMO_SERVER_PORT, &a, err) < 0) {
            fprintf(stderr, "kumostat: %s\n", err);
            return 1;
        }
        rc = query(&a, what, "");
    }
    if (fflush(stdout) != 0 && rc == 0) rc = 1;
    return rc;
}

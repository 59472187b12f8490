/*
 * kumohash — where a key lives (kumohash(1)).
 *
 *   kumohash server-address[:port=19800] ... -- command [args]
 *   kumohash -m manager-address[:port=19700] command [args]
 *
 * With servers, the ring is made of exactly those servers, in the order
 * given, all active (the order of `kumoctl status`'s attached list is the
 * cluster's order; it matters only for the tie-break of equal vnode hashes).
 * Nothing is contacted. With -m, the manager's whs (or its rhs with -r) is
 * fetched with CTL_STATUS on its cluster port, so fault servers keep their
 * slots and are marked, exactly as the daemons route.
 *
 * Placement is src/lib/ring.c itself, not a re-implementation, so the
 * answers are the daemons' answers.
 *
 * Output (kumofs 0.4's, unchanged; man/kumohash.1.scd):
 *   hash k...    "%016x  key"
 *   assign k...  "%016x  key", then "  0: ip:port" ... for the (up to) three
 *                distinct owners clockwise, " (fault)" after a fault one;
 *                the first live one is the coordinator
 *   dump         "%016x  ip:port" for every vnode in ring order
 *
 * Exit status: 0, 1 when the manager could not be asked or the hash space
 * has no server, 64 usage error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "ring.h"
#include "tool.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumohash server-address[:port=%d] ... -- command [options]\n"
            "       kumohash -m manager-address[:port=%d][,address...] [-p address] [-r] command [options]\n"
            "command:\n"
            "   hash keys...     calculate hash of keys\n"
            "   assign keys...   calculate assign node (the three owners; the first live one\n"
            "                    is the coordinator, fault ones are marked)\n"
            "   dump             dump hash space (every virtual node in ring order)\n"
            "options:\n"
            "   -m <addr[:port]> take the hash space from this manager (its cluster port)\n"
            "   -p <addr[:port]> with -m: another manager, asked when the first does not answer\n"
            "   -r               with -m: use the manager's rhs (reads) instead of whs (writes)\n"
            "   --cluster-key-file <file>\n"
            "                    with -m: the cluster key, the daemons' file\n"
            "                    (default: $KUMO_CLUSTER_KEY_FILE)\n"
            "   --help           show this help\n"
            "   --version        print the version and exit\n"
            "Exit status: 0 ok, 1 the manager could not be reached or has no server, 64 usage.\n",
            KUMO_SERVER_PORT, KUMO_MANAGER_PORT);
}

/* The manager's whs (or rhs); NULL + a message on stderr. */
static hashspace *from_manager(const char *addr, bool rhs)
{
    char err[KUMO_ERRLEN];
    tool_conn t;
    hashspace *hs = NULL;
    if (tool_connect(&t, addr, KUMO_MANAGER_PORT, TOOL_TIMEOUT, err) < 0 || !(hs = tool_manager_hs(&t, rhs, err)))
        fprintf(stderr, "kumohash: %s\n", err);
    tool_close(&t);
    return hs;
}

/* A ring of the given servers, all active, in order; NULL + message. */
static hashspace *from_servers(const char *const *addrs, size_t n)
{
    char err[KUMO_ERRLEN];
    ring_node *nodes = calloc(n, sizeof(*nodes));
    if (!nodes) {
        fprintf(stderr, "kumohash: out of memory\n");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (net_parse(addrs[i], KUMO_SERVER_PORT, &nodes[i].addr, err) < 0) {
            fprintf(stderr, "kumohash: %s\n", err);
            free(nodes);
            return NULL;
        }
        nodes[i].active = true;
        for (size_t j = 0; j < i; j++) {
            if (net_equal(&nodes[j].addr, &nodes[i].addr)) {
                fprintf(stderr, "kumohash: server %s is given twice\n", addrs[i]);
                free(nodes);
                return NULL;
            }
        }
    }
    hashspace *hs = hashspace_new(nodes, n, 0);
    free(nodes);
    if (!hs) fprintf(stderr, "kumohash: out of memory\n");
    return hs;
}

static const char *node_name(const hashspace *hs, uint32_t i, char *buf, size_t len)
{
    return net_format(&hs->ring.nodes[i].addr, buf, len);
}

static int cmd_assign(const hashspace *hs, char **keys, int nkeys)
{
    char buf[NET_ADDRSTRLEN];
    if (hs->ring.nnodes == 0) {
        fprintf(stderr, "kumohash: the hash space has no server\n");
        return 1;
    }
    for (int k = 0; k < nkeys; k++) {
        uint64_t h = ring_hash(keys[k], strlen(keys[k]));
        uint32_t own[KUMO_REPLICAS];
        size_t n = ring_owners(&hs->ring, h, own);
        printf("%016" PRIx64 "  %s\n", h, keys[k]);
        for (size_t i = 0; i < n; i++)
            printf("  %zu: %s%s\n", i, node_name(hs, own[i], buf, sizeof(buf)),
                   hs->ring.nodes[own[i]].active ? "" : " (fault)");
    }
    return 0;
}

static int cmd_dump(const hashspace *hs)
{
    char buf[NET_ADDRSTRLEN];
    if (hs->ring.nnodes == 0) {
        fprintf(stderr, "kumohash: the hash space has no server\n");
        return 1;
    }
    for (size_t i = 0; i < hs->ring.nvnodes; i++) {
        const ring_vnode *v = &hs->ring.vnodes[i];
        printf("%016" PRIx64 "  %s%s\n", v->hash, node_name(hs, v->node, buf, sizeof(buf)),
               hs->ring.nodes[v->node].active ? "" : " (fault)");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (kumo_version_asked("kumohash", argc, argv)) return 0;
    const char *manager = NULL;
    bool use_rhs = false;
    const char **servers = calloc((size_t)argc + 1, sizeof(*servers));
    size_t nservers = 0;
    int i = 1;
    if (!servers) return 1;

    for (int j = 1; j < argc; j++) {
        if (strcmp(argv[j], "--help") == 0) {
            usage(stdout);
            free(servers);
            return 0;
        }
        if (strcmp(argv[j], "--") == 0) break;
    }
    size_t more = 0;
    if (tool_cluster_key("kumohash", usage, &argc, argv) || tool_more_managers("kumohash", usage, &argc, argv, &more)) {
        free(servers);
        return TOOL_EX_USAGE;
    }
    /* Flags first: -m addr, -r. */
    for (; i < argc && argv[i][0] == '-' && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-m") == 0) {
            if (i + 1 >= argc) {
                free(servers);
                return tool_usage_error("kumohash", usage, "%s", "-m needs a manager address");
            }
            manager = argv[++i];
        } else if (strcmp(argv[i], "-r") == 0 || strcmp(argv[i], "--rhs") == 0) {
            use_rhs = true;
        } else {
            free(servers);
            return tool_usage_error("kumohash", usage, "unknown option '%s'", argv[i]);
        }
    }
    if (more && !manager) {
        free(servers);
        return tool_usage_error("kumohash", usage, "%s", "-p names another manager: it needs -m");
    }
    if (!manager) {
        /* server... -- command */
        for (; i < argc && strcmp(argv[i], "--") != 0; i++) servers[nservers++] = argv[i];
        if (i >= argc) {
            free(servers);
            return tool_usage_error("kumohash", usage, "%s", nservers ? "missing '--' before the command" : "missing server addresses");
        }
        i++; /* the "--" */
        if (nservers == 0) {
            free(servers);
            return tool_usage_error("kumohash", usage, "%s", "missing server addresses before '--'");
        }
    } else if (i < argc && strcmp(argv[i], "--") == 0) {
        i++;
    }
    if (i >= argc) {
        free(servers);
        return tool_usage_error("kumohash", usage, "%s", "missing command");
    }
    const char *cmd = argv[i++];
    char **args = argv + i;
    int nargs = argc - i;
    bool is_hash = strcmp(cmd, "hash") == 0, is_assign = strcmp(cmd, "assign") == 0;
    bool is_dump = strcmp(cmd, "dump") == 0;
    if (!is_hash && !is_assign && !is_dump) {
        free(servers);
        return tool_usage_error("kumohash", usage, "unknown command '%s'", cmd);
    }
    if ((is_hash || is_assign) && nargs == 0) {
        free(servers);
        return tool_usage_error("kumohash", usage, "%s: give at least one key", cmd);
    }
    if (is_dump && nargs > 0) {
        free(servers);
        return tool_usage_error("kumohash", usage, "%s", "dump takes no arguments");
    }

    hashspace *hs = manager ? from_manager(manager, use_rhs) : from_servers(servers, nservers);
    free(servers);
    if (!hs) return 1;
    int rc = 0;
    if (is_hash) {
        for (int k = 0; k < nargs; k++)
            printf("%016" PRIx64 "  %s\n", ring_hash(args[k], strlen(args[k])), args[k]);
    } else if (is_assign) {
        rc = cmd_assign(hs, args, nargs);
    } else {
        rc = cmd_dump(hs);
    }
    hashspace_unref(hs);
    if (fflush(stdout) != 0 && rc == 0) rc = 1;
    return rc;
}

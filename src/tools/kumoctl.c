/*
 * kumoctl — the operator's client of a manager (kumoctl(1)).
 *
 *   kumoctl address[:port=19799] command [options]
 *
 * Exit status: 0 done, 1 the manager could not be reached or refused,
 * 64 usage error. status: 2 when it answered and the cluster is degraded
 * or down (tool_cluster_health), listed under "health:". health: 0 ok,
 * 1 degraded, 2 down (no manager answers, or some keys have no live
 * in-sync owner). verify and repair (verify.c) have their own: 0 the
 * replicas agree, 1 divergent keys, 2 the run could not finish.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto.h"
#include "tool.h"
#include "verify.h"

static const struct {
    const char *name;
    const char *help;
} commands[] = {
    {"status", "get status"},
    {"health", "ok, degraded or down, with the reasons; exit 0, 1 or 2"},
    {"attach", "attach all new servers and start replace"},
    {"attach-noreplace", "attach all new servers"},
    {"detach", "detach all fault servers and start replace"},
    {"detach-noreplace", "detach all fault servers"},
    {"replace", "start replace without attach/detach"},
    {"full-replace", "start full-replace (repair consistency)"},
    {"backup", "[suffix=YYMMDD]  create backup with specified suffix"},
    {"enable-auto-replace", "enable auto replace"},
    {"disable-auto-replace", "disable auto replace"},
    {"verify", "compare the replicas of every range, report divergent keys"},
    {"repair", "verify, then push the newest record to every replica lacking it"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: kumoctl address[:port=%d][,address...] [-p address] command [options]\ncommand:\n",
            KUMO_CONTROL_PORT);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "   %-22s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "options:\n"
                 "   -p <addr[:port]>       another manager, asked when the first does not answer\n"
                 "                          (repeatable; so is a comma-separated address list)\n"
                 "   --cluster-key-file <file>\n"
                 "                          the cluster key, the daemons' file (default: $KUMO_CLUSTER_KEY_FILE)\n"
                 "   --version              print the version and exit\n"
                 "exit status: 0 done; 1 the manager could not be reached or refused; status: 2 the\n"
                 "cluster is degraded or down; health: 0 ok, 1 degraded, 2 down; 64 usage\n");
}

static void print_health(const tool_health *h, const char *indent)
{
    for (size_t i = 0; i < h->n; i++) printf("%s%s\n", indent, h->why[i]);
}

/* Under "replace:", each live server's copy with its totals, then the
 * sum over them with the latest ETA. A server that does not answer is
 * said so and skipped. */
static void print_progress(const hashspace *whs)
{
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN], line[512];
    uint64_t walked = 0, total = 0, queued = 0, sent = 0;
    double eta = -1; /* the latest of the known ETAs */
    size_t n = 0;
    for (size_t i = 0; i < whs->ring.nnodes; i++) {
        if (!whs->ring.nodes[i].active) continue;
        tool_conn t;
        tool_progress p;
        net_format(&whs->ring.nodes[i].addr, buf, sizeof(buf));
        if (tool_connect_addr(&t, &whs->ring.nodes[i].addr, RPC_ROLE_SERVER, TOOL_TIMEOUT, err) < 0 ||
            tool_replace_progress(&t, &p, err) < 0) {
            printf("  %s: no progress: %s\n", buf, err);
        } else {
            tool_format_progress(&p, line, sizeof(line));
            printf("  %s: %s\n", buf, line);
            walked += p.walked;
            total += p.total;
            queued += p.queued;
            sent += p.sent;
            double e = tool_progress_eta(&p);
            if (e > eta) eta = e;
            n++;
        }
        tool_close(&t);
    }
    if (n > 1) {
        char when[32] = "ETA unknown";
        if (eta >= 0) snprintf(when, sizeof(when), "ETA %.0f s", eta);
        printf("  all: walked %" PRIu64 " of %" PRIu64 " records, sent %" PRIu64 " of %" PRIu64 " queued, %s\n", walked,
               total, sent, queued, when);
    }
}

/* kumofs 0.4's block, then what it does not show: a replace in progress,
 * the auto-replace switch ("settings:"), and the health verdict with its
 * reasons. */
static int print_status(tool_conn *t)
{
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN];
    tool_cluster c;
    tool_health h;
    if (tool_cluster_get(t, &c, err) < 0) {
        fprintf(stderr, "kumoctl: %s\n", err);
        return 1;
    }
    tool_cluster_health(t, &c, &h);
    tool_print_hashspace(stdout, c.whs, "attached node");
    printf("not attached node:\n");
    for (size_t i = 0; i < c.nnewcomers; i++) printf("  %s\n", net_format(&c.newcomers[i], buf, sizeof(buf)));
    if (c.phase[0]) {
        bool blocked = strncmp(c.phase, "catch-up", 8) == 0;
        printf("replace:\n  %s, %" PRIu64 " servers %s\n", c.phase, c.phase_servers,
               blocked ? "catching up" : "working");
        if (!blocked) print_progress(c.whs);
    }
    /* Not "auto replace:": scripts look for "replace:" to see a replace running. */
    if (c.auto_replace >= 0) printf("settings:\n  auto replace %s\n", c.auto_replace ? "enabled" : "disabled");
    printf("health:\n  %s\n", tool_health_word(h.verdict));
    print_health(&h, "  ");
    tool_cluster_free(&c);
    return h.verdict == TOOL_HEALTH_OK ? 0 : 2;
}

/* kumoctl health: the verdict on the first line, one reason a line. */
static int print_verdict(tool_conn *t)
{
    char err[KUMO_ERRLEN];
    tool_cluster c;
    tool_health h;
    if (tool_cluster_get(t, &c, err) < 0) {
        printf("down\n  no manager answers: %s\n", err);
        return TOOL_HEALTH_DOWN;
    }
    tool_cluster_health(t, &c, &h);
    printf("%s\n", tool_health_word(h.verdict));
    print_health(&h, "  ");
    tool_cluster_free(&c);
    return h.verdict;
}

/* attach/detach: each server changed, or that nothing was to be done. */
static int print_changed(const msgpack_object *r, const char *verb, const char *nothing)
{
    char buf[NET_ADDRSTRLEN];
    if (r->type != MSGPACK_OBJECT_ARRAY) {
        fprintf(stderr, "kumoctl: unexpected answer from the manager\n");
        return 1;
    }
    for (uint32_t i = 0; i < r->via.array.size; i++) {
        const msgpack_object *o = &r->via.array.ptr[i];
        net_addr a;
        if (o->type == MSGPACK_OBJECT_BIN && net_from_id(&a, o->via.bin.ptr, o->via.bin.size) == 0)
            printf("%s %s\n", verb, net_format(&a, buf, sizeof(buf)));
    }
    if (r->via.array.size == 0) printf("%s\n", nothing);
    return 0;
}

static int print_backup(const msgpack_object *r)
{
    char buf[NET_ADDRSTRLEN];
    int rc = 0;
    if (r->type != MSGPACK_OBJECT_ARRAY) {
        fprintf(stderr, "kumoctl: unexpected answer from the manager\n");
        return 1;
    }
    if (r->via.array.size == 0) {
        fprintf(stderr, "kumoctl: no server is connected to the manager\n");
        return 1;
    }
    for (uint32_t i = 0; i < r->via.array.size; i++) {
        const msgpack_object *e = &r->via.array.ptr[i];
        net_addr a;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 3 || e->via.array.ptr[0].type != MSGPACK_OBJECT_BIN ||
            net_from_id(&a, e->via.array.ptr[0].via.bin.ptr, e->via.array.ptr[0].via.bin.size) < 0)
            continue;
        const msgpack_object *path = &e->via.array.ptr[1], *why = &e->via.array.ptr[2];
        if (path->type == MSGPACK_OBJECT_STR) {
            printf("%s  %.*s\n", net_format(&a, buf, sizeof(buf)), (int)path->via.str.size, path->via.str.ptr);
        } else {
            rc = 1;
            fprintf(stderr, "kumoctl: %s: backup failed: %.*s\n", net_format(&a, buf, sizeof(buf)),
                    why->type == MSGPACK_OBJECT_STR ? (int)why->via.str.size : 7,
                    why->type == MSGPACK_OBJECT_STR ? why->via.str.ptr : "unknown");
        }
    }
    return rc;
}

int main(int argc, char **argv)
{
    char err[KUMO_ERRLEN];
    if (kumo_version_asked("kumoctl", argc, argv)) return 0;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    size_t more = 0;
    if (tool_cluster_key("kumoctl", usage, &argc, argv) || tool_more_managers("kumoctl", usage, &argc, argv, &more))
        return TOOL_EX_USAGE;
    if (argc < 3) return tool_usage_error("kumoctl", usage, "%s", argc < 2 ? "missing manager address" : "missing command");
    const char *cmd = argv[2];
    if (strcmp(cmd, "verify") == 0 || strcmp(cmd, "repair") == 0) {
        if (argc > 3) return tool_usage_error("kumoctl", usage, "unexpected argument '%s'", argv[3]);
        return verify_run(argv[1], cmd[0] == 'r');
    }
    uint32_t method;
    msgpack_sbuffer params;
    msgpack_packer pk;
    msgpack_sbuffer_init(&params);
    msgpack_packer_init(&pk, &params, msgpack_sbuffer_write);
    if (strcmp(cmd, "status") == 0 || strcmp(cmd, "stat") == 0 || strcmp(cmd, "health") == 0) {
        method = CTL_STATUS;
        msgpack_pack_array(&pk, 0);
    } else if (strcmp(cmd, "attach") == 0 || strcmp(cmd, "attach-noreplace") == 0) {
        method = CTL_ATTACH;
        msgpack_pack_array(&pk, 1);
        if (strcmp(cmd, "attach") == 0) msgpack_pack_true(&pk);
        else msgpack_pack_false(&pk);
    } else if (strcmp(cmd, "detach") == 0 || strcmp(cmd, "detach-noreplace") == 0) {
        method = CTL_DETACH;
        msgpack_pack_array(&pk, 1);
        if (strcmp(cmd, "detach") == 0) msgpack_pack_true(&pk);
        else msgpack_pack_false(&pk);
    } else if (strcmp(cmd, "replace") == 0 || strcmp(cmd, "full-replace") == 0) {
        method = CTL_REPLACE;
        msgpack_pack_array(&pk, 1);
        if (strcmp(cmd, "full-replace") == 0) msgpack_pack_true(&pk);
        else msgpack_pack_false(&pk);
    } else if (strcmp(cmd, "backup") == 0) {
        char suffix[32];
        const char *s = argc > 3 ? argv[3] : NULL;
        if (!s) {
            time_t now = time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            strftime(suffix, sizeof(suffix), "%y%m%d", &tm);
            s = suffix;
        }
        method = CTL_BACKUP;
        msgpack_pack_array(&pk, 1);
        msgpack_pack_str(&pk, strlen(s));
        msgpack_pack_str_body(&pk, s, strlen(s));
    } else if (strcmp(cmd, "enable-auto-replace") == 0 || strcmp(cmd, "disable-auto-replace") == 0) {
        method = CTL_AUTO_REPLACE;
        msgpack_pack_array(&pk, 1);
        if (cmd[0] == 'e') msgpack_pack_true(&pk);
        else msgpack_pack_false(&pk);
    } else {
        msgpack_sbuffer_destroy(&params);
        return tool_usage_error("kumoctl", usage, "unknown command '%s'", cmd);
    }

    tool_conn t;
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = 1;
    /* a backup takes as long as the largest database takes to copy */
    double timeout = method == CTL_BACKUP ? 3600.0 : TOOL_TIMEOUT;
    bool health = strcmp(cmd, "health") == 0;
    if (tool_connect(&t, argv[1], KUMO_CONTROL_PORT, timeout, err) < 0) {
        if (health) printf("down\n  no manager answers: %s\n", err);
        else fprintf(stderr, "kumoctl: %s\n", err);
        rc = health ? TOOL_HEALTH_DOWN : 1;
    } else if (method == CTL_STATUS) {
        rc = health ? print_verdict(&t) : print_status(&t);
    } else if (tool_call(&t, method, &params, &res, err) < 0) {
        fprintf(stderr, "kumoctl: %s\n", err);
    } else if (method == CTL_ATTACH) {
        rc = print_changed(&res.data, "attached", "nothing to attach: no new server waits under \"not attached node\"");
    } else if (method == CTL_DETACH) {
        rc = print_changed(&res.data, "detached", "nothing to detach: no attached server is fault");
    } else if (method == CTL_REPLACE) {
        if (res.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER && res.data.via.u64 == 0)
            printf("nothing to replace: no server is connected\n");
        else if (res.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            printf("%s started: %" PRIu64 " servers copying\n", cmd, res.data.via.u64);
        rc = 0;
    } else if (method == CTL_BACKUP) {
        rc = print_backup(&res.data);
    } else if (method == CTL_AUTO_REPLACE) {
        printf("auto replace %s\n", res.data.type == MSGPACK_OBJECT_BOOLEAN && res.data.via.boolean ? "enabled" : "disabled");
        rc = 0;
    } else {
        rc = 0;
    }
    tool_close(&t);
    msgpack_unpacked_destroy(&res);
    msgpack_sbuffer_destroy(&params);
    return rc;
}

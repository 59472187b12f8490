/*
 * kumoctl — the operator's client of a manager (user guide 6.7).
 *
 *   kumoctl address[:port=19799] command [options]
 *
 * Exit status: 0 done, 1 the manager could not be reached or refused,
 * 64 usage error. verify and repair (verify.c) have their own: 0 the
 * replicas agree, 1 divergent keys, 2 the run could not finish.
 */
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
    fprintf(out, "Usage: kumoctl address[:port=%d] command [options]\ncommand:\n", KUMO_CONTROL_PORT);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "   %-22s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "options:\n"
                 "   --cluster-key-file <file>\n"
                 "                          the cluster key, the daemons' file (default: $KUMO_CLUSTER_KEY_FILE)\n");
}

static int print_status(const msgpack_object *r)
{
    char err[KUMO_ERRLEN], buf[NET_ADDRSTRLEN];
    if (r->type != MSGPACK_OBJECT_ARRAY || r->via.array.size < 2 ||
        r->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY) {
        fprintf(stderr, "kumoctl: unexpected answer from the manager\n");
        return 1;
    }
    hashspace *whs = hashspace_unpack(&r->via.array.ptr[0], err);
    if (!whs) {
        fprintf(stderr, "kumoctl: bad hash space from the manager: %s\n", err);
        return 1;
    }
    tool_print_hashspace(stdout, whs, "attached node");
    printf("not attached node:\n");
    const msgpack_object_array *nc = &r->via.array.ptr[1].via.array;
    for (uint32_t i = 0; i < nc->size; i++) {
        net_addr a;
        const msgpack_object *o = &nc->ptr[i];
        if (o->type == MSGPACK_OBJECT_BIN && net_from_id(&a, o->via.bin.ptr, o->via.bin.size) == 0)
            printf("  %s\n", net_format(&a, buf, sizeof(buf)));
    }
    /* A replace in progress is shown after the guide's lines. */
    const msgpack_object *rp = r->via.array.size > 3 ? &r->via.array.ptr[3] : NULL;
    if (rp && rp->type == MSGPACK_OBJECT_ARRAY && rp->via.array.size == 3 &&
        rp->via.array.ptr[0].type == MSGPACK_OBJECT_BOOLEAN && rp->via.array.ptr[0].via.boolean &&
        rp->via.array.ptr[1].type == MSGPACK_OBJECT_STR && rp->via.array.ptr[2].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        const msgpack_object_str *phase = &rp->via.array.ptr[1].via.str;
        bool blocked = phase->size > 8 && memcmp(phase->ptr, "catch-up", 8) == 0;
        printf("replace:\n  %.*s, %llu servers %s\n", (int)phase->size, phase->ptr,
               (unsigned long long)rp->via.array.ptr[2].via.u64, blocked ? "catching up" : "working");
    }
    hashspace_unref(whs);
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
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (tool_cluster_key("kumoctl", usage, &argc, argv)) return TOOL_EX_USAGE;
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
    if (strcmp(cmd, "status") == 0 || strcmp(cmd, "stat") == 0) {
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
    if (tool_connect(&t, argv[1], KUMO_CONTROL_PORT, timeout, err) < 0 ||
        tool_call(&t, method, &params, &res, err) < 0) {
        fprintf(stderr, "kumoctl: %s\n", err);
    } else if (method == CTL_STATUS) {
        rc = print_status(&res.data);
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

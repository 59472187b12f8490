/*
 * control — the commands of kumoctl (kumoctl(1)), served on the control
 * port and, for tools, on the cluster port: status, attach, detach (each
 * with or without replace), replace, full-replace, backup, and the
 * auto-replace switch.
 *
 * Calls: membership.c (servers, hash spaces), history.c, replace.c, rpc, log.
 * Thread rule: main loop.
 */
#include <stdlib.h>
#include <string.h>

#include "binlog.h"
#include "log.h"
#include "manager.h"
#include "proto.h"
#include "xalloc.h"

static const char *fmt(const net_addr *a, char buf[NET_ADDRSTRLEN])
{
    return net_format(a, buf, NET_ADDRSTRLEN);
}

static void ctl_status(manager *m, rpc_conn *c, uint32_t msgid)
{
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    size_t n = 0;
    for (size_t i = 0; i < m->nservers; i++) n += m->servers[i]->newcomer && m->servers[i]->conn;
    msgpack_pack_array(pk, 6);
    hashspace_pack(m->whs, pk);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (ms->newcomer && ms->conn) rpc_pack_bytes(pk, ms->addr.id, ms->addr.len);
    }
    hashspace_pack(m->rhs, pk);
    /* [shown, phase, count]: a running replace ("copy"/"retry"/"delete",
     * servers still working), or a catch-up that waits for an unreachable
     * in-sync copy ("catch-up blocked", servers still catching up). */
    msgpack_pack_array(pk, 3);
    if (m->replacing || m->catchup_blocked) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    rpc_pack_str(pk, m->replacing         ? (m->copy_pending ? "copy" : m->copy_failed ? "retry"
                                                                                       : "delete")
                     : m->catchup_blocked ? "catch-up blocked"
                                          : "");
    msgpack_pack_uint64(pk, m->replacing ? (m->copy_pending ? m->copy_pending : m->delete_pending) : m->catchup_blocked);
    if (m->auto_replace) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    /* [partner, linked]: the partner's address (empty while its name does
     * not resolve; nil without -p) lets a tool ask it for its hash spaces
     * and tell when the two managers disagree. */
    msgpack_pack_array(pk, 2);
    if (m->has_partner) rpc_pack_bytes(pk, m->partner.id, m->partner.len);
    else msgpack_pack_nil(pk);
    if (partner_up(m)) msgpack_pack_true(pk);
    else msgpack_pack_false(pk);
    rpc_call_end(c);
}

/* A change of the membership asked for: by kumoctl (client set, answered
 * when it is decided) or by auto-replace. */
typedef struct change_op {
    rpc_conn *client; /* held; NULL for auto-replace */
    uint32_t msgid;
    bool attach, detach, replace, keep_last_copies;
    int tries;
    net_addr *list; /* what the proposed whs attaches or detaches */
    size_t n;
} change_op;

/* The whs that attaches the connected newcomers and/or detaches the fault
 * servers; the changed addresses go to op->list. NULL if nothing changes. */
static hashspace *reconfigured(manager *m, change_op *op)
{
    size_t n = 0;
    ring_node *nodes = xmalloc((m->whs->ring.nnodes + m->nservers + 1) * sizeof(*nodes));
    free(op->list);
    op->list = xmalloc((m->whs->ring.nnodes + m->nservers + 1) * sizeof(*op->list));
    op->n = 0;
    char buf[NET_ADDRSTRLEN];
    for (size_t i = 0; i < m->whs->ring.nnodes; i++) {
        const ring_node *rn = &m->whs->ring.nodes[i];
        mserver *ms = membership_find_server(m, &rn->addr);
        if (!rn->active && op->attach && ms && ms->newcomer && ms->conn) {
            /* Recovered, same slots; its database missed what was written
             * while it was away, so it catches up before it serves. */
            nodes[n] = *rn;
            nodes[n].active = nodes[n].catchup = true;
            n++;
            op->list[op->n++] = rn->addr;
        } else if (!rn->active && op->detach && op->keep_last_copies && replace_holds_last_copy(m, &rn->addr)) {
            /* Automatic detach would turn "wait for this server" into "the
             * catching-up owners are complete without it": only an operator
             * may declare its data lost. */
            log_warn("auto-replace: %s is not detached: it holds the only in-sync copy of some ranges",
                     fmt(&rn->addr, buf));
            nodes[n++] = *rn;
        } else if (!rn->active && op->detach) {
            op->list[op->n++] = rn->addr;
        } else {
            nodes[n++] = *rn;
        }
    }
    for (size_t i = 0; op->attach && i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (!ms->newcomer || !ms->conn || hashspace_find(m->whs, &ms->addr) >= 0) continue;
        if (n >= HASHSPACE_MAX_NODES) { /* every receiver would refuse the seed */
            log_warn("attach: a hash space holds at most %d servers; the rest stay unattached", HASHSPACE_MAX_NODES);
            break;
        }
        nodes[n++] = membership_node_of(ms, true, true);
        op->list[op->n++] = ms->addr;
    }
    hashspace *w = op->n > 0 ? xcheck(hashspace_new(nodes, n, 0)) : NULL;
    free(nodes);
    return w;
}

static void reply_addrs(rpc_conn *c, uint32_t msgid, const net_addr *addrs, size_t n)
{
    msgpack_packer *pk = rpc_reply_begin(c, msgid);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) rpc_pack_bytes(pk, addrs[i].id, addrs[i].len);
    rpc_call_end(c);
}

static void op_free(change_op *op)
{
    if (op->client) rpc_release(op->client);
    free(op->list);
    free(op);
}

static void propose(manager *m, change_op *op);

#define CHANGE_TRIES 3 /* rebuilt on top of the other manager's change this often */

static void change_done(manager *m, void *arg, int result, const char *why)
{
    change_op *op = arg;
    char buf[NET_ADDRSTRLEN];
    if (result == HISTORY_SUPERSEDED && ++op->tries < CHANGE_TRIES) {
        /* The other manager's change came first and is installed: ours,
         * built again on top of it (what it already did drops out). */
        log_info("%s: the other manager changed the membership first; building on its change",
                 op->attach ? "attach" : "detach");
        propose(m, op);
        return;
    }
    if (result != HISTORY_OK) {
        const char *text = result == HISTORY_SUPERSEDED ? "the membership kept changing meanwhile; try again" : why;
        log_warn("%s refused: %s", op->attach && op->detach ? "auto-replace" : op->attach ? "attach"
                                                                                          : "detach",
                 text);
        if (op->client) rpc_reply_error(op->client, op->msgid, "membership change not agreed: %s", text);
        else membership_schedule_auto_replace(m); /* auto-replace tries again at its next turn */
        op_free(op);
        return;
    }
    for (size_t i = 0; i < op->n; i++) {
        bool joined = hashspace_find(m->whs, &op->list[i]) >= 0;
        log_info("%s %s", joined ? "attach" : "detach", fmt(&op->list[i], buf));
        binlog_event(LOG_LVL_INFO, joined ? "server_attached" : "server_detached", BL_ADDR("addr", &op->list[i]));
    }
    if (op->client) reply_addrs(op->client, op->msgid, op->list, op->n);
    if (op->replace && op->n > 0) replace_start(m, false);
    op_free(op);
}

/* Propose the change on the current hash spaces, or answer that there is
 * nothing to change. */
static void propose(manager *m, change_op *op)
{
    hashspace *w = reconfigured(m, op);
    if (!w) {
        if (op->client) reply_addrs(op->client, op->msgid, NULL, 0);
        if (!op->client && !m->replacing && m->whs->clocktime != m->rhs->clocktime && op->replace)
            replace_start(m, false); /* nothing joined or left, but a replace may have been cut short */
        op_free(op);
        return;
    }
    if (!history_change(m, w, hashspace_ref(m->rhs), change_done, op)) {
        if (op->client) rpc_reply_error(op->client, op->msgid, "another membership change of this manager is being agreed; try again");
        op_free(op);
    }
}

static void ctl_change(manager *m, rpc_conn *c, uint32_t msgid, bool attach, bool replace)
{
    change_op *op = xcalloc(1, sizeof(*op));
    *op = (change_op){.client = c, .msgid = msgid, .attach = attach, .detach = !attach, .replace = replace};
    rpc_hold(c);
    propose(m, op);
}

void control_auto_replace(manager *m)
{
    if (!m->auto_replace) return;
    if (history_busy(m)) {
        membership_schedule_auto_replace(m); /* once the change being agreed is decided */
        return;
    }
    change_op *op = xcalloc(1, sizeof(*op));
    *op = (change_op){.attach = true, .detach = true, .replace = true, .keep_last_copies = true};
    propose(m, op);
}

/* ---- backup: every connected server copies its database ---- */

typedef struct backup_op {
    rpc_conn *client; /* held */
    uint32_t msgid;
    size_t n, waiting;
    net_addr *addrs;
    char **paths, **errors;
} backup_op;

typedef struct backup_ctx {
    backup_op *op;
    size_t i;
} backup_ctx;

static void backup_finish(backup_op *op)
{
    msgpack_packer *pk = rpc_reply_begin(op->client, op->msgid);
    msgpack_pack_array(pk, (uint32_t)op->n);
    for (size_t i = 0; i < op->n; i++) {
        msgpack_pack_array(pk, 3);
        rpc_pack_bytes(pk, op->addrs[i].id, op->addrs[i].len);
        if (op->paths[i]) rpc_pack_str(pk, op->paths[i]);
        else msgpack_pack_nil(pk);
        if (op->errors[i]) rpc_pack_str(pk, op->errors[i]);
        else msgpack_pack_nil(pk);
        free(op->paths[i]);
        free(op->errors[i]);
    }
    rpc_call_end(op->client);
    rpc_release(op->client);
    free(op->addrs);
    free(op->paths);
    free(op->errors);
    free(op);
}

static void backup_reply(void *arg, rpc_status st, const msgpack_object *result)
{
    backup_ctx *x = arg;
    backup_op *op = x->op;
    char buf[KUMO_ERRLEN];
    if (st == RPC_OK && result->type == MSGPACK_OBJECT_STR)
        op->paths[x->i] = strndup(result->via.str.ptr, result->via.str.size);
    else op->errors[x->i] = strdup(rpc_strerror(st == RPC_OK ? RPC_ERR_REMOTE : st, result, buf, sizeof(buf)));
    free(x);
    if (--op->waiting == 0) backup_finish(op);
}

static void ctl_backup(manager *m, rpc_conn *c, uint32_t msgid, const msgpack_object *params)
{
    const char *sfx;
    size_t len;
    if (!rpc_arg_bytes(params, 0, &sfx, &len) || len == 0) {
        rpc_reply_error(c, msgid, "empty suffix");
        return;
    }
    backup_op *op = calloc(1, sizeof(*op));
    if (op) {
        op->addrs = calloc(m->nservers + 1, sizeof(net_addr));
        op->paths = calloc(m->nservers + 1, sizeof(char *));
        op->errors = calloc(m->nservers + 1, sizeof(char *));
    }
    if (!op || !op->addrs || !op->paths || !op->errors) {
        if (op) {
            free(op->addrs);
            free(op->paths);
            free(op->errors);
        }
        free(op);
        rpc_reply_error(c, msgid, "out of memory");
        return;
    }
    op->client = c;
    op->msgid = msgid;
    rpc_hold(c);
    op->waiting = 1;
    for (size_t i = 0; i < m->nservers; i++) {
        mserver *ms = m->servers[i];
        if (!ms->conn) continue;
        backup_ctx *x = malloc(sizeof(*x));
        if (!x) continue;
        x->op = op;
        x->i = op->n;
        op->addrs[op->n++] = ms->addr;
        op->waiting++;
        msgpack_packer *pk = rpc_call_begin(ms->conn, SRV_BACKUP, 600.0, backup_reply, x);
        msgpack_pack_array(pk, 1);
        msgpack_pack_str(pk, len);
        msgpack_pack_str_body(pk, sfx, len);
        rpc_call_end(ms->conn);
    }
    log_info("backup: %zu servers", op->n);
    if (--op->waiting == 0) backup_finish(op);
}

bool control_handle(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    bool flag = true;
    switch (method) {
    case CTL_STATUS: ctl_status(m, c, msgid); return true;
    case CTL_ATTACH:
        rpc_arg_bool(params, 0, &flag);
        ctl_change(m, c, msgid, true, flag);
        return true;
    case CTL_DETACH:
        rpc_arg_bool(params, 0, &flag);
        ctl_change(m, c, msgid, false, flag);
        return true;
    case CTL_REPLACE: {
        flag = false;
        rpc_arg_bool(params, 0, &flag);
        uint64_t linked = 0;
        for (size_t i = 0; i < m->nservers; i++) linked += m->servers[i]->conn != NULL;
        replace_start(m, flag);
        msgpack_pack_uint64(rpc_reply_begin(c, msgid), linked);
        rpc_call_end(c);
        return true;
    }
    case CTL_BACKUP: ctl_backup(m, c, msgid, params); return true;
    case CTL_AUTO_REPLACE:
        if (!rpc_arg_bool(params, 0, &flag)) {
            rpc_reply_error(c, msgid, "bad params");
            return true;
        }
        m->auto_replace = flag;
        log_info("auto-replace %s", flag ? "enabled" : "disabled");
        if (flag) membership_schedule_auto_replace(m);
        rpc_reply_bool(c, msgid, flag);
        return true;
    default: return false;
    }
}

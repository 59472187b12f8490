/*
 * dispatch — which module answers each request on kumo-manager's cluster
 * port (-l): servers, gateways, the partner manager and tools alike. The
 * methods are in proto.h; the answers in docs/protocol.md §3.
 *
 * Kept out of membership.c, which owns the connections, so that the modules
 * form a tree: membership.c calls none of the modules that call it
 * (control, partner, replace); it reaches them through manager.hooks, which
 * main.c fills.
 *
 * Calls: partner, replace, membership, control. Thread rule: main loop.
 */
#include "manager.h"
#include "proto.h"

void dispatch_request(manager *m, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (partner_handle(m, c, msgid, method, params)) return;
    if (method == MGR_REPLACE_COPY_END || method == MGR_REPLACE_DELETE_END) {
        uint64_t ct;
        bool ok = true;
        if (!rpc_arg_uint(params, 0, &ct)) {
            rpc_reply_error(c, msgid, "bad params");
            return;
        }
        uint64_t phase = 0;
        rpc_arg_bool(params, 1, &ok);
        rpc_arg_uint(params, 2, &phase);
        replace_phase_end(m, c, method, ct, phase, ok);
        rpc_reply_bool(c, msgid, true);
        return;
    }
    if (membership_handle(m, c, msgid, method, params)) return;
    if (rpc_peer_role(c) == RPC_ROLE_TOOL && control_handle(m, c, msgid, method, params)) return;
    rpc_reply_error(c, msgid, "unknown method %u", method);
}

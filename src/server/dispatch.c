/*
 * dispatch — which module answers each request kumo-server receives, on any
 * of its connections: those it accepted (main.c adds its own few methods
 * and the latencies before calling here), its manager links and its peer
 * links (cluster.c calls here through server.dispatch). The methods are in
 * proto.h; the answers in docs/protocol.md §5.
 *
 * Kept out of the modules it calls so that they form a tree: cluster.c,
 * which the others call for peer connections and hash spaces, calls none
 * of them back.
 *
 * Calls: data, cluster, replace, stream, digest, witness. Thread rule: main loop.
 */
#include "digest.h"
#include "server.h"
#include "witness.h"

void dispatch_request(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    if (data_handle(s, c, msgid, method, params)) return;
    if (cluster_handle(s, c, msgid, method, params)) return;
    if (replace_handle(s, c, msgid, method, params)) return;
    if (stream_handle(s, c, msgid, method, params)) return;
    if (digest_handle(s, c, msgid, method, params)) return;
    if (witness_handle(s, c, msgid, method, params)) return;
    rpc_reply_error(c, msgid, "unknown method %u", method);
}

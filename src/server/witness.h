/*
 * witness — this server's vote on the next change of the membership
 * history: SRV_HS_PREPARE and SRV_HS_ACCEPT (witness.c, docs/architecture.md
 * §11.1).
 *
 * Calls: rpc, hashspace, store, log. Thread rule: main loop.
 */
#ifndef KUMO_SERVER_WITNESS_H
#define KUMO_SERVER_WITNESS_H

#include "server.h"

/* Answers SRV_HS_PREPARE / SRV_HS_ACCEPT; false for any other method. */
bool witness_handle(server *s, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params);
/* Takes up the vote kept in <db>.vote, if there is one (logs one that
 * cannot be read, and starts without it). */
void witness_start(server *s);
/* Drops the vote's hash spaces. */
void witness_stop(server *s);

#endif

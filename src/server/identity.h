/*
 * identity — which node a database is: the ring key it is placed by,
 * written beside it (docs/architecture.md §9.1).
 *
 * A server's place on the ring must follow its data, not its address: a
 * container recreated with its volume, a VM moved, a DHCP lease renewed
 * give the same database another address, and a cluster whose managers
 * restarted with no state rebuilds its ring from what the servers say they
 * are. So each database has a file beside it, "<database>.node", one line:
 *
 *   kumofs-node 1 addr 192.0.2.7:19800     placed by that address (0.4)
 *   kumofs-node 1 name cache-a             placed by the name (--node-name)
 *   kumofs-node 1 id 5f0c…(32 hex digits)  placed by a random 128-bit id
 *
 * A new database (no file) takes --node-name if given; else the -l address
 * if -l is given, so a cluster started with -l everywhere keeps kumofs
 * 0.4's placement exactly (docs/protocol.md §8); else, if it already holds records (written by
 * an older kumofs, placed by its address), the address it has now; else a
 * random id. Once written the file decides, and a start that contradicts it
 * is refused with a message naming the file: --node-name another name, or
 * -l another address for a database placed by its -l address (a swapped
 * volume). Without -l, an address-placed database that finds itself at
 * another address keeps its placement (the key stays the old address's
 * bytes) and says so.
 *
 * Thread rule: start-up only. Calls: net, ring (RING_KEY_MAX), log.
 */
#ifndef KUMO_SERVER_IDENTITY_H
#define KUMO_SERVER_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>

#include "kumo.h"
#include "net.h"
#include "ring.h"

#define IDENTITY_NAME_MAX 64 /* --node-name: 1 to 64 of [A-Za-z0-9._-] */

typedef enum { IDENTITY_ADDR,
               IDENTITY_NAME,
               IDENTITY_ID } identity_kind;

typedef struct node_identity {
    identity_kind kind;
    net_addr addr; /* IDENTITY_ADDR: the address it is placed by */
    uint8_t keylen;
    uint8_t key[RING_KEY_MAX];                          /* the ring key (for ADDR: addr's identity bytes) */
    char text[16 + IDENTITY_NAME_MAX + NET_ADDRSTRLEN]; /* "name cache-a", for logs and status */
    char path[4096];                                    /* the file */
} node_identity;

/* 0 if `name` is a valid --node-name, else -1 + err. */
int identity_check_name(const char *name, char *err);

/* Decide the identity of the database at db_path for a server at `self`
 * (-l given or found), reading or writing "<db_path>.node" as above.
 * 0, or -1 + err when the start must be refused or the file cannot be
 * read or written (err names the file). */
int identity_load(const char *db_path, const char *node_name, bool listen_given, const net_addr *self,
                  bool has_records, node_identity *out, char *err);

/* The key to announce in hellos and hash spaces: keylen 0 when it is
 * self's own address bytes (placed by address: the seed stays 0.4's). */
void identity_ring_key(const node_identity *id, const net_addr *self, uint8_t *keylen, uint8_t key[RING_KEY_MAX]);

#endif

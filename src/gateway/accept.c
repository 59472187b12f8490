/*
 * accept — a new client connection, on either listener: the first byte it
 * sends picks its protocol (text.c or binary.c), and with -Y it starts
 * unauthenticated in that protocol.
 *
 * Calls: client, text, binary. Thread rule: the worker that owns the
 * connection.
 */
#include <stdlib.h>
#include <unistd.h>

#include "client.h"
#include "memproto.h"
#include "memtext.h"

/* The first byte of a connection picks its protocol, as memcached does:
 * 0x80 (a binary request's magic) is binary, anything else is text. Under
 * -Y both start unauthenticated. */
static size_t negotiate(client *c, const char *buf, size_t len)
{
    bool bin = (unsigned char)buf[0] == MEMPROTO_REQ_MAGIC, auth = c->g->cfg->users != NULL;
    c->parse = bin ? (auth ? binary_auth_parse : binary_parse) : (auth ? text_auth_parse : text_parse);
    return c->parse(c, buf, len);
}

void gateway_accept(gateway *g, int fd)
{
    memtext_request *q = calloc(1, sizeof(*q));
    if (!q) {
        close(fd);
        return;
    }
    client_new(g, fd, negotiate, q);
}

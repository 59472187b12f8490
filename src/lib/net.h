/*
 * net — node addresses: parsing "host[:port]" / "[v6]:port" / "port",
 * the node identity bytes used for placement, text form, and listening
 * sockets.
 *
 * Node identity (docs/protocol.md §2.1): IPv4 = 6 bytes, port big-endian then the
 * address; IPv6 = 18 bytes, port big-endian then the 16 address bytes.
 * The identity is also the wire form of an address in every RPC.
 *
 * Thread rule: pure functions, except that resolution calls getaddrinfo
 * (blocking); call it at start-up or from the main thread only.
 * Calls: nothing in src/lib.
 */
#ifndef KUMO_NET_H
#define KUMO_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define NET_ID_V4 6
#define NET_ID_V6 18
#define NET_ID_MAX 18
#define NET_ADDRSTRLEN 64

typedef struct net_addr {
    uint8_t len;            /* NET_ID_V4 or NET_ID_V6; 0 = unset */
    uint8_t id[NET_ID_MAX]; /* port (BE) then address bytes */
} net_addr;

/* Parse a connectable address "host[:port]", "[v6]:port" or "host"
 * (default_port used when no port). Resolves names (IPv4 preferred).
 * "0.0.0.0"/"::" are rejected: a node must name an address others can reach. */
int net_parse(const char *text, uint16_t default_port, net_addr *out, char *err);
/* Parse a listen address "[addr:]port", "port" or "addr" (default_port);
 * a missing address means every interface (0.0.0.0). */
int net_parse_listen(const char *text, uint16_t default_port, net_addr *out, char *err);

uint16_t net_port(const net_addr *a);
void net_set_port(net_addr *a, uint16_t port);
bool net_equal(const net_addr *a, const net_addr *b);
/* Order used where the original compared dumps: memcmp of the identity. */
int net_compare(const net_addr *a, const net_addr *b);
/* From wire bytes (6 or 18); -1 if the length is wrong. */
int net_from_id(net_addr *out, const void *bytes, size_t len);

/* "1.2.3.4:19800" or "[::1]:19800"; returns buf. */
const char *net_format(const net_addr *a, char *buf, size_t len);

/* sockaddr for connect()/bind(). */
socklen_t net_sockaddr(const net_addr *a, struct sockaddr_storage *ss);
int net_from_sockaddr(net_addr *out, const struct sockaddr *sa);

/* Non-blocking listening TCP socket (SO_REUSEADDR, backlog 1024); -1 + err. */
int net_listen(const net_addr *a, char *err);
/* Listen where a node was told it is reached (-l), at `port`: on that
 * address when it is one of this host's, so two daemons on one host with
 * the same port on two addresses both start; else (NAT, a published port:
 * EADDRNOTAVAIL) on every interface, and *everywhere says so. */
int net_listen_at(const net_addr *a, uint16_t port, bool *everywhere, char *err);
/* Non-blocking connect in progress (TCP_NODELAY set); -1 + err. */
int net_connect(const net_addr *a, char *err);
/* Set TCP_NODELAY and O_NONBLOCK on an accepted socket. */
void net_tune(int fd);

#endif

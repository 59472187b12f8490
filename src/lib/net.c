/*
 * net — node addresses and sockets (see net.h).
 *
 * An address is kept in its identity form (port then address bytes, both
 * big-endian) because that is what placement hashes and what travels on the
 * wire; sockaddrs are made from it only at connect/bind time.
 *
 * Calls: libc resolver. Thread rule: pure except getaddrinfo (start-up).
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kumo.h"

static void set_v4(net_addr *a, const struct in_addr *in, uint16_t port)
{
    a->len = NET_ID_V4;
    memset(a->id, 0, sizeof(a->id));
    a->id[0] = (uint8_t)(port >> 8);
    a->id[1] = (uint8_t)port;
    memcpy(a->id + 2, in, 4);
}

static void set_v6(net_addr *a, const struct in6_addr *in, uint16_t port)
{
    a->len = NET_ID_V6;
    a->id[0] = (uint8_t)(port >> 8);
    a->id[1] = (uint8_t)port;
    memcpy(a->id + 2, in, 16);
}

uint16_t net_port(const net_addr *a) { return (uint16_t)(a->id[0] << 8 | a->id[1]); }

void net_set_port(net_addr *a, uint16_t port)
{
    a->id[0] = (uint8_t)(port >> 8);
    a->id[1] = (uint8_t)port;
}

bool net_equal(const net_addr *a, const net_addr *b)
{
    return a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

int net_compare(const net_addr *a, const net_addr *b)
{
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return memcmp(a->id, b->id, a->len);
}

int net_from_id(net_addr *out, const void *bytes, size_t len)
{
    if (len != NET_ID_V4 && len != NET_ID_V6) return -1;
    memset(out, 0, sizeof(*out));
    out->len = (uint8_t)len;
    memcpy(out->id, bytes, len);
    return 0;
}

const char *net_format(const net_addr *a, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (a->len == NET_ID_V4) {
        inet_ntop(AF_INET, a->id + 2, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, net_port(a));
    } else if (a->len == NET_ID_V6) {
        inet_ntop(AF_INET6, a->id + 2, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, net_port(a));
    } else {
        snprintf(buf, len, "(none)");
    }
    return buf;
}

socklen_t net_sockaddr(const net_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (a->len == NET_ID_V6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(net_port(a));
        memcpy(&s6->sin6_addr, a->id + 2, 16);
        return sizeof(*s6);
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(net_port(a));
    memcpy(&s4->sin_addr, a->id + 2, 4);
    return sizeof(*s4);
}

int net_from_sockaddr(net_addr *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        set_v4(out, &s4->sin_addr, ntohs(s4->sin_port));
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            struct in_addr in;
            memcpy(&in, s6->sin6_addr.s6_addr + 12, 4);
            set_v4(out, &in, ntohs(s6->sin6_port));
        } else {
            set_v6(out, &s6->sin6_addr, ntohs(s6->sin6_port));
        }
        return 0;
    }
    return -1;
}

/* Split "host:port", "[v6]:port", "host" or "port" (port_only_ok) into parts. */
static int split(const char *text, uint16_t default_port, bool port_only_ok, char *host,
                 size_t hostlen, uint16_t *port, char *err)
{
    const char *colon = NULL;
    const char *h = text;
    size_t hl;
    if (*text == '\0') return kumo_err(err, "empty address");
    if (*text == '[') {
        const char *end = strchr(text, ']');
        if (!end) return kumo_err(err, "'%s': missing ']'", text);
        h = text + 1;
        hl = (size_t)(end - h);
        if (end[1] == ':') colon = end + 1;
        else if (end[1] != '\0') return kumo_err(err, "'%s': junk after ']'", text);
    } else {
        colon = strrchr(text, ':');
        if (colon && strchr(text, ':') != colon) colon = NULL; /* bare IPv6 without brackets */
        hl = colon ? (size_t)(colon - text) : strlen(text);
    }
    if (hl >= hostlen) return kumo_err(err, "'%s': host name too long", text);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = default_port;
    const char *ptext = colon ? colon + 1 : NULL;
    if (!colon && port_only_ok && hl > 0 && strspn(host, "0123456789") == hl) {
        ptext = host; /* bare port */
    }
    if (ptext) {
        char *end;
        errno = 0;
        long p = strtol(ptext, &end, 10);
        if (*ptext == '\0' || *end != '\0' || errno || p < 1 || p > 65535)
            return kumo_err(err, "'%s': invalid port", text);
        *port = (uint16_t)p;
        if (ptext == host) host[0] = '\0';
    }
    return 0;
}

static int resolve(const char *text, const char *host, uint16_t port, bool passive, net_addr *out,
                   char *err)
{
    struct addrinfo hints, *res = NULL, *ai;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    if (passive) hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(host[0] ? host : NULL, NULL, &hints, &res);
    if (rc != 0) return kumo_err(err, "'%s': cannot resolve: %s", text, gai_strerror(rc));
    /* IPv4 first: placement of an IPv4 cluster must not depend on resolver order. */
    const struct addrinfo *pick = NULL;
    for (ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    if (!pick)
        for (ai = res; ai; ai = ai->ai_next)
            if (ai->ai_family == AF_INET6) {
                pick = ai;
                break;
            }
    if (!pick) {
        freeaddrinfo(res);
        return kumo_err(err, "'%s': no IPv4 or IPv6 address", text);
    }
    net_from_sockaddr(out, pick->ai_addr);
    net_set_port(out, port);
    freeaddrinfo(res);
    return 0;
}

int net_parse(const char *text, uint16_t default_port, net_addr *out, char *err)
{
    char host[256];
    uint16_t port;
    if (split(text, default_port, false, host, sizeof(host), &port, err) < 0) return -1;
    if (host[0] == '\0') return kumo_err(err, "'%s': missing host", text);
    if (resolve(text, host, port, false, out, err) < 0) return -1;
    static const uint8_t zero[16];
    if (memcmp(out->id + 2, zero, out->len - 2) == 0)
        return kumo_err(err, "'%s': a node address must be one other hosts can connect to", text);
    return 0;
}

int net_parse_listen(const char *text, uint16_t default_port, net_addr *out, char *err)
{
    char host[256];
    uint16_t port;
    if (split(text, default_port, true, host, sizeof(host), &port, err) < 0) return -1;
    if (host[0] == '\0') {
        struct in_addr any = {.s_addr = htonl(INADDR_ANY)};
        set_v4(out, &any, port);
        return 0;
    }
    return resolve(text, host, port, true, out, err);
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void net_tune(int fd)
{
    int one = 1;
    set_nonblock(fd);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* The socket, or -1 with *e = errno. */
static int listen_fd(const net_addr *a, int *e)
{
    struct sockaddr_storage ss;
    socklen_t sl = net_sockaddr(a, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *e = errno;
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 1024) < 0 || set_nonblock(fd) < 0) {
        *e = errno;
        close(fd);
        return -1;
    }
    return fd;
}

int net_listen(const net_addr *a, char *err)
{
    char buf[NET_ADDRSTRLEN];
    int e = 0, fd = listen_fd(a, &e);
    if (fd < 0) return kumo_err(err, "cannot listen on %s: %s", net_format(a, buf, sizeof(buf)), strerror(e));
    return fd;
}

int net_listen_at(const net_addr *a, uint16_t port, bool *everywhere, char *err)
{
    char buf[NET_ADDRSTRLEN];
    net_addr at = *a, any = *a;
    net_set_port(&at, port);
    net_set_port(&any, port);
    memset(any.id + 2, 0, any.len > 2 ? any.len - 2u : 0u);
    int e = 0, fd = listen_fd(&at, &e);
    *everywhere = false;
    if (fd >= 0) return fd;
    if (e != EADDRNOTAVAIL)
        return kumo_err(err, "cannot listen on %s: %s", net_format(&at, buf, sizeof(buf)), strerror(e));
    *everywhere = true;
    if ((fd = listen_fd(&any, &e)) < 0)
        return kumo_err(err, "cannot listen on %s: %s", net_format(&any, buf, sizeof(buf)), strerror(e));
    return fd;
}

int net_connect(const net_addr *a, char *err)
{
    struct sockaddr_storage ss;
    socklen_t sl = net_sockaddr(a, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return kumo_err(err, "socket: %s", strerror(errno));
    net_tune(fd);
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        int e = errno;
        char buf[NET_ADDRSTRLEN];
        close(fd);
        return kumo_err(err, "connect %s: %s", net_format(a, buf, sizeof(buf)), strerror(e));
    }
    return fd;
}

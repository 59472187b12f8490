/*
 * tool — blocking RPC for the admin tools (see tool.h).
 */
#include "tool.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "links.h"
#include "proto.h"
#include "rpc.h"

/* Set once by tool_cluster_key before any connection; NULL = no key. */
static auth_key *cluster_key;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int wait_fd(int fd, short ev, double deadline)
{
    for (;;) {
        double left = deadline - now_mono();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = ev};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc < 0 && errno == EINTR) continue;
        return rc;
    }
}

static int send_all(tool_conn *t, const char *p, size_t n, double deadline, char *err)
{
    while (n > 0) {
        ssize_t w = send(t->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return kumo_err(err, "%s: %s", t->name, strerror(errno));
        if (wait_fd(t->fd, POLLOUT, deadline) <= 0) return kumo_err(err, "%s: timed out", t->name);
    }
    return 0;
}

/* The next message from the peer, whole; -1 + err on a transport error,
 * a timeout or garbage. */
static int next_frame(tool_conn *t, msgpack_unpacked *out, double deadline, char *err)
{
    for (;;) {
        msgpack_unpack_return r = msgpack_unpacker_next(&t->up, out);
        if (r == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *o = &out->data;
            if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1 ||
                o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return kumo_err(err, "%s: garbage reply", t->name);
            return 0;
        }
        if (r != MSGPACK_UNPACK_CONTINUE) return kumo_err(err, "%s: malformed reply", t->name);
        if (msgpack_unpacker_message_size(&t->up) > RPC_MAX_FRAME) return kumo_err(err, "%s: reply too large", t->name);
        if (!msgpack_unpacker_reserve_buffer(&t->up, 64 * 1024)) return kumo_err(err, "out of memory");
        ssize_t n = recv(t->fd, msgpack_unpacker_buffer(&t->up), msgpack_unpacker_buffer_capacity(&t->up), 0);
        if (n == 0) return kumo_err(err, "%s: connection closed", t->name);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) return kumo_err(err, "%s: %s", t->name, strerror(errno));
            if (wait_fd(t->fd, POLLIN, deadline) <= 0) return kumo_err(err, "%s: timed out", t->name);
            continue;
        }
        msgpack_unpacker_buffer_consumed(&t->up, (size_t)n);
    }
}

/* The nonce of a hello (rpc.h), if it carries one. */
static bool hello_nonce(const msgpack_object *o, const char **p, size_t *len)
{
    if (o->via.array.ptr[0].via.u64 != 2 || o->via.array.size < 7) return false;
    const msgpack_object *n = &o->via.array.ptr[6];
    if (n->type != MSGPACK_OBJECT_BIN && n->type != MSGPACK_OBJECT_STR) return false;
    *p = n->via.bin.ptr; /* bin and str share the layout */
    *len = n->via.bin.size;
    return true;
}

static int send_packed(tool_conn *t, msgpack_sbuffer *sb, double deadline, char *err)
{
    int rc = send_all(t, sb->data, sb->size, deadline, err);
    msgpack_sbuffer_destroy(sb);
    return rc;
}

/* The key handshake, as a connecting peer: the daemon's hello gives its
 * nonce, we prove ours, and its proof must check out. */
static int handshake(tool_conn *t, const uint8_t nonce[AUTH_NONCE_LEN], double deadline, char *err)
{
    msgpack_unpacked m;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint8_t peer_nonce[AUTH_NONCE_LEN], proof[AUTH_PROOF_LEN];
    const char *p;
    size_t len;
    uint64_t role;
    int rc = -1;
    msgpack_unpacked_init(&m);
    if (next_frame(t, &m, deadline, err) < 0) goto out;
    if (m.data.via.array.ptr[0].via.u64 != 2 || m.data.via.array.size < 5 ||
        m.data.via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        kumo_err(err, "%s: no hello from the peer", t->name);
        goto out;
    }
    role = m.data.via.array.ptr[1].via.u64;
    if (!hello_nonce(&m.data, &p, &len) || len != AUTH_NONCE_LEN) {
        kumo_err(err, "%s: the daemon has no cluster key, this tool was given one (--cluster-key-file)", t->name);
        goto out;
    }
    memcpy(peer_nonce, p, AUTH_NONCE_LEN);
    auth_proof(cluster_key, true, RPC_ROLE_TOOL, peer_nonce, nonce, proof);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint8(&pk, 3);
    rpc_pack_bytes(&pk, proof, sizeof(proof));
    if (send_packed(t, &sb, deadline, err) < 0) goto out;
    if (next_frame(t, &m, deadline, err) < 0) goto out;
    if (m.data.via.array.ptr[0].via.u64 != 3 || m.data.via.array.size != 2 ||
        m.data.via.array.ptr[1].type != MSGPACK_OBJECT_BIN) {
        kumo_err(err, "%s: no cluster key proof from the daemon", t->name);
        goto out;
    }
    if (!auth_verify(cluster_key, false, (uint8_t)role, nonce, peer_nonce, m.data.via.array.ptr[1].via.bin.ptr,
                     m.data.via.array.ptr[1].via.bin.size)) {
        kumo_err(err, "%s: the daemon has another cluster key (not the same --cluster-key-file)", t->name);
        goto out;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&m);
    return rc;
}

static int send_hello(tool_conn *t, double deadline, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint8_t nonce[AUTH_NONCE_LEN];
    if (cluster_key && auth_nonce(nonce, err) < 0) return -1;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, cluster_key ? 7 : 6);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_uint8(&pk, RPC_ROLE_TOOL);
    msgpack_pack_bin(&pk, 0);
    msgpack_pack_uint32(&pk, RPC_VERSION);
    msgpack_pack_uint64(&pk, 0); /* clock */
    msgpack_pack_uint64(&pk, 0); /* incarnation: tools have none */
    if (cluster_key) rpc_pack_bytes(&pk, nonce, sizeof(nonce));
    if (send_packed(t, &sb, deadline, err) < 0) return -1;
    return cluster_key ? handshake(t, nonce, deadline, err) : 0;
}

int tool_cluster_key(const char *prog, void (*usage)(FILE *out), int *argc, char **argv)
{
    static const char opt[] = "--cluster-key-file";
    const char *path = getenv(AUTH_ENV);
    int n = 1;
    bool rest = false;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) rest = true;
        if (!rest && strncmp(a, opt, sizeof(opt) - 1) == 0 && a[sizeof(opt) - 1] == '=') {
            path = a + sizeof(opt);
        } else if (!rest && strcmp(a, opt) == 0) {
            if (i + 1 >= *argc) return tool_usage_error(prog, usage, "option '%s' needs a value", opt);
            path = argv[++i];
        } else {
            argv[n++] = argv[i];
        }
    }
    *argc = n;
    argv[n] = NULL;
    if (!path || !*path) return 0;
    char err[KUMO_ERRLEN];
    if (!(cluster_key = auth_key_load(path, err))) return tool_usage_error(prog, usage, "%s", err);
    return 0;
}

int tool_connect_addr(tool_conn *t, const net_addr *addr, double timeout, char *err)
{
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    t->addr = *addr;
    t->timeout = timeout;
    t->next_msgid = 1;
    net_format(addr, t->name, sizeof(t->name));
    if (!msgpack_unpacker_init(&t->up, 64 * 1024)) return kumo_err(err, "out of memory");
    t->up_ready = true;
    double deadline = now_mono() + timeout;
    t->fd = net_connect(addr, err);
    if (t->fd < 0) return -1;
    if (wait_fd(t->fd, POLLOUT, deadline) <= 0) return kumo_err(err, "%s: connect timed out", t->name);
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) return kumo_err(err, "%s: %s", t->name, strerror(soerr));
    return send_hello(t, deadline, err);
}

int tool_connect(tool_conn *t, const char *addr, uint16_t default_port, double timeout, char *err)
{
    net_addr a[LINKS_MAX];
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    /* A name may stand for several managers (A records, SRV): the first
     * that answers will do. */
    int n = links_resolve(addr, default_port, a, LINKS_MAX, err);
    if (n <= 0) return n == 0 ? kumo_err(err, "'%s': no address", addr) : -1;
    for (int i = 0; i < n; i++) {
        if (i > 0) tool_close(t);
        if (tool_connect_addr(t, &a[i], timeout, err) == 0) return 0;
    }
    return -1;
}

void tool_close(tool_conn *t)
{
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
    if (t->up_ready) msgpack_unpacker_destroy(&t->up);
    t->up_ready = false;
}

int tool_call(tool_conn *t, uint32_t method, const msgpack_sbuffer *params, msgpack_unpacked *out, char *err)
{
    double deadline = now_mono() + t->timeout;
    uint32_t id = t->next_msgid++;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, id);
    msgpack_pack_uint32(&pk, method);
    msgpack_sbuffer_write(&sb, params->data, params->size);
    if (send_packed(t, &sb, deadline, err) < 0) return -1;
    for (;;) {
        const char *np;
        size_t nlen;
        if (next_frame(t, out, deadline, err) < 0) return -1;
        const msgpack_object *o = &out->data;
        const msgpack_object *a = o->via.array.ptr;
        if (!cluster_key && hello_nonce(o, &np, &nlen))
            return kumo_err(err, "%s: the daemon requires the cluster key (--cluster-key-file or $%s)", t->name,
                            AUTH_ENV);
        if (a[0].via.u64 != 1) continue; /* the peer's hello, or a push meant for others */
        if (o->via.array.size != 4 || a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return kumo_err(err, "%s: garbage reply", t->name);
        if (a[1].via.u64 != id) continue;
        if (a[2].type != MSGPACK_OBJECT_NIL) {
            char buf[KUMO_ERRLEN];
            return kumo_err(err, "%s: %s", t->name, rpc_strerror(RPC_ERR_REMOTE, &a[2], buf, sizeof(buf)));
        }
        out->data = a[3];
        return 0;
    }
}

int tool_status(tool_conn *t, int what, msgpack_unpacked *out, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint32(&pk, (uint32_t)what);
    int rc = tool_call(t, SRV_STATUS, &sb, out, err);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int tool_status_uint(tool_conn *t, int what, uint64_t *out, char *err)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = tool_status(t, what, &res, err);
    if (rc == 0 && res.data.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        rc = kumo_err(err, "%s: unexpected answer (not a number)", t->name);
    if (rc == 0) *out = res.data.via.u64;
    msgpack_unpacked_destroy(&res);
    return rc;
}

hashspace *tool_manager_hs(tool_conn *t, bool rhs, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked res;
    hashspace *hs = NULL;
    char why[KUMO_ERRLEN];
    uint32_t at = rhs ? 2 : 0; /* CTL_STATUS: [whs, newcomers, rhs, ...] */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&res);
    msgpack_pack_array(&pk, 0);
    if (tool_call(t, CTL_STATUS, &sb, &res, err) == 0) {
        if (res.data.type != MSGPACK_OBJECT_ARRAY || res.data.via.array.size <= at)
            kumo_err(err, "%s: unexpected answer to the status request", t->name);
        else if (!(hs = hashspace_unpack(&res.data.via.array.ptr[at], why)))
            kumo_err(err, "%s: bad hash space: %s", t->name, why);
    }
    msgpack_unpacked_destroy(&res);
    msgpack_sbuffer_destroy(&sb);
    return hs;
}

const char *tool_replace_word(uint64_t flags)
{
    if (flags & 0x01) return "inactive";
    if (flags & 0x10) return "CatchUp";
    if (flags & 0x04) return "Copying";
    if (flags & 0x08) return "Deleting";
    if (flags & 0x02) return "WAIT";
    return "ready";
}

int tool_usage_error(const char *prog, void (*usage)(FILE *out), const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    usage(stderr);
    return TOOL_EX_USAGE;
}

void tool_print_clocktime(FILE *out, uint64_t ct)
{
    time_t sec = (time_t)clock_seconds(ct);
    struct tm tm;
    char buf[64];
    localtime_r(&sec, &tm);
    strftime(buf, sizeof(buf), "%a %b %d %H:%M:%S %z %Y", &tm);
    fprintf(out, "  %s clock %u", buf, clock_counter(ct));
}

void tool_print_hashspace(FILE *out, const hashspace *hs, const char *nodes_title)
{
    char buf[NET_ADDRSTRLEN];
    fprintf(out, "hash space timestamp:\n");
    tool_print_clocktime(out, hs->clocktime);
    fprintf(out, "\n%s:\n", nodes_title);
    for (size_t i = 0; i < hs->ring.nnodes; i++)
        fprintf(out, "  %s (%s)\n", net_format(&hs->ring.nodes[i].addr, buf, sizeof(buf)),
                !hs->ring.nodes[i].active ? "fault" : hs->ring.nodes[i].catchup ? "catching up" : "active");
}

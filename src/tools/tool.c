/*
 * tool — blocking RPC for the admin tools (see tool.h).
 */
#include "tool.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
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
/* Set once by tool_more_managers: the -p names. */
static const char *more_managers[TOOL_MAX_MANAGERS];
static size_t nmore_managers;

static int wait_fd(int fd, short ev, double deadline)
{
    for (;;) {
        double left = deadline - clock_mono();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = ev};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc < 0 && errno == EINTR) continue;
        return rc;
    }
}

/* Every daemon says hello at once: a port that has not is no kumofs port. */
static const char *no_hello(const tool_conn *t)
{
    return t->peer_role < 0 ? " before any kumofs hello (a hung daemon, or not a manager's or server's port:"
                              " memcached, stream?)"
                            : "";
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
            return kumo_err(err, "%s: %s%s", t->name, strerror(errno), no_hello(t));
        if (wait_fd(t->fd, POLLOUT, deadline) <= 0) return kumo_err(err, "%s: timed out%s", t->name, no_hello(t));
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
        if (n == 0) return kumo_err(err, "%s: connection closed%s", t->name, no_hello(t));
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return kumo_err(err, "%s: %s%s", t->name, strerror(errno), no_hello(t));
            if (wait_fd(t->fd, POLLIN, deadline) <= 0) return kumo_err(err, "%s: timed out%s", t->name, no_hello(t));
            continue;
        }
        msgpack_unpacker_buffer_consumed(&t->up, (size_t)n);
    }
}

static const char *role_name(int role)
{
    switch (role) {
    case RPC_ROLE_MANAGER: return "kumo-manager";
    case RPC_ROLE_SERVER: return "kumo-server";
    case RPC_ROLE_GATEWAY: return "kumo-gateway";
    default: return "tool";
    }
}

/* -1 + err when the peer said hello as another kind of daemon than meant. */
static int role_ok(tool_conn *t, char *err)
{
    if (t->want_role < 0 || t->peer_role < 0 || t->peer_role == t->want_role) return 0;
    return kumo_err(err, "%s is a %s, not a %s", t->name, role_name(t->peer_role), role_name(t->want_role));
}

/* Note the role of a hello, then role_ok. */
static int check_role(tool_conn *t, const msgpack_object *hello, char *err)
{
    rpc_hello h;
    if (rpc_hello_parse(hello, &h)) t->peer_role = (int)h.role;
    return role_ok(t, err);
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
    uint8_t peer_nonce[AUTH_NONCE_LEN];
    rpc_hello h;
    int rc = -1;
    msgpack_unpacked_init(&m);
    if (next_frame(t, &m, deadline, err) < 0) goto out;
    if (!rpc_hello_parse(&m.data, &h)) {
        kumo_err(err, "%s: no hello from the peer", t->name);
        goto out;
    }
    if (check_role(t, &m.data, err) < 0) goto out;
    if (!h.nonce || h.noncelen != AUTH_NONCE_LEN) {
        kumo_err(err, "%s: the daemon has no cluster key, this tool was given one (--cluster-key-file)", t->name);
        goto out;
    }
    memcpy(peer_nonce, h.nonce, AUTH_NONCE_LEN);
    uint8_t role = (uint8_t)h.role;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rpc_pack_proof(&pk, cluster_key, true, RPC_ROLE_TOOL, peer_nonce, nonce);
    if (send_packed(t, &sb, deadline, err) < 0) goto out;
    if (next_frame(t, &m, deadline, err) < 0) goto out;
    if (m.data.via.array.ptr[0].via.u64 != RPC_MSG_PROOF || m.data.via.array.size != 2 ||
        m.data.via.array.ptr[1].type != MSGPACK_OBJECT_BIN) {
        kumo_err(err, "%s: no cluster key proof from the daemon", t->name);
        goto out;
    }
    if (!auth_verify(cluster_key, false, role, nonce, peer_nonce, m.data.via.array.ptr[1].via.bin.ptr,
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
    const rpc_self self = {.role = RPC_ROLE_TOOL}; /* no address, clock or incarnation */
    if (cluster_key && auth_nonce(nonce, err) < 0) return -1;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rpc_pack_hello(&pk, &self, 0, cluster_key ? nonce : NULL);
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

int tool_connect_addr(tool_conn *t, const net_addr *addr, int want_role, double timeout, char *err)
{
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    t->want_role = want_role;
    t->peer_role = -1;
    t->addr = *addr;
    t->timeout = timeout;
    t->next_msgid = 1;
    net_format(addr, t->name, sizeof(t->name));
    if (!msgpack_unpacker_init(&t->up, 64 * 1024)) return kumo_err(err, "out of memory");
    t->up_ready = true;
    double deadline = clock_mono() + timeout;
    t->fd = net_connect(addr, err);
    if (t->fd < 0) return -1;
    if (wait_fd(t->fd, POLLOUT, deadline) <= 0) return kumo_err(err, "%s: connect timed out", t->name);
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) return kumo_err(err, "%s: %s", t->name, strerror(soerr));
    return send_hello(t, deadline, err);
}

int tool_more_managers(const char *prog, void (*usage)(FILE *out), int *argc, char **argv, size_t *count)
{
    int n = 1;
    bool rest = false;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i], *name = NULL;
        if (strcmp(a, "--") == 0) rest = true;
        if (!rest && strncmp(a, "-p=", 3) == 0) {
            name = a + 3;
        } else if (!rest && strcmp(a, "-p") == 0) {
            if (i + 1 >= *argc) return tool_usage_error(prog, usage, "option '%s' needs a value", a);
            name = argv[++i];
        } else {
            argv[n++] = argv[i];
            continue;
        }
        if (nmore_managers == TOOL_MAX_MANAGERS) return tool_usage_error(prog, usage, "too many managers (-p %s)", name);
        more_managers[nmore_managers++] = name;
    }
    *argc = n;
    argv[n] = NULL;
    *count = nmore_managers;
    return 0;
}

/* Every address one name stands for (A records, SRV), the first that
 * answers. */
static int connect_name(tool_conn *t, const char *name, uint16_t default_port, int role, double timeout, char *err)
{
    net_addr a[LINKS_MAX];
    int n = links_resolve(name, default_port, a, LINKS_MAX, err);
    if (n <= 0) return n == 0 ? kumo_err(err, "'%s': no address", name) : -1;
    for (int i = 0; i < n; i++) {
        if (i > 0) tool_close(t);
        if (tool_connect_addr(t, &a[i], role, timeout, err) == 0) return 0;
    }
    return -1;
}

int tool_connect(tool_conn *t, const char *addr, uint16_t default_port, double timeout, char *err)
{
    memset(t, 0, sizeof(*t));
    t->fd = -1;
    if (default_port == KUMO_SERVER_PORT) return connect_name(t, addr, default_port, RPC_ROLE_SERVER, timeout, err);
    /* Managers: each comma-separated name, then the -p ones. */
    const char *names[TOOL_MAX_MANAGERS * 2 + 1];
    size_t n = 0;
    char *list = strdup(addr), *save = NULL;
    if (!list) return kumo_err(err, "out of memory");
    for (char *tok = strtok_r(list, ",", &save); tok && n < TOOL_MAX_MANAGERS; tok = strtok_r(NULL, ",", &save))
        names[n++] = tok;
    for (size_t i = 0; i < nmore_managers; i++) names[n++] = more_managers[i];
    char why[KUMO_ERRLEN] = "";
    int rc = n == 0 ? kumo_err(err, "'%s': no manager named", addr) : -1;
    for (size_t i = 0; i < n && rc < 0; i++) {
        if (i > 0) tool_close(t);
        rc = connect_name(t, names[i], default_port, RPC_ROLE_MANAGER, timeout, err);
        if (rc < 0 && n > 1) { /* say why each one failed */
            size_t used = strlen(why);
            snprintf(why + used, sizeof(why) - used, "%s%s", used ? "; " : "", err);
        }
    }
    if (rc < 0 && n > 1) memcpy(err, why, sizeof(why));
    free(list);
    return rc;
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
    double deadline = clock_mono() + t->timeout;
    uint32_t id = t->next_msgid++;
    if (role_ok(t, err) < 0) return -1;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, RPC_MSG_REQUEST);
    msgpack_pack_uint32(&pk, id);
    msgpack_pack_uint32(&pk, method);
    msgpack_sbuffer_write(&sb, params->data, params->size);
    if (send_packed(t, &sb, deadline, err) < 0) return -1;
    for (;;) {
        rpc_hello h;
        if (next_frame(t, out, deadline, err) < 0) return -1;
        const msgpack_object *o = &out->data;
        const msgpack_object *a = o->via.array.ptr;
        if (a[0].via.u64 == RPC_MSG_HELLO && check_role(t, o, err) < 0) return -1;
        if (!cluster_key && rpc_hello_parse(o, &h) && h.nonce)
            return kumo_err(err, "%s: the daemon requires the cluster key (--cluster-key-file or $%s)", t->name,
                            AUTH_ENV);
        if (a[0].via.u64 != RPC_MSG_RESPONSE) continue; /* the peer's hello, or a push meant for others */
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

static void cluster_clear(tool_cluster *c)
{
    memset(c, 0, sizeof(*c));
    c->auto_replace = -1;
}

void tool_cluster_free(tool_cluster *c)
{
    hashspace_unref(c->whs);
    hashspace_unref(c->rhs);
    free(c->newcomers);
    cluster_clear(c);
}

static const msgpack_object *arg_at(const msgpack_object *o, uint32_t i)
{
    return o->type == MSGPACK_OBJECT_ARRAY && i < o->via.array.size ? &o->via.array.ptr[i] : NULL;
}

static bool arg_bool(const msgpack_object *o) { return o && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean; }

/* The optional tail of a CTL_STATUS answer: older managers stop earlier. */
static void cluster_tail(tool_cluster *c, const msgpack_object *r)
{
    const msgpack_object *rp = arg_at(r, 3), *phase = arg_at(rp, 1), *count = arg_at(rp, 2);
    if (arg_bool(arg_at(rp, 0)) && phase && phase->type == MSGPACK_OBJECT_STR && count &&
        count->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        snprintf(c->phase, sizeof(c->phase), "%.*s", (int)phase->via.str.size, phase->via.str.ptr);
        c->phase_servers = count->via.u64;
    }
    const msgpack_object *ar = arg_at(r, 4);
    if (ar && ar->type == MSGPACK_OBJECT_BOOLEAN) c->auto_replace = ar->via.boolean;
    const msgpack_object *pa = arg_at(arg_at(r, 5), 0);
    if (pa && pa->type == MSGPACK_OBJECT_BIN) {
        c->has_partner = true;
        if (pa->via.bin.size > 0 && net_from_id(&c->partner, pa->via.bin.ptr, pa->via.bin.size) < 0)
            c->partner.len = 0;
        c->partner_linked = arg_bool(arg_at(arg_at(r, 5), 1));
    }
}

int tool_cluster_get(tool_conn *t, tool_cluster *out, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked res;
    tool_cluster c;
    char why[KUMO_ERRLEN];
    int rc = -1;
    cluster_clear(&c);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&res);
    msgpack_pack_array(&pk, 0);
    if (tool_call(t, CTL_STATUS, &sb, &res, err) < 0) goto out;
    const msgpack_object *r = &res.data, *nc = arg_at(r, 1);
    if (!nc || nc->type != MSGPACK_OBJECT_ARRAY || !arg_at(r, 2)) {
        kumo_err(err, "%s: unexpected answer to the status request", t->name);
        goto out;
    }
    if (!(c.whs = hashspace_unpack(arg_at(r, 0), why)) || !(c.rhs = hashspace_unpack(arg_at(r, 2), why))) {
        kumo_err(err, "%s: bad hash space: %s", t->name, why);
        goto out;
    }
    c.newcomers = calloc(nc->via.array.size + 1, sizeof(net_addr));
    if (!c.newcomers) {
        kumo_err(err, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < nc->via.array.size; i++) {
        const msgpack_object *o = &nc->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_BIN && net_from_id(&c.newcomers[c.nnewcomers], o->via.bin.ptr, o->via.bin.size) == 0)
            c.nnewcomers++;
    }
    cluster_tail(&c, r);
    rc = 0;
out:
    if (rc == 0) *out = c;
    else tool_cluster_free(&c);
    msgpack_unpacked_destroy(&res);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

const char *tool_health_word(int verdict)
{
    return verdict == TOOL_HEALTH_OK ? "ok" : verdict == TOOL_HEALTH_DEGRADED ? "degraded"
                                                                              : "down";
}

static void health_add(tool_health *h, int verdict, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void health_add(tool_health *h, int verdict, const char *fmt, ...)
{
    va_list ap;
    if (verdict > h->verdict) h->verdict = verdict;
    if (h->n == TOOL_HEALTH_MAXWHY) return;
    va_start(ap, fmt);
    vsnprintf(h->why[h->n++], sizeof(h->why[0]), fmt, ap);
    va_end(ap);
}

/* Ranges of whs/rhs without a live in-sync owner to coordinate writes. */
static size_t orphan_ranges(const hashspace *whs, const hashspace *rhs)
{
    size_t n = 0;
    for (size_t i = 0; i < whs->ring.nvnodes; i++)
        n += hashspace_coordinator(whs, rhs, whs->ring.vnodes[i].hash) == NULL;
    for (size_t i = 0; i < rhs->ring.nvnodes; i++)
        n += hashspace_coordinator(whs, rhs, rhs->ring.vnodes[i].hash) == NULL;
    return n;
}

static bool same_hs(const hashspace *a, const hashspace *b)
{
    return a->clocktime == b->clocktime && hashspace_same_nodes(a, b);
}

/* A health check must end within a container's probe timeout (5 s in the
 * image) even when the partner hangs: it gets this long. */
#define PARTNER_TIMEOUT 2.0

/* Whether the partner holds the same hash spaces as *c; "" or why not in
 * `why` (the partner's answer, or the error reaching it). */
static bool partner_agrees(tool_conn *t, tool_cluster *c, char *why)
{
    for (int attempt = 0;; attempt++) {
        tool_conn p;
        tool_cluster pc;
        char err[KUMO_ERRLEN], ours[CLOCK_FORMAT_LEN], theirs[CLOCK_FORMAT_LEN];
        double timeout = t->timeout < PARTNER_TIMEOUT ? t->timeout : PARTNER_TIMEOUT;
        int rc = tool_connect_addr(&p, &c->partner, RPC_ROLE_MANAGER, timeout, err) < 0 ? -1 : tool_cluster_get(&p, &pc, err);
        tool_close(&p);
        if (rc < 0) {
            snprintf(why, TOOL_HEALTH_LINE, "the partner manager does not answer: %s", err);
            return false;
        }
        bool same = same_hs(c->whs, pc.whs) && same_hs(c->rhs, pc.rhs);
        if (!same) {
            clock_format(c->whs->clocktime, ours);
            clock_format(pc.whs->clocktime, theirs);
            snprintf(why, TOOL_HEALTH_LINE, "the managers disagree: %s holds whs %s, %s holds whs %s%s", t->name, ours,
                     p.name, theirs, c->whs->clocktime == pc.whs->clocktime ? " (rhs or nodes differ)" : "");
        }
        tool_cluster_free(&pc);
        if (same || attempt == 1) return same;
        /* A change may be on its way from one manager to the other. */
        struct timespec second = {1, 0};
        nanosleep(&second, NULL);
        tool_cluster fresh;
        if (tool_cluster_get(t, &fresh, err) == 0) {
            tool_cluster_free(c);
            *c = fresh;
        }
    }
}

void tool_cluster_health(tool_conn *t, tool_cluster *c, tool_health *h)
{
    char buf[NET_ADDRSTRLEN], why[TOOL_HEALTH_LINE];
    memset(h, 0, sizeof(*h));
    if (c->has_partner && c->partner.len > 0 && c->partner_linked && !partner_agrees(t, c, why))
        health_add(h, TOOL_HEALTH_DEGRADED, "%s", why);
    else if (c->has_partner && c->partner.len == 0)
        health_add(h, TOOL_HEALTH_DEGRADED, "the partner manager's name (-p) does not resolve");
    else if (c->has_partner && !c->partner_linked)
        health_add(h, TOOL_HEALTH_DEGRADED, "the partner manager %s is not linked to %s",
                   net_format(&c->partner, buf, sizeof(buf)), t->name);
    if (hashspace_blank(c->whs)) health_add(h, TOOL_HEALTH_DOWN, "no server is attached");
    for (size_t i = 0; i < c->whs->ring.nnodes; i++)
        if (!c->whs->ring.nodes[i].active)
            health_add(h, TOOL_HEALTH_DEGRADED, "server %s is down (fault)",
                       net_format(&c->whs->ring.nodes[i].addr, buf, sizeof(buf)));
    size_t orphans = hashspace_blank(c->whs) ? 0 : orphan_ranges(c->whs, c->rhs);
    if (orphans > 0)
        health_add(h, TOOL_HEALTH_DOWN, "%zu ranges have no live in-sync owner: their keys can be neither read nor written",
                   orphans);
    if (strcmp(c->phase, "catch-up blocked") == 0)
        health_add(h, TOOL_HEALTH_DEGRADED,
                   "catch-up blocked: %" PRIu64 " servers wait for an in-sync copy held only by a fault server",
                   c->phase_servers);
    else if (strcmp(c->phase, "retry") == 0)
        health_add(h, TOOL_HEALTH_DEGRADED, "replace stuck: a copy failed and is being retried (%" PRIu64 " servers)",
                   c->phase_servers);
}

hashspace *tool_manager_hs(tool_conn *t, bool rhs, char *err)
{
    tool_cluster c;
    if (tool_cluster_get(t, &c, err) < 0) return NULL;
    hashspace *hs = hashspace_ref(rhs ? c.rhs : c.whs);
    tool_cluster_free(&c);
    return hs;
}

int tool_replace_progress(tool_conn *t, tool_progress *out, char *err)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = tool_status(t, ST_REPLACE_PROGRESS, &res, err);
    const msgpack_object *o = &res.data;
    if (rc == 0 && o->type != MSGPACK_OBJECT_MAP) rc = kumo_err(err, "%s: unexpected answer (not a map)", t->name);
    if (rc == 0) {
        memset(out, 0, sizeof(*out));
        snprintf(out->phase, sizeof(out->phase), "idle");
        snprintf(out->backup_phase, sizeof(out->backup_phase), "idle");
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
            if (k->type != MSGPACK_OBJECT_STR) continue;
            static const struct {
                const char *name;
                size_t off;
            } u[] = {{"total", offsetof(tool_progress, total)},
                     {"walked", offsetof(tool_progress, walked)},
                     {"queued", offsetof(tool_progress, queued)},
                     {"sent", offsetof(tool_progress, sent)},
                     {"sent_bytes", offsetof(tool_progress, sent_bytes)},
                     {"backup_total", offsetof(tool_progress, backup_total)},
                     {"backup_walked", offsetof(tool_progress, backup_walked)}};
            for (size_t j = 0; j < sizeof(u) / sizeof(u[0]); j++)
                if (k->via.str.size == strlen(u[j].name) && memcmp(k->via.str.ptr, u[j].name, k->via.str.size) == 0 &&
                    v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                    *(uint64_t *)((char *)out + u[j].off) = v->via.u64;
            bool is_float = v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32;
            if (k->via.str.size == 7 && memcmp(k->via.str.ptr, "elapsed", 7) == 0 && is_float) out->elapsed = v->via.f64;
            if (k->via.str.size == 12 && memcmp(k->via.str.ptr, "walk_seconds", 12) == 0 && is_float)
                out->walk_seconds = v->via.f64;
            if (k->via.str.size == 14 && memcmp(k->via.str.ptr, "backup_elapsed", 14) == 0 && is_float)
                out->backup_elapsed = v->via.f64;
            if (k->via.str.size == 12 && memcmp(k->via.str.ptr, "backup_phase", 12) == 0 && v->type == MSGPACK_OBJECT_STR)
                snprintf(out->backup_phase, sizeof(out->backup_phase), "%.*s", (int)v->via.str.size, v->via.str.ptr);
            if (k->via.str.size == 4 && memcmp(k->via.str.ptr, "full", 4) == 0 && v->type == MSGPACK_OBJECT_BOOLEAN)
                out->full = v->via.boolean;
            if (k->via.str.size == 5 && memcmp(k->via.str.ptr, "phase", 5) == 0 && v->type == MSGPACK_OBJECT_STR)
                snprintf(out->phase, sizeof(out->phase), "%.*s", (int)v->via.str.size, v->via.str.ptr);
        }
    }
    msgpack_unpacked_destroy(&res);
    return rc;
}

double tool_progress_eta(const tool_progress *p)
{
    if (strcmp(p->phase, "walk") == 0 && p->walked > 0 && p->elapsed > 0)
        return (double)(p->total > p->walked ? p->total - p->walked : 0) / ((double)p->walked / p->elapsed);
    double sending = p->elapsed - p->walk_seconds;
    if (strcmp(p->phase, "send") == 0 && p->sent > 0 && sending > 0)
        return (double)(p->queued > p->sent ? p->queued - p->sent : 0) / ((double)p->sent / sending);
    return -1;
}

static void format_bytes(uint64_t n, char *buf, size_t len)
{
    if (n >= 1 << 30) snprintf(buf, len, "%.1f GiB", (double)n / (1 << 30));
    else if (n >= 1 << 20) snprintf(buf, len, "%.1f MiB", (double)n / (1 << 20));
    else if (n >= 1 << 10) snprintf(buf, len, "%.1f KiB", (double)n / (1 << 10));
    else snprintf(buf, len, "%" PRIu64 " B", n);
}

static double percent(uint64_t part, uint64_t whole)
{
    return whole ? 100.0 * (double)(part < whole ? part : whole) / (double)whole : 100.0;
}

void tool_format_progress(const tool_progress *p, char *buf, size_t len)
{
    char bytes[32], eta[32] = "ETA unknown";
    double e = tool_progress_eta(p);
    format_bytes(p->sent_bytes, bytes, sizeof(bytes));
    if (e >= 0) snprintf(eta, sizeof(eta), "ETA %.0f s", e);
    const char *full = p->full ? " (full)" : "";
    if (strcmp(p->phase, "walk") == 0)
        snprintf(buf, len, "walk%s: %" PRIu64 " of %" PRIu64 " records (%.1f%%), %.0f records/s, %s; %" PRIu64 " queued to send", full, p->walked, p->total, percent(p->walked, p->total),
                 p->elapsed > 0 ? (double)p->walked / p->elapsed : 0.0, eta, p->queued);
    else if (strcmp(p->phase, "send") == 0)
        snprintf(buf, len, "send%s: %" PRIu64 " of %" PRIu64 " records sent (%.1f%%, %s), walked %" PRIu64 " in %.1f s, %s", full, p->sent, p->queued, percent(p->sent, p->queued), bytes, p->walked,
                 p->walk_seconds, eta);
    else if (strcmp(p->phase, "done") == 0)
        snprintf(buf, len, "done%s: walked %" PRIu64 " records in %.1f s, sent %" PRIu64 " records (%s) in %.1f s",
                 full, p->walked, p->walk_seconds, p->sent, bytes, p->elapsed);
    else snprintf(buf, len, "idle: no replace copy since the server started");
}

void tool_format_backup_progress(const tool_progress *p, char *buf, size_t len)
{
    double rate = p->backup_elapsed > 0 ? (double)p->backup_walked / p->backup_elapsed : 0;
    if (strcmp(p->backup_phase, "walk") == 0) {
        char eta[32] = "ETA unknown";
        if (rate > 0)
            snprintf(eta, sizeof(eta), "ETA %.0f s",
                     (double)(p->backup_total > p->backup_walked ? p->backup_total - p->backup_walked : 0) / rate);
        snprintf(buf, len, "backup walk: %" PRIu64 " of %" PRIu64 " records (%.1f%%), %.0f records/s, %s", p->backup_walked,
                 p->backup_total, percent(p->backup_walked, p->backup_total), rate, eta);
    } else if (strcmp(p->backup_phase, "done") == 0) {
        snprintf(buf, len, "backup done: %" PRIu64 " of %" PRIu64 " records in %.1f s", p->backup_walked, p->backup_total,
                 p->backup_elapsed);
    } else {
        buf[0] = '\0';
    }
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
    char when[48];
    if (ct == 0) { /* a blank hash space: no time to show */
        fprintf(out, "  none");
        return;
    }
    localtime_r(&sec, &tm);
    strftime(when, sizeof(when), "%a %b %d %H:%M:%S %z %Y", &tm);
    fprintf(out, "  %s clock %u", when, clock_counter(ct));
}

void tool_print_hashspace(FILE *out, const hashspace *hs, const char *nodes_title)
{
    char buf[NET_ADDRSTRLEN];
    fprintf(out, "hash space timestamp:\n");
    tool_print_clocktime(out, hs->clocktime);
    fprintf(out, "\n%s:\n", nodes_title);
    for (size_t i = 0; i < hs->ring.nnodes; i++)
        fprintf(out, "  %s (%s)\n", net_format(&hs->ring.nodes[i].addr, buf, sizeof(buf)),
                !hs->ring.nodes[i].active ? "fault" : hs->ring.nodes[i].catchup ? "catching up"
                                                                                : "active");
}

/*
 * links — managers found by name (see links.h).
 */
#include "links.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <resolv.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define REFRESH 30.0     /* re-resolve every this many seconds */
#define DOWN_RESOLVE 5.0 /* and when a link has been down this long */
#define BACKOFF_MAX 30.0 /* longest wait after a failed resolution */
#define SRV_PREFIX "dnssrv+"

typedef struct mlink {
    links *owner;
    net_addr addr;
    rpc_conn *conn;
    bool wanted; /* still named by the last resolution */
    double down_since;
} mlink;

struct links {
    struct event_base *base;
    links_config cfg; /* cfg.names points at `names` below */
    char *names_copy[LINKS_MAX + 1];
    rpc_handlers user;
    rpc_self self;
    mlink *items[LINKS_MAX];
    size_t n;
    struct event *tick;
    double next_resolve, last_resolve;
    double backoff;
    bool resolved_once;
    struct rjob *job; /* a resolution running on its own thread */
    struct event *job_ev;

    double none_up_since; /* monotonic time no link has been up since (0: one is) */
    double warned_at;     /* the last "no manager reachable" WARN (0: none this outage) */
};

/* ---- resolution ---- */

static size_t add_unique(net_addr *out, size_t n, size_t max, const net_addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (net_equal(&out[i], a)) return n;
    if (n < max) out[n++] = *a;
    return n;
}

/* Every A/AAAA address of host, with port. */
static int resolve_host(const char *text, const char *host, uint16_t port, net_addr *out, size_t n, size_t max,
                        char *err)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) return kumo_err(err, "'%s': cannot resolve: %s", text, gai_strerror(rc));
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        net_addr a;
        if (net_from_sockaddr(&a, ai->ai_addr) < 0) continue;
        net_set_port(&a, port);
        n = add_unique(out, n, max, &a);
    }
    freeaddrinfo(res);
    return (int)n;
}

static int resolve_srv(const char *text, const char *name, net_addr *out, size_t n, size_t max, char *err)
{
    unsigned char ans[4096];
    /* res_search, like getaddrinfo, tries the resolver's search list, so a
     * short name works inside a cluster domain. */
    int len = res_search(name, ns_c_in, ns_t_srv, ans, sizeof(ans));
    if (len < 0) return kumo_err(err, "'%s': no SRV records", text);
    ns_msg msg;
    if (ns_initparse(ans, len, &msg) < 0) return kumo_err(err, "'%s': malformed DNS answer", text);
    int count = ns_msg_count(msg, ns_s_an);
    size_t before = n;
    for (int i = 0; i < count; i++) {
        ns_rr rr;
        char target[NS_MAXDNAME];
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0 || ns_rr_type(rr) != ns_t_srv || ns_rr_rdlen(rr) < 7) continue;
        const unsigned char *rd = ns_rr_rdata(rr);
        uint16_t port = (uint16_t)(rd[4] << 8 | rd[5]);
        if (port == 0) {
            log_warn("'%s': an SRV record without a port, skipped", text);
            continue;
        }
        if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), rd + 6, target, sizeof(target)) < 0) continue;
        char e2[KUMO_ERRLEN];
        int r = resolve_host(text, target, port, out, n, max, e2);
        if (r < 0) log_warn("%s", e2);
        else n = (size_t)r;
    }
    if (n == before) return kumo_err(err, "'%s': SRV records name no usable address", text);
    return (int)n;
}

/* Resolve one name into out[n..]; returns the new count or -1 + err. */
static int resolve_name(const char *text, uint16_t default_port, net_addr *out, size_t n, size_t max, char *err)
{
    if (strncmp(text, SRV_PREFIX, strlen(SRV_PREFIX)) == 0)
        return resolve_srv(text, text + strlen(SRV_PREFIX), out, n, max, err);
    net_addr one;
    if (text[0] == '[' || strspn(text, "0123456789.:") == strlen(text)) {
        if (net_parse(text, default_port, &one, err) < 0) return -1;
        return (int)add_unique(out, n, max, &one);
    }
    char host[256];
    const char *colon = strrchr(text, ':');
    uint16_t port = default_port;
    size_t hl = colon ? (size_t)(colon - text) : strlen(text);
    if (hl == 0 || hl >= sizeof(host)) return kumo_err(err, "'%s': bad host name", text);
    memcpy(host, text, hl);
    host[hl] = '\0';
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (*end || p < 1 || p > 65535) return kumo_err(err, "'%s': invalid port", text);
        port = (uint16_t)p;
    }
    return resolve_host(text, host, port, out, n, max, err);
}

/* ---- links ---- */

static void link_dial(mlink *k);

static void on_request(void *arg, rpc_conn *c, uint32_t msgid, uint32_t method, const msgpack_object *params)
{
    mlink *k = arg;
    k->owner->user.on_request(k->owner->user.arg, c, msgid, method, params);
}

static void on_hello(void *arg, rpc_conn *c)
{
    mlink *k = arg;
    char buf[NET_ADDRSTRLEN];
    k->down_since = 0;
    k->owner->none_up_since = 0;
    if (k->owner->warned_at > 0 && !k->owner->cfg.quiet)
        log_warn("manager %s reached", net_format(&k->addr, buf, sizeof(buf)));
    else log_info("manager connected %s", net_format(&k->addr, buf, sizeof(buf)));
    k->owner->warned_at = 0;
    if (k->owner->user.on_hello) k->owner->user.on_hello(k->owner->user.arg, c);
}

static void on_close(void *arg, rpc_conn *c)
{
    mlink *k = arg;
    char buf[NET_ADDRSTRLEN];
    if (k->conn != c) return;
    k->conn = NULL;
    if (rpc_hello_done(c)) log_warn("lost manager %s", net_format(&k->addr, buf, sizeof(buf)));
    if (k->down_since == 0) k->down_since = clock_mono();
    if (links_up(k->owner) == 0 && k->owner->none_up_since == 0) k->owner->none_up_since = clock_mono();
    if (k->owner->user.on_close) k->owner->user.on_close(k->owner->user.arg, c);
}

static void link_dial(mlink *k)
{
    links *l = k->owner;
    rpc_handlers h = {.on_request = on_request, .on_hello = on_hello, .on_close = on_close, .arg = k};
    k->conn = rpc_connect(l->base, &k->addr, l->cfg.connect_timeout, &h, &l->self);
}

static void link_drop(links *l, size_t i)
{
    mlink *k = l->items[i];
    char buf[NET_ADDRSTRLEN];
    log_info("manager %s is no longer named, dropping it", net_format(&k->addr, buf, sizeof(buf)));
    rpc_close(k->conn);
    free(k);
    l->items[i] = l->items[--l->n];
}

/* What one resolution of every name found. */
typedef struct rresult {
    net_addr found[LINKS_MAX];
    size_t n;
    bool ok;
    char errs[LINKS_MAX][KUMO_ERRLEN];
    size_t nerrs;
} rresult;

static void resolve_all(const char *const *names, uint16_t default_port, rresult *r)
{
    r->n = r->nerrs = 0;
    r->ok = true;
    for (const char *const *name = names; *name; name++) {
        int got = resolve_name(*name, default_port, r->found, r->n, LINKS_MAX, r->errs[r->nerrs]);
        if (got < 0) {
            r->ok = false;
            if (r->nerrs < LINKS_MAX - 1) r->nerrs++;
        } else {
            r->n = (size_t)got;
        }
    }
}

/* Take a resolution's result: new links for new addresses, and with a full
 * success, none for the addresses no longer named. */
static void apply(links *l, const rresult *r)
{
    for (size_t i = 0; i < r->nerrs; i++) log_warn("%s (will retry)", r->errs[i]);
    double now = clock_mono();
    l->last_resolve = now;
    l->backoff = r->ok ? 0 : (l->backoff ? l->backoff * 2 : 1);
    if (l->backoff > BACKOFF_MAX) l->backoff = BACKOFF_MAX;
    l->next_resolve = now + (r->ok ? REFRESH : l->backoff);
    if (!r->ok && r->n == 0) return; /* keep what we have rather than nothing */
    for (size_t i = 0; i < l->n; i++) l->items[i]->wanted = false;
    for (size_t j = 0; j < r->n; j++) {
        if (l->cfg.ignore && net_equal(&r->found[j], l->cfg.ignore)) continue;
        mlink *k = NULL;
        for (size_t i = 0; i < l->n && !k; i++)
            if (net_equal(&l->items[i]->addr, &r->found[j])) k = l->items[i];
        if (!k && l->n < LINKS_MAX && (k = calloc(1, sizeof(*k)))) {
            k->owner = l;
            k->addr = r->found[j];
            k->down_since = now;
            l->items[l->n++] = k;
            link_dial(k);
        }
        if (k) k->wanted = true;
    }
    /* A partial failure keeps the links it could not confirm. */
    for (size_t i = 0; r->ok && i < l->n;)
        if (!l->items[i]->wanted) link_drop(l, i);
        else i++;
    l->resolved_once = true;
}

/* ---- resolution off the loop ----
 * getaddrinfo and res_search block for as long as the resolver takes: with
 * a name server that never answers, tens of seconds, during which a loop
 * would answer no keepalive and the manager would declare us lost. So a
 * resolution that needs DNS runs on a thread of its own; the loop goes on
 * with the links it has and takes the result when the thread signals (a
 * pipe). At most one runs per links. The job, its pipe included, is held
 * by the loop and by the thread, and freed by whichever lets go last: links
 * freed first abandon it, and the thread, when the resolver returns, finds
 * nobody to tell. Names that are all address literals need no DNS and are
 * resolved in place. */

typedef struct rjob {
    char *names[LINKS_MAX + 1];
    uint16_t default_port;
    rresult result;
    int pipe[2];
    atomic_int refs;       /* the loop's and the thread's */
    atomic_bool abandoned; /* the loop let go: do not signal */
} rjob;

static void job_free(rjob *j)
{
    for (size_t i = 0; j->names[i]; i++) free(j->names[i]);
    if (j->pipe[0] >= 0) close(j->pipe[0]);
    if (j->pipe[1] >= 0) close(j->pipe[1]);
    free(j);
}

static void job_release(rjob *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) job_free(j);
}

static void *job_run(void *arg)
{
    rjob *j = arg;
    resolve_all((const char *const *)j->names, j->default_port, &j->result);
    if (!atomic_load(&j->abandoned)) (void)!write(j->pipe[1], "", 1);
    job_release(j);
    return NULL;
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    links *l = arg;
    rjob *j = l->job;
    event_free(l->job_ev);
    l->job_ev = NULL;
    l->job = NULL;
    apply(l, &j->result);
    job_release(j);
}

/* Let go of a running job; the thread frees it if it is still resolving. */
static void job_abandon(links *l)
{
    rjob *j = l->job;
    if (!j) return;
    event_free(l->job_ev);
    l->job_ev = NULL;
    l->job = NULL;
    atomic_store(&j->abandoned, true);
    job_release(j);
}

static bool is_literal(const char *name)
{
    return name[0] == '[' || strspn(name, "0123456789.:") == strlen(name);
}

static void resolve(links *l)
{
    bool literal = true;
    for (const char *const *name = l->cfg.names; *name; name++) literal = literal && is_literal(*name);
    if (literal) {
        rresult r;
        resolve_all(l->cfg.names, l->cfg.default_port, &r);
        apply(l, &r);
        return;
    }
    if (l->job) return; /* one at a time: a stuck resolver holds one thread */
    rjob *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->pipe[0] = j->pipe[1] = -1;
    atomic_init(&j->refs, 2);
    atomic_init(&j->abandoned, false);
    j->default_port = l->cfg.default_port;
    size_t n = 0;
    for (const char *const *name = l->cfg.names; *name; name++)
        if (!(j->names[n++] = strdup(*name))) goto fail;
    if (pipe2(j->pipe, O_CLOEXEC) < 0) goto fail;
    l->job_ev = event_new(l->base, j->pipe[0], EV_READ, job_done_cb, l);
    if (!l->job_ev || event_add(l->job_ev, NULL) < 0) goto fail;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, job_run, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) goto fail;
    l->job = j;
    /* Not again before the next tick decides so. */
    l->last_resolve = clock_mono();
    l->next_resolve = l->last_resolve + REFRESH;
    return;
fail:
    log_warn("cannot start a name resolution (out of memory or threads); will retry");
    if (l->job_ev) event_free(l->job_ev);
    l->job_ev = NULL;
    job_free(j);
}

/* The WARN of an outage: every name, so a wrong -m is plain to see. */
static void warn_unreachable(links *l, double now)
{
    char names[512] = "";
    size_t used = 0;
    for (const char *const *name = l->cfg.names; *name && used < sizeof(names); name++)
        used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "", *name);
    bool first = l->warned_at == 0;
    l->warned_at = now;
    if (!l->cfg.quiet)
        log_warn("no manager reachable for %.0f s (%s): retrying; check -m/-p and that a kumo-manager listens there",
                 now - l->none_up_since, names);
    if (first && l->cfg.on_unreachable) l->cfg.on_unreachable(l->user.arg);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    links *l = arg;
    double now = clock_mono();
    if (l->none_up_since > 0 && now - l->none_up_since >= LINKS_UNREACHABLE_WARN &&
        (l->warned_at == 0 || now - l->warned_at >= LINKS_UNREACHABLE_REPEAT))
        warn_unreachable(l, now);
    bool long_down = false;
    for (size_t i = 0; i < l->n; i++)
        if (!l->items[i]->conn && l->items[i]->down_since && now - l->items[i]->down_since > DOWN_RESOLVE)
            long_down = true;
    if (now >= l->next_resolve || (long_down && now - l->last_resolve >= DOWN_RESOLVE)) resolve(l);
    for (size_t i = 0; i < l->n; i++)
        if (!l->items[i]->conn) link_dial(l->items[i]);
}

links *links_new(struct event_base *base, const links_config *cfg, const rpc_handlers *handlers, const rpc_self *self)
{
    links *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    l->base = base;
    l->cfg = *cfg;
    size_t n = 0;
    for (const char *const *name = cfg->names; *name && n < LINKS_MAX; name++)
        if (!(l->names_copy[n++] = strdup(*name))) {
            links_free(l);
            return NULL;
        }
    l->cfg.names = (const char *const *)l->names_copy;
    l->user = *handlers;
    l->self = *self;
    l->none_up_since = clock_mono();
    resolve(l); /* dials what it finds (now, or when the thread is back) */
    l->tick = event_new(base, -1, EV_PERSIST, tick_cb, l);
    double t = cfg->retry > 0.1 ? cfg->retry : 0.1;
    struct timeval tv = {(time_t)t, (suseconds_t)((t - (double)(time_t)t) * 1e6)};
    event_add(l->tick, &tv);
    return l;
}

void links_free(links *l)
{
    if (!l) return;
    job_abandon(l);
    if (l->tick) event_free(l->tick);
    for (size_t i = 0; l->names_copy[i]; i++) free(l->names_copy[i]);
    for (size_t i = 0; i < l->n; i++) {
        rpc_close(l->items[i]->conn);
        free(l->items[i]);
    }
    free(l);
}

int links_resolve(const char *name, uint16_t default_port, net_addr *out, size_t max, char *err)
{
    return resolve_name(name, default_port, out, 0, max, err);
}

int links_check_name(const char *name, uint16_t default_port, char *err)
{
    if (strncmp(name, SRV_PREFIX, strlen(SRV_PREFIX)) == 0)
        return name[strlen(SRV_PREFIX)] ? 0 : kumo_err(err, "'%s': missing SRV name", name);
    net_addr a;
    if (name[0] == '[' || strspn(name, "0123456789.:") == strlen(name)) return net_parse(name, default_port, &a, err);
    const char *colon = strrchr(name, ':');
    if (colon == name) return kumo_err(err, "'%s': missing host", name);
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (colon[1] == '\0' || *end || p < 1 || p > 65535) return kumo_err(err, "'%s': invalid port", name);
    }
    return 0;
}

int links_local_address(const char *const *names, uint16_t default_port, net_addr *out, char *err)
{
    net_addr found[LINKS_MAX];
    size_t n = 0;
    for (const char *const *name = names; *name; name++) {
        int r = resolve_name(*name, default_port, found, n, LINKS_MAX, err);
        if (r > 0) n = (size_t)r;
    }
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss, local;
        socklen_t sl = net_sockaddr(&found[i], &ss), ll = sizeof(local);
        int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        /* A UDP "connect" sends nothing; it only picks the route and so the
         * local address the manager would see us from. */
        int ok = connect(fd, (struct sockaddr *)&ss, sl) == 0 && getsockname(fd, (struct sockaddr *)&local, &ll) == 0 &&
                 net_from_sockaddr(out, (struct sockaddr *)&local) == 0;
        close(fd);
        if (ok) return 0;
    }
    return n ? kumo_err(err, "no route to any manager") : -1;
}

size_t links_count(const links *l) { return l->n; }

rpc_conn *links_conn(const links *l, size_t i)
{
    rpc_conn *c = i < l->n ? l->items[i]->conn : NULL;
    return c && rpc_hello_done(c) ? c : NULL;
}

const net_addr *links_addr(const links *l, size_t i) { return &l->items[i]->addr; }

bool links_unreachable(const links *l) { return l->warned_at > 0; }

size_t links_up(const links *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++) n += links_conn(l, i) != NULL;
    return n;
}

rpc_conn *links_any(const links *l)
{
    for (size_t i = 0; i < l->n; i++)
        if (links_conn(l, i)) return links_conn(l, i);
    return NULL;
}

/*
 * metrics — the /metrics endpoint (see metrics.h).
 *
 * Owns: one evhttp server and its listening socket per daemon.
 * Calls: net (parsing and binding the address), hashspace, clock, binlog,
 * libevent's evhttp.
 * Thread rule: the loop thread of the base given to metrics_start.
 *
 * The two text formats differ only in small ways, all handled here:
 *   Prometheus 0.0.4: "# TYPE x_total counter", sample "x_total 1";
 *                     Content-Type text/plain; version=0.0.4
 *   OpenMetrics 1.0:  "# TYPE x counter", sample "x_total 1", "# EOF" last;
 *                     Content-Type application/openmetrics-text; version=1.0.0
 * The OpenMetrics form is served only to a scraper that lists it in Accept
 * (Prometheus does), anything else gets the older format every tool reads.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "metrics.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "binlog.h"
#include "clock.h"
#include "net.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.5.0"
#endif

#define METRICS_NAME_MAX 128
#define METRICS_TIMEOUT 10 /* seconds an HTTP connection may idle */

struct metrics_server {
    struct evhttp *http;
    metrics_collect_fn fn;
    void *arg;
    char role[32];
    time_t started;
};

struct metrics_out {
    struct evbuffer *buf;
    bool om; /* OpenMetrics */
    char family[METRICS_NAME_MAX];
    metrics_type type;
};

/* ---- writing ---- */

static void put_value(struct evbuffer *b, double v)
{
    if (v != v) {
        evbuffer_add_printf(b, "NaN");
    } else if (v > 1e300 || v < -1e300) {
        evbuffer_add_printf(b, v > 0 ? "+Inf" : "-Inf");
    } else if (v >= -9007199254740992.0 && v <= 9007199254740992.0 && (double)(int64_t)v == v) {
        evbuffer_add_printf(b, "%lld", (long long)(int64_t)v);
    } else {
        evbuffer_add_printf(b, "%.17g", v);
    }
}

/* Help text: backslash and newline escaped (both formats). */
static void put_help(struct evbuffer *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') evbuffer_add(b, "\\\\", 2);
        else if (*s == '\n') evbuffer_add(b, "\\n", 2);
        else evbuffer_add(b, s, 1);
    }
}

/* Label value: also the double quote. */
static void put_label_value(struct evbuffer *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') evbuffer_add(b, "\\\\", 2);
        else if (*s == '\n') evbuffer_add(b, "\\n", 2);
        else if (*s == '"') evbuffer_add(b, "\\\"", 2);
        else evbuffer_add(b, s, 1);
    }
}

void metrics_family(metrics_out *o, const char *name, metrics_type type, const char *help)
{
    static const char *const type_name[] = {"counter", "gauge", "histogram"};
    snprintf(o->family, sizeof(o->family), "%s", name);
    o->type = type;
    const char *suffix = type == METRICS_COUNTER && !o->om ? "_total" : "";
    evbuffer_add_printf(o->buf, "# HELP %s%s ", name, suffix);
    put_help(o->buf, help);
    evbuffer_add_printf(o->buf, "\n# TYPE %s%s %s\n", name, suffix, type_name[type]);
}

static const double hist_bounds[METRICS_HIST_BUCKETS] = METRICS_HIST_BOUNDS;

void metrics_hist_observe(metrics_hist *h, double seconds)
{
    if (seconds < 0) seconds = 0;
    h->count++;
    h->sum += seconds;
    for (int i = 0; i < METRICS_HIST_BUCKETS; i++) {
        if (seconds <= hist_bounds[i]) {
            h->bucket[i]++;
            return;
        }
    }
}

void metrics_histogram(metrics_out *o, const char *name, const char *help, const char *label,
                       const char *const *values, const metrics_hist *hists, size_t n)
{
    metrics_family(o, name, METRICS_HISTOGRAM, help);
    for (size_t k = 0; k < n; k++) {
        const metrics_hist *h = &hists[k];
        uint64_t cum = 0;
        for (int i = 0; i <= METRICS_HIST_BUCKETS; i++) {
            char le[32];
            if (i < METRICS_HIST_BUCKETS) {
                cum += h->bucket[i];
                snprintf(le, sizeof(le), "%g", hist_bounds[i]);
                if (!strpbrk(le, ".e")) strcat(le, ".0"); /* OpenMetrics: le="1.0", not "1" */
            } else {
                cum = h->count;
                snprintf(le, sizeof(le), "+Inf");
            }
            evbuffer_add_printf(o->buf, "%s_bucket{%s=\"", name, label);
            put_label_value(o->buf, values[k]);
            evbuffer_add_printf(o->buf, "\",le=\"%s\"} %llu\n", le, (unsigned long long)cum);
        }
        evbuffer_add_printf(o->buf, "%s_sum{%s=\"", name, label);
        put_label_value(o->buf, values[k]);
        evbuffer_add(o->buf, "\"} ", 3);
        put_value(o->buf, h->sum);
        evbuffer_add_printf(o->buf, "\n%s_count{%s=\"", name, label);
        put_label_value(o->buf, values[k]);
        evbuffer_add_printf(o->buf, "\"} %llu\n", (unsigned long long)h->count);
    }
}

static void vsample(metrics_out *o, double value, va_list ap)
{
    evbuffer_add_printf(o->buf, "%s%s", o->family, o->type == METRICS_COUNTER ? "_total" : "");
    const char *k = va_arg(ap, const char *);
    if (k) {
        evbuffer_add(o->buf, "{", 1);
        for (bool first = true; k; first = false) {
            const char *v = va_arg(ap, const char *);
            evbuffer_add_printf(o->buf, "%s%s=\"", first ? "" : ",", k);
            put_label_value(o->buf, v ? v : "");
            evbuffer_add(o->buf, "\"", 1);
            k = va_arg(ap, const char *);
        }
        evbuffer_add(o->buf, "}", 1);
    }
    evbuffer_add(o->buf, " ", 1);
    put_value(o->buf, value);
    evbuffer_add(o->buf, "\n", 1);
}

void metrics_sample(metrics_out *o, double value, ...)
{
    va_list ap;
    va_start(ap, value);
    vsample(o, value, ap);
    va_end(ap);
}

void metrics_counter(metrics_out *o, const char *name, const char *help, uint64_t value)
{
    metrics_family(o, name, METRICS_COUNTER, help);
    /* Exact, also above 2^53. */
    evbuffer_add_printf(o->buf, "%s_total %llu\n", name, (unsigned long long)value);
}

void metrics_gauge(metrics_out *o, const char *name, const char *help, double value)
{
    metrics_family(o, name, METRICS_GAUGE, help);
    metrics_sample(o, value, NULL);
}

void metrics_hash_spaces(metrics_out *o, const char *prefix, const hashspace *whs, const hashspace *rhs)
{
    char name[METRICS_NAME_MAX];
    const hashspace *hs[2] = {whs, rhs};
    static const char *const label[2] = {"whs", "rhs"};
    snprintf(name, sizeof(name), "%s_hash_space_timestamp_seconds", prefix);
    metrics_family(o, name, METRICS_GAUGE, "seconds part of the hash space's ClockTime (its version)");
    for (int i = 0; i < 2; i++) metrics_sample(o, (double)clock_seconds(hs[i]->clocktime), "space", label[i], NULL);
    snprintf(name, sizeof(name), "%s_hash_space_clock", prefix);
    metrics_family(o, name, METRICS_GAUGE, "counter part of the hash space's ClockTime");
    for (int i = 0; i < 2; i++) metrics_sample(o, (double)clock_counter(hs[i]->clocktime), "space", label[i], NULL);
    snprintf(name, sizeof(name), "%s_hash_space_servers", prefix);
    metrics_family(o, name, METRICS_GAUGE, "servers in the hash space, by state");
    for (int i = 0; i < 2; i++) {
        size_t active = 0, catching_up = 0; /* active: live and in sync */
        for (size_t k = 0; k < hs[i]->ring.nnodes; k++) {
            const ring_node *n = &hs[i]->ring.nodes[k];
            active += n->active && !n->catchup;
            catching_up += n->active && n->catchup;
        }
        metrics_sample(o, (double)active, "space", label[i], "state", "active", NULL);
        metrics_sample(o, (double)catching_up, "space", label[i], "state", "catching_up", NULL);
        metrics_sample(o, (double)(hs[i]->ring.nnodes - active - catching_up), "space", label[i], "state", "fault",
                       NULL);
    }
}

/* ---- the process (Prometheus' process_* conventions) ---- */

static void process_metrics(metrics_out *o)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        metrics_family(o, "process_cpu_seconds", METRICS_COUNTER, "user and system CPU time spent, in seconds");
        metrics_sample(o,
                       (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
                       NULL);
    }
    unsigned long long vsz, rss;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f && fscanf(f, "%llu %llu", &vsz, &rss) == 2) {
        double page = (double)sysconf(_SC_PAGESIZE);
        metrics_gauge(o, "process_virtual_memory_bytes", "virtual memory size in bytes", (double)vsz * page);
        metrics_gauge(o, "process_resident_memory_bytes", "resident memory size in bytes", (double)rss * page);
    }
    if (f) fclose(f);
    /* Running out of descriptors pauses accepting (docs/operations.md). */
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        size_t n = 0;
        for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
        closedir(d);
        metrics_gauge(o, "process_open_fds", "open file descriptors", (double)(n > 0 ? n - 1 : 0)); /* not opendir's own */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        metrics_gauge(o, "process_max_fds", "the limit of open file descriptors (soft)", (double)rl.rlim_cur);
}

/* ---- HTTP ---- */

static bool wants_openmetrics(struct evhttp_request *req)
{
    const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");
    return accept && strstr(accept, "application/openmetrics-text") != NULL;
}

static void handle(struct evhttp_request *req, void *arg)
{
    metrics_server *m = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    if (!path || strcmp(path, "/metrics") != 0) {
        /* /healthz: the process and its loop answer (liveness). */
        bool root = path && strcmp(path, "/") == 0, health = path && strcmp(path, "/healthz") == 0;
        evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
        evbuffer_add_printf(body, "%s\n", health ? "ok" : root ? "kumofs: the metrics are at /metrics, liveness at /healthz"
                                                               : "not found; try /metrics or /healthz");
        evhttp_send_reply(req, root || health ? HTTP_OK : HTTP_NOTFOUND, root || health ? "OK" : "Not Found", body);
        evbuffer_free(body);
        return;
    }
    metrics_out o = {.buf = body, .om = wants_openmetrics(req)};
    metrics_family(&o, "kumo_build_info", METRICS_GAUGE, "the daemon's role and version (always 1)");
    metrics_sample(&o, 1, "role", m->role, "version", PACKAGE_VERSION, NULL);
    metrics_gauge(&o, "process_start_time_seconds", "start time of the process since the epoch, in seconds",
                  (double)m->started);
    process_metrics(&o);
    /* The host's clock as the daemon sees it: Prometheus compares it with
     * its own (timestamp()), as node_exporter's node_time_seconds. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    metrics_gauge(&o, "kumo_time_seconds", "the host's wall clock when scraped, in seconds since the epoch",
                  (double)now.tv_sec + (double)now.tv_nsec / 1e9);
    metrics_counter(&o, "kumo_binlog_write_errors", "binary log records that could not be written",
                    binlog_write_errors());
    m->fn(m->arg, &o);
    if (o.om) evbuffer_add_printf(body, "# EOF\n");
    evhttp_add_header(out, "Content-Type",
                      o.om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                           : "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

metrics_server *metrics_start(struct event_base *base, const char *listen, const char *role, time_t started,
                              metrics_collect_fn fn, void *arg, char *err)
{
    net_addr a;
    if (net_parse_listen(listen, 0, &a, err) < 0) return NULL;
    if (net_port(&a) == 0) {
        kumo_err(err, "--metrics '%s': give a port ([addr:]port)", listen);
        return NULL;
    }
    metrics_server *m = calloc(1, sizeof(*m));
    if (!m || !(m->http = evhttp_new(base))) {
        free(m);
        kumo_err(err, "--metrics: out of memory");
        return NULL;
    }
    m->fn = fn;
    m->arg = arg;
    m->started = started;
    snprintf(m->role, sizeof(m->role), "%s", role);
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_timeout(m->http, METRICS_TIMEOUT);
    evhttp_set_max_headers_size(m->http, 16 * 1024);
    evhttp_set_max_body_size(m->http, 4 * 1024);
    evhttp_set_gencb(m->http, handle, m);
    int fd = net_listen(&a, err);
    if (fd < 0) {
        evhttp_free(m->http);
        free(m);
        return NULL;
    }
    if (!evhttp_accept_socket_with_handle(m->http, fd)) {
        close(fd);
        evhttp_free(m->http);
        free(m);
        kumo_err(err, "--metrics: cannot serve HTTP on '%s'", listen);
        return NULL;
    }
    return m;
}

void metrics_stop(metrics_server *m)
{
    if (!m) return;
    evhttp_free(m->http); /* closes the listening socket and the connections */
    free(m);
}

/*
 * stats — the gateway's memcached statistics, under memcached's names and
 * in memcached's order, for both protocols: text.c writes each as
 * "STAT name value", binary.c as a key/value packet. One list, so the two
 * cannot drift apart (and memcached_exporter reads either).
 *
 * Calls: workers (the totals), clock (debugtime moves `time`), libc, libevent's version. Thread rule: any
 * worker's loop.
 */
#include <event2/event.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "gateway.h"

static void put(stats_emit_fn emit, void *arg, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void put(stats_emit_fn emit, void *arg, const char *name, const char *fmt, ...)
{
    char val[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof(val), fmt, ap);
    va_end(ap);
    emit(arg, name, val);
}

void stats_general(const gateway *g, const router_sizes *sz, stats_emit_fn emit, void *arg)
{
    gateway_totals tot;
    g->group->totals(g->group, true, &tot);
    const gateway_totals *s = &tot;
    struct rusage ru;
    time_t now = time(NULL);
    getrusage(RUSAGE_SELF, &ru);
    put(emit, arg, "pid", "%ld", (long)getpid());
    put(emit, arg, "uptime", "%ld", (long)(now - g->started));
    /* memcached's time is the clock exptimes are judged by: debugtime moves it */
    put(emit, arg, "time", "%ld", (long)clock_shift((uint32_t)now, atomic_load(&g->group->debug_offset)));
    put(emit, arg, "version", "%s", GATEWAY_VERSION);
    put(emit, arg, "libevent", "%s", event_get_version());
    put(emit, arg, "pointer_size", "%d", (int)(8 * sizeof(void *)));
    put(emit, arg, "rusage_user", "%ld.%06ld", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
    put(emit, arg, "rusage_system", "%ld.%06ld", (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    put(emit, arg, "max_connections", "%ld", (long)g->max_connections);
    put(emit, arg, "curr_connections", "%" PRIu64, s->curr_connections);
    put(emit, arg, "total_connections", "%" PRIu64, s->total_connections);
    put(emit, arg, "rejected_connections", "0");
    put(emit, arg, "connection_structures", "%" PRIu64, s->curr_connections);
    static const struct {
        const char *name;
        size_t off; /* SIZE_MAX: memcached's counter of something we never do */
    } counters[] = {
#define C(f) {#f, offsetof(gateway_totals, f)}
        C(cmd_get),
        C(cmd_set),
        C(cmd_flush),
        C(cmd_touch),
        C(cmd_meta),
        C(get_hits),
        C(get_misses),
        C(get_expired),
        {"get_flushed", SIZE_MAX},
        C(delete_misses),
        C(delete_hits),
        C(incr_misses),
        C(incr_hits),
        C(decr_misses),
        C(decr_hits),
        C(cas_misses),
        C(cas_hits),
        C(cas_badval),
        C(touch_hits),
        C(touch_misses),
        C(store_too_large),
        {"store_no_memory", SIZE_MAX},
        C(auth_cmds),
        C(auth_errors),
        C(bytes_read),
        C(bytes_written),
#undef C
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        uint64_t v = 0;
        if (counters[i].off != SIZE_MAX) memcpy(&v, (const char *)s + counters[i].off, sizeof(v));
        put(emit, arg, counters[i].name, "%" PRIu64, v);
    }
    put(emit, arg, "limit_maxbytes", "0");
    /* memcached stops accepting when it runs out of connections; the
     * gateway's listeners pause for a moment when accept() fails (out of
     * descriptors): accepting_conns is 0 while one is paused, and
     * listen_disabled_num counts the pauses */
    uint64_t tf, bf;
    bool tp, bp;
    daemon_listener_stats(g->text_listener, &tf, &tp);
    daemon_listener_stats(g->binary_listener, &bf, &bp);
    put(emit, arg, "accepting_conns", "%d", !(tp || bp));
    put(emit, arg, "listen_disabled_num", "%" PRIu64, tf + bf);
    put(emit, arg, "threads", "%zu", g->group->n);
    put(emit, arg, "conn_yields", "0");
    put(emit, arg, "curr_items", "%" PRIu64, sz->items);
    put(emit, arg, "total_items", "%" PRIu64, s->cmd_set);
    put(emit, arg, "bytes", "%" PRIu64, sz->bytes);
    put(emit, arg, "evictions", "0");
    put(emit, arg, "reclaimed", "0");
    /* ours: operations that failed after every retry, and the attempts
     * repeated at another owner or after a pause */
    put(emit, arg, "kumofs_errors", "%" PRIu64, s->errors);
    put(emit, arg, "kumofs_retries", "%" PRIu64, s->retries);
}

void stats_settings(const gateway *g, stats_emit_fn emit, void *arg)
{
    const gateway_config *cfg = g->cfg;
    put(emit, arg, "maxbytes", "0");
    put(emit, arg, "maxconns", "%ld", (long)g->max_connections);
    put(emit, arg, "tcpport", "%u", g->text_port);
    put(emit, arg, "udpport", "0");
    put(emit, arg, "verbosity", "%d", cfg->common.verbose ? 1 : 0);
    put(emit, arg, "num_threads", "%zu", g->group->n);
    put(emit, arg, "cas_enabled", "yes");
    put(emit, arg, "evictions", "off");
    put(emit, arg, "item_size_max", "%d", cfg->item_size_max);
    put(emit, arg, "binding_protocol", "auto-negotiate"); /* every port, by the first byte */
    put(emit, arg, "auth_enabled_sasl", "%s", cfg->users ? "yes" : "no");
    put(emit, arg, "auth_enabled_ascii", "%s", cfg->auth_file ? cfg->auth_file : "no");
    put(emit, arg, "tcp_backlog", "1024");
    put(emit, arg, "kumofs_get_retry", "%d", cfg->get_retries);
    put(emit, arg, "kumofs_set_retry", "%d", cfg->set_retries);
    put(emit, arg, "kumofs_delete_retry", "%d", cfg->delete_retries);
    put(emit, arg, "kumofs_async_set", "%s", cfg->async_set ? "yes" : "no");
    put(emit, arg, "kumofs_async_delete", "%s", cfg->async_delete ? "yes" : "no");
    put(emit, arg, "kumofs_max_conn_buffer", "%lld", (long long)cfg->max_conn_buffer_kib * 1024);
    put(emit, arg, "kumofs_max_inflight", "%lld", (long long)cfg->max_inflight_kib * 1024);
}

void stats_reset(gateway *g) { g->group->reset_totals(g->group); }

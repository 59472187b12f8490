/*
 * metrics — the /metrics endpoint every daemon can serve (--metrics
 * [addr:]port), in the Prometheus text format 0.0.4 or, when the scraper
 * asks for it (Accept: application/openmetrics-text), OpenMetrics 1.0.
 *
 * The module knows no daemon: on each scrape it calls the daemon's collect
 * function, which reads its own state struct and describes each metric
 * family with metrics_counter / metrics_gauge (or metrics_family +
 * metrics_sample for labelled series). The module adds kumo_build_info,
 * the process_* metrics (start time, CPU seconds, virtual and resident
 * memory, open and maximum descriptors) and kumo_binlog_write_errors
 * itself, and answers GET /healthz with 200 "ok" (liveness: the loop
 * answers). The HTTP server is libevent's evhttp
 * on the daemon's own event_base: the collect function runs on the loop
 * thread, between other callbacks, so it reads the state without locks.
 *
 * Naming: counters are given without the "_total" suffix; the module writes
 * the family and sample names each format wants.
 *
 * Thread rule: everything on the thread of the event_base given to
 * metrics_start. Calls: net (listen address), hashspace, binlog (its error
 * count), libevent (evhttp).
 */
#ifndef KUMO_METRICS_H
#define KUMO_METRICS_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "hashspace.h"
#include "kumo.h"

typedef struct metrics_server metrics_server;
typedef struct metrics_out metrics_out;

typedef enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
} metrics_type;

/* A latency histogram the daemon fills (metrics_hist_observe) and a scrape
 * shows. Upper bounds in seconds: METRICS_HIST_BOUNDS; not cumulative here,
 * the writer sums them. Zero-initialise. Same thread rule as the rest. */
#define METRICS_HIST_BUCKETS 14
#define METRICS_HIST_BOUNDS                                                                         \
    {                                                                                               \
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10 \
    }
typedef struct metrics_hist {
    uint64_t count;
    double sum;
    uint64_t bucket[METRICS_HIST_BUCKETS];
} metrics_hist;
void metrics_hist_observe(metrics_hist *h, double seconds);

/* Describe the daemon's metrics into out (called once per scrape). */
typedef void (*metrics_collect_fn)(void *arg, metrics_out *out);

/* Serve GET /metrics on `listen` ("port", "addr:port", "[v6]:port").
 * role ("server") labels kumo_build_info; started is the process start.
 * NULL + err (bad address, port in use). */
metrics_server *metrics_start(struct event_base *base, const char *listen, const char *role, time_t started,
                              metrics_collect_fn fn, void *arg, char *err);
/* Stop listening and free (NULL is a no-op). */
void metrics_stop(metrics_server *m);

/* Begin a family: name (without "_total" for counters), type, help text. */
void metrics_family(metrics_out *o, const char *name, metrics_type type, const char *help);
/* One sample of the current family. labels: NULL, or pairs of strings
 * (name, value, name, value, ..., NULL); values are escaped. */
void metrics_sample(metrics_out *o, double value, ...) __attribute__((sentinel));
/* A family with one unlabelled sample. */
void metrics_counter(metrics_out *o, const char *name, const char *help, uint64_t value);
void metrics_gauge(metrics_out *o, const char *name, const char *help, double value);
/* A histogram family: n series labelled label=values[i], each hists[i]. */
void metrics_histogram(metrics_out *o, const char *name, const char *help, const char *label,
                       const char *const *values, const metrics_hist *hists, size_t n);
/* The hash spaces a daemon holds, as <prefix>_hash_space_timestamp_seconds,
 * <prefix>_hash_space_clock (the ClockTime's counter) and
 * <prefix>_hash_space_servers{state}, each labelled space="whs"/"rhs". */
void metrics_hash_spaces(metrics_out *o, const char *prefix, const hashspace *whs, const hashspace *rhs);

#endif

/*
 * metrics — the /metrics endpoint every daemon can serve (--metrics
 * [addr:]port), in the Prometheus text format 0.0.4 or, when the scraper
 * asks for it (Accept: application/openmetrics-text), OpenMetrics 1.0.
 *
 * The module knows no daemon: on each scrape it calls the daemon's collect
 * function, which reads its own state struct and describes each metric
 * family with metrics_counter / metrics_gauge (or metrics_family +
 * metrics_sample for labelled series). The module adds kumo_build_info,
 * process_start_time_seconds and kumo_binlog_write_errors itself. The HTTP server is libevent's evhttp
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
} metrics_type;

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
/* The hash spaces a daemon holds, as <prefix>_hash_space_timestamp_seconds,
 * <prefix>_hash_space_clock (the ClockTime's counter) and
 * <prefix>_hash_space_servers{state}, each labelled space="whs"/"rhs". */
void metrics_hash_spaces(metrics_out *o, const char *prefix, const hashspace *whs, const hashspace *rhs);

#endif

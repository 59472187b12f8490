/*
 * cmdline — the flags every daemon shares (kumofs(7), plus --metrics),
 * as opts.h table rows, so each daemon's table is its own flags plus
 * DAEMON_COMMON_OPTS.
 * Header only.
 */
#ifndef KUMO_CMDLINE_H
#define KUMO_CMDLINE_H

#include <stdbool.h>
#include <stddef.h>

#include "opts.h"

typedef struct daemon_common {
    bool verbose;
    const char *log_path;
    bool log_json; /* --log-json: JSON lines (log.h) */
    const char *binlog_path;
    const char *pidfile;
    double clock_interval;        /* -Ci: timer tick, seconds */
    double connect_timeout;       /* -Ys */
    int connect_retries;          /* -Yn */
    int read_threads;             /* -TR */
    int write_threads;            /* -TW */
    const char *metrics;          /* --metrics [addr:]port: serve /metrics (metrics.h) */
    const char *cluster_key_file; /* --cluster-key-file: every RPC peer must prove it (auth.h) */
} daemon_common;

/* T = the daemon's config struct, F = its daemon_common member. */
#define DAEMON_COMMON_OPTS(T, F) \
    DAEMON_COMMON_OPTS_TR(T, F, "4", "worker threads in kumofs 0.4; accepted, unused: this daemon runs one event loop")

/* The same, with the daemon's own default (NULL: 0, the daemon decides)
 * and help line for -TR. */
#define DAEMON_COMMON_OPTS_TR(T, F, tr_default, tr_help)                                                       \
    {"-v", "--verbose", OPT_FLAG, offsetof(T, F.verbose), NULL, NULL, 0, 0, false,                             \
     "log everything, not only warnings and errors"},                                                          \
        {"-o", "--log", OPT_STRING, offsetof(T, F.log_path), "<path.log>", NULL, 0, 0, false,                  \
         "write the log to this file ('-' = stdout without colour); default: stdout"},                         \
        {"--log-json", NULL, OPT_FLAG, offsetof(T, F.log_json), NULL, NULL, 0, 0, false,                       \
         "write the log as JSON lines: time, level, file, line, msg"},                                         \
        {"-g", "--binary-log", OPT_STRING, offsetof(T, F.binlog_path), "<path.mpac>", NULL, 0, 0, false,       \
         "write the binary (msgpack) log to this file"},                                                       \
        {"-d", "--daemon", OPT_STRING, offsetof(T, F.pidfile), "<path.pid>", NULL, 0, 0, false,                \
         "run in the background and write the pid to this file"},                                              \
        {"-Ci", "--clock-interval", OPT_DOUBLE, offsetof(T, F.clock_interval), "<sec>", "0.5", 0.01, 60,       \
         false, "timer tick: keepalives, timeouts and retries are measured in it"},                            \
        {"-Ys", "--connect-timeout", OPT_DOUBLE, offsetof(T, F.connect_timeout), "<sec>", "2.0", 0.01,         \
         600, false, "connect(2) timeout"},                                                                    \
        {"-Yn", "--connect-retry-limit", OPT_INT, offsetof(T, F.connect_retries), "<num>", "4", 0, 1000,       \
         false, "reconnect attempts before a node is declared lost"},                                          \
        {"-TR", "--read-threads", OPT_INT, offsetof(T, F.read_threads), "<num>", tr_default, 1, 256,           \
         false, tr_help},                                                                                      \
        {"-TW", "--write-threads", OPT_INT, offsetof(T, F.write_threads), "<num>", "2", 1, 256, false,         \
         "sender threads in kumofs 0.4; accepted, unused: writes leave at the end of each loop turn"},         \
        {"--metrics", NULL, OPT_STRING, offsetof(T, F.metrics), "<[addr:]port>", NULL, 0, 0, false,            \
         "serve Prometheus/OpenMetrics text at http://addr:port/metrics"},                                     \
    {                                                                                                          \
        "--cluster-key-file", NULL, OPT_STRING, offsetof(T, F.cluster_key_file), "<file>", NULL, 0, 0,         \
            false, "cluster secret: every node, gateway and tool connection must prove it holds the same file" \
    }

#endif

/*
 * daemon — the boring parts of being a daemon: -d pidfile (detach and
 * write the pid), readiness and status for systemd (sd_notify when built
 * with libsystemd, otherwise no-ops), ignoring SIGPIPE, and the signals of
 * a daemon's event loop (SIGTERM/SIGINT stop it, SIGHUP reopens the log).
 *
 * It also owns what every daemon does about descriptors: the soft
 * RLIMIT_NOFILE raised to the hard limit at start-up, and listeners that
 * pause instead of spinning when accept() runs out of descriptors.
 *
 * Thread rule: start-up only, except daemon_notify (any thread) and the
 * listener functions (the thread of the listener's event base).
 * Calls: log, auth, opts.
 */
#ifndef KUMO_DAEMON_H
#define KUMO_DAEMON_H

#include <event2/event.h>
#include <event2/listener.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "cmdline.h"
#include "kumo.h"

/* Ignore SIGPIPE; call first thing in main(). */
void daemon_init(void);
/* Fork into the background (setsid, chdir("/") is NOT done so relative
 * paths keep working, stdin to /dev/null, stdout/stderr to /dev/null only
 * when logging to a file) and write the pid to pidfile. 0 / -1 + err. */
int daemon_detach(const char *pidfile, bool log_to_file, char *err);
/* Remove the pid file written by daemon_detach (at exit). */
void daemon_remove_pidfile(void);
/* Apply the common flags at start-up: open the text log (-o, -v), the
 * binary log (-g; call binlog_set_node first) and detach (-d); raise the
 * soft open-files limit to the hard one (logged). On failure prints
 * "prog: reason" to stderr and returns -1. */
int daemon_start(const char *prog, const daemon_common *c);
/* The end of main(), after the daemon freed what it owns: log "end", the
 * binary log's stop record, close both logs, remove the pid file. Returns
 * status, main()'s exit status. */
int daemon_finish(int status);

/* --cluster-key-file: the loaded key (NULL when the flag is not given),
 * for rpc_self.key; a file auth_key_load refuses is a usage error (exit
 * 64 naming the file, through opts_die). Call right after opts_parse. The
 * key lives until the process exits. */
auth_key *daemon_cluster_key(const opts_spec *spec, const daemon_common *c);

/* SIGINT and SIGTERM: log, send STOPPING=1 and call stop(arg) (which should
 * end the loop); SIGHUP: reopen the log file and the binary log. Events
 * live on `base`. */
typedef struct daemon_signals {
    struct event *ev[3];
    struct event *watchdog; /* WATCHDOG=1 every WATCHDOG_USEC/2, when systemd asks */
    void (*stop)(void *arg);
    void *arg;
    int stops; /* a second SIGTERM/SIGINT exits at once */
} daemon_signals;
void daemon_signals_init(daemon_signals *ds, struct event_base *base, void (*stop)(void *arg), void *arg);
void daemon_signals_free(daemon_signals *ds);

/* Shutdown's drain: leave `base`'s loop once pending(arg) is 0, checking
 * every 100 ms, or after `seconds` whatever is left (logged). */
typedef int (*daemon_pending_fn)(void *arg);
void daemon_drain(struct event_base *base, daemon_pending_fn pending, void *arg, double seconds);

/* A listener on the listening socket fd (taken over: closed by
 * daemon_listener_free) calling cb(listener, fd, ...) with arg for each
 * accepted connection. When accept() fails for another reason than a
 * retriable one (EMFILE and ENFILE above all: a connection waits in the
 * backlog that cannot be taken, so the socket stays readable), it stops
 * accepting for DAEMON_ACCEPT_PAUSE_MS and tries again, logging at most
 * one warning every 10 s, instead of libevent's default of retrying at once
 * (a busy loop writing a warning each time). NULL on allocation failure
 * (fd closed). */
#define DAEMON_ACCEPT_PAUSE_MS 100
typedef struct daemon_listener daemon_listener;
daemon_listener *daemon_listen(struct event_base *base, int fd, evconnlistener_cb cb, void *arg);
/* Stop accepting for good (shutdown); a pending resume does nothing. */
void daemon_listener_stop(daemon_listener *dl);
/* accept() failures since start (each paused the listener), and whether it
 * is paused now: what a daemon's status and metrics show. NULL: 0, false.
 * Any thread. */
void daemon_listener_stats(const daemon_listener *dl, uint64_t *failures, bool *paused);
/* Close the socket and free; NULL is allowed. */
void daemon_listener_free(daemon_listener *dl);

/* sd_notify(0, text), e.g. "READY=1\nSTATUS=serving". */
void daemon_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

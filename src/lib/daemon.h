/*
 * daemon — the boring parts of being a daemon: -d pidfile (detach and
 * write the pid), readiness and status for systemd (sd_notify when built
 * with libsystemd, otherwise no-ops), and ignoring SIGPIPE.
 * Signal handling itself is done with libevent in each daemon's loop.
 *
 * Thread rule: start-up only, except daemon_notify (any thread).
 * Calls: log.
 */
#ifndef KUMO_DAEMON_H
#define KUMO_DAEMON_H

#include <stdbool.h>

#include "kumo.h"

/* Ignore SIGPIPE; call first thing in main(). */
void daemon_init(void);
/* Fork into the background (setsid, chdir("/") is NOT done so relative
 * paths keep working, stdin to /dev/null, stdout/stderr to /dev/null only
 * when logging to a file) and write the pid to pidfile. 0 / -1 + err. */
int daemon_detach(const char *pidfile, bool log_to_file, char *err);
/* Remove the pid file written by daemon_detach (at exit). */
void daemon_remove_pidfile(void);
/* sd_notify(0, text), e.g. "READY=1\nSTATUS=serving". */
void daemon_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

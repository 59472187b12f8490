/*
 * daemon — detaching, the pid file, SIGPIPE and sd_notify (see daemon.h).
 *
 * Owns: the path and owner pid of the pid file written by daemon_detach
 * (set once at start-up, read at exit).
 * Calls: log (a failed sd_notify is worth a debug line), binlog (opened
 * with the text log, reopened with it on SIGHUP), libsystemd when
 * built with HAVE_LIBSYSTEMD.
 * Thread rule: start-up only, except daemon_notify (any thread: it only
 * formats into a stack buffer and calls sd_notify).
 *
 * daemon_detach does the classic fork / setsid / fork, but the original
 * process does not exit at once: it waits on a pipe until the grandchild has
 * written the pid file, so whoever ran "kumo-server -d pidfile" (an init
 * script, a test) finds the file complete as soon as the command returns.
 * The pid file is opened before forking, so a bad path is reported on the
 * terminal with a normal error.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "binlog.h"
#include "log.h"

static struct {
    char *path;  /* pid file written by daemon_detach, or NULL */
    pid_t owner; /* the process that wrote it: only it removes it */
} pidfile_state;

void daemon_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
}

/* Point fd at /dev/null. */
static void to_devnull(int fd, int flags)
{
    int n = open("/dev/null", flags | O_CLOEXEC);
    if (n < 0) return;
    if (n != fd) {
        dup2(n, fd); /* dup2 clears O_CLOEXEC on fd */
        close(n);
    }
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int daemon_detach(const char *pidfile, bool log_to_file, char *err)
{
    int fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return kumo_err(err, "%s: %s", pidfile, strerror(errno));
    char *path = strdup(pidfile);
    int ready[2];
    if (!path || pipe2(ready, O_CLOEXEC) < 0) {
        int e = path ? errno : ENOMEM;
        free(path);
        close(fd);
        return kumo_err(err, "%s: %s", pidfile, strerror(e));
    }

    fflush(NULL); /* buffered output must not be written twice */
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        free(path);
        close(fd), close(ready[0]), close(ready[1]);
        return kumo_err(err, "fork: %s", strerror(e));
    }
    if (pid > 0) {
        /* The original process: wait for the grandchild's word, then leave. */
        close(fd), close(ready[1]);
        char c = 0;
        ssize_t r;
        do r = read(ready[0], &c, 1);
        while (r < 0 && errno == EINTR);
        waitpid(pid, NULL, 0);
        if (r == 1) _exit(0);
        close(ready[0]);
        free(path);
        return kumo_err(err, "%s: the daemon exited before writing its pid", pidfile);
    }

    close(ready[0]);
    if (setsid() < 0) _exit(1);
    pid = fork();
    if (pid < 0) _exit(1);
    if (pid > 0) _exit(0);

    /* The daemon. */
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (write_all(fd, buf, (size_t)n) < 0 || close(fd) < 0) {
        int e = errno;
        unlink(pidfile);
        free(path);
        close(ready[1]);
        return kumo_err(err, "%s: %s", pidfile, strerror(e));
    }
    pidfile_state.path = path;
    pidfile_state.owner = getpid();

    to_devnull(STDIN_FILENO, O_RDONLY);
    if (log_to_file) {
        to_devnull(STDOUT_FILENO, O_WRONLY);
        to_devnull(STDERR_FILENO, O_WRONLY);
    }
    write_all(ready[1], "1", 1);
    close(ready[1]);
    return 0;
}

void daemon_remove_pidfile(void)
{
    if (!pidfile_state.path) return;
    if (pidfile_state.owner == getpid()) unlink(pidfile_state.path);
    free(pidfile_state.path);
    pidfile_state.path = NULL;
}

auth_key *daemon_cluster_key(const opts_spec *spec, const daemon_common *c)
{
    char err[KUMO_ERRLEN];
    auth_key *k = NULL;
    if (c->cluster_key_file && !(k = auth_key_load(c->cluster_key_file, err))) opts_die(spec, "%s", err);
    return k;
}

/* Every client connection takes a descriptor; the usual soft limit (1024)
 * would refuse clients long before memory runs out. The hard limit is the
 * administrator's choice and is left alone. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t was = rl.rlim_cur;
    if (was < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_warn("open files limit stays %llu: cannot raise it to %llu: %s", (unsigned long long)was,
                     (unsigned long long)rl.rlim_max, strerror(errno));
            return;
        }
        log_info("open files limit raised from %llu to %llu", (unsigned long long)was,
                 (unsigned long long)rl.rlim_cur);
        return;
    }
    log_info("open files limit %llu", (unsigned long long)was);
}

int daemon_finish(int status)
{
    log_info("end");
    binlog_event(LOG_LVL_INFO, "stop");
    binlog_close();
    daemon_remove_pidfile();
    log_close();
    return status;
}

int daemon_start(const char *prog, const daemon_common *c)
{
    char err[KUMO_ERRLEN];
    if (log_init(c->log_path, c->verbose, err) < 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return -1;
    }
    log_set_json(c->log_json);
    /* Opened before detaching, so a bad -g path is reported on the terminal. */
    if (c->binlog_path && binlog_open(c->binlog_path, err) < 0) {
        log_fatal("binary log: %s", err);
        fprintf(stderr, "%s: binary log: %s\n", prog, err);
        return -1;
    }
    if (c->pidfile && daemon_detach(c->pidfile, c->log_path != NULL, err) < 0) {
        log_fatal("%s", err);
        fprintf(stderr, "%s: %s\n", prog, err);
        return -1;
    }
    raise_nofile();
    return 0;
}

struct daemon_listener {
    struct evconnlistener *l;
    evconnlistener_cb cb; /* the daemon's, called with arg */
    void *arg;
    struct event *resume;
    bool stopped;
    atomic_bool paused;        /* after an accept failure, until resume_cb */
    unsigned long failed;      /* accept failures since the last warning */
    _Atomic uint64_t failures; /* since start */
    time_t warned;
    /* paused and failures are atomics: the gateway's `stats` reads them
     * from its worker threads (daemon_listener_stats) */
};

/* libevent gives both callbacks one argument: ours; the daemon gets its own. */
static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    daemon_listener *dl = arg;
    dl->cb(l, fd, sa, len, dl->arg);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    daemon_listener *dl = arg;
    dl->paused = false;
    if (!dl->stopped) evconnlistener_enable(dl->l);
}

/* libevent calls this for every accept() error but EINTR, EAGAIN and
 * ECONNABORTED; the listener would stay enabled and fail again at once. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    daemon_listener *dl = arg;
    int e = EVUTIL_SOCKET_ERROR();
    evconnlistener_disable(l);
    dl->paused = true;
    dl->failed++;
    dl->failures++;
    time_t now = time(NULL);
    if (now - dl->warned >= 10) {
        log_warn("accept: %s: not accepting for %d ms (%lu failures since the last warning)", strerror(e),
                 DAEMON_ACCEPT_PAUSE_MS, dl->failed);
        dl->warned = now;
        dl->failed = 0;
    }
    struct timeval tv = {0, DAEMON_ACCEPT_PAUSE_MS * 1000};
    if (!dl->stopped) evtimer_add(dl->resume, &tv);
}

daemon_listener *daemon_listen(struct event_base *base, int fd, evconnlistener_cb cb, void *arg)
{
    daemon_listener *dl = calloc(1, sizeof(*dl));
    if (dl && (dl->resume = evtimer_new(base, resume_cb, dl)) &&
        (dl->l = evconnlistener_new(base, accept_cb, dl, LEV_OPT_CLOSE_ON_FREE, -1, fd))) {
        dl->cb = cb;
        dl->arg = arg;
        evconnlistener_set_error_cb(dl->l, accept_error_cb);
        return dl;
    }
    if (dl && dl->resume) event_free(dl->resume);
    free(dl);
    close(fd);
    return NULL;
}

void daemon_listener_stop(daemon_listener *dl)
{
    if (!dl) return;
    dl->stopped = true;
    evtimer_del(dl->resume);
    evconnlistener_disable(dl->l);
}

void daemon_listener_stats(const daemon_listener *dl, uint64_t *failures, bool *paused)
{
    *failures = dl ? dl->failures : 0;
    *paused = dl && dl->paused;
}

void daemon_listener_free(daemon_listener *dl)
{
    if (!dl) return;
    evconnlistener_free(dl->l);
    event_free(dl->resume);
    free(dl);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    daemon_signals *ds = arg;
    if (sig == SIGHUP) {
        log_info("SIGHUP: reopening the log");
        log_reopen();
        if (binlog_reopen() < 0) log_error("SIGHUP: cannot reopen the binary log");
        return;
    }
    if (ds->stops++ > 0) {
        log_warn("signal %d again: exiting now", (int)sig);
        _exit(1);
    }
    log_info("signal %d: shutting down", (int)sig);
    daemon_notify("STOPPING=1");
    ds->stop(ds->arg);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg) { daemon_notify("WATCHDOG=1"); }

void daemon_signals_init(daemon_signals *ds, struct event_base *base, void (*stop)(void *arg), void *arg)
{
    static const int signums[3] = {SIGINT, SIGTERM, SIGHUP};
    ds->stop = stop;
    ds->arg = arg;
    ds->stops = 0;
    ds->watchdog = NULL;
    for (int i = 0; i < 3; i++) {
        ds->ev[i] = evsignal_new(base, signums[i], signal_cb, ds);
        event_add(ds->ev[i], NULL);
    }
#ifdef HAVE_LIBSYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        ds->watchdog = event_new(base, -1, EV_PERSIST, watchdog_cb, NULL);
        struct timeval tv = {(time_t)(usec / 2 / 1000000), (suseconds_t)(usec / 2 % 1000000)};
        event_add(ds->watchdog, &tv);
        daemon_notify("WATCHDOG=1");
    }
#else
    (void)watchdog_cb;
#endif
}

void daemon_signals_free(daemon_signals *ds)
{
    if (ds->watchdog) event_free(ds->watchdog);
    ds->watchdog = NULL;
    for (int i = 0; i < 3; i++) {
        if (ds->ev[i]) event_free(ds->ev[i]);
        ds->ev[i] = NULL;
    }
}

typedef struct drain {
    struct event_base *base;
    struct event *ev;
    daemon_pending_fn pending;
    void *arg;
    int ticks;
} drain;

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    drain *d = arg;
    int left = d->pending(d->arg);
    if (left > 0 && --d->ticks > 0) return;
    if (left > 0) log_warn("shutting down with %d requests unfinished", left);
    event_base_loopexit(d->base, NULL);
    event_free(d->ev);
    free(d);
}

void daemon_drain(struct event_base *base, daemon_pending_fn pending, void *arg, double seconds)
{
    drain *d = calloc(1, sizeof(*d));
    if (!d || !(d->ev = event_new(base, -1, EV_PERSIST, drain_cb, d))) {
        free(d);
        event_base_loopexit(base, NULL);
        return;
    }
    d->base = base;
    d->pending = pending;
    d->arg = arg;
    d->ticks = (int)(seconds / 0.1) + 1;
    struct timeval tv = {0, 100000};
    event_add(d->ev, &tv);
}

void daemon_notify(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
#ifdef HAVE_LIBSYSTEMD
    int rc = sd_notify(0, buf);
    if (rc < 0) log_debug("sd_notify: %s", strerror(-rc));
#else
    (void)buf;
#endif
}

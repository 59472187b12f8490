/*
 * sio — buffered non-blocking sockets with end-of-iteration flushing
 * (see sio.h).
 *
 * Two events per socket: a persistent level-triggered read event and a
 * write event added only while connecting or while the kernel's send buffer
 * is full. sio_wrote queues the socket's flush as a job of its base's
 * turn (turn.h), which runs after every callback of the current iteration.
 */
#include "sio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kumo.h"
#include "turn.h"

#define SIO_READ (16 * 1024)
#define SIO_STAGE (16 * 1024) /* the most sio_append stages before moving it to `out` */
#define SIO_STAGE_MIN 1024    /* what a socket keeps while idle */

struct sio {
    struct event_base *base;
    int fd;
    struct event *ev_read, *ev_write;
    turn *turn;     /* base's end-of-iteration jobs */
    turn_job flush; /* flush_now, queued by sio_wrote */
    struct evbuffer *in, *out;
    char *stage;      /* sio_append's output, ahead of nothing in `out` (see commit) */
    size_t staged;    /* bytes in stage */
    size_t stage_cap; /* its size: SIO_STAGE_MIN, doubled as a turn needs, back when drained */
    sio_ops ops;
    void *arg;
    int connect_err; /* a connect that failed before it started */
    bool connecting;
    bool shut;        /* on_close ran (or is running): no more I/O */
    bool eof;         /* the peer shut its side and on_eof ran: no more input */
    bool reading;     /* ev_read is added */
    bool write_armed; /* ev_write is added */
    bool kick;        /* run on_read once for input already buffered */
    bool direct;      /* on_read reads with sio_recv (sio_read_direct) */
    bool out_used;    /* `out` may hold bytes: false only once a drain emptied it
                       * (saves asking libevent for its length on every write) */
};

static void flush_now(void *arg);

static void turn_queue_flush(sio *s) { turn_queue(s->turn, &s->flush); }

static void shut(sio *s, int err)
{
    if (s->shut) return;
    s->shut = true;
    event_del(s->ev_read);
    event_del(s->ev_write);
    turn_cancel(s->turn, &s->flush);
    s->ops.on_close(s->arg, s, err);
}

/* A read returned 0. With on_eof the socket stays open for output. */
static void peer_eof(sio *s)
{
    if (!s->ops.on_eof) {
        shut(s, 0);
        return;
    }
    s->eof = true;
    s->reading = false;
    event_del(s->ev_read);
    s->ops.on_eof(s->arg, s); /* last: it may free s */
}

/* The staged bytes go behind whatever the evbuffer holds. */
static int commit(sio *s)
{
    if (s->staged == 0) return 0;
    s->out_used = true;
    if (evbuffer_add(s->out, s->stage, s->staged) < 0) return -1;
    s->staged = 0;
    return 0;
}

/* Staged output with nothing queued before it is written from the array
 * itself; only what the kernel did not take goes to the evbuffer. */
static bool write_staged(sio *s)
{
    if (s->staged == 0) return true;
    if (!s->out_used || evbuffer_get_length(s->out) == 0) {
        ssize_t n;
        do n = send(s->fd, s->stage, s->staged, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            shut(s, errno);
            return false;
        }
        if (n > 0) {
            s->staged -= (size_t)n;
            memmove(s->stage, s->stage + n, s->staged);
        }
    }
    if (commit(s) < 0) {
        shut(s, ENOMEM);
        return false;
    }
    return true;
}

/* Write until the output is empty or the kernel pushes back. Returns true
 * if the socket is still usable. */
static bool drain(sio *s)
{
    if (!write_staged(s)) return false;
    while (s->out_used && evbuffer_get_length(s->out) > 0) {
        if (evbuffer_write(s->out, s->fd) >= 0) continue;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!s->write_armed) {
                s->write_armed = true;
                event_add(s->ev_write, NULL);
            }
            return true;
        }
        shut(s, errno);
        return false;
    }
    s->out_used = false;
    if (s->write_armed) {
        s->write_armed = false;
        event_del(s->ev_write);
    }
    if (s->stage_cap > SIO_STAGE_MIN) { /* a burst is over: keep an idle socket small */
        free(s->stage);
        s->stage = NULL;
        s->stage_cap = 0;
    }
    if (s->ops.on_drained) s->ops.on_drained(s->arg, s); /* last: it may free s */
    return true;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    sio *s = arg;
    (void)what;
    if (s->kick) {
        s->kick = false;
        if (!s->direct && evbuffer_get_length(s->in) > 0) {
            s->ops.on_read(s->arg, s);
            return;
        }
    }
    if (s->direct) {
        s->ops.on_read(s->arg, s);
        return;
    }
    if (s->eof) return; /* buffered input was handed out above */
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    int nv = evbuffer_reserve_space(s->in, SIO_READ, v, 2);
    if (nv <= 0) {
        shut(s, ENOMEM);
        return;
    }
    for (int i = 0; i < nv; i++) {
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = v[i].iov_len;
    }
    ssize_t n = readv(fd, iov, nv);
    if (n > 0) {
        size_t left = (size_t)n;
        int used = 0;
        for (; used < nv && left > 0; used++) {
            if (v[used].iov_len > left) v[used].iov_len = left;
            left -= v[used].iov_len;
        }
        evbuffer_commit_space(s->in, v, used);
        s->ops.on_read(s->arg, s);
        return;
    }
    if (n == 0) peer_eof(s);
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) shut(s, errno);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    sio *s = arg;
    (void)what;
    if (s->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err == EINPROGRESS) return;
        if (err) {
            shut(s, err);
            return;
        }
        s->connecting = false;
        if (s->ops.on_connect) s->ops.on_connect(s->arg, s);
        if (s->shut) return;
    }
    drain(s);
}

static void flush_now(void *arg)
{
    sio *s = arg;
    if (s->connect_err) {
        shut(s, s->connect_err);
        return;
    }
    if (s->shut || s->connecting || s->write_armed) return; /* the write event will do it */
    drain(s);
}

static sio *sio_alloc(struct event_base *base, int fd, const sio_ops *ops, void *arg)
{
    sio *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->base = base;
    s->fd = fd;
    s->ops = *ops;
    s->arg = arg;
    s->in = evbuffer_new();
    s->out = evbuffer_new();
    s->ev_read = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, s);
    s->ev_write = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, s);
    s->turn = turn_join(base);
    s->flush = (turn_job){.fn = flush_now, .arg = s};
    if (!s->in || !s->out || !s->ev_read || !s->ev_write || !s->turn) {
        s->fd = -1;
        sio_free(s);
        return NULL;
    }
    return s;
}

sio *sio_new(struct event_base *base, int fd, const sio_ops *ops, void *arg)
{
    net_tune(fd);
    sio *s = sio_alloc(base, fd, ops, arg);
    if (!s) {
        close(fd);
        return NULL;
    }
    sio_read_enable(s, true);
    return s;
}

sio *sio_connect(struct event_base *base, const net_addr *peer, const sio_ops *ops, void *arg)
{
    char err[KUMO_ERRLEN];
    errno = 0;
    int fd = net_connect(peer, err);
    int e = errno ? errno : ECONNREFUSED;
    sio *s = sio_alloc(base, fd, ops, arg);
    if (!s) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    if (fd < 0) {
        /* Report the failure from the loop, as the contract says. */
        s->connect_err = e;
        turn_queue_flush(s);
        return s;
    }
    s->connecting = true;
    s->write_armed = true;
    event_add(s->ev_write, NULL);
    sio_read_enable(s, true);
    return s;
}

void sio_free(sio *s)
{
    if (!s) return;
    if (s->ev_read) event_free(s->ev_read);
    if (s->ev_write) event_free(s->ev_write);
    if (s->turn) {
        turn_cancel(s->turn, &s->flush);
        turn_leave(s->turn);
    }
    if (s->in) evbuffer_free(s->in);
    if (s->out) evbuffer_free(s->out);
    free(s->stage);
    if (s->fd >= 0) close(s->fd);
    free(s);
}

struct evbuffer *sio_input(sio *s) { return s->in; }
struct evbuffer *sio_output(sio *s)
{
    if (commit(s) < 0 && !s->connect_err) { /* out of memory: closed from the loop, as a failed connect */
        s->connect_err = ENOMEM;
        sio_wrote(s);
    }
    s->out_used = true; /* the caller adds to it */
    return s->out;
}

size_t sio_output_length(const sio *s) { return (s->out_used ? evbuffer_get_length(s->out) : 0) + s->staged; }

/* Room for `need` staged bytes, up to SIO_STAGE. */
static bool stage_room(sio *s, size_t need)
{
    if (need <= s->stage_cap) return true;
    if (need > SIO_STAGE) return false;
    size_t cap = s->stage_cap ? s->stage_cap : SIO_STAGE_MIN;
    while (cap < need) cap *= 2;
    char *p = realloc(s->stage, cap);
    if (!p) return false;
    s->stage = p;
    s->stage_cap = cap;
    return true;
}

int sio_append(sio *s, const void *buf, size_t len)
{
    sio_wrote(s);
    if (len <= SIO_STAGE / 2 && !stage_room(s, s->staged + len)) {
        if (commit(s) < 0) return -1;
        if (!stage_room(s, len)) {
            s->out_used = true;
            return evbuffer_add(s->out, buf, len);
        }
    } else if (len > SIO_STAGE / 2) { /* a large value: no copy through the array */
        if (commit(s) < 0) return -1;
        s->out_used = true;
        return evbuffer_add(s->out, buf, len);
    }
    memcpy(s->stage + s->staged, buf, len);
    s->staged += len;
    return 0;
}
int sio_fd(const sio *s) { return s->fd; }

void sio_wrote(sio *s)
{
    if (!s->shut) turn_queue_flush(s);
}

void sio_read_direct(sio *s, bool on) { s->direct = on; }

bool sio_at_eof(const sio *s) { return s->eof; }

ssize_t sio_recv(sio *s, void *buf, size_t len)
{
    ssize_t n;
    if (s->eof || s->shut) return -1;
    if (len == 0) return 0; /* recv's 0 would read as the peer's close */
    do n = recv(s->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (n == 0) peer_eof(s);
    else shut(s, errno);
    return -1;
}

void sio_read_enable(sio *s, bool on)
{
    if (s->shut || s->fd < 0 || on == s->reading) return;
    s->reading = on;
    if (!on) {
        event_del(s->ev_read);
        return;
    }
    if (!s->eof) event_add(s->ev_read, NULL);          /* at the end of input the socket is always readable */
    if (s->direct || evbuffer_get_length(s->in) > 0) { /* a direct reader may hold input of its own */
        s->kick = true;
        event_active(s->ev_read, EV_READ, 1);
    }
}
